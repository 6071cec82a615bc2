"""
Codecs: turn :mod:`wsrpc.messages` into WebSocket frames and back, sans I/O.

A codec is stateless and strict. :meth:`Codec.decode` accepts only frames of
the shapes documented in ``docs/protocol.md`` and raises
:exc:`~wsrpc.exceptions.ProtocolError` (carrying the close code to use) for
anything else; it never builds objects other than plain data (no pickle, no
ext types, no classes). :meth:`Codec.encode` raises
:exc:`~wsrpc.exceptions.EncodeError` for values it cannot represent.

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

import datetime
import gc
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import msgpack

from ._msgpack_scan import MAX_CONTAINERS, MAX_DEPTH, Refused, check_declared
from .exceptions import EncodeError, ProtocolError
from .messages import (
    Accept,
    Call,
    Cancel,
    CloseCode,
    Credit,
    Error,
    Header,
    Item,
    Items,
    Message,
    Return,
)
from .tgrid import TgridCodec

__all__ = [
    "CALL_KIND",
    "PROTOCOL_VERSION",
    "RETURN_KIND",
    "STREAMS_VERSION",
    "BatchingCodec",
    "Codec",
    "CodecName",
    "MsgpackCodec",
    "check_packed",
    "make_codec",
    "unpack",
]

PROTOCOL_VERSION = 1
"""Version of wsrpc's msgpack protocol, sent in the header message."""

STREAMS_VERSION = 2
"""The streams wsrpc's msgpack codec takes, announced as ``"streams"`` in the
handshake's limits: 1 STREAM, ITEM and CREDIT; 2 also ITEMS."""

# Message kinds: the first element of every msgpack message.
_HEADER, _ACCEPT, _CALL, _RETURN, _ERROR, _CANCEL, _STREAM, _ITEM, _CREDIT, _ITEMS = range(10)
# The fixed start of ITEM and ITEMS frames: a 3-element array and the kind.
_ITEM_START = bytes([0x93, _ITEM])
_ITEMS_START = bytes([0x93, _ITEMS])

_MAX_UID = 2**63 - 1

CALL_KIND, RETURN_KIND = _CALL, _RETURN
"""The first element of the arrays :meth:`MsgpackCodec.decode_lean` returns."""
# Values that pack to one msgpack scalar: never a map, an ext, or nesting.
_SCALARS = frozenset({type(None), bool, int, float, str, bytes})
_UNKNOWN: Any = object()

# Bytes that may start a msgpack map (fixmap, map16, map32) or ext value.
_MAP_OR_EXT = re.compile(b"[\x80-\x8f\xde\xdf\xc7-\xc9\xd4-\xd8]")
_map_or_ext = _MAP_OR_EXT.search
# Types msgpack packs as one scalar: nothing in them for check_packed to find.
_SCALARS = frozenset([int, float, str, bytes, bool, type(None)])
# Bytes that may start an array or a map with a 16- or 32-bit length.
_WIDE_CONTAINER = re.compile(b"[\xdc-\xdf]")
_wide = _WIDE_CONTAINER.search
# Frames up to this many bytes are decoded without the structural walk even
# when they hold a 16- or 32-bit container header: msgpack bounds each
# container's declared length by the frame's length (unpackb's default), so
# the most such a frame makes the decoder allocate before refusing it is
# some 42 nested arrays (3-byte headers) of 128 slots each, about 45 KB, and
# everything else the walk refuses the decoder refuses too. Four byte values
# in 256 are such headers, and call ids and integer arguments hit them: the
# walk ran on 2.6 % of the frames of the benchmark's calls, and walking a
# 12-byte call took 2.8 µs where decoding it takes 0.17 µs.
_UNWALKED_SIZE = 128
_unpackb = msgpack.unpackb
# Frames over this many bytes decode with the garbage collector off (see decode()).
_NO_GC_ABOVE = 16_384
# msgpack's decoder nests at most this deep (its fixed stack size).
_DECODER_DEPTH = MAX_DEPTH
# Containers an ITEMS frame's values may hold to stay within the decoder's
# depth: they sit two arrays deep.
_VALUE_DEPTH = _DECODER_DEPTH - 2
# Every byte but those that may start an array or a map.
_NOT_CONTAINERS = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))


