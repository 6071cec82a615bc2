"""
The backplane's messages: what nodes of one application say to each other.

Every message is one msgpack array, ``[kind, sender_slot, request, ...]``,
published on a channel of the backplane (see ``docs/protocol.md``, "Between
nodes"). Nothing else ever crosses it: no pickle, no ext types, no classes.

:func:`decode` treats a message like a frame from a client: at most
``max_size`` bytes, the same structural walk and limits as
:class:`~wsrpc.codecs.MsgpackCodec` (:func:`~wsrpc.codecs.unpack`), then
every field's type and range. Anything else raises :exc:`ProtocolError`,
which the node logs at INFO and drops: a hostile message on the channel
cannot crash a node.

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from ..codecs import check_packed, encode_default, unpack
from ..exceptions import (
    BackplaneError,
    ConnectionClosedError,
    EncodeError,
    ProtocolError,
    RemoteError,
    RpcTimeoutError,
    StateError,
)
from ..messages import CloseCode

__all__ = [
    "ABSENT",
    "Broadcast",
    "Call",
    "Cancel",
    "Disconnect",
    "Failure",
    "Message",
    "Outcomes",
    "Result",
    "SLOTS",
    "decode",
    "encode",
    "EPOCH_MS",
    "IdMaker",
    "error_of",
    "slot_of",
    "exception_of",
]

SLOTS = 1024
"""Node slots: 10 bits of every connection id."""

_MAX_ID = 2**63 - 1
_MAX_TIMEOUT_MS = 2**31  # some 24 days: more is a mistake, or hostile

# Message kinds: the first element of every message.
CALL, CANCEL, RESULT, FAILURE, DISCONNECT, BROADCAST, OUTCOMES = range(1, 8)

# Error kinds of a Failure, and of a failed outcome.
ABSENT = "absent"
"""The node holds no open connection with that id."""
_KINDS = frozenset(["remote", "closed", ABSENT, "timeout", "encode", "state", "backplane"])


@dataclass(frozen=True, slots=True)
class Call:
    """Run ``path`` on connection ``connection_id`` (held by the receiver)."""

    sender: int
    request: int
    connection_id: int
    path: str
    args: list[Any]
    kwargs: dict[str, Any] | None
    timeout_ms: int | None


@dataclass(frozen=True, slots=True)
class Cancel:
    """The sender gave up on its request ``request``: cancel it."""

    sender: int
    request: int


@dataclass(frozen=True, slots=True)
class Result:
    """Request ``request`` succeeded with ``value``."""

    sender: int
    request: int
    value: Any


@dataclass(frozen=True, slots=True)
class Failure:
    """Request ``request`` failed; ``error`` as :func:`error_of` made it."""

    sender: int
    request: int
    error: list[Any]


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close connection ``connection_id`` with ``code`` and ``reason``."""

    sender: int
    request: int
    connection_id: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Broadcast:
    """
    Run ``path`` on every local member of ``group`` (None: every connection).

    ``want_outcomes`` false is a notification: nothing is answered.
    """

    sender: int
    request: int
    group: str | None
    path: str
    args: list[Any]
    kwargs: dict[str, Any] | None
    timeout_ms: int
    want_outcomes: bool


@dataclass(frozen=True, slots=True)
class Outcomes:
    """
    Part of a node's answer to broadcast ``request``: ``[id, value]`` for a
    member that answered, ``[id, None, error]`` for one that failed; ``last``
    marks the node's final part.
    """

    sender: int
    request: int
    outcomes: list[list[Any]]
    last: bool


Message = Call | Cancel | Result | Failure | Disconnect | Broadcast | Outcomes


# -- errors -------------------------------------------------------------------


def error_of(exc: BaseException) -> list[Any]:
    """``[kind, code, name, message, traceback]``: an exception as data."""
    if isinstance(exc, RemoteError):
        return ["remote", 0, exc.name, exc.message, exc.traceback]
    if isinstance(exc, ConnectionClosedError):
        return ["closed", exc.code, "", exc.reason, None]
    if isinstance(exc, RpcTimeoutError):
        return ["timeout", 0, "", str(exc), None]
    if isinstance(exc, EncodeError):
        return ["encode", 0, "", str(exc), None]
    if isinstance(exc, StateError):
        return ["state", 0, "", str(exc), None]
    if isinstance(exc, BackplaneError):
        return ["backplane", 0, "", str(exc), None]
    return ["remote", 0, type(exc).__name__, str(exc), None]


