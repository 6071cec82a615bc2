"""
Hostile peers over real sockets: the hardening issue's checklist.

1. **Malformed input.** Raw ``websockets`` connections send a wsrpc server
   undecodable msgpack and JSON, wrong message shapes, wrong types in every
   field, unknown and reused call ids, deep nesting (100,000 levels),
   container amplification, non-string map keys, ext types, oversized
   messages, decompression bombs, too many fragments, the wrong frame type
   and frames ``websockets`` itself refuses. Each gets its defined close code
   or error reply within 1 UNIT, and the memory the server spends on it stays
   within 2 x ``max_message_size`` (where it does not yet, the memory test is
   a strict xfail naming the bug).
2. **Handshake abuse.** A huge or malformed header, a header of the wrong
   type for the handler (the handler validates it and rejects: the pattern
   of docs/security.md), frames before the header, frames after the header
   but before the handler decided: each ends with its documented code, and
   neither the handler nor the provider sees what it must not.
3. **1,000 silent sockets** that upgrade and never send a header: all are
   closed with 1008 after ``header_timeout``, the handler never runs, they
   cost bounded memory while they wait.
4. **A hostile server** calls a client's provider with forbidden paths: each
   is refused with ``MemberAccessError``, no property or private method runs,
   and the connection stays usable. Malformed frames from the server close
   the client with the same codes as above.

Throughout every server-side case, two honest clients (msgpack and TGrid
codecs) keep calling ``add`` on the same server and check every result
(:func:`arena`); afterwards each must still be connected, have had only
correct replies, and keep being served.

Speed is measured, not asserted: each answer must arrive within a generous
1 UNIT, and the real latencies (and memory peaks) are recorded in
:data:`LATENCIES` and :data:`MEMORY`, printed by the last test of this file.
``scripts/hostile_memory.py`` measures the server's memory per case in a
process of its own.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import os
import resource
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

import wsrpc
from wsrpc import ConnectorState
from wsrpc._transports.base import MAX_FRAGMENTS

from ..conftest import UNIT, AnyAcceptor, running_server, url_of

KiB = 1024
MiB = 1024 * 1024
DEFAULT_MAX = 2**20
"""wsrpc's default ``max_message_size``."""

TOKEN = "secret"
HEADER = {"token": TOKEN}
GATED_ACCEPT = "gated-accept"
"""A token the handler accepts only once the test opens its gate."""
GATED_REJECT = "gated-reject"
"""A token the handler rejects (4001) only once the test opens its gate."""

LATENCIES: list[tuple[str, float]] = []
"""(case, seconds from the hostile frame to its answer), for the final report."""
MEMORY: list[tuple[str, int]] = []
"""(case, bytes: tracemalloc peak over the case, whole process), for the report."""
STALLS: list[tuple[str, float]] = []
"""(case, the longest an honest client waited for a reply meanwhile), for the report."""

Codec = Literal["msgpack", "tgrid"]


# -- the server's side: provider, header validation, honest clients ----------------


class Service:
    """The server's provider; records every call that reaches it (but ``add``)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, value: Any) -> Any:
        self.calls.append("echo")
        return value

    def record(self, tag: str) -> str:
        self.calls.append(tag)
        return tag

    async def hold(self, tag: str) -> str:
        # Runs until the connection closes: its call id stays in use.
        self.calls.append(f"hold:{tag}")
        await asyncio.Event().wait()
        return tag  # pragma: no cover - cancelled by the close


class AddRemote(Protocol):
    async def add(self, a: int, b: int) -> int: ...


def token_of(header: object) -> str | None:
    """
    The token of a well-formed header, else None.

    This is how a handler validates ``acceptor.header``: it is whatever the
    client sent, whatever the server's ``Header`` type parameter says.
    """
    if not isinstance(header, dict) or set(header) != {"token"}:
        return None
    token = header["token"]
    return token if isinstance(token, str) else None


class Honest:
    """A well-behaved wsrpc client that keeps calling ``add`` and checks each result."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.connector: wsrpc.WebSocketConnector[dict[str, str], None, AddRemote] = (
            wsrpc.WebSocketConnector(HEADER, codec=codec)
        )
        self.calls = 0
        self.wrong: list[str] = []
        self.longest_wait = 0.0
        """The longest a call took (seconds): how long an attack held this client up."""
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        driver = self.connector.get_driver()
        n = 0
        while True:
            n += 1
            started = time.monotonic()
            try:
                result = await driver.add(n, 1)
            except wsrpc.WsrpcError as exc:
                self.wrong.append(f"{self.codec} call {n}: {exc!r}")
                self._wake(everyone=True)
                return
            if result != n + 1:
                self.wrong.append(f"{self.codec} call {n}: add({n}, 1) returned {result!r}")
            self.longest_wait = max(self.longest_wait, time.monotonic() - started)
            self.calls += 1
            self._wake()

    def _wake(self, everyone: bool = False) -> None:
        for target, future in list(self._waiters):
            if (everyone or self.calls >= target) and not future.done():
                future.set_result(None)
                self._waiters.remove((target, future))

    async def more(self, count: int) -> None:
        """Wait until ``count`` more calls have completed (or the loop died)."""
        if self._task is not None and self._task.done():
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((self.calls + count, future))
        await future

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task


@dataclass
class Arena:
    """A server under attack, and what it saw."""

    url: str
    service: Service
    headers: list[object]
    """Every header the handler was given, in order (the honest ones first)."""
    gates: dict[str, asyncio.Event]
    """For GATED_ACCEPT and GATED_REJECT: the handler decides once this is set..."""
    waiting: dict[str, asyncio.Event]
    """... and sets this when it starts waiting for it."""
    honest: list[Honest]
    max_message_size: int
    port: int
    longest_wait: float = 0.0
    """Set on exit: the longest an honest client waited for a reply, in seconds."""

    @property
    def hostile_headers(self) -> list[object]:
        """The headers the handler saw besides the honest clients'."""
        return self.headers[len(self.honest) :]


@asynccontextmanager
async def arena(**options: Any) -> AsyncIterator[Arena]:
    """
    A wsrpc server with honest clients (one per codec it serves) calling it
    throughout.

    On a normal exit, each honest client must make three more correct calls,
    must have had no wrong reply or error, and must still be open.
    """
    service = Service()
    headers: list[object] = []
    gates = {GATED_ACCEPT: asyncio.Event(), GATED_REJECT: asyncio.Event()}
    waiting = {GATED_ACCEPT: asyncio.Event(), GATED_REJECT: asyncio.Event()}

    async def handler(acceptor: AnyAcceptor) -> None:
        headers.append(acceptor.header)
        token = token_of(acceptor.header)
        if token is None:
            await acceptor.reject(4000, "malformed header")
            return
        if token in gates:
            waiting[token].set()
            await gates[token].wait()
        # compare_digest on bytes: it raises TypeError for a non-ASCII str.
        if hmac.compare_digest(token.encode(), TOKEN.encode()) or token == GATED_ACCEPT:
            await acceptor.accept(service)
        else:
            await acceptor.reject(4001, "invalid token")

    codecs: Sequence[Codec] = options.get("codecs", ("msgpack", "tgrid"))
    async with running_server(handler, **options) as server:
        honest = [Honest(codec) for codec in codecs]
        try:
            for client in honest:
                await client.connector.connect(url_of(server), timeout=5 * UNIT)
                client.start()
            async with asyncio.timeout(5 * UNIT):
                for client in honest:
                    await client.more(1)  # running before the attack starts
            for client in honest:
                client.longest_wait = 0.0
            a = Arena(
                url_of(server),
                service,
                headers,
                gates,
                waiting,
                honest,
                options.get("max_message_size", DEFAULT_MAX),
                server.port,
            )
            yield a
            async with asyncio.timeout(5 * UNIT):
                for client in honest:
                    await client.more(3)  # and still served after it
            for client in honest:
                assert client.wrong == [], client.wrong
                assert client.connector.state is ConnectorState.OPEN
            a.longest_wait = max(client.longest_wait for client in honest)
        finally:
            for client in honest:
                await client.stop()
                await client.connector.close()
    assert headers[: len(codecs)] == [HEADER] * len(codecs)


