"""TgridCodec, sans I/O: TGrid's JSON frames to wsrpc's messages and back."""

from __future__ import annotations

import json
import random
import sys
from typing import Any

import pytest

import wsrpc
from wsrpc.codecs import Codec
from wsrpc.messages import Accept, Call, Cancel, CloseCode, Error, Header, Message, Return
from wsrpc.protocol import Phase, RpcProtocol, Side
from wsrpc.tgrid import MAX_DEPTH, TgridCodec, _too_deep

codec = TgridCodec()


def refusal(frame: bytes | str) -> wsrpc.ProtocolError:
    with pytest.raises(wsrpc.ProtocolError) as info:
        codec.decode(frame)
    return info.value


def test_satisfies_the_codec_protocol() -> None:
    as_codec: Codec = codec
    assert (as_codec.name, as_codec.binary, as_codec.supports_cancel) == ("tgrid", False, False)
    assert wsrpc.tgrid.__all__ == ["TgridCodec"]


# -- what TGrid sends (tgrid 1.2.1, see TGRID-WIRE.md) -------------------------

TGRID_FRAMES: list[tuple[str, Message]] = [
    ('{"header":{"token":"secret","n":[1,2]}}', Header({"token": "secret", "n": [1, 2]})),
    ('{"header":null}', Header(None)),
    ("{}", Header(None)),  # JSON.stringify({header: undefined})
    ("1", Accept()),
    (
        '{"uid":2,"listener":"sum","parameters":'
        '[{"type":"number","value":1},{"type":"number","value":2}]}',
        Call(2, "sum", [1, 2]),
    ),
    (
        '{"uid":3,"listener":"scientific.sqrt","parameters":[{"type":"number","value":16}]}',
        Call(3, "scientific.sqrt", [16]),
    ),
    ('{"uid":4,"listener":"ping","parameters":[]}', Call(4, "ping", [])),
    (
        '{"uid":5,"listener":"f","parameters":[{"type":"undefined"},'
        '{"type":"object","value":null},{"type":"string","value":"é"},'
        '{"type":"boolean","value":false},{"type":"object","value":{"a":[1.5]}}]}',
        Call(5, "f", [None, None, "é", False, {"a": [1.5]}]),
    ),
    ('{"uid":1,"success":true,"value":5}', Return(1, 5)),
    ('{"uid":3,"success":true}', Return(3, None)),  # a void method
    ('{"uid":3,"success":true,"value":null}', Return(3, None)),
    (
        '{"uid":6,"success":false,"value":{"name":"TypeError","message":"boom",'
        '"stack":"TypeError: boom\\n    at f (x.js:1:1)"}}',
        Error(6, "TypeError", "boom", "TypeError: boom\n    at f (x.js:1:1)"),
    ),
    # serializeError() spreads own enumerable properties: extra fields.
    (
        '{"uid":7,"success":false,"value":{"status":1008,"name":"Error",'
        '"stack":"Error: x","message":"x"}}',
        Error(7, "Error", "x", "Error: x"),
    ),
    # RFC refusals are plain Errors.
    (
        '{"uid":8,"success":false,"value":{"name":"Error","message":"Error on '
        "Communicator._Handle_function(): RFC does not allow access to a member "
        'starting with the underscore: Provider._secret()","stack":"s"}}',
        Error(
            8,
            "Error",
            "Error on Communicator._Handle_function(): RFC does not allow access to a "
            "member starting with the underscore: Provider._secret()",
            "s",
        ),
    ),
    # Thrown non-Error values are sent as they are.
    ('{"uid":9,"success":false,"value":"just a string"}', Error(9, "Error", "just a string")),
    ('{"uid":10,"success":false,"value":42}', Error(10, "Error", "42")),
    ('{"uid":11,"success":false,"value":null}', Error(11, "Error", "null")),
    ('{"uid":12,"success":false,"value":[1,"a"]}', Error(12, "Error", '[1,"a"]')),
    ('{"uid":13,"success":false}', Error(13, "Error", "")),  # throw undefined
    ('{"uid":14,"success":false,"value":{"code":5}}', Error(14, "Error", "")),
    (
        '{"uid":15,"success":false,"value":{"name":7,"message":{"a":1},"stack":false}}',
        Error(15, "7", '{"a":1}', None),
    ),
]


