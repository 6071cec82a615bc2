"""
The sans-I/O core of a wsrpc connection.

:class:`RpcProtocol` keeps everything about one connection that is not I/O:
the handshake phase, the call ids in flight in each direction, and the rules
about which message may come when. It is fed frames with the ``receive*``
methods and asked for frames with the ``send*`` methods; it never touches a
socket, an event loop or a future, so it is tested with plain function calls.

Theory of operation::

    client                                  server
    ------                                  ------
    send_header()   ── Header ──▶           receive_header()
                                            (the application decides)
    receive_accept() ◀── Accept ──          send_accept()
                     ◀── close frame ──     (rejection: no message at all)
    ──────────────────────── open ──────────────────────────────────
    send_call()      ── Call ──▶            receive() -> Call
    receive() -> Return/Error ◀──           send_return() / send_error()
    send_cancel()    ── Cancel ──▶          receive() -> Cancel
    (and the same with the sides swapped: calls flow both ways)

    streams (when the peer announced them in its limits):
    send_call(credit=n) ── Call (STREAM) ──▶ receive() -> Call with credit
    receive() -> Item    ◀── Item ──          send_item()  (at most the credit)
    receive() -> Items   ◀── Items ──         pack_item(), send_items()
    send_credit()        ── Credit ──▶        receive() -> Credit
    receive() -> Return/Error ◀──             send_return(None) / send_error()

The core counts the credit of each of our streams: an Item (or one of the
values of an Items) beyond what we granted is a protocol violation (1002).
Items, several items in one frame, go only to a peer that announced streams
version 2 (:attr:`RpcProtocol.batches_items`).

Call ids are chosen by the caller, one counter per direction. The core keeps
the ids of outgoing calls awaiting a reply, so that a reply arriving after
the caller gave up (cancelled, timed out) is dropped quietly, and the ids of
incoming calls still running, so that a peer reusing one is caught.

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

import enum
import traceback
from collections.abc import Callable, Sequence
from typing import Any, cast

from .codecs import CALL_KIND, RETURN_KIND, STREAMS_VERSION, BatchingCodec, Codec, MsgpackCodec
from .exceptions import EncodeError, ProtocolError, RemoteError, StateError
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

__all__ = ["BATCH_BYTES", "CALL_KIND", "RETURN_KIND", "Phase", "RpcProtocol", "Side"]

BATCH_BYTES = 65_536
"""Most bytes of items one ITEMS frame carries (less when the peer's
``max_message_size`` is smaller): a batch is sent once it would grow past it."""
_ITEMS_OVERHEAD = 16
"""Bytes of an ITEM or ITEMS frame besides its values: array, kind, id, count."""


class Side(enum.Enum):
    """Which end of the connection this protocol object is."""

    CLIENT = "client"
    SERVER = "server"


class Phase(enum.Enum):
    """Where the connection stands in its life."""

    HANDSHAKE = "handshake"
    OPEN = "open"


class RpcProtocol:
    """
    The state of one wsrpc connection, without I/O.

    Args:
        side: Whether this end is the client (sends the header) or the server.
        codec: How messages become frames.
        max_calls: How many incoming calls this end runs at once; told to the
            peer during the handshake so that it never sends more.
        max_size: The largest frame this end accepts; told to the peer so that
            it reports an oversized reply as an error instead of sending it.
        send_tracebacks: Whether error replies carry the provider's traceback.
    """

    __slots__ = (
        "_batcher",
        "_lean",
        "_next_uid",
        "_open_lean",
        "codec",
        "credit",
        "incoming",
        "max_calls",
        "max_size",
        "outgoing",
        "peer_max_calls",
        "peer_max_size",
        "peer_streams",
        "phase",
        "send_tracebacks",
        "side",
        "streams",
    )

    def __init__(
        self,
        side: Side,
        codec: Codec,
        *,
        max_calls: int,
        max_size: int | None,
        send_tracebacks: bool = False,
    ) -> None:
        self.side = side
        self.codec = codec
        self.phase = Phase.HANDSHAKE
        self.max_calls = max_calls
        self.max_size = max_size
        self.send_tracebacks = send_tracebacks
        self.peer_max_calls: int | None = None
        """The peer's advertised concurrency limit; None until known or if never told."""
        self.peer_max_size: int | None = None
        """The peer's advertised frame-size limit; None until known or if never told."""
        self.peer_streams = 0
        """The streams the peer announced it takes (0: none; see :class:`~.messages.Header`)."""
        self.streams = 0
        """The streams this end takes, announced in its handshake message: 0
        none, 1 stream calls, 2 also ITEMS (a codec that batches items)."""
        self._batcher: BatchingCodec | None = None
        if getattr(codec, "supports_streams", False):
            self.streams = 1
            if getattr(codec, "supports_item_batches", False):
                self.streams = STREAMS_VERSION
                self._batcher = cast(BatchingCodec, codec)
        self.credit: dict[int, int] = {}
        """Items each of our streams may still receive (ids also in :attr:`outgoing`)."""
        self.outgoing: set[int] = set()
        """Ids of our calls still waiting for their reply."""
        self.incoming: set[int] = set()
        """Ids of the peer's calls we have not answered yet."""
        self._next_uid = 1
        # MsgpackCodec's lean path for calls and returns (see receive_lean);
        # other codecs, subclasses included, go through message objects.
        self._lean = codec if type(codec) is MsgpackCodec else None
        # The same once the connection is open, None before: the hot paths
        # test this one attribute instead of the phase and the codec.
        self._open_lean: MsgpackCodec | None = None

    def _open(self) -> None:
        self.phase = Phase.OPEN
        self._open_lean = self._lean

    # -- handshake -----------------------------------------------------------

    def send_header(self, value: Any) -> bytes | str:
        """Client: the first frame to send. Raises :exc:`EncodeError`."""
        self._expect(Side.CLIENT, Phase.HANDSHAKE)
        return self.codec.encode(Header(value, self.max_calls, self.max_size, self.streams))

    def receive_header(self, frame: bytes | str) -> Header:
        """Server: read the client's first frame. Raises :exc:`ProtocolError`."""
        self._expect(Side.SERVER, Phase.HANDSHAKE)
        message = self.codec.decode(frame)
        if type(message) is not Header:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "the first message must be the header")
        self.peer_max_calls = message.max_calls
        self.peer_max_size = message.max_size
        self.peer_streams = message.streams
        return message

    def send_accept(self) -> bytes | str:
        """Server: the frame that accepts the client; the connection is then open."""
        self._expect(Side.SERVER, Phase.HANDSHAKE)
        self._open()
        return self.codec.encode(Accept(self.max_calls, self.max_size, self.streams))

    def receive_accept(self, frame: bytes | str) -> Accept:
        """Client: read the server's verdict frame. Raises :exc:`ProtocolError`."""
        self._expect(Side.CLIENT, Phase.HANDSHAKE)
        message = self.codec.decode(frame)
        if type(message) is not Accept:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "expected the accept message")
        self.peer_max_calls = message.max_calls
        self.peer_max_size = message.max_size
        self.peer_streams = message.streams
        self._open()
        return message

    def _expect(self, side: Side, phase: Phase) -> None:
        if self.side is not side or self.phase is not phase:
            raise StateError(f"not allowed for a {self.side.value} in phase {self.phase.value}")

    # -- open: sending -------------------------------------------------------

    def send_call(
        self,
        path: str,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        parent: int | None = None,
        credit: int | None = None,
    ) -> tuple[int, bytes | str]:
        """
        Start a call (a stream when ``credit`` is given): return its id and the frame.

        Raises:
            EncodeError: an argument cannot be encoded, or the frame would be
                larger than the peer accepts. No id is consumed then.
            StateError: the handshake has not completed (a misuse), or
                ``credit`` is given and the peer takes no streams.
        """
        uid = self._next_uid
        lean = self._open_lean
        if lean is not None and credit is None:
            frame: bytes | str = lean.encode_call(uid, path, args, kwargs, parent)
        else:
            if self.phase is not Phase.OPEN:
                raise StateError("send_call() before the handshake completed")
            if credit is not None and not self.peer_streams:
                raise StateError(self.no_streams_reason(path))
            frame = self.codec.encode(Call(uid, path, list(args), kwargs, parent, credit))
        limit = self.peer_max_size
        if limit is not None and len(frame) > limit:
            raise EncodeError(
                f"call to {path!r} encodes to {len(frame)} bytes; the peer accepts {limit}"
            )
        self._next_uid = uid + 1
        self.outgoing.add(uid)
        if credit is not None:
            self.credit[uid] = credit
        return uid, frame

    def no_streams_reason(self, path: str) -> str:
        """Why a stream of ``path`` cannot be started on this connection."""
        if not self.streams:
            return f"cannot stream {path!r}: the {self.codec.name} protocol has no streams"
        return f"cannot stream {path!r}: the peer does not support streams"

    def send_item(self, uid: int, value: Any) -> bytes | str:
        """
        One item of incoming stream call ``uid``.

        Raises:
            EncodeError: the value cannot be encoded, or its frame is larger
                than the peer accepts; the caller ends the stream with it.
        """
        frame = self.codec.encode(Item(uid, value))
        limit = self.peer_max_size
        if limit is not None and len(frame) > limit:
            raise EncodeError(f"stream item is {len(frame)} bytes; the consumer accepts {limit}")
        return frame

    @property
    def batches_items(self) -> bool:
        """
        Whether streams to the peer send their items with :attr:`pack_item`
        and :meth:`send_items` (the peer announced streams 2), rather than
        with :meth:`send_item`.
        """
        return self.peer_streams >= 2 and self._batcher is not None

    @property
    def item_limit(self) -> int | None:
        """
        Most bytes of one packed item (:attr:`pack_item`): the peer's frame
        size limit less an ITEM frame's own bytes; None when the peer set none.
        """
        limit = self.peer_max_size
        return None if limit is None else limit - _ITEMS_OVERHEAD

    @property
    def batch_limit(self) -> int:
        """
        Most bytes of packed items that one :meth:`send_items` frame holds,
        unless a single item is larger (up to :attr:`item_limit`):
        :data:`BATCH_BYTES`, less when the peer accepts less.
        """
        limit = self.item_limit
        return BATCH_BYTES if limit is None else min(BATCH_BYTES, limit)

    @property
    def pack_item(self) -> Callable[[Any], bytes]:
        """
        The function that encodes a value as a stream item for
        :meth:`send_items` (only when :attr:`batches_items`); it raises
        :exc:`EncodeError` when the value cannot be encoded. Taken once per
        stream: it is called once per item.

        The caller checks each packed item's size: one over
        :attr:`item_limit` cannot travel (:meth:`item_too_large`).
        """
        assert self._batcher is not None
        return self._batcher.encode_value

    def item_too_large(self, size: int) -> EncodeError:
        """The error ending a stream whose next item packs to ``size`` bytes, too many."""
        size += _ITEMS_OVERHEAD
        return EncodeError(
            f"stream item is {size} bytes; the consumer accepts {self.peer_max_size}"
        )

    def send_items(self, uid: int, packed: Sequence[bytes]) -> bytes:
        """
        The frame of items ``packed`` (from :attr:`pack_item`, at least one)
        of incoming stream call ``uid``: an ITEM for one, an ITEMS for several.
        The caller keeps the sum of their sizes within :attr:`batch_limit`,
        so the frame is within what the peer accepts.
        """
        assert self._batcher is not None
        return self._batcher.encode_items(uid, packed)

    def send_credit(self, uid: int, count: int) -> bytes | str | None:
        """Let the producer of our stream ``uid`` send ``count`` more items; None if it ended."""
        if uid not in self.credit:
            return None
        self.credit[uid] += count
        return self.codec.encode(Credit(uid, count))

    def send_return(self, uid: int, value: Any) -> bytes | str:
        """
        Finish incoming call ``uid`` with ``value``.

        A value that cannot be encoded, or whose frame is larger than the peer
        accepts, becomes an ``EncodeError`` error reply instead: the caller
        learns why and the connection survives.
        """
        self.incoming.discard(uid)
        try:
            lean = self._lean
            if lean is not None:
                frame: bytes | str = lean.encode_return(uid, value)
            else:
                frame = self.codec.encode(Return(uid, value))
        except EncodeError as exc:
            return self._encode_error(uid, "EncodeError", str(exc), None)
        limit = self.peer_max_size
        if limit is not None and len(frame) > limit:
            return self._encode_error(
                uid,
                "EncodeError",
                f"result is {len(frame)} bytes; the caller accepts {limit}",
                None,
            )
        return frame

    def send_error(self, uid: int, exc: BaseException) -> bytes | str:
        """Finish incoming call ``uid`` with the exception it raised."""
        self.incoming.discard(uid)
        if isinstance(exc, RemoteError):
            name, message = exc.name, exc.message
        else:
            name, message = type(exc).__name__, str(exc)
        trace = "".join(traceback.format_exception(exc)) if self.send_tracebacks else None
        return self._encode_error(uid, name, message, trace)

    def send_refusal(self, uid: int, message: str) -> bytes | str:
        """Finish incoming call ``uid`` as refused by the member-access rules."""
        self.incoming.discard(uid)
        return self._encode_error(uid, "MemberAccessError", message, None)

    def _encode_error(self, uid: int, name: str, message: str, trace: str | None) -> bytes | str:
        try:
            frame = self.codec.encode(Error(uid, name, message, trace))
        except EncodeError:
            # Only text can be at fault (lone surrogates): make it valid UTF-8.
            name, message = _valid_text(name), _valid_text(message)
            trace = None if trace is None else _valid_text(trace)
            frame = self.codec.encode(Error(uid, name, message, trace))
        limit = self.peer_max_size
        if limit is None or len(frame) <= limit:
            return frame
        # Too large for the peer (a huge message or traceback): drop the
        # traceback and cut the message to what fits. The smallest limit a
        # peer may set (64 bytes) still fits a 32-byte name and no message.
        name = _cut(name, 32)
        frame = self.codec.encode(Error(uid, name, _cut(message, max(0, limit - 80)), None))
        if len(frame) > limit:
            frame = self.codec.encode(Error(uid, name, "", None))
        return frame

    def send_cancel(self, uid: int) -> bytes | str | None:
        """
        Give up on outgoing call ``uid``; a late reply will be ignored.

        Returns the frame that asks the peer to cancel, or None when the call
        is already answered or the codec cannot express a cancellation.
        """
        if uid not in self.outgoing:
            return None
        self.outgoing.discard(uid)
        self.credit.pop(uid, None)
        if not self.codec.supports_cancel:
            return None
        return self.codec.encode(Cancel(uid))

    def drop_incoming(self, uid: int) -> None:
        """Forget incoming call ``uid`` without answering it (it was cancelled)."""
        self.incoming.discard(uid)

    # -- open: receiving -----------------------------------------------------

    def receive(
        self, frame: bytes | str
    ) -> Call | Return | Error | Cancel | Item | Items | Credit | None:
        """
        Read one frame of an open connection.

        Returns the message to act on, or None for one to drop quietly (a reply
        to a call we gave up on, a cancellation of a call already answered).

        Raises:
            ProtocolError: the frame is undecodable, is a handshake message, or
                reuses the id of a call still running.
        """
        if self.phase is not Phase.OPEN:
            raise StateError("receive() before the handshake completed")
        return self._received(self.codec.decode(frame))

    def receive_lean(
        self, frame: bytes | str | memoryview
    ) -> list[Any] | Call | Return | Error | Cancel | Item | Items | Credit | None:
        """
        :meth:`receive`, but with the codec's lean path when it has one
        (:meth:`~wsrpc.codecs.MsgpackCodec.decode_lean`): a call that is not
        a stream comes as the list ``[CALL_KIND, uid, path, args]``, then
        optionally ``kwargs`` (None or a dict) and ``parent``; a return as
        ``[RETURN_KIND, uid, value]``. Same checks, same state, same errors
        as :meth:`receive`, without building a message object for the two
        messages of nearly every call.
        """
        lean = self._open_lean
        if lean is None:
            if self.phase is not Phase.OPEN:
                raise StateError("receive() before the handshake completed")
            if type(frame) is memoryview:
                frame = bytes(frame)  # other codecs take bytes
            return self._received(self.codec.decode(frame))
        message = lean.decode_lean(frame)
        if type(message) is not list:
            assert not isinstance(message, list)
            return self._received(message)
        uid = message[1]
        if message[0] == RETURN_KIND:
            try:
                self.outgoing.remove(uid)
            except KeyError:
                return None  # a reply to a call we gave up on
            if self.credit:
                self.credit.pop(uid, None)
            return message
        # CALL_KIND
        incoming = self.incoming
        if uid in incoming:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"call id {uid} reused while running")
        incoming.add(uid)
        return message

    def _received(
        self, message: Message
    ) -> Call | Return | Error | Cancel | Item | Items | Credit | None:
        """The state's verdict on ``message``, decoded from a frame of an open connection."""
        kind = type(message)
        if kind is Call:
            assert isinstance(message, Call)
            if message.uid in self.incoming:
                raise ProtocolError(
                    CloseCode.PROTOCOL_ERROR, f"call id {message.uid} reused while running"
                )
            if message.credit is not None and not self.streams:
                raise ProtocolError(
                    CloseCode.PROTOCOL_ERROR, "stream call to a peer without streams"
                )
            self.incoming.add(message.uid)
            return message
        if kind is Return or kind is Error:
            assert isinstance(message, (Return, Error))
            if message.uid in self.outgoing:
                self.outgoing.discard(message.uid)
                if self.credit:
                    self.credit.pop(message.uid, None)
                return message
            return None
        if kind is Item:
            assert isinstance(message, Item)
            left = self.credit.get(message.uid)
            if left is None:
                return None  # a stream we cancelled: items were in flight
            if left <= 0:
                raise ProtocolError(
                    CloseCode.PROTOCOL_ERROR, f"stream {message.uid} sent items beyond its credit"
                )
            self.credit[message.uid] = left - 1
            return message
        if kind is Items:
            assert isinstance(message, Items)
            if self.streams < 2:
                raise ProtocolError(
                    CloseCode.PROTOCOL_ERROR, "ITEMS to a peer that did not announce streams 2"
                )
            left = self.credit.get(message.uid)
            if left is None:
                return None  # a stream we cancelled: items were in flight
            count = len(message.values)
            if count > left:
                raise ProtocolError(
                    CloseCode.PROTOCOL_ERROR, f"stream {message.uid} sent items beyond its credit"
                )
            self.credit[message.uid] = left - count
            return message
        if kind is Credit:
            assert isinstance(message, Credit)
            return message if message.uid in self.incoming else None
        if kind is Cancel:
            assert isinstance(message, Cancel)
            return message if message.uid in self.incoming else None
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"unexpected {kind.__name__} message")


def _valid_text(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def _cut(text: str, size: int) -> str:
    """``text`` as valid UTF-8 of at most ``size`` bytes, cut on a character boundary."""
    data = text.encode("utf-8", "replace")
    if len(data) <= size:
        return data.decode("utf-8")
    return data[: max(0, size - 3)].decode("utf-8", "ignore") + "…"  # "…" is 3 bytes
