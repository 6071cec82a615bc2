"""
Sans-I/O tests of :class:`wsrpc.MsgpackCodec`: round trips, the wire layout,
every refusal of :meth:`decode` with its close code, and :meth:`encode`'s
refusals.
"""

from __future__ import annotations

import datetime
import sys
import tracemalloc
from dataclasses import astuple
from typing import Any

import msgpack
import pytest

from wsrpc import CloseCode, EncodeError, MsgpackCodec, codecs
from wsrpc._msgpack_scan import Refused, check_declared
from wsrpc.codecs import PROTOCOL_VERSION
from wsrpc.exceptions import ProtocolError
from wsrpc.messages import Accept, Call, Cancel, Error, Header, Message, Return

HEADER, ACCEPT, CALL, RETURN, ERROR, CANCEL = range(6)
MAX_UID = 2**63 - 1


def pack(obj: object) -> bytes:
    """A frame built by hand, bypassing the codec's encoder."""
    return msgpack.packb(obj, use_bin_type=True)


def same(a: object, b: object) -> bool:
    """Deep equality that also compares types (so True != 1 and 1.0 != 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def nested_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def refusal(frame: bytes | str, codec: MsgpackCodec | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        (codec or MsgpackCodec()).decode(frame)
    return info.value


# -- class attributes ----------------------------------------------------------


def test_codec_attributes() -> None:
    codec = MsgpackCodec()
    assert codec.name == "msgpack"
    assert codec.binary is True
    assert codec.supports_cancel is True


@pytest.mark.parametrize("bad", [0, -1])
def test_max_container_len_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError):
        MsgpackCodec(max_container_len=bad)


def packer_of(codec: MsgpackCodec) -> object:
    """The object whose method packs the codec's messages of scalars."""
    return getattr(codec._pack_flat, "__self__", None)


def test_msgspec_packs_scalar_messages_when_installed() -> None:
    # The fast extra (and the test environment) has msgspec: by default it
    # packs what holds scalars only; use_msgspec=False keeps msgpack's packer.
    # test_fuzz checks that both write the same bytes.
    assert type(packer_of(MsgpackCodec())).__name__ == "Encoder"
    assert type(packer_of(MsgpackCodec(use_msgspec=True))).__name__ == "Encoder"
    assert type(packer_of(MsgpackCodec(use_msgspec=False))) is msgpack.Packer


def test_msgspec_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    # As without the extra: the import fails.
    monkeypatch.setitem(sys.modules, "msgspec", None)
    monkeypatch.setitem(sys.modules, "msgspec.msgpack", None)
    codec = MsgpackCodec()
    assert type(packer_of(codec)) is msgpack.Packer
    assert codec.decode(codec.encode_call(1, "add", (1, 2), None, None)) == Call(1, "add", [1, 2])
    with pytest.raises(ImportError, match=r"pip install 'wsrpc\[fast\]'"):
        MsgpackCodec(use_msgspec=True)


# -- round trips ---------------------------------------------------------------

NESTED_VALUE: dict[str, Any] = {
    "list": [1, -1, 2**64 - 1, -(2**63), 1.5, True, False, None, "s", b"\x00\xff"],
    "map": {"inner": {"deeper": [[], {}, [[[]]]]}},
    "empty_str": "",
    "unicode": "héllo wörld ✓ 😀",
    "empty_bytes": b"",
}

ROUND_TRIPS: list[Message] = [
    Header(None),
    Header({"user": "ann", "token": b"\x01\x02"}),
    Header("x", max_calls=3),
    Header("x", max_size=4096),
    Header([1, 2, {"a": None}], max_calls=8, max_size=2**20),
    Accept(),
    Accept(max_calls=1),
    Accept(max_size=64),
    Accept(max_calls=128, max_size=2**31),
    Call(1, "add", [1, 2]),
    Call(2, "scientific.sqrt", []),
    Call(3, "a.b.c", [None, b"x"], {"flag": True, "n": -5}),
    Call(MAX_UID, "f", [NESTED_VALUE], {"value": NESTED_VALUE}),
    Return(1, None),
    Return(2, b"\x00\x01\xfe\xff"),
    Return(3, NESTED_VALUE),
    Return(4, 0),
    Return(5, True),
    Return(6, 0.25),
    Return(7, ""),
    Return(8, []),
    Return(9, {}),
    Return(MAX_UID, "last"),
    Error(1, "ValueError", "bad value"),
    Error(2, "ValueError", ""),
    Error(3, "KeyError", "'k'", "Traceback (most recent call last):\n  ...\nKeyError: 'k'\n"),
    Cancel(1),
    Cancel(MAX_UID),
]