@pytest.mark.parametrize(("frame", "message"), TGRID_FRAMES)
def test_decodes_the_frames_tgrid_sends(frame: str, message: Message) -> None:
    assert codec.decode(frame) == message


def test_decode_tolerates_unknown_fields_and_whitespace() -> None:
    assert codec.decode(
        ' {"uid":1,"listener":"a","parameters":[{"value":1,"extra":0}],"time":"now"}\n'
    ) == Call(1, "a", [1])
    assert codec.decode('{"uid":1,"success":true,"value":2,"x":null}') == Return(1, 2)
    assert codec.decode('{"header":3,"version":2}') == Header(3)


def test_parameter_type_is_ignored_except_undefined() -> None:
    # The receiver reads "value" only, as TGrid does, unless the type says
    # the argument was undefined; a parameter without value is undefined too.
    frame = (
        '{"uid":1,"listener":"f","parameters":[{"type":"string","value":1},'
        '{"type":"undefined","value":5},{"type":"number"},{}]}'
    )
    assert codec.decode(frame) == Call(1, "f", [1, None, None, None])


def test_a_falsy_listener_means_a_return() -> None:
    # TGrid: a message is a request when its listener is truthy.
    assert codec.decode('{"uid":1,"listener":"","success":true,"value":1}') == Return(1, 1)
    assert codec.decode('{"uid":1,"listener":null,"success":false,"value":"e"}') == Error(
        1, "Error", "e"
    )


def test_a_client_core_speaks_tgrid() -> None:
    protocol = RpcProtocol(Side.CLIENT, codec, max_calls=4, max_size=None)
    protocol.receive_accept(protocol.codec.encode(Accept()))
    assert protocol.phase is Phase.OPEN
    assert protocol.peer_max_calls is None and protocol.peer_max_size is None
    uid, frame = protocol.send_call("scientific.sqrt", [2], None)
    assert json.loads(frame) == {
        "uid": uid,
        "listener": "scientific.sqrt",
        "parameters": [{"type": "number", "value": 2}],
    }
    reply = protocol.receive(f'{{"uid":{uid},"success":false,"value":"nope"}}')
    assert reply == Error(uid, "Error", "nope")
    # A late or unknown reply is dropped, as TGrid drops it.
    assert protocol.receive(f'{{"uid":{uid},"success":true,"value":1}}') is None


# -- what wsrpc sends ----------------------------------------------------------


def test_encodes_exactly_what_tgrid_expects() -> None:
    assert codec.encode(Accept()) == "1"
    assert codec.encode(Accept(max_calls=5, max_size=100)) == "1"  # TGrid has no limits
    assert codec.encode(Header({"token": "t"}, 3, 4)) == '{"header":{"token":"t"}}'
    assert codec.encode(Header(None)) == '{"header":null}'
    assert codec.encode(Call(2, "sum", [1, 2])) == (
        '{"uid":2,"listener":"sum","parameters":'
        '[{"type":"number","value":1},{"type":"number","value":2}]}'
    )
    assert codec.encode(Call(3, "ping", [], {})) == '{"uid":3,"listener":"ping","parameters":[]}'
    assert codec.encode(Return(1, 5)) == '{"uid":1,"success":true,"value":5}'
    assert codec.encode(Return(3, None)) == '{"uid":3,"success":true}'
    assert codec.encode(Return(3, False)) == '{"uid":3,"success":true,"value":false}'
    assert codec.encode(Error(6, "ValueError", "boom")) == (
        '{"uid":6,"success":false,"value":{"name":"ValueError","message":"boom"}}'
    )
    assert codec.encode(Error(6, "ValueError", "boom", "Traceback...")) == (
        '{"uid":6,"success":false,"value":'
        '{"name":"ValueError","message":"boom","stack":"Traceback..."}}'
    )


def test_parameter_types_are_javascript_typeof() -> None:
    args: list[Any] = [1, -2.5, "s", True, False, None, [1], (2,), {"a": 1}, 2**60]
    frame = json.loads(codec.encode(Call(1, "f", args)))
    assert [p["type"] for p in frame["parameters"]] == [
        "number",
        "number",
        "string",
        "boolean",
        "boolean",
        "object",
        "object",
        "object",
        "object",
        "number",
    ]
    assert [p["value"] for p in frame["parameters"]] == [
        1,
        -2.5,
        "s",
        True,
        False,
        None,
        [1],
        [2],
        {"a": 1},
        2**60,
    ]


