"""
Sans-I/O tests of :class:`wsrpc.protocol.RpcProtocol`: two protocol objects
pass frames to each other by hand; no socket, no event loop.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from wsrpc import CloseCode, EncodeError, MsgpackCodec, RemoteError
from wsrpc.exceptions import ProtocolError, StateError
from wsrpc.messages import Accept, Call, Cancel, Error, Header, Message, Return
from wsrpc.protocol import CALL_KIND, RETURN_KIND, Phase, RpcProtocol, Side


def make(
    side: Side,
    *,
    max_calls: int = 16,
    max_size: int | None = 2**20,
    send_tracebacks: bool = False,
) -> RpcProtocol:
    return RpcProtocol(
        side,
        MsgpackCodec(),
        max_calls=max_calls,
        max_size=max_size,
        send_tracebacks=send_tracebacks,
    )


def handshake(client: RpcProtocol, server: RpcProtocol, value: Any = None) -> tuple[Header, Accept]:
    header = server.receive_header(client.send_header(value))
    accept = client.receive_accept(server.send_accept())
    return header, accept


def open_pair(**server_options: Any) -> tuple[RpcProtocol, RpcProtocol]:
    client, server = make(Side.CLIENT), make(Side.SERVER, **server_options)
    handshake(client, server)
    return client, server


def frame_of(message: Message) -> bytes:
    return MsgpackCodec().encode(message)


def decode(frame: bytes | str) -> Message:
    return MsgpackCodec().decode(frame)


def phase(protocol: RpcProtocol) -> Phase:
    """The phase, read through a call so that mypy does not narrow it."""
    return protocol.phase


def peer_limits(protocol: RpcProtocol) -> tuple[int | None, int | None]:
    return protocol.peer_max_calls, protocol.peer_max_size


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a real traceback, as a provider's exception has."""
    try:
        raise exc
    except BaseException as caught:
        return caught


# -- handshake -----------------------------------------------------------------


def test_full_handshake() -> None:
    client, server = make(Side.CLIENT), make(Side.SERVER)
    assert phase(client) is Phase.HANDSHAKE and phase(server) is Phase.HANDSHAKE
    header_frame = client.send_header({"user": "ann", "token": b"\x00"})
    assert isinstance(header_frame, bytes)
    assert phase(client) is Phase.HANDSHAKE  # still waiting for the verdict
    header = server.receive_header(header_frame)
    assert header.value == {"user": "ann", "token": b"\x00"}
    assert phase(server) is Phase.HANDSHAKE  # the application decides
    accept_frame = server.send_accept()
    assert phase(server) is Phase.OPEN
    accept = client.receive_accept(accept_frame)
    assert isinstance(accept, Accept)
    assert phase(client) is Phase.OPEN


def test_limits_are_exchanged() -> None:
    client = make(Side.CLIENT, max_calls=3, max_size=1000)
    server = make(Side.SERVER, max_calls=7, max_size=5000)
    assert peer_limits(client) == (None, None)
    assert peer_limits(server) == (None, None)
    header, accept = handshake(client, server, "hello")
    assert (header.max_calls, header.max_size) == (3, 1000)
    assert (accept.max_calls, accept.max_size) == (7, 5000)
    assert peer_limits(server) == (3, 1000)
    assert peer_limits(client) == (7, 5000)
    # Our own limits are unchanged.
    assert (client.max_calls, client.max_size) == (3, 1000)
    assert (server.max_calls, server.max_size) == (7, 5000)


def test_unbounded_size_is_not_advertised() -> None:
    client = make(Side.CLIENT, max_size=None)
    server = make(Side.SERVER, max_size=None)
    handshake(client, server)
    assert client.peer_max_size is None
    assert server.peer_max_size is None
    assert client.peer_max_calls == 16 and server.peer_max_calls == 16


def test_header_without_limits_leaves_peer_limits_unknown() -> None:
    server = make(Side.SERVER)
    header = server.receive_header(frame_of(Header("v")))
    assert header == Header("v")
    assert server.peer_max_calls is None and server.peer_max_size is None