@pytest.mark.parametrize("message", ROUND_TRIPS, ids=repr)
def test_round_trip(message: Message) -> None:
    codec = MsgpackCodec()
    frame = codec.encode(message)
    assert type(frame) is bytes
    decoded = codec.decode(frame)
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, 1, -1, 2**64 - 1, -(2**63), 0.5, "s", b"b", [], {}, NESTED_VALUE],
    ids=repr,
)
def test_return_value_types_survive(value: object) -> None:
    codec = MsgpackCodec()
    decoded = codec.decode(codec.encode(Return(1, value)))
    assert isinstance(decoded, Return)
    assert same(decoded.value, value)


def test_tuples_travel_as_lists() -> None:
    codec = MsgpackCodec()
    decoded = codec.decode(codec.encode(Return(1, (1, (2, 3), {"t": ()}))))
    assert isinstance(decoded, Return)
    assert same(decoded.value, [1, [2, 3], {"t": []}])


def test_call_with_empty_kwargs_decodes_without_kwargs() -> None:
    codec = MsgpackCodec()
    decoded = codec.decode(codec.encode(Call(1, "f", [1], {})))
    assert isinstance(decoded, Call)
    assert decoded.uid == 1 and decoded.path == "f" and decoded.args == [1]
    assert not decoded.kwargs


def test_codec_is_reusable() -> None:
    codec = MsgpackCodec()
    for message in ROUND_TRIPS:
        assert codec.decode(codec.encode(message)) == message


def test_nesting_the_encoder_accepts_round_trips() -> None:
    codec = MsgpackCodec()
    value = nested_list(500)
    decoded = codec.decode(codec.encode(Return(1, value)))
    assert isinstance(decoded, Return)
    assert decoded.value == value


# -- wire layout ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (Header("v"), [HEADER, PROTOCOL_VERSION, "v", {}]),
        (Header("v", 2, 100), [HEADER, PROTOCOL_VERSION, "v", {"calls": 2, "size": 100}]),
        (Accept(), [ACCEPT, {}]),
        (Accept(max_size=100), [ACCEPT, {"size": 100}]),
        (Call(1, "f", [1]), [CALL, 1, "f", [1]]),
        (Call(1, "f", [], {"k": 1}), [CALL, 1, "f", [], {"k": 1}]),
        (Return(5, "r"), [RETURN, 5, "r"]),
        (Error(5, "E", "m"), [ERROR, 5, "E", "m", None]),
        (Error(5, "E", "m", "tb"), [ERROR, 5, "E", "m", "tb"]),
        (Cancel(9), [CANCEL, 9]),
    ],
    ids=repr,
)
def test_wire_layout(message: Message, wire: list[Any]) -> None:
    frame = MsgpackCodec().encode(message)
    assert msgpack.unpackb(frame, raw=False) == wire
    # And a hand-built frame of that layout decodes to the message.
    assert MsgpackCodec().decode(pack(wire)) == message


def test_protocol_version_is_one() -> None:
    assert PROTOCOL_VERSION == 1


def test_header_unknown_limit_keys_are_ignored() -> None:
    message = MsgpackCodec().decode(
        pack([HEADER, 1, None, {"calls": 4, "future": "x", "size": 99}])
    )
    assert message == Header(None, 4, 99)


def test_accept_missing_limits_are_none() -> None:
    assert MsgpackCodec().decode(pack([ACCEPT, {}])) == Accept(None, None)


def timestamp64(seconds: int, nanoseconds: int) -> bytes:
    """A msgpack timestamp 64 (ext type -1) value, built by hand."""
    return b"\xd7\xff" + ((nanoseconds << 34) | seconds).to_bytes(8, "big")


def test_msgpack_timestamp_decodes_to_utc_datetime() -> None:
    frame = b"\x93\x03\x01" + timestamp64(5, 500_000_000)
    message = MsgpackCodec().decode(frame)
    assert isinstance(message, Return)
    assert message.value == datetime.datetime(1970, 1, 1, 0, 0, 5, 500_000, tzinfo=datetime.UTC)
    assert message.value.tzinfo is datetime.UTC


def test_nested_timestamp_decodes_to_datetime() -> None:
    # [RETURN, 1, {"at": [timestamp32(10)]}]
    frame = b"\x93\x03\x01\x81\xa2at\x91" + b"\xd6\xff" + (10).to_bytes(4, "big")
    message = MsgpackCodec().decode(frame)
    assert isinstance(message, Return)
    assert message.value == {"at": [datetime.datetime(1970, 1, 1, 0, 0, 10, tzinfo=datetime.UTC)]}


