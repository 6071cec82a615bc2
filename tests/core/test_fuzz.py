"""
Property tests (hypothesis) of the codecs and of the sans-I/O protocol core.

What they pin down, for :class:`~wsrpc.MsgpackCodec` and
:class:`~wsrpc.tgrid.TgridCodec` alike:

* ``decode()`` of any frame (random bytes or text, frames built from random
  msgpack or JSON structures, valid frames with random mutations, deep
  nesting) either returns a well-typed :data:`~wsrpc.messages.Message` or
  raises :exc:`~wsrpc.exceptions.ProtocolError`, never anything else;
* ``decode(encode(m)) == m`` for valid messages, modulo the documented
  conversions (tuples become lists, bytearray and memoryview become bytes,
  empty kwargs are omitted; TGrid sends no limits);
* ``encode()`` of arbitrary Python values raises only
  :exc:`~wsrpc.exceptions.EncodeError`, and a frame it does produce always
  decodes: the encoder never produces a frame that the decoder refuses;
* :class:`~wsrpc.protocol.RpcProtocol`, driven by random sequences of calls,
  deliveries, replies, cancellations, reused ids and garbage frames between
  a client and a server core, keeps ``outgoing``/``incoming`` equal to a
  model and raises only ``ProtocolError`` (peer's fault) or ``RuntimeError``
  (misuse) as documented.

The coverage-guided counterpart (atheris) is ``fuzz/atheris_codecs.py``.
"""

from __future__ import annotations

import datetime
import enum
import json
import math
from typing import Any, NamedTuple, cast

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from wsrpc import MsgpackCodec
from wsrpc._msgpack_scan import Refused, check_declared
from wsrpc.exceptions import EncodeError, ProtocolError
from wsrpc.messages import Accept, Call, Cancel, CloseCode, Error, Header, Message, Return
from wsrpc.protocol import Phase, RpcProtocol, Side
from wsrpc.tgrid import MAX_DEPTH, TgridCodec

Codec = MsgpackCodec | TgridCodec

MSGPACK_MAX_UID = 2**63 - 1
TGRID_MAX_UID = 2**53 - 1
CLOSE_CODES = {
    CloseCode.PROTOCOL_ERROR,
    CloseCode.UNSUPPORTED_DATA,
    CloseCode.INVALID_PAYLOAD,
}

# Sized so that the whole file runs in about 15 s on a slow machine. No example
# database: nothing is written to the work tree.
FAST = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
QUICK = settings(FAST, max_examples=50)

# msgpack's timestamp (ext -1); the stubs in stubs/msgpack do not declare it.
Timestamp: Any = cast(Any, msgpack).Timestamp

CODECS = [pytest.param(MsgpackCodec, id="msgpack"), pytest.param(TgridCodec, id="tgrid")]


def make(kind: type[Codec]) -> Codec:
    return kind()


# -- checks ---------------------------------------------------------------------


def check_value(value: object, codec: Codec) -> None:
    """``value`` is plain data of the codec's value model, at any depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is list:
            assert isinstance(item, list)
            stack.extend(item)
        elif kind is dict:
            assert isinstance(item, dict)
            allowed: tuple[type, ...] = (str, bytes) if codec.binary else (str,)
            assert all(type(key) in allowed for key in item), item
            stack.extend(item.values())
        else:
            plain: tuple[type, ...] = (type(None), bool, int, float, str)
            if codec.binary:
                # msgpack's timestamp arrives as an aware datetime, in UTC.
                assert kind in (*plain, bytes, datetime.datetime), kind
                if kind is datetime.datetime:
                    assert isinstance(item, datetime.datetime) and item.tzinfo is datetime.UTC
            else:
                assert kind in plain, kind


def check_uid(uid: object, codec: Codec) -> None:
    assert type(uid) is int
    assert 1 <= uid <= (MSGPACK_MAX_UID if codec.binary else TGRID_MAX_UID)


def check_limit(limit: object) -> None:
    assert limit is None or (type(limit) is int and limit >= 1)


def check_message(message: object, codec: Codec) -> None:
    """``message`` is a Message whose fields have the documented types."""
    if isinstance(message, Header):
        check_value(message.value, codec)
        check_limit(message.max_calls)
        check_limit(message.max_size)
    elif isinstance(message, Accept):
        check_limit(message.max_calls)
        check_limit(message.max_size)
    elif isinstance(message, Call):
        check_uid(message.uid, codec)
        assert type(message.path) is str
        assert type(message.args) is list
        check_value(message.args, codec)
        if message.kwargs is not None:
            assert type(message.kwargs) is dict
            assert all(type(key) is str for key in message.kwargs)
            check_value(message.kwargs, codec)
    elif isinstance(message, Return):
        check_uid(message.uid, codec)
        check_value(message.value, codec)
    elif isinstance(message, Error):
        check_uid(message.uid, codec)
        assert type(message.name) is str and type(message.message) is str
        assert message.traceback is None or type(message.traceback) is str
    else:
        assert isinstance(message, Cancel), message
        assert codec.supports_cancel
        check_uid(message.uid, codec)


def decode_or_refuse(codec: Codec, frame: bytes | str) -> Message | None:
    """Decode: a well-typed message, or ProtocolError with a close code; nothing else."""
    try:
        message = codec.decode(frame)
    except ProtocolError as exc:
        assert exc.code in CLOSE_CODES, exc.code
        assert isinstance(exc.reason, str)
        return None
    check_message(message, codec)
    return message


def same(a: object, b: object) -> bool:
    """Deep equality that also compares types (True != 1, 1.0 != 1, "a" != b"a")."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        assert isinstance(b, float)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