# -- hostile clients: frames and what is expected of them -------------------------------


@dataclass(frozen=True)
class Text:
    """Bytes sent as they are in a text frame (websockets does not check them)."""

    data: bytes


@dataclass(frozen=True)
class Fragments:
    """One message sent as these fragments, one frame each."""

    parts: tuple[bytes, ...] | tuple[str, ...]


@dataclass(frozen=True)
class Raw:
    """Bytes written to the TCP stream as they are: a hand-made WebSocket frame."""

    data: bytes


Frame = bytes | str | Text | Fragments | Raw

Reply = tuple[Literal["return", "error"], int, Any]
"""("return", uid, value) or ("error", uid, error name), whatever the codec."""
Outcome = int | Reply
"""A close code, or a reply."""


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A client frame, masked with a zero key (so the payload is sent as is)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    size = len(payload)
    if size < 126:
        head = bytes([first, 0x80 | size])
    elif size < 2**16:
        head = bytes([first, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def unmasked_frame(opcode: int, payload: bytes) -> bytes:
    return bytes([0x80 | opcode, len(payload)]) + payload


async def send(ws: ClientConnection | ServerConnection, frame: Frame) -> None:
    if isinstance(frame, Text):
        await ws.send(frame.data, text=True)
    elif isinstance(frame, Fragments):
        await ws.send(frame.parts)
    elif isinstance(frame, Raw):
        ws.transport.write(frame.data)
    else:
        await ws.send(frame)


def size_of(frame: Frame) -> int:
    if isinstance(frame, (Text, Raw)):
        return len(frame.data)
    if isinstance(frame, Fragments):
        return sum(len(part) for part in frame.parts)
    return len(frame)


def wire_size(frame: Frame, compressed: bool) -> int:
    """About how many bytes ``frame`` takes on the wire."""
    if not compressed or isinstance(frame, (Text, Raw)):  # Text and Raw go as they are
        return size_of(frame)
    if isinstance(frame, Fragments):
        return sum(wire_size(part, True) for part in frame.parts)
    return len(zlib.compress(frame.encode() if isinstance(frame, str) else frame))


def reply_of(codec: Codec, frame: bytes | str) -> Reply:
    if codec == "msgpack":
        assert isinstance(frame, bytes), frame
        message = msgpack.unpackb(frame)
        if message[0] == 3:
            return ("return", message[1], message[2])
        if message[0] == 4:
            return ("error", message[1], message[2])
    else:
        assert isinstance(frame, str), frame
        document = json.loads(frame)
        if document.get("success") is True:
            return ("return", document["uid"], document.get("value"))
        if document.get("success") is False:
            return ("error", document["uid"], document["value"]["name"])
    raise AssertionError(f"not a reply: {frame!r}")


async def outcomes(ws: ClientConnection, codec: Codec, count: int, timeout: float) -> list[Outcome]:
    """Read ``count`` answers (replies, or the close that ends them), each within ``timeout``."""
    seen: list[Outcome] = []
    while len(seen) < count:
        try:
            async with asyncio.timeout(timeout):
                frame = await ws.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, f"no close frame received: {exc!r}"
            seen.append(exc.rcvd.code)
            break
        seen.append(reply_of(codec, frame))
    return seen


@asynccontextmanager
async def hostile_client(
    url: str, codec: Codec, *, handshake: bool = True, compression: bool = False
) -> AsyncIterator[ClientConnection]:
    """A raw websockets connection; with ``handshake``, it has done wsrpc's by hand."""
    async with ws_connect(url, compression="deflate" if compression else None) as ws:
        if handshake:
            async with asyncio.timeout(5 * UNIT):
                if codec == "msgpack":
                    await ws.send(msgpack.packb([0, 1, HEADER, {}]))
                    assert msgpack.unpackb(await ws.recv(decode=False))[0] == 1
                else:
                    await ws.send(json.dumps({"header": HEADER}))
                    assert await ws.recv() == "1"
        yield ws


@dataclass
class Peak:
    bytes: int = 0


@contextmanager
def traced() -> Iterator[Peak]:
    """The peak of memory allocated (whole process) while the block runs, over its start."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    peak = Peak()
    try:
        yield peak
    finally:
        peak.bytes = tracemalloc.get_traced_memory()[1] - base
        if not tracing:
            tracemalloc.stop()


SLACK = 512 * KiB
"""
Fixed costs of any case: asyncio reads a socket into a fresh 256 KiB buffer
(then trimmed), on either side; the honest clients' calls.
"""


DECODED_OBJECTS_PER_BYTE = 64
"""The documented worst case of Python objects per byte of a decoded frame."""


def memory_bound(max_message_size: int, sent: int) -> int:
    """
    The issue's bound, 2 x max_message_size, plus what this process's hostile
    client spends itself: its masked copy of what it sends and the transport's
    buffer of what the kernel has not taken yet (2 x ``sent``).
    """
    return 2 * max_message_size + 2 * sent + SLACK


# -- the cases -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A hostile client's frames, and the answers they must get, in order."""

    name: str
    codec: Codec
    frames: tuple[Frame, ...]
    expect: tuple[Outcome, ...]
    handshake: bool = True
    """Whether the hostile client sends a valid header first."""
    calls: tuple[str, ...] = ()
    """What the provider must have seen (``Service.calls``)..."""
    maybe: tuple[str, ...] = ()
    """... besides these, which it may have seen or not (a call started, then cancelled)."""
    compression: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    decoded_objects: bool = False
    """The frame is valid but for its last byte, so the decoder builds its objects
    before it fails: Python spends up to 64 bytes per byte on them (an empty list
    per 0x90), which docs/security.md documents as the cost of a decoded frame."""


def mp(*items: Any) -> bytes:
    """A msgpack array of ``items``."""
    return msgpack.packb(list(items))


def tg(uid: Any, listener: Any, *args: Any) -> str:
    """A TGrid call frame."""
    parameters = [{"type": "number", "value": arg} for arg in args]
    return json.dumps({"uid": uid, "listener": listener, "parameters": parameters})


ECHO = b"\x94\x02\x01\xa4echo\x91"
"""The start of ``[2, 1, "echo", [<value>]]``: append one msgpack value."""

MP_PROBE = mp(2, 77, "add", [40, 2])
TG_PROBE = tg(77, "add", 40, 2)
PROBED: Reply = ("return", 77, 42)


def nested_arrays(depth: int, declared: int) -> bytes:
    """``depth`` array32 headers, each declaring ``declared`` elements."""
    return (b"\xdd" + declared.to_bytes(4, "big")) * depth


def nested_maps(depth: int, declared: int) -> bytes:
    """``depth`` map32 headers, each declaring ``declared`` entries, the first key "k"."""
    return (b"\xdf" + declared.to_bytes(4, "big") + b"\xa1k") * depth


def padded(head: bytes, size: int, filler: bytes = b"\xc0") -> bytes:
    """``head`` followed by ``filler`` bytes up to ``size`` bytes in all."""
    return head + filler * (size - len(head))


def fragments(data: bytes, count: int) -> Fragments:
    """``data`` cut into ``count`` fragments of nearly equal size."""
    step = -(-len(data) // count)
    return Fragments(tuple(data[i : i + step] for i in range(0, len(data), step)))


BIG = {"max_message_size": 2 * MiB}

SMALL = {"max_message_size": 4096}

MSGPACK_CASES = [
    # Undecodable msgpack.
    Case("never-used byte", "msgpack", (b"\xc1",), (1007,)),
    Case("empty frame", "msgpack", (b"",), (1007,)),
    Case("truncated call", "msgpack", (mp(2, 1, "add", [1, 2])[:-1],), (1007,)),
    Case("bytes after the array", "msgpack", (mp(3, 1, 1) + b"\xc0",), (1007,)),
    Case("two messages in one frame", "msgpack", (mp(2, 1, "add", [1, 2]) * 2,), (1007,)),
    Case("invalid UTF-8 in a str", "msgpack", (b"\x94\x02\x01\xa3\xff\xfe\xfd\x90",), (1007,)),
    Case("str declaring 2**32-1 bytes", "msgpack", (b"\x94\x02\x01\xdb\xff\xff\xff\xff",), (1007,)),
    Case("bin declaring 2**32-1 bytes", "msgpack", (ECHO + b"\xc6\xff\xff\xff\xff",), (1007,)),
    # Wrong shapes.
    Case("a map, not an array", "msgpack", (msgpack.packb({"kind": 2}),), (1002,)),
    Case("an integer", "msgpack", (msgpack.packb(2),), (1002,)),
    Case("nil", "msgpack", (msgpack.packb(None),), (1002,)),
    Case("a string", "msgpack", (msgpack.packb("call"),), (1002,)),
    Case("empty array", "msgpack", (mp(),), (1002,)),
    Case("unknown kind 6", "msgpack", (mp(6, 1),), (1002,)),
    Case("kind -1", "msgpack", (mp(-1, 1),), (1002,)),
    Case("call with 3 elements", "msgpack", (mp(2, 1, "add"),), (1002,)),
    Case("call with 6 elements", "msgpack", (mp(2, 1, "add", [1, 2], {}, 0),), (1002,)),
    Case("return with 2 elements", "msgpack", (mp(3, 1),), (1002,)),
    Case("error with 4 elements", "msgpack", (mp(4, 1, "E", "m"),), (1002,)),
    Case("cancel with 1 element", "msgpack", (mp(5),), (1002,)),
    Case("header once open", "msgpack", (mp(0, 1, HEADER, {}),), (1002,)),
    Case("accept once open", "msgpack", (mp(1, {}),), (1002,)),
    # Wrong types, field by field.
    *(
        Case(f"kind {kind!r}", "msgpack", (mp(kind, 1, "record", ["x"]),), (1002,))
        for kind in ("2", 2.0, True, None, [2])
    ),
    *(
        Case(f"call uid {uid!r}", "msgpack", (mp(2, uid, "record", ["x"]),), (1002,))
        for uid in ("1", 0, -1, 2**63, 1.0, True, None, [1], b"\x01")
    ),
    *(
        Case(f"call path {path!r}", "msgpack", (mp(2, 1, path, ["x"]),), (1002,))
        for path in (5, None, b"record", ["record"], {"p": 1})
    ),
    *(
        Case(f"call args {args!r}", "msgpack", (mp(2, 1, "record", args),), (1002,))
        for args in ("x", {"tag": "x"}, None, 5, b"x")
    ),
    *(
        Case(f"call kwargs {kwargs!r}", "msgpack", (mp(2, 1, "record", [], kwargs),), (1002,))
        for kwargs in ([1], "tag", b"x", 5, True, {b"tag": "x"})
    ),
    Case("return uid '1'", "msgpack", (mp(3, "1", None),), (1002,)),
    Case("error uid '1'", "msgpack", (mp(4, "1", "E", "m", None),), (1002,)),
    Case("error name 5", "msgpack", (mp(4, 1, 5, "m", None),), (1002,)),
    Case("error message nil", "msgpack", (mp(4, 1, "E", None, None),), (1002,)),
    Case("error traceback 5", "msgpack", (mp(4, 1, "E", "m", 5),), (1002,)),
    Case("error traceback bin", "msgpack", (mp(4, 1, "E", "m", b"tb"),), (1002,)),
    Case("cancel uid '1'", "msgpack", (mp(5, "1"),), (1002,)),
    Case("cancel uid 0", "msgpack", (mp(5, 0),), (1002,)),
    # Unknown ids are ignored: the probe that follows is answered.
    Case("return for an unknown uid", "msgpack", (mp(3, 999, 1), MP_PROBE), (PROBED,)),
    Case("error for an unknown uid", "msgpack", (mp(4, 999, "E", "m", None), MP_PROBE), (PROBED,)),
    Case("cancel for an unknown uid", "msgpack", (mp(5, 999), MP_PROBE), (PROBED,)),
    Case("return for uid 2**63-1", "msgpack", (mp(3, 2**63 - 1, None), MP_PROBE), (PROBED,)),
    # Call ids: reused while running is a protocol error, once answered it is fine.
    Case(
        "reused running call id",
        "msgpack",
        (mp(2, 1, "hold", ["a"]), mp(2, 1, "hold", ["b"])),
        (1002,),
        maybe=("hold:a",),
    ),
    Case(
        "call id reused once answered",
        "msgpack",
        (mp(2, 1, "add", [1, 1]), mp(2, 1, "add", [2, 2])),
        (("return", 1, 2), ("return", 1, 4)),
    ),
    # Error replies, and the connection goes on.
    Case(
        "forbidden path",
        "msgpack",
        (mp(2, 5, "__class__.__init__.__globals__", []), MP_PROBE),
        (("error", 5, "MemberAccessError"), PROBED),
    ),
    Case("wrong argument count", "msgpack", (mp(2, 5, "add", [1]),), (("error", 5, "TypeError"),)),
    Case(
        "unknown keyword argument",
        "msgpack",
        (mp(2, 5, "add", [1, 2], {"c": 3}),),
        (("error", 5, "TypeError"),),
    ),
    # Non-string map keys.
    *(
        Case(f"map key {key!r}", "msgpack", (mp(2, 1, "echo", [{key: 1}]),), (1007,))
        for key in (1, None, 1.5, True, (1, 2))
    ),
    Case("int key in kwargs", "msgpack", (mp(2, 1, "record", [], {3: "x"}),), (1007,)),
    Case("int key in a return value", "msgpack", (mp(3, 999, {1: 2}),), (1007,)),
    # Ext types; the timestamp (-1) is the one allowed: it decodes to a
    # datetime, which goes back as the same timestamp.
    Case("ext type 5", "msgpack", (ECHO + b"\xd4\x05\x00",), (1007,)),
    Case("ext type -2", "msgpack", (ECHO + b"\xd4\xfe\x00",), (1007,)),
    Case(
        "ext type 127 in kwargs",
        "msgpack",
        (mp(2, 1, "record", [], {"tag": msgpack.ExtType(127, b"x")}),),
        (1007,),
    ),
    Case(
        "ext32 declaring 2**32-1 bytes", "msgpack", (ECHO + b"\xc9\xff\xff\xff\xff\x05",), (1007,)
    ),
    Case("timestamp of the wrong size", "msgpack", (ECHO + b"\xd4\xff\x00",), (1007,)),
    Case(
        "valid timestamp",
        "msgpack",
        (ECHO + b"\xd6\xff" + (1).to_bytes(4, "big"),),
        (("return", 1, msgpack.Timestamp(1, 0)),),
        calls=("echo",),
    ),
    Case(
        "timestamp past datetime's range",
        "msgpack",
        (ECHO + b"\xc7\x0c\xff" + (0).to_bytes(4, "big") + (2**62).to_bytes(8, "big"),),
        (1007,),
    ),
    # Nesting.
    Case("arrays nested 100,000 deep", "msgpack", (ECHO + b"\x91" * 100_000 + b"\xc0",), (1007,)),
    Case(
        "maps nested 100,000 deep", "msgpack", (ECHO + b"\x81\xa1k" * 100_000 + b"\xc0",), (1007,)
    ),
    Case("arrays nested 1,100 deep", "msgpack", (ECHO + b"\x91" * 1_100 + b"\xc0",), (1007,)),
    Case(
        "arrays nested 200 deep (valid)",
        "msgpack",
        (ECHO + b"\x91" * 199 + b"\x90",),
        (("return", 1, json.loads("[" * 200 + "]" * 200)),),
        calls=("echo",),
    ),
    # Container amplification: lengths declared, not delivered.
    Case(
        "arrays declaring 2**32-1 elements 1000 deep in 1 MiB",
        "msgpack",
        (padded(ECHO + nested_arrays(1000, 2**32 - 1), MiB),),
        (1007,),
        options=BIG,
    ),
    Case(
        "maps declaring 2**32-1 entries 1000 deep in 1 MiB",
        "msgpack",
        (padded(ECHO + nested_maps(1000, 2**32 - 1), MiB),),
        (1007,),
        options=BIG,
    ),
    Case(
        "maps declaring 500,000 entries 1000 deep in 1 MiB",
        "msgpack",
        (padded(ECHO + nested_maps(1000, 500_000), MiB),),
        (1007,),
        options=BIG,
    ),
    Case(
        "arrays declaring 1,000,000 elements 1000 deep in 1 MiB",
        "msgpack",
        (padded(ECHO + nested_arrays(1000, 1_000_000), MiB),),
        (1007,),
        options=BIG,
    ),
    Case(
        "arrays declaring 10,000 elements 1000 deep in 10 KB",
        "msgpack",
        (padded(ECHO + nested_arrays(1000, 10_000), 10_100),),
        (1007,),
    ),
    Case(
        "250,000 empty arrays, then a bad byte",
        "msgpack",
        (padded(ECHO + nested_arrays(1, 250_000), 250_020, b"\x90") + b"\xc1",),
        (1007,),
    ),
    Case(
        # The walk refuses this before decoding (a map key must be a string).
        "249,999 empty arrays, then a map with an int key",
        "msgpack",
        (ECHO + nested_arrays(1, 250_000) + b"\x90" * 249_999 + b"\x81\x01\x02",),
        (1007,),
    ),
    Case(
        # Well formed, so the walk passes it; the invalid UTF-8 of the last
        # string would only be found while decoding, after the lists were
        # built, but the decoder stops at MAX_CONTAINERS (131,072) lists.
        "249,999 empty arrays, then invalid UTF-8",
        "msgpack",
        (ECHO + nested_arrays(1, 250_000) + b"\x90" * 249_999 + b"\xa2\xff\xfe",),
        (1009,),
        decoded_objects=True,
    ),
    # Size.
    Case(
        "oversized message", "msgpack", (mp(2, 1, "echo", [b"x" * 5000]),), (1009,), options=SMALL
    ),
    Case(
        "message of exactly max_message_size",
        "msgpack",
        (mp(2, 1, "echo", [b"x" * (4096 - 12)]),),
        (("return", 1, b"x" * (4096 - 12)),),
        calls=("echo",),
        options=SMALL,
    ),
    # Fragments: wsrpc reassembles up to MAX_FRAGMENTS frames within max_size.
    Case(
        "valid call in 100 fragments",
        "msgpack",
        (fragments(mp(2, 1, "echo", [b"y" * 1000]), 100),),
        (("return", 1, b"y" * 1000),),
        calls=("echo",),
    ),
    Case(
        "too many fragments",
        "msgpack",
        (Fragments((b"\xc0",) * (MAX_FRAGMENTS + 1)),),
        (1009,),
    ),
    Case(
        "fragments over max_message_size",
        "msgpack",
        (Fragments((b"z" * 500,) * 10),),
        (1009,),
        options=SMALL,
    ),
    Case("fragmented text frame", "msgpack", (Fragments(("a", "b")),), (1003,)),
    # Frame type.
    Case("text frame", "msgpack", ('[2,1,"add",[1,2]]',), (1003,)),
    Case("invalid UTF-8 in a text frame", "msgpack", (Text(b"\xff\xfe"),), (1007,)),
    # Frames websockets refuses before wsrpc sees them.
    Case("RSV1 without compression", "msgpack", (Raw(ws_frame(2, MP_PROBE, rsv1=True)),), (1002,)),
    Case("unmasked client frame", "msgpack", (Raw(unmasked_frame(2, MP_PROBE)),), (1002,)),
    Case("reserved opcode 3", "msgpack", (Raw(ws_frame(3, b"x")),), (1002,)),
    Case("ping of 126 bytes", "msgpack", (Raw(ws_frame(9, b"p" * 126)),), (1002,)),
    Case("fragmented ping", "msgpack", (Raw(ws_frame(9, b"p", fin=False)),), (1002,)),
    Case("continuation without a start", "msgpack", (Raw(ws_frame(0, b"x")),), (1002,)),
    # Decompression bombs, on a server that negotiates permessage-deflate.
    Case(
        "decompression bomb",
        "msgpack",
        (mp(2, 1, "echo", [b"\0" * (8 * MiB)]),),
        (1009,),
        compression=True,
        options={"compression": True, "transport": "websockets"},
    ),
    Case(
        "decompression bomb in fragments",
        "msgpack",
        (Fragments((b"\0" * MiB,) * 8),),
        (1009,),
        compression=True,
        options={"compression": True, "transport": "websockets"},
    ),
    Case(
        "compressed valid call",
        "msgpack",
        (mp(2, 1, "echo", [b"\0" * 100_000]),),
        (("return", 1, b"\0" * 100_000),),
        calls=("echo",),
        compression=True,
        options={"compression": True, "transport": "websockets"},
    ),
]

TGRID_CASES = [
    # Undecodable JSON.
    Case("not JSON", "tgrid", ("not json",), (1007,)),
    Case("truncated object", "tgrid", ('{"uid":1,',), (1007,)),
    Case("NaN", "tgrid", ('{"uid":1,"listener":"echo","parameters":[{"value":NaN}]}',), (1007,)),
    Case("Infinity", "tgrid", ('{"uid":1,"success":true,"value":Infinity}',), (1007,)),
    Case(
        "integer of 5,000 digits",
        "tgrid",
        (tg(1, "echo", 0).replace("0}", "9" * 5000 + "}"),),
        (1007,),
    ),
    Case("float overflow", "tgrid", (tg(1, "echo", 0).replace("0}", "1e999}"),), (1007,)),
    Case("invalid UTF-8 in a text frame", "tgrid", (Text(b'{"uid":\xff}'),), (1007,)),
    Case("arrays nested 100,000 deep", "tgrid", ("[" * 100_000 + "]" * 100_000,), (1007,)),
    Case(
        "objects nested 100,000 deep",
        "tgrid",
        ('{"a":' * 100_000 + "1" + "}" * 100_000,),
        (1007,),
    ),
    Case("unclosed nesting 100,000 deep", "tgrid", ("[" * 100_000,), (1007,)),
    Case(
        "short strings in arrays 300 deep, 1 MiB",
        "tgrid",
        ("[" * 300 + '"ab",' * 200_000 + '"ab"' + "]" * 300,),
        (1007,),
    ),
    # Wrong shapes.
    *(
        Case(f"document {text}", "tgrid", (text,), (1002,))
        for text in ("null", "[]", "5", '"x"', "true", '{"foo":1}')
    ),
    Case("header once open", "tgrid", (json.dumps({"header": HEADER}),), (1002,)),
    Case("empty object once open", "tgrid", ("{}",), (1002,)),
    Case("accept once open", "tgrid", ("1",), (1002,)),
    # Wrong types, field by field.
    *(
        Case(f"call uid {json.dumps(uid)}", "tgrid", (tg(uid, "record", "x"),), (1002,))
        for uid in ("1", 0, -1, 2**53, True, 1.5, None, [1])
    ),
    *(
        Case(f"listener {json.dumps(listener)}", "tgrid", (tg(1, listener, "x"),), (1002,))
        for listener in (5, ["record"], {"a": 1}, True)
    ),
    *(
        Case(
            f"parameters {json.dumps(parameters)}",
            "tgrid",
            (json.dumps({"uid": 1, "listener": "record", "parameters": parameters}),),
            (1002,),
        )
        for parameters in ("x", None, {"value": "x"}, ["x"], [1])
    ),
    Case("call without parameters", "tgrid", ('{"uid":1,"listener":"record"}',), (1002,)),
    *(
        Case(
            f"success {json.dumps(success)}",
            "tgrid",
            (json.dumps({"uid": 999, "success": success}),),
            (1002,),
        )
        for success in ("yes", None, 1)
    ),
    Case("reply without success", "tgrid", ('{"uid":999}',), (1002,)),
    Case("return uid '1'", "tgrid", ('{"uid":"1","success":true}',), (1002,)),
    # Unknown ids are ignored.
    Case(
        "return for an unknown uid",
        "tgrid",
        ('{"uid":999,"success":true,"value":1}', TG_PROBE),
        (PROBED,),
    ),
    Case(
        "error for an unknown uid",
        "tgrid",
        ('{"uid":999,"success":false,"value":{"name":"E","message":"m"}}', TG_PROBE),
        (PROBED,),
    ),
    Case(
        "reused running call id",
        "tgrid",
        (tg(1, "hold", "a"), tg(1, "hold", "b")),
        (1002,),
        maybe=("hold:a",),
    ),
    Case(
        "forbidden path",
        "tgrid",
        (tg(5, "__class__.__init__.__globals__"), TG_PROBE),
        (("error", 5, "MemberAccessError"), PROBED),
    ),
    Case("wrong argument count", "tgrid", (tg(5, "add", 1),), (("error", 5, "TypeError"),)),
    # Size, fragments, frame type.
    Case("oversized message", "tgrid", (tg(1, "echo", "x" * 5000),), (1009,), options=SMALL),
    Case(
        "valid call in 50 fragments",
        "tgrid",
        (Fragments((*TG_PROBE[:49], TG_PROBE[49:])),),
        (PROBED,),
    ),
    Case("too many fragments", "tgrid", (Fragments((" ",) * (MAX_FRAGMENTS + 1)),), (1009,)),
    Case("binary frame", "tgrid", (MP_PROBE,), (1003,)),
    Case("fragmented binary frame", "tgrid", (Fragments((b"a", b"b")),), (1003,)),
]

BAD_LIMITS: list[object] = [
    [],
    None,
    "calls",
    {"calls": 0},
    {"calls": "8"},
    {"size": -1},
    {"calls": True},
    {"size": 1.5},
]

HANDSHAKE_CASES = [
    # Messages other than the header first.
    Case(
        "call before the header", "msgpack", (mp(2, 1, "record", ["x"]),), (1002,), handshake=False
    ),
    Case("return before the header", "msgpack", (mp(3, 1, None),), (1002,), handshake=False),
    Case(
        "error before the header", "msgpack", (mp(4, 1, "E", "m", None),), (1002,), handshake=False
    ),
    Case("cancel before the header", "msgpack", (mp(5, 1),), (1002,), handshake=False),
    Case("accept before the header", "msgpack", (mp(1, {}),), (1002,), handshake=False),
    Case("empty first frame", "msgpack", (b"",), (1007,), handshake=False),
    Case("call before the header", "tgrid", (tg(1, "record", "x"),), (1002,), handshake=False),
    Case(
        "return before the header", "tgrid", ('{"uid":1,"success":true}',), (1002,), handshake=False
    ),
    # Malformed headers.
    *(
        Case(
            f"header version {version!r}",
            "msgpack",
            (mp(0, version, HEADER, {}),),
            (1002,),
            handshake=False,
        )
        for version in ("1", 2, 0, True, 1.0, None)
    ),
    Case("header with 3 elements", "msgpack", (mp(0, 1, HEADER),), (1002,), handshake=False),
    Case("header with 5 elements", "msgpack", (mp(0, 1, HEADER, {}, 0),), (1002,), handshake=False),
    *(
        Case(
            f"header limits {limits!r}",
            "msgpack",
            (mp(0, 1, HEADER, limits),),
            (1002,),
            handshake=False,
        )
        for limits in BAD_LIMITS
    ),
    Case("int key in the header", "msgpack", (mp(0, 1, {1: TOKEN}, {}),), (1007,), handshake=False),
    Case("int key in the limits", "msgpack", (mp(0, 1, HEADER, {1: 2}),), (1007,), handshake=False),
    Case(
        "ext type in the header",
        "msgpack",
        (b"\x94\x00\x01\xd4\x05\x00\x80",),
        (1007,),
        handshake=False,
    ),
    Case(
        "header nested 100,000 deep",
        "msgpack",
        (b"\x94\x00\x01" + b"\x91" * 100_000 + b"\xc0\x80",),
        (1007,),
        handshake=False,
    ),
    Case(
        "header of arrays declaring 10,000 elements 1000 deep",
        "msgpack",
        (padded(b"\x94\x00\x01" + nested_arrays(1000, 10_000), 10_100),),
        (1007,),
        handshake=False,
    ),
    Case(
        "header nested 100,000 deep",
        "tgrid",
        ('{"header":' + "[" * 100_000 + "]" * 100_000 + "}",),
        (1007,),
        handshake=False,
    ),
    Case(
        "header of invalid UTF-8", "tgrid", (Text(b'{"header":"\xff"}'),), (1007,), handshake=False
    ),
    # Huge headers.
    Case(
        "header over max_message_size",
        "msgpack",
        (mp(0, 1, {"token": "x" * 5000}, {}),),
        (1009,),
        handshake=False,
        options=SMALL,
    ),
    Case(
        "header over max_message_size",
        "tgrid",
        (json.dumps({"header": {"token": "x" * 5000}}),),
        (1009,),
        handshake=False,
        options=SMALL,
    ),
    Case(
        "header in too many fragments",
        "msgpack",
        (Fragments((b"\xc0",) * (MAX_FRAGMENTS + 1)),),
        (1009,),
        handshake=False,
    ),
    Case(
        "header as a decompression bomb",
        "msgpack",
        (mp(0, 1, {"token": "\0" * (8 * MiB)}, {}),),
        (1009,),
        handshake=False,
        compression=True,
        options={"compression": True, "transport": "websockets"},
    ),
    Case(
        "header with RSV1 without compression",
        "msgpack",
        (Raw(ws_frame(2, mp(0, 1, HEADER, {}), rsv1=True)),),
        (1002,),
        handshake=False,
    ),
    # A codec the server does not serve.
    Case(
        "tgrid header to a msgpack-only server",
        "tgrid",
        (json.dumps({"header": HEADER}),),
        (1003,),
        handshake=False,
        options={"codecs": ("msgpack",)},
    ),
    Case(
        "msgpack header to a tgrid-only server",
        "msgpack",
        (mp(0, 1, HEADER, {}),),
        (1003,),
        handshake=False,
        options={"codecs": ("tgrid",)},
    ),
]


def case_id(case: Case) -> str:
    return f"{case.codec}{'' if case.handshake else ' handshake'}: {case.name}"


async def run_case(case: Case, *, memory: bool) -> None:
    """
    Run ``case`` against an arena. With ``memory``, trace allocations (which
    makes everything several times slower, so latencies are not recorded and
    answers get 10 UNIT) and check the bound; else time the answer (1 UNIT).
    """
    async with arena(**case.options) as a:
        async with hostile_client(
            a.url, case.codec, handshake=case.handshake, compression=case.compression
        ) as ws:
            sent = sum(wire_size(frame, case.compression) for frame in case.frames)
            with traced() if memory else nullcontext(Peak()) as peak:
                started = time.monotonic()
                for frame in case.frames:
                    await send(ws, frame)
                seen = await outcomes(
                    ws, case.codec, len(case.expect), 10 * UNIT if memory else 1 * UNIT
                )
            latency = time.monotonic() - started
        assert tuple(seen) == case.expect
        assert [call for call in a.service.calls if call not in case.maybe] == list(case.calls)
        # The handler saw the hostile client's header only if it was a valid one.
        assert a.hostile_headers == ([HEADER] if case.handshake else [])
    if not memory:
        LATENCIES.append((case_id(case), latency))
        STALLS.append((case_id(case), a.longest_wait))
    else:
        MEMORY.append((case_id(case), peak.bytes))
        bound = memory_bound(a.max_message_size, sent)
        if case.decoded_objects:
            bound += DECODED_OBJECTS_PER_BYTE * sent
        assert peak.bytes <= bound, (
            f"{case_id(case)}: {peak.bytes / MiB:.1f} MiB allocated at the peak, "
            f"over the bound of {bound / MiB:.1f} MiB"
        )


ALL_CASES = MSGPACK_CASES + TGRID_CASES + HANDSHAKE_CASES


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
async def test_malformed_input_gets_its_defined_answer(case: Case) -> None:
    await run_case(case, memory=False)


MEMORY_CASES = [
    case
    for case in ALL_CASES
    if case.compression or sum(size_of(frame) for frame in case.frames) >= 4 * KiB
]
"""The cases whose frames could cost more than the fixed overhead of a read."""


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, id=case_id(case)) for case in MEMORY_CASES],
)
async def test_malformed_input_costs_bounded_memory(case: Case) -> None:
    await run_case(case, memory=True)