def _containers(frame: bytes) -> int:
    """How many bytes of ``frame`` could start an array or a map (an upper bound)."""
    return len(frame.translate(None, _NOT_CONTAINERS))  # deletes all the others


class Codec(Protocol):
    """What the protocol core needs from a codec."""

    name: str
    """Short name, as accepted by ``codec=``."""
    binary: bool
    """True when frames are binary, False when they are text."""
    supports_cancel: bool
    """Whether :class:`~wsrpc.messages.Cancel` can be sent to the peer."""
    supports_streams: bool
    """Whether stream calls (a Call with ``credit``, Item, Credit) can be encoded."""

    def encode(self, message: Message) -> bytes | str:
        """Encode ``message``; raise :exc:`EncodeError` when it cannot be."""
        ...

    def decode(self, frame: bytes | str) -> Message:
        """Decode one frame; raise :exc:`ProtocolError` when it is not valid."""
        ...


def encode_default(obj: object) -> Any:
    """
    msgpack's ``default`` hook: what a value msgpack cannot pack travels as.

    msgpack packs timezone-aware datetimes as its timestamp (``datetime=True``);
    a naive datetime is no instant, so it travels as its ISO 8601 text, as
    msgspec's msgpack encoder sends it. Anything else cannot be sent.
    """
    if isinstance(obj, datetime.datetime):
        return obj.isoformat()
    raise TypeError(f"can not serialize {type(obj).__name__!r} object")


class BatchingCodec(Codec, Protocol):
    """A codec that also sends several stream items per frame (ITEMS, streams 2)."""

    supports_item_batches: bool
    """True: :meth:`encode_value` and :meth:`encode_items` work."""

    def encode_value(self, value: Any) -> bytes:
        """
        ``value`` encoded on its own, to be sent as a stream item by
        :meth:`encode_items`. Raises :exc:`EncodeError` when it cannot be.
        """
        ...

    def encode_items(self, uid: int, values: Sequence[bytes]) -> bytes:
        """
        The frame of stream ``uid``'s ``values`` (from :meth:`encode_value`):
        an ITEM for one, an ITEMS for several. Its size is the values' sizes
        plus at most 16 bytes.
        """
        ...


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(CloseCode.INVALID_PAYLOAD, f"msgpack ext type {code} is not allowed")


def _bad(what: str) -> ProtocolError:
    return ProtocolError(CloseCode.PROTOCOL_ERROR, what)


_BAD_UID = "call id must be an integer in [1, 2**63)"


def _uid(value: object) -> int:
    # bool is an int subclass: compare the exact type.
    if type(value) is not int or not 0 < value <= _MAX_UID:
        raise _bad(_BAD_UID)
    return value


def _limit(value: object, what: str) -> int:
    if type(value) is not int or value < 1:
        raise _bad(f"{what} must be a positive integer")
    return value