def wire_form(value: Any) -> Any:
    """What a value the codecs accept arrives as: the documented conversions."""
    if isinstance(value, (list, tuple)):
        return [wire_form(item) for item in value]
    if isinstance(value, dict):
        return {
            bytes(k) if isinstance(k, memoryview) else k: wire_form(v) for k, v in value.items()
        }
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def expected(message: Message, codec: Codec) -> Message:
    """The message ``decode(encode(message))`` must give."""
    if isinstance(message, Header):
        if codec.binary:
            return Header(wire_form(message.value), message.max_calls, message.max_size)
        return Header(wire_form(message.value))  # TGrid has no limits
    if isinstance(message, Accept):
        return message if codec.binary else Accept()
    if isinstance(message, Call):
        kwargs = wire_form(message.kwargs) if message.kwargs else None
        return Call(message.uid, message.path, wire_form(message.args), kwargs)
    if isinstance(message, Return):
        return Return(message.uid, wire_form(message.value))
    return message


def same_message(a: Message, b: Message) -> bool:
    if type(a) is not type(b):
        return False
    fields = type(a).__slots__
    return all(same(getattr(a, name), getattr(b, name)) for name in fields)


# -- strategies: valid values and messages --------------------------------------

text = st.text(max_size=20)
# Lone surrogates: a str can hold them, UTF-8 cannot.
any_text = st.text(st.one_of(st.characters(), st.characters(codec=None, categories=["Cs"])))


def msgpack_values(*, nan: bool = False) -> st.SearchStrategy[Any]:
    """msgpack's value model, with the conversions the encoder makes."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=nan),
        text,
        st.binary(max_size=20),
        st.binary(max_size=8).map(bytearray),
        st.binary(max_size=8).map(lambda data: memoryview(data)),
    )
    keys = st.one_of(text, st.binary(max_size=8))
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.lists(children, max_size=4).map(tuple),
            st.dictionaries(keys, children, max_size=4),
        ),
        max_leaves=12,
    )


def json_values() -> st.SearchStrategy[Any]:
    """JSON's value model (TGrid): no bytes, no NaN or infinities; any str."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**64), 2**64),
        st.floats(allow_nan=False, allow_infinity=False),
        any_text,
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.lists(children, max_size=4).map(tuple),
            st.dictionaries(any_text, children, max_size=4),
        ),
        max_leaves=12,
    )


def limits() -> st.SearchStrategy[int | None]:
    return st.none() | st.integers(1, 2**63)