@pytest.mark.parametrize(
    "message",
    [Accept(), Call(1, "f", []), Return(1, None), Error(1, "E", "m"), Cancel(1)],
    ids=repr,
)
def test_first_message_not_a_header(message: Message) -> None:
    server = make(Side.SERVER)
    with pytest.raises(ProtocolError) as info:
        server.receive_header(frame_of(message))
    assert info.value.code == CloseCode.PROTOCOL_ERROR
    assert server.phase is Phase.HANDSHAKE


def test_undecodable_header_frame_keeps_codec_close_code() -> None:
    server = make(Side.SERVER)
    with pytest.raises(ProtocolError) as info:
        server.receive_header(b"\xc1")
    assert info.value.code == CloseCode.INVALID_PAYLOAD
    with pytest.raises(ProtocolError) as info:
        server.receive_header("text")
    assert info.value.code == CloseCode.UNSUPPORTED_DATA


@pytest.mark.parametrize(
    "message",
    [Header(None), Call(1, "f", []), Return(1, None), Error(1, "E", "m"), Cancel(1)],
    ids=repr,
)
def test_receive_accept_with_non_accept(message: Message) -> None:
    client = make(Side.CLIENT)
    client.send_header(None)
    with pytest.raises(ProtocolError) as info:
        client.receive_accept(frame_of(message))
    assert info.value.code == CloseCode.PROTOCOL_ERROR
    assert client.phase is Phase.HANDSHAKE
    assert client.peer_max_calls is None and client.peer_max_size is None


def test_handshake_methods_on_the_wrong_side() -> None:
    client, server = make(Side.CLIENT), make(Side.SERVER)
    with pytest.raises(StateError):
        server.send_header(None)
    with pytest.raises(StateError):
        client.receive_header(frame_of(Header(None)))
    with pytest.raises(StateError):
        client.send_accept()
    with pytest.raises(StateError):
        server.receive_accept(frame_of(Accept()))
    # None of that changed their state.
    assert client.phase is Phase.HANDSHAKE and server.phase is Phase.HANDSHAKE


def test_handshake_methods_after_open() -> None:
    client, server = open_pair()
    with pytest.raises(StateError):
        client.send_header(None)
    with pytest.raises(StateError):
        client.receive_accept(frame_of(Accept()))
    with pytest.raises(StateError):
        server.send_accept()
    with pytest.raises(StateError):
        server.receive_header(frame_of(Header(None)))


@pytest.mark.parametrize("side", [Side.CLIENT, Side.SERVER])
def test_receive_before_open(side: Side) -> None:
    protocol = make(side)
    with pytest.raises(StateError):
        protocol.receive(frame_of(Call(1, "f", [])))
    assert protocol.incoming == set()


def test_receive_on_client_waiting_for_accept() -> None:
    client = make(Side.CLIENT)
    client.send_header(None)
    with pytest.raises(StateError):
        client.receive(frame_of(Return(1, None)))


def test_receive_on_server_that_read_the_header_but_not_accepted() -> None:
    server = make(Side.SERVER)
    server.receive_header(frame_of(Header(None)))
    with pytest.raises(StateError):
        server.receive(frame_of(Call(1, "f", [])))


@pytest.mark.parametrize("message", [Header(None), Header("x", 1, 100), Accept()], ids=repr)
def test_handshake_messages_while_open(message: Message) -> None:
    client, server = open_pair()
    for protocol in (client, server):
        with pytest.raises(ProtocolError) as info:
            protocol.receive(frame_of(message))
        assert info.value.code == CloseCode.PROTOCOL_ERROR


def test_runtime_errors_are_not_wsrpc_protocol_errors() -> None:
    # Misuse of the core by wsrpc itself is a bug, not the peer's fault.
    with pytest.raises(StateError) as info:
        make(Side.SERVER).send_header(None)
    assert not isinstance(info.value, ProtocolError)


# -- calls ---------------------------------------------------------------------