class MsgpackCodec:
    """
    wsrpc's own codec: one msgpack array per binary frame.

    Values that travel are msgpack's data model: None, bool, int (64-bit),
    float, str, bytes, lists (tuples are sent as lists) and dicts with str or
    bytes keys (other keys are refused both ways: int keys would let a peer
    build dicts of colliding hashes). A timezone-aware ``datetime`` travels
    as msgpack's timestamp (ext -1) and arrives as a ``datetime`` in UTC; a
    naive one travels as its ISO 8601 text; every other ext type is refused.

    Args:
        max_container_len: Most elements one array or map may declare. None
            (the default) derives it from the frame's size, so a frame can
            never declare more elements than it has bytes.
        max_containers: Most arrays and maps one frame may hold, in all
            (default :data:`~wsrpc._msgpack_scan.MAX_CONTAINERS`, 131,072;
            None: no limit). Building them is what decoding costs, so this
            bounds the time one frame can take; a frame over it closes the
            connection with 1009, having built at most that many. Frames no
            larger than this many bytes cannot hold more and skip the count.
        use_msgspec: Whether messages of scalars only (most calls and
            returns) are packed by msgspec's msgpack encoder rather than
            msgpack's: the same bytes (tested), for some 4 % fewer
            instructions per round trip. None (the default): when msgspec
            is installed (``pip install 'wsrpc[fast]'``); True requires it
            (ImportError without it); False never. Everything else, and all
            decoding, is msgpack's: its decoder refuses map keys other than
            str and bytes, msgspec's takes any.
    """

    name = "msgpack"
    binary = True
    supports_cancel = True
    supports_streams = True
    supports_item_batches = True

    def __init__(
        self,
        *,
        max_container_len: int | None = None,
        max_containers: int | None = MAX_CONTAINERS,
        use_msgspec: bool | None = None,
    ) -> None:
        if max_container_len is not None and max_container_len < 1:
            raise ValueError("max_container_len must be positive")
        if max_containers is not None and max_containers < 1:
            raise ValueError("max_containers must be positive")
        self._max_container_len = max_container_len
        self._max_containers = max_containers
        # decode_lean() decodes frames up to this size inline, without
        # unpack()'s branches: they hold fewer bytes, so fewer containers,
        # than the budget, and are decoded with the collector on.
        self._inline_size = min(_NO_GC_ABOVE, max_containers or _NO_GC_ABOVE)
        self._unwalked = min(_UNWALKED_SIZE, self._inline_size)
        if max_container_len is not None and max_container_len > _UNWALKED_SIZE:
            self._unwalked = 0  # containers may then declare more than the frame's length
        # msgpack's max_array_len and max_map_len: -1 is its default, as many
        # elements as the frame has bytes.
        self._len_limit = -1 if max_container_len is None else max_container_len
        # One reusable packer: about twice as fast as packb(). It starts
        # small (the default buffer is 256 KiB) and grows with the largest
        # message. Codec objects are therefore not thread-safe: a server
        # shares one among its connections, all on its event loop.
        self._packer = msgpack.Packer(
            use_bin_type=True, datetime=True, default=encode_default, buf_size=4096
        )
        # What packs a message known to hold scalars only (see use_msgspec).
        self._pack_flat: Callable[[Any], bytes] = _flat_packer(use_msgspec) or self._packer.pack

    def encode(self, message: Message) -> bytes:
        kind = type(message)
        obj: list[Any]
        if kind is Call:
            assert isinstance(message, Call)
            if message.credit is None:
                return self.encode_call(
                    message.uid, message.path, message.args, message.kwargs, message.parent
                )
            obj = [
                _STREAM,
                message.uid,
                message.path,
                message.args,
                message.kwargs or None,
                message.credit,
            ]
            if message.parent is not None:
                obj.append(message.parent)
        elif kind is Return:
            assert isinstance(message, Return)
            return self.encode_return(message.uid, message.value)
        elif kind is Item:
            assert isinstance(message, Item)
            obj = [_ITEM, message.uid, message.value]
        elif kind is Items:
            assert isinstance(message, Items)
            obj = [_ITEMS, message.uid, message.values]
        elif kind is Credit:
            assert isinstance(message, Credit)
            obj = [_CREDIT, message.uid, message.count]
        elif kind is Error:
            assert isinstance(message, Error)
            obj = [_ERROR, message.uid, message.name, message.message, message.traceback]
        elif kind is Cancel:
            assert isinstance(message, Cancel)
            obj = [_CANCEL, message.uid]
        elif kind is Header:
            assert isinstance(message, Header)
            obj = [
                _HEADER,
                PROTOCOL_VERSION,
                message.value,
                _limits(message.max_calls, message.max_size, message.streams),
            ]
        elif kind is Accept:
            assert isinstance(message, Accept)
            obj = [_ACCEPT, _limits(message.max_calls, message.max_size, message.streams)]
        else:  # pragma: no cover - exhaustive over Message
            raise TypeError(f"not a message: {message!r}")
        return self._pack(obj)

    # -- the lean path ----------------------------------------------------------
    #
    # CALL and RETURN are nearly every message a connection carries, and
    # building their message objects cost more than packing or unpacking
    # them (a frozen dataclass of six fields: some 10,000 instructions, as
    # much as everything else the codec does for the frame). The protocol
    # core therefore sends and receives these two without message objects:
    # encode_call() and encode_return() pack from plain arguments, and
    # decode_lean() returns their validated msgpack arrays as they are.
    # encode() and decode() are built on them, so both paths run the same
    # checks.

    def encode_call(
        self,
        uid: int,
        path: str,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        parent: int | None,
    ) -> bytes:
        """The frame of ``Call(uid, path, args, kwargs, parent)``; raises :exc:`EncodeError`."""
        if kwargs:
            if parent is not None:
                return self._pack([_CALL, uid, path, args, kwargs, parent])
            return self._pack([_CALL, uid, path, args, kwargs])
        if parent is not None:
            return self._pack([_CALL, uid, path, args, None, parent], args)
        for item in args:
            if type(item) not in _SCALARS:
                return self._pack([_CALL, uid, path, args])  # checked: may hold a map
        # Most calls: scalars only, nothing to check. _pack(obj, args)
        # inline: one method call fewer saved some 900 instructions per
        # round trip (callgrind). The packer is read, then called: called
        # as a method of this object, a function in its __dict__ is looked
        # up the slow way.
        pack = self._pack_flat
        try:
            return pack([_CALL, uid, path, args])
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer.reset()
            raise _unencodable(exc) from exc

    def encode_return(self, uid: int, value: Any) -> bytes:
        """The frame of ``Return(uid, value)``; raises :exc:`EncodeError`."""
        if type(value) in _SCALARS:
            pack = self._pack_flat  # (see encode_call)
            try:
                return pack([_RETURN, uid, value])  # _pack(), for a scalar
            except (TypeError, ValueError, OverflowError):
                self._packer.reset()  # _pack() raises the error, in its words
        return self._pack([_RETURN, uid, value], value)

    def _pack(self, obj: list[Any], flat: Any = _UNKNOWN) -> bytes:
        """
        Pack ``obj``, refusing what the peer's decoder would refuse.

        ``flat`` is the one part of ``obj`` that may be more than scalars, if
        known; when it is a scalar or a list or tuple of scalars, the frame
        can hold no map, no ext and no deep nesting, and the check for them
        is skipped.
        """
        try:
            frame = self._packer.pack(obj)
        except (TypeError, ValueError, OverflowError) as exc:
            # A failed pack may leave partial output in the packer's buffer.
            self._packer.reset()
            raise _unencodable(exc) from exc
        kind = type(flat)
        if kind in _SCALARS:
            return frame
        if kind is list or kind is tuple:
            for item in flat:
                if type(item) not in _SCALARS:
                    break
            else:
                return frame
        # msgpack packs what its decoder (rightly) refuses: maps with keys
        # other than str and bytes, ext types, and nesting one level deeper
        # than the decoder's stack. Sent, such a frame would make the peer
        # close the connection, so catch it here by decoding the frame back.
        # The byte scans keep that off frames that cannot hold a map or an
        # ext and cannot be that deep (most RPC messages).
        check_packed(frame)
        return frame

    def encode_value(self, value: Any) -> bytes:
        flat = type(value) in _SCALARS  # then it holds no map, no ext, no nesting
        try:
            packed = self._pack_flat(value) if flat else self._packer.pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer.reset()
            raise _unencodable(exc) from exc
        if flat:
            return packed
        # As in encode(), at the depth the value has in an ITEMS frame
        # ([9, uid, [value]]): two arrays deeper than it is on its own.
        if _map_or_ext(packed) is not None or (
            len(packed) >= _VALUE_DEPTH and _containers(packed) >= _VALUE_DEPTH
        ):
            check_packed(b"\x91\x91" + packed)
        return packed

    def encode_items(self, uid: int, values: Sequence[bytes]) -> bytes:
        # Assembled from the values packed already: nothing is packed twice.
        if len(values) == 1:
            return b"".join((_ITEM_START, self._packer.pack(uid), values[0]))
        header = self._packer.pack_array_header(len(values))
        return b"".join((_ITEMS_START, self._packer.pack(uid), header, *values))

    def decode(self, frame: bytes | str) -> Message:
        message = self.decode_lean(frame)
        if type(message) is not list:
            assert not isinstance(message, list)
            return message
        uid = message[1]
        if message[0] == _RETURN:
            return Return(uid, message[2])
        size = len(message)
        return Call(
            uid,
            message[2],
            message[3],
            message[4] if size >= 5 else None,
            message[5] if size == 6 else None,
        )

    def decode_lean(self, frame: bytes | str | memoryview) -> list[Any] | Message:
        """
        :meth:`decode`, but a CALL that is not a stream and a RETURN come back
        as their msgpack arrays, checked as :meth:`decode` checks them:
        ``[CALL_KIND, uid, path, args]``, then optionally ``kwargs`` (a map
        with str keys, or None) and ``parent`` (a call id);
        ``[RETURN_KIND, uid, value]``. Raises :exc:`ProtocolError`.
        """
        size = len(frame)
        if type(frame) is bytes and (
            size <= self._unwalked or (size <= self._inline_size and _wide(frame) is None)
        ):
            # Nearly every frame: unpack() inline, in its simplest case (a
            # small frame with no 16- or 32-bit container header to walk, or
            # too short for the walk to matter: see _UNWALKED_SIZE).
            try:
                limit = self._len_limit
                if limit < 0:  # msgpack's default: the frame's length (two arguments fewer)
                    obj = _unpackb(frame, ext_hook=_refuse_ext, timestamp=3)
                else:
                    obj = _unpackb(
                        frame,
                        ext_hook=_refuse_ext,
                        timestamp=3,
                        max_array_len=limit,
                        max_map_len=limit,
                    )
            except ProtocolError:
                raise
            except Exception as exc:  # msgpack raises ValueError subclasses and others
                raise _undecodable(exc) from exc
        elif isinstance(frame, str):
            raise ProtocolError(CloseCode.UNSUPPORTED_DATA, "text frame on a msgpack connection")
        else:
            obj = unpack(frame, self._max_container_len, self._max_containers)
        if type(obj) is not list or not obj:
            raise _bad("a message must be a non-empty msgpack array")
        kind = obj[0]
        if kind == _RETURN and type(kind) is int:
            if len(obj) == 3:
                uid = obj[1]
                if type(uid) is not int or not 0 < uid <= _MAX_UID:
                    raise _bad(_BAD_UID)
                return obj
        elif kind == _CALL and type(kind) is int:
            size = len(obj)
            if 4 <= size <= 6:
                uid = obj[1]
                if type(uid) is not int or not 0 < uid <= _MAX_UID:
                    raise _bad(_BAD_UID)
                if type(obj[2]) is not str:
                    raise _bad("call path must be a string")
                if type(obj[3]) is not list:
                    raise _bad("call arguments must be an array")
                if size >= 5:
                    kwargs = obj[4]
                    if kwargs is not None:
                        if type(kwargs) is not dict:
                            raise _bad("call keyword arguments must be a map")
                        if not all(type(key) is str for key in kwargs):
                            raise _bad("keyword argument names must be strings")
                    if size == 6:
                        _uid(obj[5])
                return obj
        return self._decode_other(obj)

    def _decode_other(self, obj: list[Any]) -> Message:
        """The messages other than a plain CALL and a RETURN, from their array."""
        kind = obj[0]
        size = len(obj)
        if kind == _ITEM and size == 3 and type(kind) is int:
            return Item(_uid(obj[1]), obj[2])
        if kind == _ITEMS and size == 3 and type(kind) is int:
            values = obj[2]
            if type(values) is not list or not values:
                raise _bad("stream items must be a non-empty array")
            return Items(_uid(obj[1]), values)
        if kind == _CREDIT and size == 3 and type(kind) is int:
            return Credit(_uid(obj[1]), _limit(obj[2], "stream credit"))
        if kind == _STREAM and 6 <= size <= 7 and type(kind) is int:
            path, args, kwargs = obj[2], obj[3], obj[4]
            if type(path) is not str:
                raise _bad("call path must be a string")
            if type(args) is not list:
                raise _bad("call arguments must be an array")
            if kwargs is not None and type(kwargs) is not dict:
                raise _bad("call keyword arguments must be a map")
            if kwargs is not None and not all(type(key) is str for key in kwargs):
                raise _bad("keyword argument names must be strings")
            credit = _limit(obj[5], "stream credit")
            parent = _uid(obj[6]) if size == 7 else None
            return Call(_uid(obj[1]), path, args, kwargs or None, parent, credit)
        if kind == _ERROR and size == 5 and type(kind) is int:
            name, text, trace = obj[2], obj[3], obj[4]
            if type(name) is not str or type(text) is not str:
                raise _bad("error name and message must be strings")
            if trace is not None and type(trace) is not str:
                raise _bad("error traceback must be a string or nil")
            return Error(_uid(obj[1]), name, text, trace)
        if kind == _CANCEL and size == 2 and type(kind) is int:
            return Cancel(_uid(obj[1]))
        if kind == _HEADER and size == 4 and type(kind) is int:
            if obj[1] != PROTOCOL_VERSION or type(obj[1]) is not int:
                raise _bad(f"unsupported protocol version {obj[1]!r}")
            return Header(obj[2], *_read_limits(obj[3]))
        if kind == _ACCEPT and size == 2 and type(kind) is int:
            return Accept(*_read_limits(obj[1]))
        raise _bad("unknown message kind or wrong number of fields")