@st.composite
def valid_messages(draw: st.DrawFn, kind: type[Codec]) -> Message:
    binary = kind is MsgpackCodec
    values = msgpack_values() if binary else json_values()
    uid = st.integers(1, MSGPACK_MAX_UID if binary else TGRID_MAX_UID)
    strings = text if binary else any_text
    which = draw(st.sampled_from(["header", "accept", "call", "return", "error", "cancel"]))
    if which == "header":
        return Header(draw(values), draw(limits()), draw(limits()))
    if which == "accept":
        return Accept(draw(limits()), draw(limits()))
    if which == "call":
        kwargs = (
            draw(st.none() | st.dictionaries(text, values, max_size=3))
            if binary
            else draw(st.none() | st.just({}))
        )
        # A TGrid listener must be truthy; the driver never sends an empty path.
        path = draw(strings if binary else strings.filter(bool))
        return Call(draw(uid), path, draw(st.lists(values, max_size=4)), kwargs)
    if which == "return":
        return Return(draw(uid), draw(values))
    if which == "error":
        return Error(draw(uid), draw(strings), draw(strings), draw(st.none() | strings))
    if not binary:
        return Return(draw(uid), draw(values))  # TGrid has no Cancel
    return Cancel(draw(uid))


# -- strategies: arbitrary Python values -----------------------------------------


class Color(enum.IntEnum):
    RED = 1


class Mood(enum.StrEnum):
    CALM = "calm"


class Point(NamedTuple):
    x: int
    y: int


class Opaque:
    pass


def anything() -> st.SearchStrategy[Any]:
    """Python values a provider might return, most of them not plain data."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),  # out of msgpack's range too
        st.floats(),  # NaN and infinities too
        any_text,
        st.binary(max_size=8),
        st.binary(max_size=8).map(bytearray),
        st.binary(max_size=8).map(lambda data: memoryview(data)),
        st.complex_numbers(),
        st.decimals(allow_nan=False),
        st.datetimes(),
        st.dates(),
        st.fractions(),
        st.uuids(),
        st.sampled_from([Color.RED, Mood.CALM, Point(1, 2), Opaque(), int, len, Ellipsis]),
        st.builds(Timestamp, st.integers(0, 2**32), st.integers(0, 999_999_999)),
        st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    )
    keys = st.one_of(
        any_text,
        st.binary(max_size=4),
        st.integers(),
        st.none(),
        st.booleans(),
        st.floats(),
        st.tuples(st.integers()),
        st.just(Color.RED),
        st.frozensets(st.integers(), max_size=2),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(keys, children, max_size=3),
            st.sets(st.integers(), max_size=3),
        ),
        max_leaves=10,
    )


@st.composite
def arbitrary_messages(draw: st.DrawFn) -> Message:
    value = anything()
    which = draw(st.sampled_from(["header", "call", "return", "error"]))
    uid = draw(st.integers(1, TGRID_MAX_UID))
    if which == "header":
        return Header(draw(value))
    if which == "call":
        kwargs = draw(st.none() | st.dictionaries(text, value, max_size=2))
        return Call(uid, draw(any_text.filter(bool)), draw(st.lists(value, max_size=3)), kwargs)
    if which == "return":
        return Return(uid, draw(value))
    return Error(uid, draw(any_text), draw(any_text), draw(st.none() | any_text))


# -- strategies: hostile frames ---------------------------------------------------


def wire_objects() -> st.SearchStrategy[Any]:
    """Anything msgpack can pack, shaped loosely like wsrpc messages."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.sampled_from([0, 1, 2, 3, 4, 5, 6, -1, 2**53, 2**63 - 1, 2**63, 2**64 - 1]),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=12),
        st.sampled_from(["calls", "size", "add", "a.b", ""]),
        st.binary(max_size=12),
        st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
        st.builds(Timestamp, st.integers(0, 2**32), st.integers(0, 999_999_999)),
    )
    keys = st.one_of(
        st.sampled_from(["calls", "size"]),
        st.text(max_size=6),
        st.binary(max_size=4),
        st.integers(-5, 5),
        st.none(),
        st.booleans(),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.dictionaries(keys, children, max_size=3),
        ),
        max_leaves=10,
    )


@st.composite
def msgpack_frames(draw: st.DrawFn) -> bytes:
    """A packed msgpack document: usually an array starting with a kind."""
    body = wire_objects()
    if draw(st.booleans()):
        obj: Any = draw(body)
    else:
        kind = draw(st.integers(-1, 7) | body)
        obj = [kind, *draw(st.lists(body, max_size=5))]
    # use_bin_type=False packs bytes as str: invalid UTF-8 for the decoder.
    frame = msgpack.packb(obj, use_bin_type=draw(st.booleans()))
    if draw(st.booleans()):
        # A Return whose value is a raw ext of any type code, the timestamp's
        # (-1) included, with a payload of any length (ext 8 format).
        code = draw(st.integers(-128, 127)).to_bytes(1, "big", signed=True)
        payload = draw(st.binary(max_size=13))
        frame = b"\x93\x03\x01\xc7" + bytes([len(payload)]) + code + payload
    if draw(st.booleans()):
        frame += draw(st.binary(min_size=1, max_size=4))  # trailing data
    return frame