# -- handshake abuse: what the handler and the provider get to see -------------------


WRONG_HEADERS: list[tuple[Codec, object, int]] = [
    ("msgpack", None, 4000),
    ("msgpack", 5, 4000),
    ("msgpack", TOKEN, 4000),
    ("msgpack", [TOKEN], 4000),
    ("msgpack", {"token": 5}, 4000),
    ("msgpack", {"token": None}, 4000),
    ("msgpack", {"token": [TOKEN]}, 4000),
    ("msgpack", {"token": TOKEN.encode()}, 4000),
    ("msgpack", {TOKEN.encode(): TOKEN}, 4000),
    ("msgpack", {"token": TOKEN, "admin": True}, 4000),
    ("msgpack", {"token": "wrong"}, 4001),
    ("msgpack", {"token": "sécret"}, 4001),
    ("msgpack", {"token": TOKEN + "\0"}, 4001),
    ("tgrid", None, 4000),
    ("tgrid", [TOKEN], 4000),
    ("tgrid", {"token": 5}, 4000),
    ("tgrid", {"token": "wrong"}, 4001),
]


@pytest.mark.parametrize(("codec", "header", "code"), WRONG_HEADERS, ids=repr)
async def test_header_of_the_wrong_type_is_rejected_by_the_handler(
    codec: Codec, header: object, code: int
) -> None:
    # A valid wsrpc header whose value is not what the handler expects: the
    # handler gets it as it was sent (whatever the Header type parameter says),
    # validates it with token_of() and rejects it.
    async with arena() as a:
        connector: wsrpc.WebSocketConnector[object, None, AddRemote] = wsrpc.WebSocketConnector(
            header, codec=codec
        )
        started = time.monotonic()
        with pytest.raises(wsrpc.RejectedError) as info:
            await connector.connect(a.url, timeout=1 * UNIT)
        LATENCIES.append(
            (f"{codec} connect: header {header!r} rejected", time.monotonic() - started)
        )
        assert info.value.code == code
        assert info.value.reason == ("malformed header" if code == 4000 else "invalid token")
        assert connector.state is ConnectorState.CLOSED
        assert a.hostile_headers == [header]
        assert a.service.calls == []


