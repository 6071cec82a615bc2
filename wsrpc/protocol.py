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
    send_credit()        ── Credit ──▶        receive() -> Credit
    receive() -> Return/Error ◀──             send_return(None) / send_error()

The core counts the credit of each of our streams: an Item beyond what we
granted is a protocol violation (1002).

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
from collections.abc import Sequence
from typing import Any

from .codecs import CALL_KIND, RETURN_KIND, Codec, MsgpackCodec
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
    Message,
    Return,
)

__all__ = ["CALL_KIND", "RETURN_KIND", "Phase", "RpcProtocol", "Side"]


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
        self.peer_streams = False
        """Whether the peer announced that it takes stream calls."""
        self.streams: bool = getattr(codec, "supports_streams", False)
        """Whether this end takes stream calls (announced in its handshake message)."""
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
        self.phase = Phase.OPEN
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
        self.phase = Phase.OPEN
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
        if self.phase is not Phase.OPEN:
            raise StateError("send_call() before the handshake completed")
        if credit is not None and not self.peer_streams:
            raise StateError(self.no_streams_reason(path))
        uid = self._next_uid
        lean = self._lean
        if lean is not None and credit is None:
            frame: bytes | str = lean.encode_call(uid, path, args, kwargs, parent)
        else:
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

    def receive(self, frame: bytes | str) -> Call | Return | Error | Cancel | Item | Credit | None:
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
        self, frame: bytes | str
    ) -> list[Any] | Call | Return | Error | Cancel | Item | Credit | None:
        """
        :meth:`receive`, but with the codec's lean path when it has one
        (:meth:`~wsrpc.codecs.MsgpackCodec.decode_lean`): a call that is not
        a stream comes as the list ``[CALL_KIND, uid, path, args]``, then
        optionally ``kwargs`` (None or a dict) and ``parent``; a return as
        ``[RETURN_KIND, uid, value]``. Same checks, same state, same errors
        as :meth:`receive`, without building a message object for the two
        messages of nearly every call.
        """
        if self.phase is not Phase.OPEN:
            raise StateError("receive() before the handshake completed")
        lean = self._lean
        if lean is None:
            return self._received(self.codec.decode(frame))
        message = lean.decode_lean(frame)
        if type(message) is not list:
            assert not isinstance(message, list)
            return self._received(message)
        uid = message[1]
        if message[0] == RETURN_KIND:
            outgoing = self.outgoing
            if uid in outgoing:
                outgoing.discard(uid)
                if self.credit:
                    self.credit.pop(uid, None)
                return message
            return None
        # CALL_KIND
        if uid in self.incoming:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"call id {uid} reused while running")
        self.incoming.add(uid)
        return message

    def _received(self, message: Message) -> Call | Return | Error | Cancel | Item | Credit | None:
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