def test_call_and_return_both_directions() -> None:
    client, server = open_pair()

    uid, frame = client.send_call("add", [1, 2], None)
    assert uid == 1
    call = server.receive(frame)
    assert call == Call(1, "add", [1, 2])
    assert server.incoming == {1}
    reply = client.receive(server.send_return(1, 3))
    assert reply == Return(1, 3)
    assert server.incoming == set()
    assert client.outgoing == set()

    # The server calls the client with its own counter.
    uid, frame = server.send_call("notify", [], {"level": "info"})
    assert uid == 1
    call = client.receive(frame)
    assert call == Call(1, "notify", [], {"level": "info"})
    assert client.incoming == {1}
    reply = server.receive(client.send_error(1, ValueError("nope")))
    assert isinstance(reply, Error)
    assert (reply.uid, reply.name, reply.message) == (1, "ValueError", "nope")
    assert client.incoming == set() and server.outgoing == set()


def test_uids_increase_from_one() -> None:
    client, _ = open_pair()
    uids = [client.send_call("f", [i], None)[0] for i in range(10)]
    assert uids == list(range(1, 11))
    assert client.outgoing == set(range(1, 11))
    # Replies, even out of order, do not reset the counter.
    for uid in reversed(uids):
        client.receive(frame_of(Return(uid, None)))
    assert client.outgoing == set()
    assert client.send_call("f", [], None)[0] == 11


def test_uid_in_frame_matches_returned_uid() -> None:
    client, _ = open_pair()
    for expected in (1, 2, 3):
        uid, frame = client.send_call("m", [], None)
        message = decode(frame)
        assert isinstance(message, Call)
        assert message.uid == uid == expected


def test_send_call_kwargs_travel() -> None:
    client, server = open_pair()
    _, frame = client.send_call("f", [1], {"a": 2})
    assert server.receive(frame) == Call(1, "f", [1], {"a": 2})


REPLIES: list[Any] = [lambda uid: Return(uid, 1), lambda uid: Error(uid, "E", "m")]


@pytest.mark.parametrize("make_reply", REPLIES, ids=["return", "error"])
def test_reply_for_unknown_uid_is_dropped(make_reply: Any) -> None:
    client, _ = open_pair()
    uid, _ = client.send_call("f", [], None)
    assert client.receive(frame_of(make_reply(uid + 1))) is None
    assert client.receive(frame_of(make_reply(12345))) is None
    assert client.outgoing == {uid}


def test_second_reply_for_the_same_uid_is_dropped() -> None:
    client, _ = open_pair()
    uid, _ = client.send_call("f", [], None)
    assert client.receive(frame_of(Return(uid, "first"))) == Return(uid, "first")
    assert client.receive(frame_of(Return(uid, "again"))) is None
    assert client.receive(frame_of(Error(uid, "E", "m"))) is None


def test_error_reply_is_delivered() -> None:
    client, _ = open_pair()
    uid, _ = client.send_call("f", [], None)
    reply = client.receive(frame_of(Error(uid, "KeyError", "'k'", "tb")))
    assert reply == Error(uid, "KeyError", "'k'", "tb")
    assert client.outgoing == set()


@pytest.mark.parametrize("make_reply", REPLIES, ids=["return", "error"])
def test_reply_after_send_cancel_is_dropped(make_reply: Any) -> None:
    client, server = open_pair()
    uid, frame = client.send_call("slow", [], None)
    server.receive(frame)
    cancel_frame = client.send_cancel(uid)
    assert cancel_frame is not None
    assert decode(cancel_frame) == Cancel(uid)
    assert client.outgoing == set()
    assert client.receive(frame_of(make_reply(uid))) is None


def test_send_cancel_of_unknown_or_answered_call() -> None:
    client, _ = open_pair()
    assert client.send_cancel(1) is None  # never sent
    uid, _ = client.send_call("f", [], None)
    client.receive(frame_of(Return(uid, None)))
    assert client.send_cancel(uid) is None  # already answered
    uid, _ = client.send_call("f", [], None)
    assert client.send_cancel(uid) is not None
    assert client.send_cancel(uid) is None  # already cancelled


class _NoCancelCodec(MsgpackCodec):
    supports_cancel = False


def test_send_cancel_without_codec_support_still_forgets_the_call() -> None:
    client = RpcProtocol(Side.CLIENT, _NoCancelCodec(), max_calls=1, max_size=None)
    server = make(Side.SERVER)
    handshake(client, server)
    uid, _ = client.send_call("f", [], None)
    assert client.send_cancel(uid) is None
    assert client.outgoing == set()
    assert client.receive(frame_of(Return(uid, None))) is None


