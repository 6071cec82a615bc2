"""
TGrid's wire protocol: the codec that lets wsrpc talk to TGrid peers, sans I/O.

`TGrid <https://github.com/samchon/tgrid>`_ (the ``tgrid`` npm package, 1.x)
sends one JSON document per WebSocket **text** frame. :class:`TgridCodec` maps
wsrpc's messages (:mod:`wsrpc.messages`) onto those documents:

=========== ================================================================
message     frame
=========== ================================================================
Header      ``{"header":X}``. TGrid sends ``{}`` for an ``undefined`` header;
            it decodes to ``Header(None)``. TGrid has no limits: both are
            None.
Accept      ``1``: the single character (a JSON number, not the string
            ``"1"``), TGrid's "open" state. Only this exact text is an
            Accept; TGrid's client accepts nothing else.
Call        ``{"uid":1,"listener":"a.b","parameters":[{"type":"number",
            "value":1}]}``. ``type`` is JavaScript's ``typeof`` of the value
            (``"object"`` for null, lists and dicts); a receiver only reads
            ``value``. A parameter of type ``"undefined"``, or without
            ``value``, decodes to None. TGrid has no keyword arguments: a
            Call with ``kwargs`` cannot be encoded.
Return      ``{"uid":1,"success":true,"value":V}``. A None result is sent
            without ``value``, as TGrid does for ``void`` (so a JavaScript
            caller sees ``undefined``, not ``null``); a missing ``value``
            decodes to None.
Error       ``{"uid":1,"success":false,"value":{"name":N,"message":M}}``,
            plus ``"stack"`` when the error carries a traceback. TGrid may
            send any thrown value: a non-object becomes ``Error(name="Error",
            message=...)`` with the string itself or the value's JSON as the
            message (empty when there is no value: ``throw undefined``); a
            missing name or message defaults to ``"Error"``/``""``, and a
            non-string one becomes its JSON.
Cancel      not part of TGrid: never encoded (``supports_cancel`` is False).
Streams     not part of TGrid: a Call with ``credit``, an Item, Items or a
            Credit is never encoded (``supports_streams`` is False).
=========== ================================================================

A document is a Call when its ``listener`` is present and truthy (as in
TGrid), else a Return or an Error when it has a ``uid``, chosen by
``success``; else a Header when it has ``header`` or is ``{}``. Unknown
fields are ignored.

Values travel in JSON's data model: None, bool, int, float, str, lists and
dicts. Tuples are sent as lists and dict keys that are ints, floats, bools or
None become strings, as ``JSON.stringify`` does; anything else (bytes, sets,
NaN, infinities, other objects) is an :exc:`~wsrpc.exceptions.EncodeError`.
JavaScript numbers are doubles: integers beyond 2**53 lose precision there.

Decoding is strict and raises :exc:`~wsrpc.exceptions.ProtocolError` with
the close code to use: 1003 for a binary frame; 1007 for text that is not
JSON, uses ``NaN``/``Infinity``, has a number too large (an integer of more
than 4300 digits, a float that overflows) or nests deeper than
:data:`MAX_DEPTH`; 1002 for JSON of the wrong shape.

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any, NoReturn

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

__all__ = ["TgridCodec"]

MAX_DEPTH = 256
"""Deepest nesting of arrays and objects in one frame, the frame itself included."""

_MAX_UID = 2**53 - 1
"""JavaScript's ``Number.MAX_SAFE_INTEGER``: TGrid's uids are doubles."""

_ACCEPT = "1"
_MISSING: Any = object()


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_parse_float)
_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)
_ascii_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=True)

# A JSON string, escapes included.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # the unrolled form: fast
# Every byte but the four brackets, for bytes.translate(None, delete).
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_DELTA = [0] * 256
_DELTA[ord("[")] = _DELTA[ord("{")] = 1
_DELTA[ord("]")] = _DELTA[ord("}")] = -1


def _too_deep(text: str) -> bool:
    """
    Whether the JSON ``text`` nests arrays and objects deeper than MAX_DEPTH.

    Exact for valid JSON. Linear in the length of ``text`` with the inner
    loops in C, and it allocates no object per string of the frame (a frame
    of many short strings would otherwise cost many times its size): the
    text between strings is taken one stretch at a time.
    """
    # A frame cannot nest deeper than it has openings.
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth = 0
    start = 0
    for match in _STRING.finditer(text):
        depth = _deepest(text[start : match.start()], depth)
        if depth < 0:
            return True
        start = match.end()
    return _deepest(text[start:], depth) < 0


def _deepest(stretch: str, depth: int) -> int:
    """The depth after ``stretch`` (JSON outside strings), or -1 past MAX_DEPTH."""
    brackets = stretch.encode("utf-8", "surrogatepass").translate(None, _NOT_BRACKETS)
    if not brackets:
        return depth
    deepest = max(itertools.accumulate(map(_DELTA.__getitem__, brackets), initial=depth))
    if deepest > MAX_DEPTH:
        return -1
    openings = brackets.count(b"[") + brackets.count(b"{")
    return depth + 2 * openings - len(brackets)


def _typeof(value: object) -> str:
    """JavaScript's ``typeof`` of ``value`` once it is decoded from JSON."""
    if value is True or value is False:
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object"