def test_aware_datetime_travels_as_timestamp_and_arrives_in_utc() -> None:
    codec = MsgpackCodec()
    paris = datetime.timezone(datetime.timedelta(hours=1))
    sent = datetime.datetime(2026, 12, 3, 10, 30, 0, 123_456, tzinfo=paris)
    frame = codec.encode(Return(1, sent))
    assert b"\xc7\x0c\xff" in frame or b"\xd7\xff" in frame  # timestamp 96 or 64
    message = codec.decode(frame)
    assert isinstance(message, Return)
    assert message.value == sent  # the same instant...
    assert message.value.tzinfo is datetime.UTC  # ...in UTC


def test_naive_datetime_travels_as_iso_text() -> None:
    codec = MsgpackCodec()
    message = codec.decode(codec.encode(Return(1, [datetime.datetime(2026, 12, 3, 10, 30)])))
    assert isinstance(message, Return)
    assert message.value == ["2026-12-03T10:30:00"]


def test_timestamp_out_of_datetime_range_is_invalid_payload() -> None:
    # timestamp 96: nanoseconds, then 2**62 seconds (year ~1.5e11).
    frame = b"\x93\x03\x01\xc7\x0c\xff" + (0).to_bytes(4, "big") + (2**62).to_bytes(8, "big")
    assert refusal(frame).code == CloseCode.INVALID_PAYLOAD


def test_other_objects_still_cannot_be_encoded() -> None:
    with pytest.raises(EncodeError, match="can not serialize 'date' object"):
        MsgpackCodec().encode(Return(1, datetime.date(2026, 12, 3)))


# -- decode refusals: close code 1003 -------------------------------------------


@pytest.mark.parametrize("frame", ["", "[3, 1, null]", "\x93\x03\x01\xc0"])
def test_text_frame_is_unsupported_data(frame: str) -> None:
    code = refusal(frame).code
    assert code == CloseCode.UNSUPPORTED_DATA
    assert int(code) == 1003


# -- decode refusals: close code 1007 -------------------------------------------

UNDECODABLE: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("never-used byte", b"\xc1"),
    ("truncated array", pack([RETURN, 1, "abc"])[:-1]),
    ("truncated header", b"\x94"),
    ("truncated str", b"\x93\x03\x01\xa5ab"),
    ("trailing extra data", pack([RETURN, 1, None]) + b"\xc0"),
    ("two messages in one frame", pack([CANCEL, 1]) + pack([CANCEL, 2])),
    ("deep nesting", b"\x91" * 100_000 + b"\xc0"),
    ("ext type as message", b"\xd4\x05\x01"),
    ("ext type in a value", pack([RETURN, 1, msgpack.ExtType(5, b"data")])),
    ("ext type in call args", pack([CALL, 1, "f", [msgpack.ExtType(0, b"")]])),
    ("negative ext type", b"\x93\x03\x01\xd4\xfe\x00"),
    ("malformed timestamp", b"\x93\x03\x01\xc7\x05\xff\x00\x00\x00\x00\x00"),
    ("invalid utf-8", b"\x93\x03\x01\xa2\xff\xfe"),
    ("array longer than the frame", b"\xdd\xff\xff\xff\xff"),
    ("map longer than the frame", b"\xdf\xff\xff\xff\xff"),
    ("str longer than the frame", b"\x93\x03\x01\xdb\xff\xff\xff\xff"),
]


@pytest.mark.parametrize(("what", "frame"), UNDECODABLE, ids=[w for w, _ in UNDECODABLE])
def test_undecodable_frame_is_invalid_payload(what: str, frame: bytes) -> None:
    code = refusal(frame).code
    assert code == CloseCode.INVALID_PAYLOAD
    assert int(code) == 1007