def test_encoding_is_compact_and_keeps_unicode() -> None:
    frame = codec.encode(Return(1, {"text": "héllo ☃ 𝄞", "n": [1, 2]}))
    assert frame == '{"uid":1,"success":true,"value":{"text":"héllo ☃ 𝄞","n":[1,2]}}'


JSON_VALUES: list[Any] = [
    0,
    -1,
    2**53 - 1,
    -(2**63),
    10**300,
    0.1,
    -1e-300,
    1.7976931348623157e308,
    "",
    'quote " backslash \\ newline \n tab \t nul \0 ☃ 𝄞',
    True,
    False,
    None,
    [],
    {},
    [1, "two", None, [3.5, {"k": [True]}]],
    {"nested": {"deeper": {"list": [{}, [], ""]}}, "": "empty key"},
]


@pytest.mark.parametrize("value", JSON_VALUES)
def test_round_trips_every_json_value(value: Any) -> None:
    for message in (
        Header(value),
        Return(7, value),
        Call(8, "a.b.c", [value, value]),
    ):
        assert codec.decode(codec.encode(message)) == message


def test_round_trips_errors() -> None:
    for message in (
        Error(1, "ValueError", "bad", None),
        Error(2, "KeyError", "", "Traceback (most recent call last):\n  ...\n"),
        Error(3, "Error", 'ünï"côde'),
    ):
        assert codec.decode(codec.encode(message)) == message


def test_lone_surrogates_are_escaped_not_sent_raw() -> None:
    # JSON.stringify escapes a lone surrogate as \ud800; decoding gives a str
    # that cannot be UTF-8 encoded. Sending it back must still give a frame
    # that goes on the wire, and that decodes to the same string.
    decoded = codec.decode('{"uid":1,"success":true,"value":"a\\ud800é"}')
    assert decoded == Return(1, "a\ud800é")
    frame = codec.encode(decoded)
    assert isinstance(frame, str)
    frame.encode("utf-8")  # would raise UnicodeEncodeError if sent raw
    assert "\\ud800" in frame
    assert codec.decode(frame) == decoded


def test_int_keys_become_strings_like_json_stringify() -> None:
    assert codec.decode(codec.encode(Return(1, {1: "a", None: "b"}))) == Return(
        1, {"1": "a", "null": "b"}
    )


# -- what cannot be encoded ----------------------------------------------------


def test_keyword_arguments_cannot_be_encoded() -> None:
    with pytest.raises(wsrpc.EncodeError, match="TGrid calls take positional arguments only"):
        codec.encode(Call(1, "f", [1], {"x": 2}))


def test_cancel_cannot_be_encoded() -> None:
    with pytest.raises(wsrpc.EncodeError):
        codec.encode(Cancel(1))


class Opaque:
    pass


@pytest.mark.parametrize(
    "value",
    [
        b"bytes",
        bytearray(b"x"),
        {1, 2},
        float("nan"),
        float("inf"),
        -float("inf"),
        Opaque(),
        {(1, 2): "tuple key"},
        [1, [object()]],
        10**5000,
    ],
    ids=lambda value: type(value).__name__,
)
def test_unencodable_values_raise_encode_error(value: Any) -> None:
    for message in (Return(1, value), Call(1, "f", [value]), Header(value)):
        with pytest.raises(wsrpc.EncodeError):
            codec.encode(message)


def test_values_nested_too_deep_raise_encode_error() -> None:
    # Three levels are the frame's own ({}, parameters [], parameter {}).
    value: Any = 0
    for _ in range(MAX_DEPTH - 3):
        value = [value]
    assert codec.decode(codec.encode(Call(1, "f", [value]))) == Call(1, "f", [value])
    with pytest.raises(wsrpc.EncodeError, match="deeper"):
        codec.encode(Call(1, "f", [[value]]))
    deep: Any = {}
    for _ in range(100_000):
        deep = {"a": deep}
    with pytest.raises(wsrpc.EncodeError):  # RecursionError inside json, caught
        codec.encode(Return(1, deep))