def header_frame(codec: Codec, token: str) -> bytes | str:
    if codec == "msgpack":
        return mp(0, 1, {"token": token}, {})
    return json.dumps({"header": {"token": token}})


def call_frame(codec: Codec, uid: int, path: str, *args: Any) -> bytes | str:
    return mp(2, uid, path, list(args)) if codec == "msgpack" else tg(uid, path, *args)


GARBAGE: dict[Codec, bytes | str] = {"msgpack": b"\xc1", "tgrid": "not json"}
"""An undecodable frame for each codec (1007 once read)."""


@pytest.mark.parametrize("gate", [GATED_REJECT, GATED_ACCEPT])
@pytest.mark.parametrize("codec", ["msgpack", "tgrid"])
async def test_frames_sent_before_the_verdict_close_with_1002(codec: Codec, gate: str) -> None:
    # A client must wait for the accept frame. Calls and garbage right behind
    # the header close the connection with 1002 at once, while the handler is
    # still deciding: the provider never sees them, and whatever the handler
    # would have decided comes too late.
    async with arena() as a:
        async with hostile_client(a.url, codec, handshake=False) as ws:
            await ws.send(header_frame(codec, gate))
            await ws.send(call_frame(codec, 1, "record", "early"))
            await ws.send(call_frame(codec, 1, "record", "reused"))
            await ws.send(GARBAGE[codec])
            started = time.monotonic()
            seen = await outcomes(ws, codec, 1, 1 * UNIT)
            LATENCIES.append((f"{codec}: frames before the verdict", time.monotonic() - started))
        assert ws.close_reason == "message before accept"
        a.gates[gate].set()  # a handler still waiting is cancelled: it decides nothing
    assert seen == [1002]
    assert a.service.calls == []