def test_cancel_of_a_running_call_is_delivered() -> None:
    client, server = open_pair()
    uid, frame = client.send_call("slow", [], None)
    server.receive(frame)
    cancel_frame = client.send_cancel(uid)
    assert cancel_frame is not None
    assert server.receive(cancel_frame) == Cancel(uid)
    # Delivering the cancel does not forget the call; drop_incoming does.
    assert server.incoming == {uid}
    server.drop_incoming(uid)
    assert server.incoming == set()
    assert server.receive(cancel_frame) is None


def test_cancel_for_unknown_uid_is_dropped() -> None:
    _, server = open_pair()
    assert server.receive(frame_of(Cancel(1))) is None
    assert server.receive(frame_of(Cancel(2**63 - 1))) is None
    assert server.incoming == set()


def test_cancel_for_answered_call_is_dropped() -> None:
    _, server = open_pair()
    server.receive(frame_of(Call(4, "f", [])))
    server.send_return(4, None)
    assert server.receive(frame_of(Cancel(4))) is None


def test_call_reusing_a_running_uid() -> None:
    _, server = open_pair()
    assert server.receive(frame_of(Call(1, "f", []))) == Call(1, "f", [])
    with pytest.raises(ProtocolError) as info:
        server.receive(frame_of(Call(1, "g", [])))
    assert info.value.code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("finish", ["return", "error", "refusal", "drop"])
def test_uid_may_be_reused_once_finished(finish: str) -> None:
    _, server = open_pair()
    server.receive(frame_of(Call(1, "f", [])))
    if finish == "return":
        server.send_return(1, None)
    elif finish == "error":
        server.send_error(1, ValueError())
    elif finish == "refusal":
        server.send_refusal(1, "no")
    else:
        server.drop_incoming(1)
    assert server.incoming == set()
    assert server.receive(frame_of(Call(1, "f", []))) == Call(1, "f", [])


def test_incoming_calls_are_tracked_independently_of_outgoing() -> None:
    client, server = open_pair()
    # The client has outgoing call 1; the server may still call the client with id 1.
    uid, frame = client.send_call("f", [], None)
    server.receive(frame)
    _, back = server.send_call("g", [], None)
    assert client.receive(back) == Call(1, "g", [])
    assert client.outgoing == {1} and client.incoming == {1}
    # The return for the client's call 1 is a reply, not a reuse.
    assert client.receive(server.send_return(uid, "ok")) == Return(1, "ok")
    assert client.incoming == {1} and client.outgoing == set()


def test_undecodable_frame_while_open() -> None:
    client, _ = open_pair()
    with pytest.raises(ProtocolError) as info:
        client.receive(b"\x93\x03")
    assert info.value.code == CloseCode.INVALID_PAYLOAD
    with pytest.raises(ProtocolError) as info:
        client.receive("text")
    assert info.value.code == CloseCode.UNSUPPORTED_DATA


# -- send_return / send_call size and encoding limits ----------------------------


def test_send_return_with_unencodable_value() -> None:
    _, server = open_pair()
    server.receive(frame_of(Call(1, "f", [])))
    frame = server.send_return(1, object())
    reply = decode(frame)
    assert isinstance(reply, Error)
    assert reply.uid == 1
    assert reply.name == "EncodeError"
    assert reply.message
    assert reply.traceback is None
    assert server.incoming == set()
    # The codec is still usable for the next reply.
    server.receive(frame_of(Call(2, "f", [])))
    assert decode(server.send_return(2, [1, 2])) == Return(2, [1, 2])


def test_send_return_larger_than_peer_max_size() -> None:
    client = make(Side.CLIENT, max_size=1000)
    server = make(Side.SERVER)
    handshake(client, server)
    uid, frame = client.send_call("big", [], None)
    server.receive(frame)
    reply_frame = server.send_return(uid, "x" * 5000)
    assert len(reply_frame) <= 1000
    reply = client.receive(reply_frame)
    assert isinstance(reply, Error)
    assert reply.uid == uid
    assert reply.name == "EncodeError"
    assert "1000" in reply.message
    assert server.incoming == set()