NON_STRING_KEY_FRAMES: list[tuple[str, bytes]] = [
    ("int key in return value", b"\x93\x03\x01\x81\x01\x01"),
    ("nil key in return value", b"\x93\x03\x01\x81\xc0\x01"),
    ("bool key in return value", b"\x93\x03\x01\x81\xc3\x01"),
    ("float key in return value", b"\x93\x03\x01\x81\xcb" + b"\x3f\xf8" + b"\x00" * 6 + b"\x01"),
    ("array key in return value", b"\x93\x03\x01\x81\x91\x01\x01"),
    ("map key in return value", b"\x93\x03\x01\x81\x80\x01"),
    ("int key nested deep", pack([RETURN, 1, [{"a": [{1: 2}]}]])),
    ("int key in header value", pack([HEADER, 1, {7: "x"}, {}])),
    ("int key in header limits", pack([HEADER, 1, None, {1: 2}])),
    ("int key in accept limits", pack([ACCEPT, {1: 2}])),
    ("int key in call args", pack([CALL, 1, "f", [{1: 2}]])),
    ("int key in call kwargs value", pack([CALL, 1, "f", [], {"k": {1: 2}}])),
    ("int key as message", pack({1: 2})),
]


@pytest.mark.parametrize(
    ("what", "frame"), NON_STRING_KEY_FRAMES, ids=[w for w, _ in NON_STRING_KEY_FRAMES]
)
def test_non_string_map_keys_are_invalid_payload(what: str, frame: bytes) -> None:
    assert refusal(frame).code == CloseCode.INVALID_PAYLOAD


BYTES_KEY_FRAMES: list[tuple[str, bytes]] = [
    ("bytes key in return value", pack([RETURN, 1, {b"k": 1}])),
    ("bytes key nested in return value", pack([RETURN, 1, [{"a": {b"k": 1}}]])),
    ("bytes key in call args", pack([CALL, 1, "f", [{b"k": 1}]])),
]


@pytest.mark.parametrize(("what", "frame"), BYTES_KEY_FRAMES, ids=[w for w, _ in BYTES_KEY_FRAMES])
def test_bytes_map_keys_are_part_of_the_value_model(what: str, frame: bytes) -> None:
    # str and bytes keys are both allowed (their hashes are randomised, so
    # they cannot be used to build colliding dicts); the frame decodes and
    # encodes back to the same bytes.
    codec = MsgpackCodec()
    assert codec.encode(codec.decode(frame)) == frame


def test_bytes_key_in_limits_is_ignored_like_any_unknown_limit() -> None:
    message = MsgpackCodec().decode(pack([HEADER, 1, None, {b"calls": 2}]))
    assert message == Header(None, None, None)


# -- decode refusals: close code 1002 -------------------------------------------