# -- 1,000 silent sockets --------------------------------------------------------------


def rss() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Crowd:
    """What happened to a crowd of silent sockets."""

    size: int
    slots: asyncio.Semaphore
    """Upgrades in flight (the listen backlog is 100)."""
    all_upgraded: asyncio.Future[None]
    all_closed: asyncio.Future[None]
    upgraded: int = 0
    waiting: int = 0
    most_waiting: int = 0
    closes: list[tuple[int, str, float]] = field(default_factory=list)
    """(code, reason, seconds from the upgrade to the close frame) per socket."""
    failures: list[str] = field(default_factory=list)

    def ended(self) -> None:
        if len(self.closes) + len(self.failures) == self.size and not self.all_closed.done():
            self.all_closed.set_result(None)


class SilentSocket(asyncio.Protocol):
    """Does the WebSocket upgrade, then never sends a frame; answers the close frame."""

    def __init__(self, request: bytes, crowd: Crowd) -> None:
        self.request = request
        self.crowd = crowd
        self.buffer = b""
        self.upgraded_at: float | None = None
        self.done = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        crowd = self.crowd
        self.buffer += data
        if self.upgraded_at is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101 "):
                self.fail(f"upgrade refused: {self.buffer[:40]!r}")
                return
            self.buffer = self.buffer[end + 4 :]
            self.upgraded_at = time.monotonic()
            crowd.upgraded += 1
            crowd.waiting += 1
            crowd.most_waiting = max(crowd.most_waiting, crowd.waiting)
            crowd.slots.release()
            if crowd.upgraded == crowd.size:
                crowd.all_upgraded.set_result(None)
        # A close frame from the server: 0x88, a 7-bit length, code, reason.
        if len(self.buffer) < 2 or len(self.buffer) < 2 + (self.buffer[1] & 0x7F):
            return
        if self.buffer[0] != 0x88:
            self.fail(f"not a close frame: {self.buffer[:10]!r}")
            return
        payload = self.buffer[2 : 2 + self.buffer[1]]
        code = int.from_bytes(payload[:2], "big")
        elapsed = time.monotonic() - self.upgraded_at
        crowd.closes.append((code, payload[2:].decode(), elapsed))
        crowd.waiting -= 1
        self.done = True
        assert self.transport is not None
        self.transport.write(ws_frame(8, payload[:2]))
        self.transport.close()
        crowd.ended()

    def fail(self, why: str) -> None:
        if not self.done:
            self.done = True
            self.crowd.failures.append(why)
            if self.upgraded_at is None:
                self.crowd.slots.release()
            self.crowd.ended()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection lost without a close frame: {exc!r}")