def json_objects() -> st.SearchStrategy[Any]:
    names = st.sampled_from(
        ["uid", "listener", "parameters", "success", "value", "header", "type", "name"]
    )
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.sampled_from([0, 1, -1, 2**53 - 1, 2**53, 10**400, "undefined", "object", ""]),
        st.integers(),
        st.floats(),  # NaN and infinities, which JSON lacks
        any_text,
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(names | st.text(max_size=5), children, max_size=5),
        ),
        max_leaves=12,
    )


@st.composite
def json_frames(draw: st.DrawFn) -> str:
    obj = draw(json_objects())
    frame = json.dumps(obj, allow_nan=True, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        frame += draw(st.text(min_size=1, max_size=3))  # trailing data
    return frame


@st.composite
def mutated(draw: st.DrawFn, kind: type[Codec]) -> bytes | str:
    """A valid frame with a few bytes or characters changed, inserted or cut."""
    codec = make(kind)
    try:
        frame = codec.encode(draw(valid_messages(kind)))
    except EncodeError:
        frame = codec.encode(Return(1, None))
    data = bytearray(frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        byte = draw(st.integers(0, 255) | st.sampled_from(b'[]{}",:\\\x91\xdc\xde\xc1\xd4'))
        if op == "set" and data:
            data[at] = byte
        elif op == "insert":
            data.insert(at, byte)
        elif op == "delete" and data:
            del data[at]
        elif op == "truncate":
            del data[at:]
    if kind is MsgpackCodec:
        return bytes(data)
    return data.decode("utf-8", "replace")


def deep(kind: type[Codec], depth: int, opener: str) -> bytes | str:
    if kind is MsgpackCodec:
        return (b"\x91" if opener == "[" else b"\x81\xa1k") * depth + b"\xc0"
    if opener == "[":
        return "[" * depth + "]" * depth
    return '{"k":' * depth + "null" + "}" * depth


# -- codec properties -------------------------------------------------------------


@FAST
@pytest.mark.parametrize("kind", CODECS)
@given(frame=st.binary(max_size=64) | st.text(max_size=64))
def test_decode_of_random_data_raises_only_protocol_error(
    kind: type[Codec], frame: bytes | str
) -> None:
    decode_or_refuse(make(kind), frame)


@FAST
@given(frame=msgpack_frames())
def test_msgpack_decode_of_random_documents(frame: bytes) -> None:
    decode_or_refuse(MsgpackCodec(), frame)


@FAST
@given(frame=msgpack_frames(), limit=st.integers(1, 8))
def test_msgpack_decode_with_a_container_limit(frame: bytes, limit: int) -> None:
    decode_or_refuse(MsgpackCodec(max_container_len=limit), frame)


@FAST
@given(frame=json_frames())
def test_tgrid_decode_of_random_documents(frame: str) -> None:
    decode_or_refuse(TgridCodec(), frame)


@FAST
@pytest.mark.parametrize("kind", CODECS)
@given(data=st.data())
def test_decode_of_mutated_valid_frames(kind: type[Codec], data: st.DataObject) -> None:
    frame = data.draw(mutated(kind))
    decode_or_refuse(make(kind), frame)


@QUICK
@pytest.mark.parametrize("kind", CODECS)
@given(depth=st.integers(1, 3000), opener=st.sampled_from(["[", "{"]), wrap=st.booleans())
def test_decode_of_deep_nesting(kind: type[Codec], depth: int, opener: str, wrap: bool) -> None:
    codec = make(kind)
    inner = deep(kind, depth, opener)
    if wrap:  # as the value of a Return
        if isinstance(inner, bytes):
            frame: bytes | str = b"\x93\x03\x01" + inner
        else:
            frame = '{"uid":1,"success":true,"value":' + inner + "}"
    else:
        frame = inner
    message = decode_or_refuse(codec, frame)
    if not codec.binary and depth + wrap > MAX_DEPTH:
        assert message is None


@FAST
@pytest.mark.parametrize("kind", CODECS)
@given(data=st.data())
def test_valid_messages_round_trip(kind: type[Codec], data: st.DataObject) -> None:
    codec = make(kind)
    message = data.draw(valid_messages(kind))
    frame = codec.encode(message)
    assert isinstance(frame, bytes if codec.binary else str)
    decoded = codec.decode(frame)
    want = expected(message, codec)
    assert same_message(decoded, want), (decoded, want)
    # The frame is a fixed point: what the peer would send back is identical.
    assert codec.encode(decoded) == frame


@FAST
@given(data=st.data())
def test_msgpack_round_trips_nan(data: st.DataObject) -> None:
    codec = MsgpackCodec()
    value = data.draw(msgpack_values(nan=True))
    frame = codec.encode(Return(1, value))
    decoded = codec.decode(frame)
    assert isinstance(decoded, Return)
    assert codec.encode(decoded) == frame


@FAST
@pytest.mark.parametrize("kind", CODECS)
@given(message=arbitrary_messages())
def test_encode_raises_only_encode_error_and_its_frames_decode(
    kind: type[Codec], message: Message
) -> None:
    codec = make(kind)
    try:
        frame = codec.encode(message)
    except EncodeError:
        return
    # A frame the peer's decoder refuses would close the whole connection
    # instead of failing one call: never produce one.
    decoded = decode_or_refuse(codec, frame)
    assert decoded is not None, frame
    assert type(decoded) is type(message)
    if isinstance(frame, str):
        frame.encode("utf-8")  # a text frame must be valid UTF-8
    # The codec is still usable after whatever happened.
    assert codec.decode(codec.encode(Return(2, [1, "x"]))) == Return(2, [1, "x"])


def scalars() -> st.SearchStrategy[Any]:
    """The values msgspec's encoder packs for the msgpack codec, and the edges of each."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),  # beyond 64 bits too: both encoders refuse those
        st.sampled_from([-(2**63) - 1, -(2**63), -33, -32, 127, 128, 2**64 - 1, 2**64]),
        st.floats(),  # NaN, infinities, -0.0
        any_text,  # lone surrogates too: both encoders refuse those
        st.text(min_size=30, max_size=300),  # fixstr, str8 and str16 lengths
        st.binary(max_size=300),
    )


def packed_or_refused(encode: Any, *args: Any) -> bytes | None:
    try:
        frame: bytes = encode(*args)
    except EncodeError:
        return None
    return frame


@FAST
@given(
    uid=st.integers(1, MSGPACK_MAX_UID),
    path=any_text,
    args=st.lists(scalars(), max_size=4) | st.lists(scalars(), max_size=4).map(tuple),
    value=scalars(),
    message=arbitrary_messages(),
)
def test_msgspec_packs_the_bytes_msgpack_packs(
    uid: int, path: str, args: list[Any], value: Any, message: Message
) -> None:
    # use_msgspec only changes which library packs a message of scalars:
    # the frames are the same, byte for byte, and what one refuses the
    # other refuses. (Other messages go the same way in both: checked too.)
    fast, plain = MsgpackCodec(use_msgspec=True), MsgpackCodec(use_msgspec=False)
    for name, call in [
        ("encode_call", (uid, path, args, None, None)),
        ("encode_return", (uid, value)),
        ("encode_value", (value,)),
        ("encode", (message,)),
    ]:
        expected = packed_or_refused(getattr(plain, name), *call)
        assert packed_or_refused(getattr(fast, name), *call) == expected, name
    # Both are still usable after a refusal.
    assert fast.encode_return(uid, 1) == plain.encode_return(uid, 1)


@FAST
@pytest.mark.parametrize("kind", CODECS)
@given(
    value=anything(),
    name=any_text,
    message_text=any_text,
    limit=st.none() | st.integers(64, 4096),
    tracebacks=st.booleans(),
)
def test_replies_always_reach_the_caller(
    kind: type[Codec],
    value: Any,
    name: str,
    message_text: str,
    limit: int | None,
    tracebacks: bool,
) -> None:
    # Whatever a provider returns or raises, the core produces a frame that
    # fits the caller's limit and that the caller decodes as the reply.
    client, server = open_pair(make(kind), server_tracebacks=tracebacks, client_size=limit)
    uid, frame = client.send_call("f", [], None)
    assert isinstance(server.receive(frame), Call)
    reply = server.send_return(uid, value)
    assert fits(reply, server.peer_max_size)
    decoded = client.receive(reply)
    assert isinstance(decoded, (Return, Error)) and decoded.uid == uid
    if isinstance(decoded, Error):
        assert decoded.name == "EncodeError"
    uid, frame = client.send_call("f", [], None)
    assert isinstance(server.receive(frame), Call)
    error = type(name or "X", (Exception,), {}) if name.isidentifier() else ValueError
    reply = server.send_error(uid, error(message_text))
    assert fits(reply, server.peer_max_size)
    decoded = client.receive(reply)
    assert isinstance(decoded, Error) and decoded.uid == uid
    assert not client.outgoing and not server.incoming


def fits(frame: bytes | str, limit: int | None) -> bool:
    """Whether ``frame`` is at most ``limit`` bytes on the wire."""
    size = len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8"))
    return limit is None or size <= limit


# -- the protocol core --------------------------------------------------------------


def open_pair(
    codec: Codec,
    *,
    server_tracebacks: bool = False,
    client_size: int | None = None,
    max_calls: int = 4,
) -> tuple[RpcProtocol, RpcProtocol]:
    """A client core and a server core that have completed the handshake."""
    client = RpcProtocol(Side.CLIENT, codec, max_calls=max_calls, max_size=client_size)
    server = RpcProtocol(
        Side.SERVER, codec, max_calls=max_calls, max_size=None, send_tracebacks=server_tracebacks
    )
    header = server.receive_header(client.send_header({"user": "fuzz"}))
    assert header.value == {"user": "fuzz"}
    client.receive_accept(server.send_accept())
    assert client.phase is Phase.OPEN and server.phase is Phase.OPEN
    return client, server


@FAST
@pytest.mark.parametrize("kind", CODECS)
@given(frame=st.binary(max_size=48) | st.text(max_size=48) | msgpack_frames() | json_frames())
def test_handshake_refuses_only_with_protocol_error(kind: type[Codec], frame: bytes | str) -> None:
    codec = make(kind)
    server = RpcProtocol(Side.SERVER, codec, max_calls=4, max_size=None)
    try:
        header = server.receive_header(frame)
    except ProtocolError:
        assert server.phase is Phase.HANDSHAKE
    else:
        check_message(header, codec)
    client = RpcProtocol(Side.CLIENT, codec, max_calls=4, max_size=None)
    client.send_header(None)
    try:
        client.receive_accept(frame)
    except ProtocolError:
        assert client.phase is Phase.HANDSHAKE
    else:
        assert client.phase is Phase.OPEN


STATEFUL = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@STATEFUL
class Peers(RuleBasedStateMachine):
    """
    A client core and a server core exchanging frames through two in-order
    queues (one per direction, as on a WebSocket), with a model of the call
    ids each side should be tracking. A third party can also slip frames
    into either queue: garbage, calls reusing ids, stale replies.
    """

    codec_kind: type[Codec] = MsgpackCodec

    def __init__(self) -> None:
        super().__init__()
        self.codec = make(self.codec_kind)
        client, server = open_pair(self.codec)
        self.cores = {"client": client, "server": server}
        # The model: ids each side waits on, ids each side is running.
        self.outgoing: dict[str, set[int]] = {"client": set(), "server": set()}
        self.incoming: dict[str, set[int]] = {"client": set(), "server": set()}
        self.last_uid = {"client": 0, "server": 0}
        # Frames on the way *to* each side.
        self.wire: dict[str, list[bytes | str]] = {"client": [], "server": []}
        self.refused = 0

    sides = st.sampled_from(["client", "server"])

    @staticmethod
    def other(side: str) -> str:
        return "server" if side == "client" else "client"

    def receive(self, side: str, frame: bytes | str) -> None:
        """Deliver ``frame`` to ``side`` and update the model as documented."""
        core = self.cores[side]
        try:
            message = self.codec.decode(frame)
        except ProtocolError:
            message = None
            valid = False
        else:
            valid = True
        before = (set(core.outgoing), set(core.incoming))
        try:
            result = core.receive(frame)
        except ProtocolError:
            # Undecodable, a handshake message, or a reused running id: the
            # connection will close; nothing was recorded.
            assert (core.outgoing, core.incoming) == before
            if valid:
                assert isinstance(message, (Header, Accept)) or (
                    isinstance(message, Call) and message.uid in self.incoming[side]
                )
            self.refused += 1
            return
        assert valid and message is not None
        if isinstance(message, Call):
            assert message.uid not in self.incoming[side]
            assert result == message
            self.incoming[side].add(message.uid)
        elif isinstance(message, (Return, Error)):
            if message.uid in self.outgoing[side]:
                assert result == message
                self.outgoing[side].discard(message.uid)
            else:
                assert result is None  # late or unknown: dropped quietly
        else:
            assert isinstance(message, Cancel)
            assert result == (message if message.uid in self.incoming[side] else None)

    # -- honest traffic -------------------------------------------------------

    @rule(side=sides, args=st.lists(st.integers(-5, 5), max_size=3))
    def call(self, side: str, args: list[int]) -> None:
        uid, frame = self.cores[side].send_call("f", args, None)
        assert uid == self.last_uid[side] + 1  # ids count up from 1
        self.last_uid[side] = uid
        self.outgoing[side].add(uid)
        self.wire[self.other(side)].append(frame)

    @precondition(lambda self: self.wire["client"] or self.wire["server"])
    @rule(side=sides)
    def deliver(self, side: str) -> None:
        if not self.wire[side]:
            side = self.other(side)
        self.receive(side, self.wire[side].pop(0))

    @rule(side=sides, data=st.data(), how=st.sampled_from(["return", "error", "refusal"]))
    def answer(self, side: str, data: st.DataObject, how: str) -> None:
        running = sorted(self.incoming[side])
        if not running:
            return
        uid = data.draw(st.sampled_from(running))
        core = self.cores[side]
        if how == "return":
            frame = core.send_return(uid, [uid, "ok"])
        elif how == "error":
            frame = core.send_error(uid, ValueError("no"))
        else:
            frame = core.send_refusal(uid, "refused")
        self.incoming[side].discard(uid)
        self.wire[self.other(side)].append(frame)

    @rule(side=sides, data=st.data())
    def cancel(self, side: str, data: st.DataObject) -> None:
        # Any id: waiting, answered already, or never used.
        choices = [*sorted(self.outgoing[side]), self.last_uid[side] + 1, 1]
        uid = data.draw(st.sampled_from(choices))
        frame = self.cores[side].send_cancel(uid)
        if uid in self.outgoing[side] and self.codec.supports_cancel:
            assert frame is not None
            self.wire[self.other(side)].append(frame)
        else:
            assert frame is None
        self.outgoing[side].discard(uid)

    @rule(side=sides, data=st.data())
    def drop(self, side: str, data: st.DataObject) -> None:
        running = sorted(self.incoming[side])
        if running:
            uid = data.draw(st.sampled_from(running))
            self.cores[side].drop_incoming(uid)
            self.incoming[side].discard(uid)

    # -- a hostile peer ---------------------------------------------------------

    @rule(side=sides, data=st.data())
    def reused_or_stale(self, side: str, data: st.DataObject) -> None:
        # A call reusing an id that is running (refused) or not (a new call),
        # a reply to an id never used or already answered, a stray cancel.
        known = sorted(self.incoming[side] | self.outgoing[side]) or [1]
        uid = data.draw(st.sampled_from([*known, 1, 2, 99]))
        choices: list[Message] = [
            Call(uid, "f", []),
            Return(uid, "late"),
            Error(uid, "E", "late"),
            Cancel(uid),
        ]
        message = data.draw(st.sampled_from(choices))
        if isinstance(message, Cancel) and not self.codec.supports_cancel:
            return
        self.receive(side, self.codec.encode(message))

    @rule(
        side=sides,
        frame=st.binary(max_size=24) | st.text(max_size=24) | msgpack_frames() | json_frames(),
    )
    def garbage(self, side: str, frame: bytes | str) -> None:
        self.receive(side, frame)

    @rule(side=sides)
    def handshake_again(self, side: str) -> None:
        core = self.cores[side]
        for message in (Header(None), Accept()):
            before = (set(core.outgoing), set(core.incoming))
            with pytest.raises(ProtocolError):
                core.receive(self.codec.encode(message))
            assert (core.outgoing, core.incoming) == before
        # Handshake methods once open are misuse: RuntimeError, not ProtocolError.
        with pytest.raises(RuntimeError):
            core.send_header(None) if side == "client" else core.send_accept()
        frame = self.codec.encode(Header(None) if side == "server" else Accept())
        with pytest.raises(RuntimeError):
            core.receive_header(frame) if side == "server" else core.receive_accept(frame)

    # -- invariants ---------------------------------------------------------------

    @invariant()
    def bookkeeping_matches_the_model(self) -> None:
        for side, core in self.cores.items():
            assert core.outgoing == self.outgoing[side], side
            assert core.incoming == self.incoming[side], side
            assert core.phase is Phase.OPEN


class TgridPeers(Peers):
    codec_kind = TgridCodec


TestMsgpackPeers = Peers.TestCase
TestTgridPeers = TgridPeers.TestCase


@STATEFUL
class IdBundle(RuleBasedStateMachine):
    """Cancelled and answered ids never come back, on an unreliable mix of calls."""

    def __init__(self) -> None:
        super().__init__()
        self.client, self.server = open_pair(MsgpackCodec(), max_calls=2)
        self.seen: set[int] = set()

    pending = Bundle("pending")

    @rule(target=pending)
    def start(self) -> int:
        uid, frame = self.client.send_call("f", [], None)
        assert uid not in self.seen
        self.seen.add(uid)
        assert isinstance(self.server.receive(frame), Call)
        return uid

    @rule(uid=consumes(pending), cancel_first=st.booleans())
    def finish(self, uid: int, cancel_first: bool) -> None:
        if cancel_first:
            frame = self.client.send_cancel(uid)
            assert frame is not None
            message = self.server.receive(frame)
            assert message == Cancel(uid)
            self.server.drop_incoming(uid)
            assert self.client.receive(self.server.send_return(uid, None)) is None
        else:
            assert self.client.receive(self.server.send_return(uid, uid)) == Return(uid, uid)
        assert uid not in self.client.outgoing and uid not in self.server.incoming

    @invariant()
    def sets_agree(self) -> None:
        assert self.client.outgoing == self.server.incoming


TestIdBundle = IdBundle.TestCase


def test_wire_form_helpers() -> None:
    # The helpers above encode the documented conversions; keep them honest.
    assert wire_form((1, bytearray(b"a"), {"k": (memoryview(b"m"),)})) == [1, b"a", {"k": [b"m"]}]
    assert same(1.0, 1.0) and not same(1, 1.0) and not same(0.0, -0.0) and not same(True, 1)


# -- the structural walk against msgpack's own decoder ----------------------------------


def _decoder_verdict(frame: bytes) -> str:
    """What msgpack's decoder, set up as the codec sets it up, makes of ``frame``."""

    def refuse(code: int, data: bytes) -> Any:
        raise ValueError("ext")

    try:
        msgpack.unpackb(frame, raw=False, strict_map_key=True, ext_hook=refuse, timestamp=1)
    except UnicodeDecodeError:
        return "utf-8"
    except Exception:
        return "refused"
    return "accepted"


def _walk_verdict(frame: bytes) -> str:
    try:
        check_declared(frame)
    except Refused:
        return "refused"
    return "passed"


def _wrapped(frame: bytes, count: int) -> bytes:
    """``frame`` as the last of ``count`` elements of an array16: a frame the codec walks."""
    return b"\xdc" + count.to_bytes(2, "big") + b"\xc0" * (count - 1) + frame


@settings(max_examples=600, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=msgpack_frames(), count=st.integers(1, 40), cut=st.integers(0, 3))
# Found by a 20,000-example run: a timestamp of 8 bytes in the ext 8 format.
@example(frame=b"\x93\x03\x01\xc7\x08\xff" + b"\x00" * 8, count=1, cut=0)
def test_the_walk_refuses_exactly_what_the_decoder_refuses(
    frame: bytes, count: int, cut: int
) -> None:
    # The walk (wsrpc/_msgpack_scan.py) runs before the decoder so that a bad
    # frame is refused before anything is built. It must never refuse a
    # frame the decoder accepts (nesting deeper than MAX_DEPTH aside, which
    # these frames are not), and must refuse every frame the decoder refuses
    # for anything but invalid UTF-8, which only decoding finds.
    framed = _wrapped(frame, count)
    if cut:
        framed = framed[:-cut]
    walk, decoder = _walk_verdict(framed), _decoder_verdict(framed)
    if decoder == "accepted":
        assert walk == "passed"
    elif decoder == "refused":
        assert walk == "refused"