SHAPE_ERRORS: list[tuple[str, object]] = [
    # not a non-empty array
    ("nil", None),
    ("int", 3),
    ("str", "call"),
    ("bytes", b"\x00"),
    ("map", {"kind": 2}),
    ("empty map", {}),
    ("empty array", []),
    # unknown kinds
    ("kind 6", [6, 1]),
    ("kind -1", [-1, 1]),
    ("kind 255", [255, 1, 2, 3]),
    ("kind str", ["call", 1, "f", []]),
    ("kind nil", [None, 1]),
    ("kind float", [1.0, {}]),
    ("kind float call", [2.0, 1, "f", []]),
    ("kind bool true", [True, {}]),
    ("kind bool false", [False, 1, None, {}]),
    ("kind list", [[2], 1, "f", []]),
    # wrong arity
    ("header 3", [HEADER, 1, None]),
    ("header 5", [HEADER, 1, None, {}, None]),
    ("accept 1", [ACCEPT]),
    ("accept 3", [ACCEPT, {}, {}]),
    ("call 3", [CALL, 1, "f"]),
    ("call 6", [CALL, 1, "f", [], {}, None]),
    ("return 2", [RETURN, 1]),
    ("return 4", [RETURN, 1, None, None]),
    ("error 4", [ERROR, 1, "E", "m"]),
    ("error 6", [ERROR, 1, "E", "m", None, None]),
    ("cancel 1", [CANCEL]),
    ("cancel 3", [CANCEL, 1, 2]),
    # call fields
    ("path nil", [CALL, 1, None, []]),
    ("path int", [CALL, 1, 5, []]),
    ("path bytes", [CALL, 1, b"f", []]),
    ("path list", [CALL, 1, ["f"], []]),
    ("args nil", [CALL, 1, "f", None]),
    ("args map", [CALL, 1, "f", {}]),
    ("args str", [CALL, 1, "f", "abc"]),
    ("args bytes", [CALL, 1, "f", b"abc"]),
    ("args int", [CALL, 1, "f", 1]),
    ("kwargs list", [CALL, 1, "f", [], []]),
    ("kwargs str", [CALL, 1, "f", [], "k"]),
    ("kwargs int", [CALL, 1, "f", [], 1]),
    ("kwargs true", [CALL, 1, "f", [], True]),
    # error fields
    ("error name nil", [ERROR, 1, None, "m", None]),
    ("error name int", [ERROR, 1, 1, "m", None]),
    ("error name bytes", [ERROR, 1, b"E", "m", None]),
    ("error message nil", [ERROR, 1, "E", None, None]),
    ("error message int", [ERROR, 1, "E", 1, None]),
    ("error message bytes", [ERROR, 1, "E", b"m", None]),
    ("traceback int", [ERROR, 1, "E", "m", 1]),
    ("traceback bytes", [ERROR, 1, "E", "m", b"tb"]),
    ("traceback list", [ERROR, 1, "E", "m", ["tb"]]),
    ("traceback false", [ERROR, 1, "E", "m", False]),
    # header version
    ("version 0", [HEADER, 0, None, {}]),
    ("version 2", [HEADER, 2, None, {}]),
    ("version str", [HEADER, "1", None, {}]),
    ("version float", [HEADER, 1.0, None, {}]),
    ("version true", [HEADER, True, None, {}]),
    ("version nil", [HEADER, None, None, {}]),
    # limits
    ("header limits nil", [HEADER, 1, None, None]),
    ("header limits list", [HEADER, 1, None, []]),
    ("header limits int", [HEADER, 1, None, 5]),
    ("header limits str", [HEADER, 1, None, "calls"]),
    ("accept limits nil", [ACCEPT, None]),
    ("accept limits list", [ACCEPT, [1, 2]]),
    ("accept limits int", [ACCEPT, 128]),
    ("calls 0", [HEADER, 1, None, {"calls": 0}]),
    ("calls -1", [HEADER, 1, None, {"calls": -1}]),
    ("calls true", [HEADER, 1, None, {"calls": True}]),
    ("calls float", [HEADER, 1, None, {"calls": 2.0}]),
    ("calls str", [HEADER, 1, None, {"calls": "2"}]),
    ("size 0", [HEADER, 1, None, {"size": 0}]),
    ("size -5", [HEADER, 1, None, {"size": -5}]),
    ("size list", [HEADER, 1, None, {"size": [1]}]),
    ("accept calls 0", [ACCEPT, {"calls": 0}]),
    ("accept size false", [ACCEPT, {"size": False}]),
    ("accept size float", [ACCEPT, {"size": 1e6}]),
]


@pytest.mark.parametrize(("what", "obj"), SHAPE_ERRORS, ids=[w for w, _ in SHAPE_ERRORS])
def test_wrong_shape_is_protocol_error(what: str, obj: object) -> None:
    code = refusal(pack(obj)).code
    assert code == CloseCode.PROTOCOL_ERROR
    assert int(code) == 1002


BAD_UIDS: list[tuple[str, object]] = [
    ("str", "1"),
    ("float", 1.0),
    ("true", True),
    ("false", False),
    ("zero", 0),
    ("negative", -1),
    ("most negative", -(2**63)),
    ("2**63", 2**63),
    ("2**64-1", 2**64 - 1),
    ("nil", None),
    ("bytes", b"\x01"),
    ("list", [1]),
]

UID_SHAPES: list[tuple[str, Any]] = [
    ("call", lambda uid: [CALL, uid, "f", []]),
    ("call with kwargs", lambda uid: [CALL, uid, "f", [], {"k": 1}]),
    ("return", lambda uid: [RETURN, uid, None]),
    ("error", lambda uid: [ERROR, uid, "E", "m", None]),
    ("cancel", lambda uid: [CANCEL, uid]),
]


@pytest.mark.parametrize(("kind", "shape"), UID_SHAPES, ids=[k for k, _ in UID_SHAPES])
@pytest.mark.parametrize(("what", "uid"), BAD_UIDS, ids=[w for w, _ in BAD_UIDS])
def test_bad_uid_is_protocol_error(kind: str, shape: Any, what: str, uid: object) -> None:
    assert refusal(pack(shape(uid))).code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize(("kind", "shape"), UID_SHAPES, ids=[k for k, _ in UID_SHAPES])
@pytest.mark.parametrize("uid", [1, 2, 2**32, MAX_UID])
def test_valid_uid_is_accepted(kind: str, shape: Any, uid: int) -> None:
    message = MsgpackCodec().decode(pack(shape(uid)))
    assert isinstance(message, (Call, Return, Error, Cancel))
    assert type(message.uid) is int
    assert message.uid == uid