SILENT: dict[str, float] = {}
"""The silent-socket test's measurements, for the report."""


async def test_thousand_silent_sockets_are_closed_after_the_header_timeout() -> None:
    count = 1000
    timeout = 1 * UNIT
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * count:  # both ends of each socket are in this process
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * count), hard))
    loop = asyncio.get_running_loop()
    # asyncio's debug mode (python -X dev) records a stack for every callback,
    # which triples the cost of an upgrade: with it, the first sockets would
    # time out before the last ones are open, and they would not all wait at
    # once. This test is about the server at scale, so it runs without.
    debug = loop.get_debug()
    loop.set_debug(False)
    transports: list[asyncio.BaseTransport] = []
    try:
        async with arena(header_timeout=timeout) as a:
            request = (
                f"GET /silent HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            crowd = Crowd(count, asyncio.Semaphore(100), loop.create_future(), loop.create_future())
            gc.collect()
            base = rss()
            started = time.monotonic()
            async with asyncio.timeout(30 * UNIT):
                for _ in range(count):
                    await crowd.slots.acquire()
                    transport, _ = await loop.create_connection(
                        lambda: SilentSocket(request, crowd), "127.0.0.1", a.port
                    )
                    transports.append(transport)
                await asyncio.wait(
                    {crowd.all_upgraded, crowd.all_closed}, return_when="FIRST_COMPLETED"
                )
                assert crowd.failures == []
                opening = time.monotonic() - started
                grown = rss() - base
                waiting = crowd.waiting
                calls_before = sum(client.calls for client in a.honest)
                await crowd.all_closed
            calls_during = sum(client.calls for client in a.honest) - calls_before
            assert crowd.failures == []
            assert a.hostile_headers == []  # the handler never ran
    finally:
        for each in transports:
            each.close()
        loop.set_debug(debug)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert {(code, reason) for code, reason, _ in crowd.closes} == {
        (1008, "no header received in time")
    }
    assert len(crowd.closes) == count
    slowest = max(elapsed for _, _, elapsed in crowd.closes)
    quickest = min(elapsed for _, _, elapsed in crowd.closes)
    assert 0.5 * timeout <= quickest  # after the timeout, not at once ...
    assert slowest <= timeout + 5 * UNIT  # ... and not much later
    assert calls_during > 0  # the honest clients were served while they waited
    per_socket = grown / max(waiting, 1)
    SILENT.update(
        opening_seconds=opening,
        waiting_at_once=waiting,
        most_waiting=crowd.most_waiting,
        rss_growth_bytes=grown,
        bytes_per_socket=per_socket,
        quickest_close=quickest,
        slowest_close=slowest,
        honest_calls_meanwhile=calls_during,
    )
    print(f"silent sockets: {SILENT}")
    assert per_socket < 200 * KiB


# -- a hostile server calling a client's provider --------------------------------------


class Nested:
    def __init__(self, touched: list[str]) -> None:
        self._touched = touched

    def ping(self) -> str:
        return "pong"

    def _hidden(self) -> None:
        self._touched.append("nested._hidden")  # pragma: no cover - must never run


class Listener:
    """A client's provider holding everything a hostile server might try to reach."""

    def __init__(self) -> None:
        self.touched: list[str] = []
        """What ran: only ``on_event`` may ever append here."""
        self.secret = "hunter2"
        self.callback = lambda: self.touched.append("callback")
        self.bound = self.on_event
        self.nested = Nested(self.touched)

    @property
    def status(self) -> str:
        self.touched.append("status")  # pragma: no cover - must never run
        return "ok"  # pragma: no cover

    def _private(self) -> None:
        self.touched.append("_private")  # pragma: no cover - must never run

    def __getattr__(self, name: str) -> Any:
        self.touched.append(f"__getattr__ {name}")
        raise AttributeError(name)

    def on_event(self, text: str) -> str:
        self.touched.append(f"on_event {text}")
        return text.upper()

    async def hold(self) -> None:
        await asyncio.Event().wait()


class EchoRemote(Protocol):
    async def echo(self, value: Any) -> Any: ...


FORBIDDEN_PATHS = [
    "__class__",
    "_private",
    "__init__",
    "__init__.__globals__",
    "__class__.__init__.__globals__",
    "__getattr__",
    "__dict__",
    "secret",
    "callback",
    "bound",
    "status",
    "status.upper",
    "touched",
    "touched.append",
    "nested",
    "nested._hidden",
    "nested._touched",
    "nested.ping.__globals__",
    "on_event.__globals__",
    "missing",
    "nested.missing",
    ".",
    "on_event.",
    "on_event..",
    "x" * 300,
    ".".join("abcdefghi"),
]


def accept_frame(codec: Codec) -> bytes | str:
    return mp(1, {"calls": 16, "size": DEFAULT_MAX}) if codec == "msgpack" else "1"


def return_frame(codec: Codec, uid: int, value: Any) -> bytes | str:
    if codec == "msgpack":
        return mp(3, uid, value)
    return json.dumps({"uid": uid, "success": True, "value": value})


def incoming_call(codec: Codec, frame: bytes | str) -> tuple[int, str, list[Any]]:
    """(uid, path, args) of a call frame sent by the client."""
    if codec == "msgpack":
        assert isinstance(frame, bytes)
        kind, uid, path, args = msgpack.unpackb(frame)
        assert kind == 2
        return uid, path, args
    assert isinstance(frame, str)
    document = json.loads(frame)
    return document["uid"], document["listener"], [p["value"] for p in document["parameters"]]


def check_header(codec: Codec, frame: bytes | str) -> None:
    if codec == "msgpack":
        assert isinstance(frame, bytes) and msgpack.unpackb(frame)[0] == 0
    else:
        assert isinstance(frame, str) and "header" in json.loads(frame)


Script = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def hostile_server(script: Script) -> AsyncIterator[tuple[str, asyncio.Future[None]]]:
    """A raw websockets server running ``script`` for its one client; its outcome."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        try:
            await script(ws)
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
        else:
            if not done.done():
                done.set_result(None)

    try:
        async with ws_serve(handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            yield f"ws://127.0.0.1:{port}/", done
    finally:
        if done.done() and not done.cancelled():
            done.exception()  # seen, even when the test failed before awaiting it


def listener_connector(
    codec: Codec, listener: Listener, **options: Any
) -> wsrpc.WebSocketConnector[None, Listener, EchoRemote]:
    return wsrpc.WebSocketConnector(None, listener, codec=codec, **options)


@pytest.mark.parametrize("codec", ["msgpack", "tgrid"])
async def test_hostile_server_cannot_reach_past_the_member_rules(codec: Codec) -> None:
    # An empty path is not a call in TGrid: a document with a falsy listener
    # is a reply (and one without "success" closes the connection).
    paths = [*FORBIDDEN_PATHS, *([""] if codec == "msgpack" else [])]
    listener = Listener()
    refusals: list[Outcome] = []
    answers: list[Outcome] = []
    loop = asyncio.get_running_loop()
    probed: asyncio.Future[None] = loop.create_future()

    async def script(ws: ServerConnection) -> None:
        check_header(codec, await ws.recv())
        await ws.send(accept_frame(codec))
        for uid, path in enumerate(paths, 1):
            started = time.monotonic()
            await ws.send(call_frame(codec, uid, path))
            async with asyncio.timeout(1 * UNIT):
                refusals.append(reply_of(codec, await ws.recv()))
            name = f"{codec} client: refuses {path[:40]!r}"
            LATENCIES.append((name, time.monotonic() - started))
        assert listener.touched == []
        # The connection is still usable: valid calls are answered ...
        last = len(paths)
        await ws.send(call_frame(codec, last + 1, "on_event", "hi"))
        answers.append(reply_of(codec, await ws.recv()))
        await ws.send(call_frame(codec, last + 2, "nested.ping"))
        answers.append(reply_of(codec, await ws.recv()))
        probed.set_result(None)
        # ... and the client's own calls too.
        uid, path, args = incoming_call(codec, await ws.recv())
        assert path == "echo"
        await ws.send(return_frame(codec, uid, args[0]))
        await ws.wait_closed()

    async with hostile_server(script) as (url, done):
        connector = listener_connector(codec, listener)
        await connector.connect(url, timeout=5 * UNIT)
        async with asyncio.timeout(10 * UNIT):
            await probed
            assert await connector.get_driver().echo("still here") == "still here"
        assert connector.state is ConnectorState.OPEN
        await connector.close()
        async with asyncio.timeout(5 * UNIT):
            await done
    assert refusals == [("error", uid, "MemberAccessError") for uid in range(1, len(paths) + 1)]
    last = len(paths)
    assert answers == [("return", last + 1, "HI"), ("return", last + 2, "pong")]
    assert listener.touched == ["on_event hi"]  # no property, private method or __getattr__


CLIENT_CASES: list[tuple[Codec, str, tuple[Frame, ...], int]] = [
    # (The client's max_message_size is 4096 for the "oversized" cases.)
    ("msgpack", "never-used byte", (b"\xc1",), 1007),
    ("msgpack", "text frame", ("[3,1,1]",), 1003),
    ("msgpack", "invalid UTF-8 text", (Text(b"\xff"),), 1007),
    ("msgpack", "header", (mp(0, 1, None, {}),), 1002),
    ("msgpack", "second accept", (mp(1, {}),), 1002),
    ("msgpack", "reply uid '1'", (mp(3, "1", None),), 1002),
    ("msgpack", "reused running call id", (mp(2, 9, "hold", []), mp(2, 9, "hold", [])), 1002),
    ("msgpack", "int map key", (mp(3, 1, {1: 2}),), 1007),
    ("msgpack", "ext type 5", (b"\x93\x03\x01\xd4\x05\x00",), 1007),
    ("msgpack", "nested 100,000 deep", (b"\x93\x03\x01" + b"\x91" * 100_000 + b"\xc0",), 1007),
    (
        "msgpack",
        "arrays declaring 10,000 elements 1000 deep",
        (padded(b"\x93\x03\x01" + nested_arrays(1000, 10_000), 10_100),),
        1007,
    ),
    ("msgpack", "oversized", (mp(3, 1, b"x" * 5000),), 1009),
    ("msgpack", "too many fragments", (Fragments((b"\xc0",) * (MAX_FRAGMENTS + 1)),), 1009),
    ("tgrid", "not JSON", ("not json",), 1007),
    ("tgrid", "binary frame", (b"\x93\x03\x01\xc0",), 1003),
    ("tgrid", "second accept", ("1",), 1002),
    ("tgrid", "header", ('{"header":null}',), 1002),
    ("tgrid", "success 'yes'", ('{"uid":1,"success":"yes"}',), 1002),
    ("tgrid", "reused running call id", (tg(9, "hold"), tg(9, "hold")), 1002),
    ("tgrid", "nested 100,000 deep", ("[" * 100_000,), 1007),
    ("tgrid", "oversized", (json.dumps({"uid": 1, "success": True, "value": "x" * 5000}),), 1009),
]


@pytest.mark.parametrize(
    ("codec", "name", "frames", "code"), CLIENT_CASES, ids=[f"{c[0]}: {c[1]}" for c in CLIENT_CASES]
)
async def test_hostile_server_frames_close_the_client_with_their_code(
    codec: Codec, name: str, frames: tuple[Frame, ...], code: int
) -> None:
    listener = Listener()
    closed_with: list[int] = []

    async def script(ws: ServerConnection) -> None:
        check_header(codec, await ws.recv())
        await ws.send(accept_frame(codec))
        incoming_call(codec, await ws.recv())  # the client's call, left pending
        started = time.monotonic()
        for frame in frames:
            await send(ws, frame)
        try:
            async with asyncio.timeout(1 * UNIT):
                await ws.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            closed_with.append(exc.rcvd.code)
        LATENCIES.append((f"{codec} client: {name}", time.monotonic() - started))

    async with hostile_server(script) as (url, done):
        limit = 4096 if name == "oversized" else DEFAULT_MAX
        connector = listener_connector(codec, listener, max_message_size=limit)
        await connector.connect(url, timeout=5 * UNIT)
        with pytest.raises(wsrpc.ConnectionClosedError) as info:
            async with asyncio.timeout(5 * UNIT):
                await connector.get_driver().echo("pending")
        async with asyncio.timeout(5 * UNIT):
            await done
            await connector.join()
    assert info.value.code == code
    assert closed_with == [code]
    assert connector.state is ConnectorState.CLOSED
    assert listener.touched == []


@pytest.mark.parametrize("codec", ["msgpack", "tgrid"])
async def test_hostile_server_replies_for_unknown_ids_are_ignored(codec: Codec) -> None:
    strays: list[Frame] = (
        [mp(3, 999, 1), mp(4, 998, "E", "m", None), mp(5, 997), mp(3, 2**63 - 1, None)]
        if codec == "msgpack"
        else ['{"uid":999,"success":true,"value":1}', '{"uid":998,"success":false}']
    )

    async def script(ws: ServerConnection) -> None:
        check_header(codec, await ws.recv())
        await ws.send(accept_frame(codec))
        uid, _, args = incoming_call(codec, await ws.recv())
        for frame in strays:
            await send(ws, frame)
        await ws.send(return_frame(codec, uid, args[0]))
        await ws.wait_closed()

    async with hostile_server(script) as (url, done):
        connector = listener_connector(codec, Listener())
        await connector.connect(url, timeout=5 * UNIT)
        async with asyncio.timeout(5 * UNIT):
            assert await connector.get_driver().echo("answered") == "answered"
        assert connector.state is ConnectorState.OPEN
        await connector.close()
        async with asyncio.timeout(5 * UNIT):
            await done


BAD_ACCEPTS: list[tuple[Codec, bytes | str, int]] = [
    ("msgpack", mp(1, {"calls": 0}), 1002),
    ("msgpack", mp(1, {"size": -1}), 1002),
    ("msgpack", mp(1, {"calls": "8"}), 1002),
    ("msgpack", mp(1, []), 1002),
    ("msgpack", mp(1), 1002),
    ("msgpack", mp(0, 1, None, {}), 1002),
    ("msgpack", mp(2, 1, "on_event", ["early"]), 1002),
    ("msgpack", mp(1, {}) + b"\xc0", 1007),
    ("msgpack", mp(1, {1: 2}), 1007),
    ("msgpack", b"\xc1", 1007),
    ("msgpack", "1", 1003),
    ("tgrid", "2", 1002),
    ("tgrid", "1 ", 1002),
    ("tgrid", '"1"', 1002),
    ("tgrid", tg(1, "on_event", "early"), 1002),
    ("tgrid", "not json", 1007),
    ("tgrid", mp(1, {}), 1003),
]


@pytest.mark.parametrize(("codec", "frame", "code"), BAD_ACCEPTS, ids=repr)
async def test_hostile_server_bad_accept_fails_connect(
    codec: Codec, frame: bytes | str, code: int
) -> None:
    # Whatever comes instead of the accept fails connect() with ConnectError;
    # a call sent in its place never reaches the client's provider.
    listener = Listener()
    closed_with: list[int] = []

    async def script(ws: ServerConnection) -> None:
        check_header(codec, await ws.recv())
        await ws.send(frame)
        try:
            async with asyncio.timeout(1 * UNIT):
                await ws.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            closed_with.append(exc.rcvd.code)

    async with hostile_server(script) as (url, done):
        connector = listener_connector(codec, listener)
        with pytest.raises(wsrpc.ConnectError):
            await connector.connect(url, timeout=5 * UNIT)
        async with asyncio.timeout(5 * UNIT):
            await done
    assert closed_with == [code]
    assert connector.state is ConnectorState.CLOSED
    assert listener.touched == []


# -- the report ------------------------------------------------------------------------


def report_lines() -> list[str]:
    """
    What the tests above measured, for the end of the run (tests/conftest.py
    prints it from pytest's terminal summary, whatever order the tests ran in).
    """
    lines: list[str] = []
    if LATENCIES:
        worst = sorted(LATENCIES, key=lambda item: item[1], reverse=True)
        lines.append(f"answer latency, {len(LATENCIES)} cases: max {worst[0][1] * 1000:.1f} ms")
        lines += [f"  {seconds * 1000:8.1f} ms  {name}" for name, seconds in worst[:12]]
        slow = [name for name, seconds in LATENCIES if seconds > 0.1]
        lines.append(f"  over 100 ms: {len(slow)}")
    if STALLS:
        worst_stall = max(STALLS, key=lambda item: item[1])
        lines.append(
            f"longest honest call during a case: {worst_stall[1] * 1000:.1f} ms ({worst_stall[0]})"
        )
    if MEMORY:
        lines.append(f"memory peak per case (tracemalloc, whole process), {len(MEMORY)} cases:")
        for name, size in sorted(MEMORY, key=lambda item: item[1], reverse=True)[:12]:
            lines.append(f"  {size / MiB:8.2f} MiB  {name}")
    if SILENT:
        lines.append("silent sockets: " + ", ".join(f"{k}={v:.6g}" for k, v in SILENT.items()))
    return lines