def check_packed(frame: bytes) -> None:
    """
    Raise :exc:`EncodeError` if ``frame``, as msgpack packed it, would be
    refused by :func:`unpack`: a map key other than str or bytes, an ext
    type, nesting deeper than the decoder's stack. Cheap byte scans keep the
    check off frames that cannot hold any of those (most RPC messages).
    """
    if _MAP_OR_EXT.search(frame) is not None or (
        len(frame) >= _DECODER_DEPTH and _containers(frame) >= _DECODER_DEPTH
    ):
        try:
            unpack(frame, None, None)
        except ProtocolError as exc:
            raise EncodeError(
                "cannot encode: map keys must be str or bytes, ext types are not"
                f" allowed, and values nest at most {_DECODER_DEPTH} deep"
            ) from exc


def unpack(
    frame: bytes | memoryview, limit: int | None = None, most: int | None = MAX_CONTAINERS
) -> Any:
    """
    Decode one msgpack value from untrusted ``frame``, strictly.

    The checks of :meth:`MsgpackCodec.decode` before the message's shape:
    the structural walk of :mod:`~wsrpc._msgpack_scan`, at most ``limit``
    elements per container and ``most`` containers in all, str or bytes map
    keys, no ext type but the timestamp. Raises :exc:`ProtocolError`.
    """
    if _WIDE_CONTAINER.search(frame) is not None:
        # Frames that can hold many elements are walked before any
        # object is built (see _msgpack_scan): declared lengths, depth
        # and the whole structure. A frame broken at its very end would
        # otherwise first cost its full decoded size (up to ~70 bytes
        # per byte, for empty arrays) and the time to build it.
        try:
            check_declared(frame)
        except Refused as exc:
            raise ProtocolError(CloseCode.INVALID_PAYLOAD, str(exc)) from None
    # msgpack builds no reference cycles, but every 700 containers it
    # builds set off a garbage collection that walks them all again: a
    # frame of 800,000 small arrays took 385 ms to decode with the
    # collector on, 68 ms with it off. Large frames decode with it off.
    collecting = len(frame) > _NO_GC_ABOVE and gc.isenabled()
    if collecting:
        gc.disable()
    try:
        if most is not None and len(frame) > most:
            # A frame long enough to hold more containers than the
            # budget: count them as msgpack builds them, and stop at the
            # first one over it. The hook runs once per array or map, so
            # a frame of a few large values (a 1 MiB blob) costs what
            # plain decoding costs; scanning the bytes for what could
            # start a container cost 5 ms per MiB (and blobs look full
            # of them).
            obj = _unpack_counted(frame, limit, most)
        elif limit is None:
            obj = msgpack.unpackb(
                frame, raw=False, strict_map_key=True, ext_hook=_refuse_ext, timestamp=3
            )
        else:
            obj = msgpack.unpackb(
                frame,
                raw=False,
                strict_map_key=True,
                ext_hook=_refuse_ext,
                timestamp=3,
                max_array_len=limit,
                max_map_len=limit,
            )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises ValueError subclasses and others
        raise _undecodable(exc) from exc
    finally:
        if collecting:
            gc.enable()
    return obj