def exception_of(error: list[Any]) -> Exception:
    """The exception :func:`error_of` described (``error`` is validated)."""
    kind, code, name, message, traceback = error
    if kind == "remote":
        return RemoteError(name, message, traceback)
    if kind == "closed":
        return ConnectionClosedError(code, message)
    if kind == ABSENT:
        return ConnectionClosedError(CloseCode.ABNORMAL, message)
    if kind == "timeout":
        return RpcTimeoutError(message)
    if kind == "encode":
        return EncodeError(message)
    if kind == "state":
        return StateError(message)
    return BackplaneError(message)


def _check_error(error: object) -> list[Any]:
    if (
        type(error) is not list
        or len(error) != 5
        or error[0] not in _KINDS
        or type(error[1]) is not int
        or not 0 <= error[1] < 5000
        or type(error[2]) is not str
        or type(error[3]) is not str
        or (error[4] is not None and type(error[4]) is not str)
    ):
        raise _bad("malformed error")
    return error


# -- encoding -------------------------------------------------------------------


def encode(message: Message, max_size: int) -> bytes:
    """
    ``message`` as msgpack bytes.

    Raises:
        EncodeError: a value cannot be encoded, or the message is larger
            than ``max_size`` bytes.
    """
    kind = type(message)
    obj: list[Any]
    if kind is Call:
        assert isinstance(message, Call)
        obj = [CALL, message.sender, message.request, message.connection_id, message.path,
               message.args, message.kwargs, message.timeout_ms]  # fmt: skip
    elif kind is Cancel:
        assert isinstance(message, Cancel)
        obj = [CANCEL, message.sender, message.request]
    elif kind is Result:
        assert isinstance(message, Result)
        obj = [RESULT, message.sender, message.request, message.value]
    elif kind is Failure:
        assert isinstance(message, Failure)
        obj = [FAILURE, message.sender, message.request, message.error]
    elif kind is Disconnect:
        assert isinstance(message, Disconnect)
        obj = [DISCONNECT, message.sender, message.request, message.connection_id,
               message.code, message.reason]  # fmt: skip
    elif kind is Broadcast:
        assert isinstance(message, Broadcast)
        obj = [BROADCAST, message.sender, message.request, message.group, message.path,
               message.args, message.kwargs, message.timeout_ms, message.want_outcomes]  # fmt: skip
    elif kind is Outcomes:
        assert isinstance(message, Outcomes)
        obj = [OUTCOMES, message.sender, message.request, message.outcomes, message.last]
    else:  # pragma: no cover - exhaustive over Message
        raise TypeError(f"not a backplane message: {message!r}")
    try:
        data: bytes = msgpack.packb(obj, use_bin_type=True, datetime=True, default=encode_default)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"cannot encode with msgpack: {exc}") from exc
    if len(data) > max_size:
        raise EncodeError(f"message of {len(data)} bytes is over the limit of {max_size} bytes")
    check_packed(data)
    return data


# -- decoding -------------------------------------------------------------------


def _bad(what: str) -> ProtocolError:
    return ProtocolError(CloseCode.PROTOCOL_ERROR, f"backplane message: {what}")


def _slot(value: object) -> int:
    if type(value) is not int or not 0 <= value < SLOTS:
        raise _bad("sender must be a node slot")
    return value


def _positive(value: object, what: str) -> int:
    if type(value) is not int or not 0 < value <= _MAX_ID:
        raise _bad(f"{what} must be an integer in [1, 2**63)")
    return value


def _id(value: object) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_ID:
        raise _bad("connection id must be an integer in [0, 2**63)")
    return value