def test_send_return_at_exactly_peer_max_size_is_sent() -> None:
    codec = MsgpackCodec()
    size = len(codec.encode(Return(1, "x" * 500)))
    client = make(Side.CLIENT, max_size=size)
    server = make(Side.SERVER)
    handshake(client, server)
    server.receive(frame_of(Call(1, "f", [])))
    assert decode(server.send_return(1, "x" * 500)) == Return(1, "x" * 500)
    server.receive(frame_of(Call(2, "f", [])))
    reply = decode(server.send_return(2, "x" * 501))
    assert isinstance(reply, Error) and reply.name == "EncodeError"


def test_send_return_without_peer_limit_sends_large_values() -> None:
    client = make(Side.CLIENT, max_size=None)
    server = make(Side.SERVER)
    handshake(client, server)
    server.receive(frame_of(Call(1, "f", [])))
    assert decode(server.send_return(1, "x" * 100_000)) == Return(1, "x" * 100_000)


def test_send_call_larger_than_peer_max_size() -> None:
    client = make(Side.CLIENT)
    server = make(Side.SERVER, max_size=200)
    handshake(client, server)
    with pytest.raises(EncodeError):
        client.send_call("f", ["x" * 1000], None)
    assert client.outgoing == set()
    with pytest.raises(EncodeError):
        client.send_call("f", [], {"k": "x" * 1000})
    assert client.outgoing == set()
    # No id was consumed by the failed calls.
    uid, frame = client.send_call("f", ["small"], None)
    assert uid == 1
    assert len(frame) <= 200
    assert client.outgoing == {1}


def test_send_call_with_unencodable_argument() -> None:
    client, _ = open_pair()
    with pytest.raises(EncodeError):
        client.send_call("f", [object()], None)
    with pytest.raises(EncodeError):
        client.send_call("f", [], {"n": 2**70})
    assert client.outgoing == set()
    assert client.send_call("f", [], None)[0] == 1


# -- errors and refusals -------------------------------------------------------


def test_send_error_carries_type_name_and_message() -> None:
    _, server = open_pair()
    server.receive(frame_of(Call(1, "f", [])))
    reply = decode(server.send_error(1, raised(KeyError("missing"))))
    assert isinstance(reply, Error)
    assert reply.uid == 1
    assert reply.name == "KeyError"
    assert reply.message == str(KeyError("missing"))
    assert reply.traceback is None
    assert server.incoming == set()


def test_send_error_of_a_custom_exception_uses_its_class_name() -> None:
    class InsufficientFunds(Exception):
        pass

    _, server = open_pair()
    reply = decode(server.send_error(3, raised(InsufficientFunds("balance 0"))))
    assert reply == Error(3, "InsufficientFunds", "balance 0", None)


def test_send_error_without_tracebacks_even_when_the_exception_has_one() -> None:
    _, server = open_pair(send_tracebacks=False)
    exc = raised(ValueError("secret path /home/x"))
    assert exc.__traceback__ is not None
    reply = decode(server.send_error(1, exc))
    assert isinstance(reply, Error)
    assert reply.traceback is None


def test_send_error_with_tracebacks() -> None:
    _, server = open_pair(send_tracebacks=True)
    reply = decode(server.send_error(1, raised(ValueError("bad input"))))
    assert isinstance(reply, Error)
    assert reply.name == "ValueError"
    assert reply.message == "bad input"
    assert reply.traceback is not None
    assert "Traceback" in reply.traceback
    assert "ValueError: bad input" in reply.traceback
    assert "raised" in reply.traceback  # the frame that raised it


def test_send_error_forwards_a_remote_error() -> None:
    _, server = open_pair()
    exc = RemoteError("ZeroDivisionError", "division by zero", "remote tb")
    reply = decode(server.send_error(1, exc))
    assert isinstance(reply, Error)
    assert (reply.name, reply.message) == ("ZeroDivisionError", "division by zero")
    # A traceback from a third party is not relayed unless we send ours.
    assert reply.traceback is None


def test_send_refusal() -> None:
    client, server = open_pair(send_tracebacks=True)
    uid, frame = client.send_call("_private", [], None)
    server.receive(frame)
    reply = client.receive(server.send_refusal(uid, "'_private' is not callable"))
    assert reply == Error(uid, "MemberAccessError", "'_private' is not callable", None)
    assert server.incoming == set()