def _flat_packer(use_msgspec: bool | None) -> Callable[[Any], bytes] | None:
    """
    msgspec's msgpack encoder, as ``use_msgspec`` asks (see :class:`MsgpackCodec`).

    For scalars (None, bool, int, float, str, bytes) and lists and tuples of
    them, it writes what msgpack's packer writes, byte for byte (tested), and
    raises the same exceptions for what neither can pack (an int beyond 64
    bits, a str with a lone surrogate).
    """
    if use_msgspec is False:
        return None
    try:
        from msgspec.msgpack import Encoder
    except ImportError:
        if use_msgspec:
            raise ImportError("use_msgspec=True needs msgspec: pip install 'wsrpc[fast]'") from None
        return None
    return Encoder().encode


def _unencodable(exc: Exception) -> EncodeError:
    return EncodeError(f"cannot encode with msgpack: {exc}")


def _undecodable(exc: Exception) -> ProtocolError:
    return ProtocolError(CloseCode.INVALID_PAYLOAD, f"undecodable msgpack ({type(exc).__name__})")


def _unpack_counted(frame: bytes | memoryview, limit: int | None, most: int) -> Any:
    """Decode ``frame``, refusing it (1009) at its container number ``most + 1``."""
    left = most

    def count(container: Any) -> Any:
        # msgpack calls this once per array and map it built, innermost first.
        nonlocal left
        left -= 1
        if left < 0:
            raise ProtocolError(
                CloseCode.MESSAGE_TOO_BIG, f"more than {most} arrays and maps in one message"
            )
        return container

    extra: dict[str, Any] = {}
    if limit is not None:
        extra = {"max_array_len": limit, "max_map_len": limit}
    return msgpack.unpackb(
        frame,
        raw=False,
        strict_map_key=True,
        ext_hook=_refuse_ext,
        timestamp=3,
        list_hook=count,
        object_hook=count,
        **extra,
    )