def _timeout(value: object, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if type(value) is not int or not 0 < value <= _MAX_TIMEOUT_MS:
        raise _bad("timeout must be a positive number of milliseconds")
    return value


def _call_parts(path: object, args: object, kwargs: object) -> tuple[str, list[Any], Any]:
    if type(path) is not str or not path or len(path) > 1024:
        raise _bad("path must be a non-empty string")
    if type(args) is not list:
        raise _bad("arguments must be an array")
    if kwargs is not None and (
        type(kwargs) is not dict or not all(type(key) is str for key in kwargs)
    ):
        raise _bad("keyword arguments must be a map with string keys")
    return path, args, kwargs


def decode(data: object, max_size: int) -> Message:
    """
    The message in ``data``, checked like a frame from a client.

    Raises:
        ProtocolError: ``data`` is not bytes, is over ``max_size``, is not
            valid msgpack within the limits, or not a well-formed message.
    """
    if type(data) is not bytes:
        raise _bad("not bytes")
    if len(data) > max_size:
        raise _bad(f"{len(data)} bytes, over the limit of {max_size}")
    obj = unpack(data)
    if type(obj) is not list or len(obj) < 3:
        raise _bad("must be an array of at least 3 elements")
    kind, size = obj[0], len(obj)
    if type(kind) is not int:
        raise _bad("kind must be an integer")
    sender = _slot(obj[1])
    request = _positive(obj[2], "request")
    if kind == CALL and size == 8:
        path, args, kwargs = _call_parts(obj[4], obj[5], obj[6])
        return Call(sender, request, _id(obj[3]), path, args, kwargs, _timeout(obj[7], True))
    if kind == CANCEL and size == 3:
        return Cancel(sender, request)
    if kind == RESULT and size == 4:
        return Result(sender, request, obj[3])
    if kind == FAILURE and size == 4:
        return Failure(sender, request, _check_error(obj[3]))
    if kind == DISCONNECT and size == 6:
        code, reason = obj[4], obj[5]
        if type(code) is not int or not 1000 <= code < 5000:
            raise _bad("close code must be an integer in [1000, 5000)")
        if type(reason) is not str or len(reason.encode()) > 123:
            raise _bad("close reason must be a string of at most 123 bytes")
        return Disconnect(sender, request, _id(obj[3]), code, reason)
    if kind == BROADCAST and size == 9:
        group = obj[3]
        if group is not None and type(group) is not str:
            raise _bad("group must be a string or nil")
        path, args, kwargs = _call_parts(obj[4], obj[5], obj[6])
        timeout = _timeout(obj[7], False)
        assert timeout is not None
        if type(obj[8]) is not bool:
            raise _bad("want_outcomes must be a boolean")
        return Broadcast(sender, request, group, path, args, kwargs, timeout, obj[8])
    if kind == OUTCOMES and size == 5:
        outcomes, last = obj[3], obj[4]
        if type(outcomes) is not list or type(last) is not bool:
            raise _bad("outcomes must be an array, last a boolean")
        for entry in outcomes:
            if type(entry) is not list or len(entry) not in (2, 3):
                raise _bad("an outcome must be [id, value] or [id, nil, error]")
            _id(entry[0])
            if len(entry) == 3:
                if entry[1] is not None:
                    raise _bad("a failed outcome has no value")
                _check_error(entry[2])
        return Outcomes(sender, request, outcomes, last)
    raise _bad("unknown kind or wrong number of fields")


# -- connection ids -------------------------------------------------------------

EPOCH_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z in Unix milliseconds: time zero of connection ids."""

_SEQUENCE_BITS = 12
_SLOT_BITS = 10
_TIME_BITS = 41


def slot_of(connection_id: int) -> int:
    """The node slot inside a connection id: where that connection lives."""
    return (connection_id >> _SEQUENCE_BITS) & (SLOTS - 1)


class IdMaker:
    """
    Snowflake-style ids: 41 bits of milliseconds since :data:`EPOCH_MS`,
    10 bits of node slot, 12 bits of sequence: ``0 <= id < 2**63``.

    Unique across an application as long as one node holds a slot at a
    time (Redis sees to that) and the clocks of the nodes agree within the
    slot's time to live; never going back, whatever the clock does: the
    time used is never below the last one, and a 4,097th id in one
    millisecond borrows the next one.
    """

    __slots__ = ("_last", "_sequence", "slot")

    def __init__(self, slot: int) -> None:
        if not 0 <= slot < SLOTS:
            raise ValueError(f"slot must be in [0, {SLOTS})")
        self.slot = slot
        self._last = -1
        self._sequence = 0

    def next(self, now_ms: int) -> int:
        """A new id, at Unix time ``now_ms`` (milliseconds)."""
        elapsed = max(now_ms - EPOCH_MS, self._last, 0)
        if elapsed == self._last:
            self._sequence += 1
            if self._sequence >> _SEQUENCE_BITS:
                elapsed += 1  # borrowed from the next millisecond
                self._sequence = 0
        else:
            self._sequence = 0
        if elapsed >> _TIME_BITS:  # pragma: no cover - in the year 2095
            raise OverflowError("connection ids are exhausted (41 bits of milliseconds)")
        self._last = elapsed
        return (
            (elapsed << (_SLOT_BITS + _SEQUENCE_BITS))
            | (self.slot << _SEQUENCE_BITS)
            | (self._sequence)
        )