def _bad(what: str) -> ProtocolError:
    return ProtocolError(CloseCode.PROTOCOL_ERROR, what)


def _uid(value: object) -> int:
    # bool is an int subclass: compare the exact type.
    if type(value) is not int or not 0 < value <= _MAX_UID:
        raise _bad("uid must be an integer in [1, 2**53)")
    return value


def _error_text(value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, RecursionError):  # pragma: no cover - decoded JSON
        return repr(value)


def _error(uid: int, value: object) -> Error:
    if type(value) is not dict:
        # A thrown string, number, array or null; nothing at all for undefined.
        return Error(uid, "Error", "" if value is _MISSING else _error_text(value))
    assert isinstance(value, dict)
    name = value.get("name", "Error")
    message = value.get("message", "")
    stack = value.get("stack")
    return Error(
        uid,
        name if type(name) is str else _error_text(name),
        message if type(message) is str else _error_text(message),
        stack if type(stack) is str else None,
    )


class TgridCodec:
    """
    TGrid's JSON protocol (tgrid 1.x), for talking to TGrid peers.

    Stateless: one instance may serve any number of connections. See the
    module documentation for the mapping.
    """

    name = "tgrid"
    binary = False
    supports_cancel = False
    supports_streams = False

    def encode(self, message: Message) -> str:
        kind = type(message)
        obj: dict[str, Any]
        if kind is Call:
            assert isinstance(message, Call)
            if message.credit is not None:
                raise EncodeError("TGrid has no streams")
            if message.kwargs:
                raise EncodeError("TGrid calls take positional arguments only")
            obj = {
                "uid": message.uid,
                "listener": message.path,
                "parameters": [{"type": _typeof(arg), "value": arg} for arg in message.args],
            }
        elif kind is Return:
            assert isinstance(message, Return)
            value = message.value
            if value is None:
                obj = {"uid": message.uid, "success": True}
            else:
                obj = {"uid": message.uid, "success": True, "value": value}
        elif kind is Error:
            assert isinstance(message, Error)
            error = {"name": message.name, "message": message.message}
            if message.traceback is not None:
                error["stack"] = message.traceback
            obj = {"uid": message.uid, "success": False, "value": error}
        elif kind is Header:
            assert isinstance(message, Header)
            obj = {"header": message.value}
        elif kind is Accept:
            return _ACCEPT
        elif kind is Cancel:
            raise EncodeError("TGrid has no cancellation message")
        elif kind is Item or kind is Items or kind is Credit:
            raise EncodeError("TGrid has no streams")
        else:  # pragma: no cover - exhaustive over Message
            raise TypeError(f"not a message: {message!r}")
        try:
            text = _encoder.encode(obj)
            if not text.isascii():
                try:
                    text.encode()
                except UnicodeEncodeError:
                    # Lone surrogates (from "\ud800" escapes or Python code)
                    # cannot go in a text frame as they are: escape them.
                    text = _ascii_encoder.encode(obj)
        except (TypeError, ValueError, RecursionError) as exc:
            raise EncodeError(f"cannot encode as JSON: {exc}") from None
        if _too_deep(text):
            raise EncodeError(f"cannot encode as JSON: nested deeper than {MAX_DEPTH} levels")
        return text

    def decode(self, frame: bytes | str) -> Message:
        if not isinstance(frame, str):
            raise ProtocolError(CloseCode.UNSUPPORTED_DATA, "binary frame on a TGrid connection")
        if frame == _ACCEPT:
            return Accept()
        if _too_deep(frame):
            raise ProtocolError(CloseCode.INVALID_PAYLOAD, f"JSON nested over {MAX_DEPTH} levels")
        try:
            obj = _decoder.decode(frame)
        except RecursionError:
            raise ProtocolError(CloseCode.INVALID_PAYLOAD, "JSON nested too deep") from None
        except ValueError as exc:
            # Not JSON, NaN/Infinity, a float overflow, an integer too long.
            raise ProtocolError(CloseCode.INVALID_PAYLOAD, "invalid JSON") from exc
        if type(obj) is not dict:
            raise _bad("a message must be a JSON object")
        listener = obj.get("listener")
        if listener:
            if type(listener) is not str:
                raise _bad("listener must be a non-empty string")
            uid = _uid(obj.get("uid"))
            parameters = obj.get("parameters")
            if type(parameters) is not list:
                raise _bad("parameters must be an array")
            args: list[Any] = []
            for parameter in parameters:
                if type(parameter) is not dict:
                    raise _bad("each parameter must be an object")
                args.append(
                    None if parameter.get("type") == "undefined" else parameter.get("value")
                )
            return Call(uid, listener, args)
        if "uid" in obj:
            uid = _uid(obj["uid"])
            success = obj.get("success")
            if success is True:
                return Return(uid, obj.get("value"))
            if success is False:
                return _error(uid, obj.get("value", _MISSING))
            raise _bad("success must be a boolean")
        if "header" in obj:
            return Header(obj["header"])
        if not obj:
            return Header(None)  # TGrid's header wrapper for an undefined header
        raise _bad("a message needs a listener, a uid or a header")