def test_huge_traceback_is_dropped_to_fit_peer_max_size() -> None:
    client = make(Side.CLIENT, max_size=1024)
    server = make(Side.SERVER, send_tracebacks=True)
    handshake(client, server)

    def recurse(n: int) -> None:
        if n == 0:
            raise ValueError("deep")
        recurse(n - 1)

    try:
        recurse(60)
    except ValueError as exc:
        error: BaseException = exc
    frame = server.send_error(1, error)
    assert len(frame) <= 1024
    reply = decode(frame)
    assert isinstance(reply, Error)
    assert reply.name == "ValueError"
    assert reply.message.startswith("deep")


ERROR_FRAMES: list[tuple[str, Any]] = [
    ("send_error", lambda p, text: p.send_error(1, raised(ValueError(text)))),
    ("send_refusal", lambda p, text: p.send_refusal(1, text)),
    ("send_return unencodable", lambda p, text: p.send_return(1, object())),
    ("send_return too large", lambda p, text: p.send_return(1, text)),
]


@pytest.mark.parametrize(("what", "send"), ERROR_FRAMES, ids=[w for w, _ in ERROR_FRAMES])
@pytest.mark.parametrize("limit", [64, 256, 1024])
@pytest.mark.parametrize("char", ["x", "😀"])
def test_error_frame_always_fits_peer_max_size(what: str, send: Any, limit: int, char: str) -> None:
    # 64 is the smallest max_message_size wsrpc lets a peer configure; an
    # error frame over the peer's limit makes the peer close with 1009
    # instead of failing one call.
    client = make(Side.CLIENT, max_size=limit)
    server = make(Side.SERVER, send_tracebacks=True)
    handshake(client, server)
    server.receive(frame_of(Call(1, "f", [])))
    frame = send(server, char * 10_000)
    assert len(frame) <= limit, f"{what}: {len(frame)} bytes > peer limit {limit}"
    reply = decode(frame)
    assert isinstance(reply, Error)
    assert reply.uid == 1


def test_frames_are_bytes_for_a_binary_codec() -> None:
    client, server = open_pair()
    _, call = client.send_call("f", [], None)
    frames: list[bytes | str | None] = [
        call,
        client.send_cancel(1),
        server.send_return(1, None),
        server.send_error(1, ValueError()),
        server.send_refusal(1, "no"),
    ]
    for frame in frames:
        assert type(frame) is bytes
        assert isinstance(msgpack.unpackb(frame), list)


# -- the lean path ---------------------------------------------------------------


def test_receive_lean_gives_calls_and_returns_as_lists_with_the_same_state() -> None:
    client, server = open_pair()
    uid, frame = client.send_call("add", (1, 2), None)  # a tuple: any sequence
    call = server.receive_lean(frame)
    assert call == [CALL_KIND, uid, "add", [1, 2]]
    assert uid in server.incoming
    with pytest.raises(ProtocolError) as info:
        server.receive_lean(frame)  # the id is still running
    assert info.value.code == CloseCode.PROTOCOL_ERROR
    reply = server.send_return(uid, 3)
    assert uid not in server.incoming
    assert client.receive_lean(reply) == [RETURN_KIND, uid, 3]
    assert uid not in client.outgoing
    assert client.receive_lean(reply) is None  # a second reply is dropped


def test_receive_lean_gives_other_messages_as_receive_does() -> None:
    client, server = open_pair()
    uid, frame = client.send_call("f", [], {"k": 1}, None)
    assert server.receive_lean(frame) == [CALL_KIND, uid, "f", [], {"k": 1}]
    error = server.send_error(uid, ValueError("no"))
    assert client.receive_lean(error) == Error(uid, "ValueError", "no")
    uid, frame = client.send_call("g", [], None)
    assert server.receive_lean(client.send_cancel(uid) or b"") is None  # not running here
    server.receive_lean(frame)
    assert server.receive_lean(frame_of(Cancel(uid))) == Cancel(uid)


def test_receive_lean_before_open() -> None:
    with pytest.raises(StateError):
        make(Side.SERVER).receive_lean(frame_of(Call(1, "f", [])))