@pytest.mark.parametrize(
    "kwargs",
    [{b"k": 1}, {1: 2}, {"ok": 1, 2: 3}, {None: 1}],
    ids=repr,
)
def test_kwargs_with_non_string_keys_are_refused(kwargs: dict[Any, Any]) -> None:
    code = refusal(pack([CALL, 1, "f", [], kwargs])).code
    # A non-str key that msgpack itself refuses gives 1007; one it lets
    # through (bin) is caught by the call check, 1002.
    assert code in (CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_PAYLOAD)


def test_protocol_error_is_a_wsrpc_error_with_reason() -> None:
    error = refusal(pack([CANCEL, 0]))
    assert error.reason
    assert str(error).endswith(f"(close code {int(CloseCode.PROTOCOL_ERROR)})")


def test_refusal_does_not_leak_msgpack_exceptions() -> None:
    for _, frame in UNDECODABLE:
        error = refusal(frame)
        assert type(error) is ProtocolError


# -- max_container_len ---------------------------------------------------------


def test_max_container_len_enforced_for_arrays() -> None:
    codec = MsgpackCodec(max_container_len=5)
    ok = codec.decode(pack([RETURN, 1, [1, 2, 3, 4, 5]]))
    assert ok == Return(1, [1, 2, 3, 4, 5])
    assert refusal(pack([RETURN, 1, [1, 2, 3, 4, 5, 6]]), codec).code == 1007


def test_max_container_len_enforced_for_maps() -> None:
    codec = MsgpackCodec(max_container_len=5)
    five = {str(i): i for i in range(5)}
    six = {str(i): i for i in range(6)}
    assert codec.decode(pack([RETURN, 1, five])) == Return(1, five)
    assert refusal(pack([RETURN, 1, six]), codec).code == 1007


def test_max_container_len_enforced_when_nested() -> None:
    codec = MsgpackCodec(max_container_len=5)
    assert refusal(pack([CALL, 1, "f", [], {"k": [[0] * 6]}]), codec).code == 1007


def test_max_container_len_applies_to_the_message_array_itself() -> None:
    codec = MsgpackCodec(max_container_len=4)
    assert codec.decode(pack([CALL, 1, "f", []])) == Call(1, "f", [])
    assert refusal(pack([CALL, 1, "f", [], {"k": 1}]), codec).code == 1007


def test_default_container_len_allows_large_frames() -> None:
    codec = MsgpackCodec()
    value = list(range(100_000))
    message = codec.decode(codec.encode(Return(1, value)))
    assert message == Return(1, value)


# -- encode refusals -----------------------------------------------------------


def _deep() -> list[Any]:
    return nested_list(10_000)


UNENCODABLE: list[tuple[str, Any]] = [
    ("object in return", lambda: Return(1, object())),
    ("int 2**70 in return", lambda: Return(1, 2**70)),
    ("int -2**64 in return", lambda: Return(1, -(2**64))),
    ("deep nesting in return", lambda: Return(1, _deep())),
    ("set in return", lambda: Return(1, {1, 2})),
    ("complex in return", lambda: Return(1, 1j)),
    ("class in return", lambda: Return(1, int)),
    ("date in return", lambda: Return(1, datetime.date(2020, 1, 1))),
    ("object in call args", lambda: Call(1, "f", [object()])),
    ("int 2**70 in call kwargs", lambda: Call(1, "f", [], {"k": 2**70})),
    ("deep nesting in call args", lambda: Call(1, "f", [_deep()])),
    ("object in header", lambda: Header(object())),
    ("object nested in a map", lambda: Return(1, {"a": [1, 2, {"b": object()}]})),
]


@pytest.mark.parametrize(("what", "make"), UNENCODABLE, ids=[w for w, _ in UNENCODABLE])
def test_unencodable_raises_encode_error(what: str, make: Any) -> None:
    with pytest.raises(EncodeError):
        MsgpackCodec().encode(make())


@pytest.mark.parametrize(("what", "make"), UNENCODABLE, ids=[w for w, _ in UNENCODABLE])
def test_codec_works_after_failed_encode(what: str, make: Any) -> None:
    codec = MsgpackCodec()
    good = Return(7, ["payload", {"k": b"v"}])
    expected = MsgpackCodec().encode(good)
    assert codec.encode(good) == expected
    for _ in range(3):
        with pytest.raises(EncodeError):
            # Fail part-way: some of the array is packed before the bad value.
            codec.encode(make())
        frame = codec.encode(good)
        assert frame == expected
        assert codec.decode(frame) == good