def _limits(max_calls: int | None, max_size: int | None, streams: int) -> dict[str, int]:
    limits = {}
    if max_calls is not None:
        limits["calls"] = max_calls
    if max_size is not None:
        limits["size"] = max_size
    if streams:
        limits["streams"] = int(streams)
    return limits


def _read_limits(value: object) -> tuple[int | None, int | None, int]:
    # Unknown keys are ignored so that later versions can add limits (as
    # "streams" was added: a peer without it never reads it).
    if type(value) is not dict:
        raise _bad("limits must be a map")
    assert isinstance(value, dict)
    calls, size, streams = value.get("calls"), value.get("size"), value.get("streams")
    return (
        None if calls is None else _limit(calls, "limits.calls"),
        None if size is None else _limit(size, "limits.size"),
        0 if streams is None else _limit(streams, "limits.streams"),
    )


CodecName = Literal["msgpack", "tgrid"]
"""The names ``codec=`` accepts."""


def make_codec(spec: CodecName | Codec) -> Codec:
    """The codec ``spec`` names, or ``spec`` itself when it is a codec object."""
    if isinstance(spec, str):
        if spec == "msgpack":
            return MsgpackCodec()
        if spec == "tgrid":
            return TgridCodec()
        raise ValueError(f"unknown codec {spec!r}; use 'msgpack' or 'tgrid'")
    return spec