def test_failed_encode_of_a_return_becomes_an_error_reply_via_the_core() -> None:
    protocol = RpcProtocol(Side.SERVER, codec, max_calls=4, max_size=None)
    protocol.receive_header("{}")
    assert protocol.send_accept() == "1"
    call = protocol.receive('{"uid":1,"listener":"f","parameters":[]}')
    assert call == Call(1, "f", [])
    reply = json.loads(protocol.send_return(1, b"bytes"))
    assert reply["uid"] == 1 and reply["success"] is False
    assert reply["value"]["name"] == "EncodeError"
    # Cancellation never goes out: TGrid has no such message.
    uid, _ = protocol.send_call("g", [], None)
    assert protocol.send_cancel(uid) is None


# -- what cannot be decoded ----------------------------------------------------


def test_binary_frames_are_unsupported_data() -> None:
    for frame in (b"1", b'{"header":null}', b""):
        error = refusal(frame)
        assert error.code == 1003


@pytest.mark.parametrize(
    "frame",
    [
        "",
        " ",
        "{",
        '{"uid":1,',
        "{'uid': 1}",
        '{"uid":1,"success":true}x',
        "\ufeff{}",  # a byte-order mark
        '{"uid":1,"success":true,"value":NaN}',
        '{"uid":1,"success":true,"value":Infinity}',
        '{"uid":1,"success":true,"value":-Infinity}',
        '{"uid":1,"success":true,"value":1e400}',
        '{"uid":1,"success":true,"value":-1e999}',
        '{"uid":1,"success":true,"value":' + "9" * 5000 + "}",
        '{"uid":' + "1" * 4301 + ',"success":true}',
        "undefined",
        '{"uid":1,"success":true,"value":undefined}',
    ],
    ids=lambda frame: repr(frame[:40]),
)
def test_invalid_json_is_invalid_payload(frame: str) -> None:
    error = refusal(frame)
    assert error.code == 1007
    assert len(error.reason.encode()) <= 123  # fits in a close frame


@pytest.mark.parametrize("opening", ["[", '{"a":', '{"uid":1,"success":true,"value":['])
def test_deep_nesting_is_invalid_payload(opening: str) -> None:
    for levels in (MAX_DEPTH + 1, 1_000, 100_000):
        error = refusal(opening * levels)
        assert error.code == CloseCode.INVALID_PAYLOAD
    # Also when the JSON is complete and valid.
    valid = "[" * 100_000 + "]" * 100_000
    assert refusal(valid).code == CloseCode.INVALID_PAYLOAD


def test_nesting_at_the_limit_is_accepted() -> None:
    value = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    frame = '{"uid":1,"success":true,"value":' + value + "}"
    message = codec.decode(frame)
    assert isinstance(message, Return)
    assert refusal(frame.replace("[", "[[", 1).replace("]", "]]", 1)).code == 1007


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = "[[[{{{" * 1000 + '\\"]]]\\\\' * 100
    frame = json.dumps({"uid": 1, "success": True, "value": [text, {"k": text}]})
    assert codec.decode(frame) == Return(1, [text, {"k": text}])


def test_wide_shallow_data_is_not_too_deep() -> None:
    value = [{"a": [i, {"b": []}], "c": "]]]["} for i in range(5_000)]
    assert codec.decode(codec.encode(Return(1, value))) == Return(1, value)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    return 0