def test_encode_error_is_not_a_protocol_error() -> None:
    with pytest.raises(EncodeError) as info:
        MsgpackCodec().encode(Return(1, object()))
    assert not isinstance(info.value, ProtocolError)


# -- what encode accepts, decode accepts ---------------------------------------


@pytest.mark.parametrize(
    "value",
    [{1: "a"}, {None: 1}, {True: 1}, {1.5: 1}, {(1, 2): 1}, [{"ok": {2: 3}}], {b"k": 1}],
    ids=repr,
)
def test_encode_never_produces_a_frame_decode_refuses(value: object) -> None:
    # A value the encoder accepts but the peer's decoder refuses would close
    # the whole connection (1007) instead of failing one call with an
    # EncodeError, as the EncodeError docs promise.
    codec = MsgpackCodec()
    try:
        frame = codec.encode(Return(1, value))
    except EncodeError:
        return
    message = codec.decode(frame)  # must not raise ProtocolError
    assert isinstance(message, Return)


# -- the structural walk (wsrpc/_msgpack_scan.py) ------------------------------------


def wide(*items: bytes) -> bytes:
    """A call whose args are an array16 of these raw msgpack items: the walk runs."""
    return b"\x94\x02\x01\xa1f" + b"\xdc" + len(items).to_bytes(2, "big") + b"".join(items)


WALK_REFUSES: list[tuple[str, bytes]] = [
    ("truncated", wide(b"\xc0", b"\xc0")[:-1]),
    ("never-used byte", wide(b"\xc1")),
    ("trailing bytes", wide(b"\xc0") + b"\xc0"),
    ("str past the end", wide(b"\xdb\x00\x00\xff\xff")),
    ("int key", wide(b"\x81\x01\x02")),
    ("nil key after a string key", wide(b"\x82\xa1k\x01\xc0\x02")),
    ("two one-byte values where a value and a key go", wide(b"\x82\xa1k\x01\x02\x03")),
    ("array key", wide(b"\x81\x90\x01")),
    ("map16 with an int key", wide(b"\xde\x00\x01\x05\x06")),
    ("ext type 5", wide(b"\xd4\x05\x00")),
    ("timestamp of the wrong size", wide(b"\xd5\xff\x00\x00")),
    ("ext8 that is no timestamp", wide(b"\xc7\x05\xff" + b"\x00" * 5)),
    ("deep nesting", wide(b"\x91" * 2000 + b"\xc0")),
    ("array declaring more than the frame", wide(b"\xdd\xff\xff\xff\xff")),
]


@pytest.mark.parametrize(("what", "frame"), WALK_REFUSES, ids=[w for w, _ in WALK_REFUSES])
def test_the_walk_refuses_before_anything_is_built(what: str, frame: bytes) -> None:
    with pytest.raises(Refused):
        check_declared(frame)
    assert refusal(frame).code == CloseCode.INVALID_PAYLOAD  # and so does the codec


WALK_PASSES: list[tuple[str, object]] = [
    ("scalars", [None, True, False, 0, -1, 127, -32, 255, 65536, -(2**40), 1.5, "", "s"]),
    ("strings and bytes of every width", ["x" * 40, "y" * 300, b"b" * 10, b"c" * 70_000]),
    ("str and bytes keys", {"k": 1, b"b": [1, 2], "nested": {"a": {b"x": None}}}),
    ("maps of one-byte values", [{"a": 1, "b": None, "c": True}] * 20),
    ("wide containers", [list(range(300)), {f"k{i}": i for i in range(40)}]),
    ("timestamps", [datetime.datetime(2026, 11, 21, tzinfo=datetime.UTC)]),
]


@pytest.mark.parametrize(("what", "value"), WALK_PASSES, ids=[w for w, _ in WALK_PASSES])
def test_the_walk_passes_what_the_codec_accepts(what: str, value: object) -> None:
    frame = msgpack.packb([2, 1, "f", [value] * 20], use_bin_type=True, datetime=True)
    assert b"\xdc" in frame or b"\xdd" in frame or b"\xde" in frame or b"\xdf" in frame
    check_declared(frame)  # does not raise
    MsgpackCodec().decode(frame)


def test_invalid_utf8_is_left_to_the_decoder() -> None:
    frame = wide(b"\xa2\xff\xfe")
    check_declared(frame)  # well formed: the walk does not decode strings
    assert refusal(frame).code == CloseCode.INVALID_PAYLOAD


