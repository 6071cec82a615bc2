"""
Coverage-guided fuzzing of wsrpc's decoders and protocol core with atheris.

The invariant: whatever bytes a peer sends, the only exception that escapes
``MsgpackCodec.decode``, ``TgridCodec.decode``, ``RpcProtocol.receive_header``,
``RpcProtocol.receive_accept`` and ``RpcProtocol.receive`` is
:exc:`wsrpc.exceptions.ProtocolError` (the I/O layer turns it into a close
code). Anything else (a ``KeyError``, a ``RecursionError``, a
``UnicodeEncodeError``...) would be a bug: it reaches the receive loop's
"internal error" path instead of a clean close. The harness also checks:

* a decoded message re-encodes (or raises ``EncodeError``, never anything
  else) to a frame that decodes again, and re-encoding that is stable;
* ``RpcProtocol.receive`` keeps its bookkeeping consistent: a Call adds its
  id to ``incoming`` (a running id is refused, state untouched), a reply
  removes its id from ``outgoing`` or is dropped, a refused frame changes
  nothing.

Targets (``--target=NAME``, default ``msgpack``):

``msgpack``
    The input is one binary frame: decoded by ``MsgpackCodec``, given to a
    server's ``receive_header``, a client's ``receive_accept`` and twice to
    an open server core with calls in flight both ways.
``tgrid``
    The same with ``TgridCodec``; the input is a text frame (UTF-8, invalid
    bytes replaced, as a WebSocket text frame is always valid UTF-8).
``stateful``
    The input drives a sequence on an open msgpack server core: send calls,
    receive frames carved from the input, answer or drop incoming calls,
    cancel outgoing ones; the bookkeeping invariants are checked after each
    step.

See fuzz/README.md for the commands.
"""

from __future__ import annotations

import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["wsrpc"]):
    from wsrpc.codecs import MsgpackCodec
    from wsrpc.exceptions import EncodeError, ProtocolError
    from wsrpc.messages import Accept, Call, Cancel, Error, Header, Message, Return
    from wsrpc.protocol import Phase, RpcProtocol, Side
    from wsrpc.tgrid import TgridCodec

Codec = MsgpackCodec | TgridCodec

MSGPACK = MsgpackCodec()
TGRID = TgridCodec()


def check_decode(codec: Codec, frame: bytes | str) -> Message | None:
    """Decode ``frame``: only ProtocolError may escape. Check re-encoding."""
    try:
        message = codec.decode(frame)
    except ProtocolError as exc:
        assert isinstance(exc.code, int) and 1000 <= exc.code <= 1011, exc.code
        return None
    assert isinstance(message, (Header, Accept, Call, Return, Error, Cancel)), message
    try:
        again = codec.encode(message)
    except EncodeError:
        # Legitimate: msgpack decodes deeper nesting than it encodes, TGrid
        # has no Cancel and no kwargs to send.
        return message
    # What the encoder produces, the decoder accepts, and it is a fixed point.
    second = codec.decode(again)
    assert type(second) is type(message), (message, second)
    assert codec.encode(second) == again, (message, second)
    return message


def open_server(codec: Codec, *, outgoing: int = 3, incoming: tuple[int, ...] = ()) -> RpcProtocol:
    """A server core past its handshake, with ``outgoing`` calls waiting."""
    client = RpcProtocol(Side.CLIENT, codec, max_calls=4, max_size=None)
    server = RpcProtocol(Side.SERVER, codec, max_calls=4, max_size=1 << 20)
    server.receive_header(client.send_header({"fuzz": True}))
    client.receive_accept(server.send_accept())
    for _ in range(outgoing):
        server.send_call("ping", [1], None)
    for uid in incoming:
        message = server.receive(client.codec.encode(Call(uid, "f", [])))
        assert isinstance(message, Call)
    return server


def check_receive(protocol: RpcProtocol, frame: bytes | str) -> Any:
    """``protocol.receive(frame)`` with the bookkeeping invariants checked."""
    outgoing, incoming = set(protocol.outgoing), set(protocol.incoming)
    try:
        message = protocol.receive(frame)
    except ProtocolError:
        assert protocol.outgoing == outgoing and protocol.incoming == incoming
        return None
    if message is None:
        assert protocol.outgoing == outgoing and protocol.incoming == incoming
    elif isinstance(message, Call):
        assert message.uid not in incoming
        assert protocol.incoming == incoming | {message.uid}
        assert protocol.outgoing == outgoing
    elif isinstance(message, (Return, Error)):
        assert message.uid in outgoing
        assert protocol.outgoing == outgoing - {message.uid}
        assert protocol.incoming == incoming
    else:
        assert isinstance(message, Cancel), message
        assert message.uid in incoming
        assert protocol.outgoing == outgoing and protocol.incoming == incoming
    return message


def check_handshake(codec: Codec, frame: bytes | str) -> None:
    server = RpcProtocol(Side.SERVER, codec, max_calls=4, max_size=1 << 20)
    try:
        header = server.receive_header(frame)
    except ProtocolError:
        assert server.phase is Phase.HANDSHAKE
    else:
        assert type(header) is Header
        assert server.peer_max_calls is None or server.peer_max_calls >= 1
        assert server.peer_max_size is None or server.peer_max_size >= 1
    client = RpcProtocol(Side.CLIENT, codec, max_calls=4, max_size=None)
    client.send_header(None)
    try:
        client.receive_accept(frame)
    except ProtocolError:
        assert client.phase is Phase.HANDSHAKE
    else:
        assert client.phase is Phase.OPEN


def one_frame(codec: Codec, frame: bytes | str) -> None:
    check_decode(codec, frame)
    check_handshake(codec, frame)
    protocol = open_server(codec, incoming=(7,))
    check_receive(protocol, frame)
    # The same frame again: a reused running id, a second reply, a cancel.
    check_receive(protocol, frame)


def test_msgpack(data: bytes) -> None:
    one_frame(MSGPACK, data)


def test_tgrid(data: bytes) -> None:
    one_frame(TGRID, data.decode("utf-8", "replace"))


def test_stateful(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    protocol = open_server(MSGPACK, outgoing=0)
    for _ in range(fdp.ConsumeIntInRange(1, 16)):
        if fdp.remaining_bytes() == 0:
            break
        action = fdp.ConsumeIntInRange(0, 4)
        if action == 0:
            uid, _frame = protocol.send_call("f", [fdp.ConsumeInt(2)], None)
            assert uid in protocol.outgoing
        elif action == 1:
            check_receive(protocol, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)))
        elif action == 2 and protocol.incoming:
            uid = sorted(protocol.incoming)[0]
            check_decode(MSGPACK, protocol.send_return(uid, fdp.ConsumeInt(4)))
            assert uid not in protocol.incoming
        elif action == 3 and protocol.outgoing:
            uid = sorted(protocol.outgoing)[-1]
            frame = protocol.send_cancel(uid)
            assert frame is not None and uid not in protocol.outgoing
        elif action == 4 and protocol.incoming:
            uid = sorted(protocol.incoming)[-1]
            protocol.drop_incoming(uid)
            assert uid not in protocol.incoming


TARGETS = {"msgpack": test_msgpack, "tgrid": test_tgrid, "stateful": test_stateful}


def main() -> None:
    target = "msgpack"
    argv = [sys.argv[0]]
    for arg in sys.argv[1:]:
        if arg.startswith("--target="):
            target = arg.split("=", 1)[1]
        else:
            argv.append(arg)
    if target not in TARGETS:
        sys.exit(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    atheris.Setup(argv, TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