def test_depth_check_matches_the_real_depth() -> None:
    # Random chains around the limit with tricky strings hanging off them.
    rng = random.Random(2024)
    strings = ["[", "]", "{", "}", '"', "\\", '\\"', "\\\\", '"]]]', "é", "\ud800", "[{}]"]

    def leaf() -> Any:
        return rng.choice(
            [rng.choice(strings) * rng.randint(0, 3), 1, None, [], {}, [[]], {"a": {}}]
        )

    for _ in range(300):
        value = leaf()
        for index in range(rng.randint(MAX_DEPTH - 8, MAX_DEPTH + 8)):
            items = [leaf() for _ in range(rng.randint(0, 2))] + [value]
            rng.shuffle(items)
            if rng.random() < 0.5:
                value = items
            else:
                value = {rng.choice(strings) + str(i): item for i, item in enumerate(items)}
            del index
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5)
        assert _too_deep(text) == (depth_of(value) > MAX_DEPTH)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("null", "object"),
        ("true", "object"),
        ("0", "object"),
        ("2", "object"),
        ("1.0", "object"),
        ('"1"', "object"),  # TGrid's accept is the bare character 1, not a JSON string
        ("[]", "object"),
        ('[{"uid":1,"success":true}]', "object"),
        ('{"x":1}', "listener, a uid or a header"),
        ('{"listener":"f"}', "uid"),
        ('{"uid":0,"listener":"f","parameters":[]}', "uid"),
        ('{"uid":-1,"success":true}', "uid"),
        ('{"uid":1.0,"success":true}', "uid"),
        ('{"uid":1.5,"success":true}', "uid"),
        ('{"uid":true,"success":true}', "uid"),
        ('{"uid":"1","success":true}', "uid"),
        ('{"uid":null,"success":true}', "uid"),
        ('{"uid":9007199254740992,"success":true}', "uid"),
        ('{"uid":' + "9" * 4000 + ',"success":true}', "uid"),
        ('{"uid":1,"listener":5,"parameters":[]}', "listener"),
        ('{"uid":1,"listener":["f"],"parameters":[]}', "listener"),
        ('{"uid":1,"listener":true,"parameters":[]}', "listener"),
        ('{"uid":1,"listener":"f"}', "parameters"),
        ('{"uid":1,"listener":"f","parameters":null}', "parameters"),
        ('{"uid":1,"listener":"f","parameters":{"0":1}}', "parameters"),
        ('{"uid":1,"listener":"f","parameters":[1]}', "parameter"),
        ('{"uid":1,"listener":"f","parameters":[null]}', "parameter"),
        ('{"uid":1,"listener":"f","parameters":[[{"value":1}]]}', "parameter"),
        ('{"uid":1}', "success"),
        ('{"uid":1,"success":1,"value":2}', "success"),
        ('{"uid":1,"success":"true"}', "success"),
        ('{"uid":1,"success":null}', "success"),
        ('{"uid":1,"listener":"","header":1}', "success"),
    ],
)
def test_wrong_shapes_are_protocol_errors(frame: str, reason: str) -> None:
    error = refusal(frame)
    assert error.code == 1002
    assert reason in error.reason
    assert len(error.reason.encode()) <= 123


def test_refusal_reasons_never_echo_peer_data() -> None:
    secret = "x" * 200
    for frame in (
        '{"uid":"' + secret + '","success":true}',
        '{"uid":1,"listener":{"' + secret + '":1},"parameters":[]}',
        '{"' + secret + '":1}',
        secret,
    ):
        assert secret not in refusal(frame).reason


def test_headers_and_accepts_are_refused_by_the_core_once_open() -> None:
    protocol = RpcProtocol(Side.SERVER, codec, max_calls=4, max_size=None)
    assert protocol.receive_header('{"header":{"token":"t"}}') == Header({"token": "t"})
    protocol.send_accept()
    for frame in ('{"header":1}', "{}", "1"):
        with pytest.raises(wsrpc.ProtocolError) as info:
            protocol.receive(frame)
        assert info.value.code == CloseCode.PROTOCOL_ERROR


def test_a_call_as_first_frame_is_not_a_header() -> None:
    protocol = RpcProtocol(Side.SERVER, codec, max_calls=4, max_size=None)
    with pytest.raises(wsrpc.ProtocolError) as info:
        protocol.receive_header('{"uid":1,"listener":"f","parameters":[]}')
    assert info.value.code == CloseCode.PROTOCOL_ERROR


def test_the_client_accepts_only_the_exact_accept_frame() -> None:
    for frame in ('"1"', "1 ", " 1", "1.0", "01"):
        protocol = RpcProtocol(Side.CLIENT, codec, max_calls=4, max_size=None)
        with pytest.raises(wsrpc.ProtocolError):
            protocol.receive_accept(frame)
        assert protocol.phase is Phase.HANDSHAKE


def test_decoding_deep_input_leaves_the_recursion_limit_alone() -> None:
    limit = sys.getrecursionlimit()
    for _ in range(3):
        assert refusal("[" * 100_000).code == CloseCode.INVALID_PAYLOAD
    assert sys.getrecursionlimit() == limit
    assert codec.decode('{"uid":1,"success":true,"value":[[1]]}') == Return(1, [[1]])