def test_short_frames_are_decoded_without_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    # 42 nested array16 headers, each declaring 128 elements, in 128 bytes:
    # the worst a frame that short can do without the walk (see
    # _UNWALKED_SIZE). The decoder refuses it, having allocated some 45 KB.
    walked: list[bytes] = []
    monkeypatch.setattr(codecs, "check_declared", walked.append)
    frame = b"\xdc\x00\x80" * 42 + b"\xc0\xc0"
    assert len(frame) == codecs._UNWALKED_SIZE
    tracemalloc.start()
    try:
        assert refusal(frame).code == CloseCode.INVALID_PAYLOAD
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert walked == []
    assert peak < 64 * 1024
    # One byte longer, the frame is walked first.
    assert refusal(frame + b"\xc0").code == CloseCode.INVALID_PAYLOAD
    assert walked == [frame + b"\xc0"]


def test_short_frames_are_walked_when_containers_may_be_longer_than_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With max_container_len over 128, msgpack would take a short frame's
    # declared lengths up to it, not up to the frame's length.
    walked: list[bytes] = []
    monkeypatch.setattr(codecs, "check_declared", walked.append)
    frame = b"\x94\x02\x01\xa1f" + b"\xdc\x03\xe8" * 30
    refusal(frame, MsgpackCodec(max_container_len=1000))
    assert walked == [frame]
    refusal(frame, MsgpackCodec(max_container_len=100))
    assert walked == [frame]  # at most 100 elements each: not walked


# -- the lean path: calls and returns without message objects --------------------


@pytest.mark.parametrize("message", ROUND_TRIPS, ids=repr)
def test_lean_path_is_the_same_wire_and_the_same_checks(message: Message) -> None:
    codec = MsgpackCodec()
    frame = codec.encode(message)
    if type(message) is Call:
        assert codec.encode_call(*astuple(message)[:5]) == frame
    if type(message) is Return:
        assert codec.encode_return(message.uid, message.value) == frame
    lean = codec.decode_lean(frame)
    if type(message) in (Call, Return):
        # As it is on the wire: [kind, uid, ...], the fields decode() reads.
        assert lean == msgpack.unpackb(frame, raw=False)
    else:
        assert lean == message


def test_lean_call_fields() -> None:
    codec = MsgpackCodec()
    frame = codec.encode_call(5, "a.b", (1, "x"), None, 3)  # a tuple travels as a list
    assert codec.decode_lean(frame) == [CALL, 5, "a.b", [1, "x"], None, 3]
    assert codec.decode(frame) == Call(5, "a.b", [1, "x"], None, 3)


@pytest.mark.parametrize(("what", "obj"), SHAPE_ERRORS, ids=[w for w, _ in SHAPE_ERRORS])
def test_lean_decode_refuses_what_decode_refuses(what: str, obj: object) -> None:
    with pytest.raises(ProtocolError) as info:
        MsgpackCodec().decode_lean(pack(obj))
    assert info.value.code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize(("kind", "shape"), UID_SHAPES, ids=[k for k, _ in UID_SHAPES])
@pytest.mark.parametrize(("what", "uid"), BAD_UIDS, ids=[w for w, _ in BAD_UIDS])
def test_lean_decode_refuses_bad_uids(kind: str, shape: Any, what: str, uid: object) -> None:
    with pytest.raises(ProtocolError):
        MsgpackCodec().decode_lean(pack(shape(uid)))


@pytest.mark.parametrize(
    "args",
    [
        [{1: "int key"}],  # flat check: a map, so the frame is checked
        [[{2: "nested int key"}]],
        [msgpack.ExtType(5, b"x")],
        [_deep()],
    ],
    ids=["int-key map", "nested int-key map", "ext", "deep"],
)
def test_lean_encode_still_refuses_what_the_peer_would(args: list[Any]) -> None:
    codec = MsgpackCodec()
    with pytest.raises(EncodeError):
        codec.encode_call(1, "f", args, None, None)
    with pytest.raises(EncodeError):
        codec.encode_call(1, "f", args, None, 7)
    with pytest.raises(EncodeError):
        codec.encode_return(1, args)


@pytest.mark.parametrize("value", [2**64, "\ud800", 1j], ids=["2**64", "lone surrogate", "complex"])
def test_lean_encode_of_a_bad_scalar_raises_and_recovers(value: object) -> None:
    codec = MsgpackCodec()
    with pytest.raises(EncodeError):
        codec.encode_return(1, value)
    with pytest.raises(EncodeError):
        codec.encode_call(1, "f", [value], None, None)
    assert codec.decode(codec.encode_return(2, "ok")) == Return(2, "ok")
