"""
An in-memory :class:`~wsrpc._transports.base.Channel` pair, for testing the
connection layer without sockets (as h11's ``ConnectionPair`` does for h11).

Messages go from one end's :meth:`~MemoryChannel.send` into the other end's
inbox and are delivered on the next loop iteration, one at a time, as a
transport delivers them: a paused end delivers nothing more, even of what
is already in its inbox, and :attr:`MemoryChannel.inbox` shows what waits.
Nothing is timed: a test steps the loop with :func:`settle`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from wsrpc._communicator import Communicator
from wsrpc._transports.base import (
    Channel,
    ChannelClosed,
    CloseFrameCallback,
    CloseFrames,
    LostCallback,
    MessageCallback,
)
from wsrpc.codecs import MsgpackCodec
from wsrpc.protocol import RpcProtocol, Side
from wsrpc.states import CloseInfo


class MemoryChannel(Channel):
    """One end of an in-memory connection; make them with :func:`channel_pair`."""

    def __init__(self) -> None:
        self.peer: MemoryChannel | None = None
        self.inbox: deque[bytes | str] = deque()
        """Messages received and not delivered yet (paused, or not started)."""
        self.reading_paused = False
        self.delivered = 0
        self._on_message: MessageCallback | None = None
        self._on_lost: LostCallback | None = None
        self._on_close_frame: CloseFrameCallback | None = None
        self._frames = CloseFrames(None, None, False)
        self._gone = False
        self._gone_event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._scheduled = False

    # -- receiving ------------------------------------------------------------

    def start(
        self,
        on_message: MessageCallback,
        on_lost: LostCallback,
        on_close_frame: CloseFrameCallback | None = None,
    ) -> None:
        self._on_message, self._on_lost, self._on_close_frame = on_message, on_lost, on_close_frame
        self._deliver()
        if self._gone:
            on_lost()

    def _receive(self, data: bytes | str) -> None:
        self.inbox.append(data)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self._scheduled = False
        # One message at a time: a pause taken by the callback holds the rest.
        while self.inbox and not self.reading_paused and not self._gone:
            on_message = self._on_message
            if on_message is None:
                return
            self.delivered += 1
            on_message(self.inbox.popleft())

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            self._schedule()

    # -- sending ----------------------------------------------------------------

    def send(self, data: bytes | str) -> None:
        if self._gone or self._frames.sent is not None:
            raise ChannelClosed(*self._frames.cause)
        assert self.peer is not None
        self.peer._receive(data)

    @property
    def writing_paused(self) -> bool:
        return False

    async def drain(self) -> None:
        return None

    def ping(self) -> asyncio.Future[None]:
        if self._gone:
            raise ChannelClosed(*self._frames.cause)
        pong: asyncio.Future[None] = self._loop.create_future()
        pong.set_result(None)
        return pong

    # -- closing ----------------------------------------------------------------

    async def close(self, code: int, reason: str) -> None:
        peer = self.peer
        if not self._gone and self._frames.sent is None:
            self._frames = CloseFrames(self._frames.received, (code, reason), False)
            if peer is not None and not peer._gone:
                peer._frames = CloseFrames((code, reason), peer._frames.sent, True)
                if peer._on_close_frame is not None:
                    peer._on_close_frame(code, reason)
                # The peer answers with the same close frame at once.
                peer._frames = CloseFrames((code, reason), (code, reason), True)
                self._frames = CloseFrames((code, reason), (code, reason), False)
                peer._lose()
            self._lose()
        await self.wait_closed()

    def _lose(self) -> None:
        if not self._gone:
            self._gone = True
            self._gone_event.set()
            on_lost = self._on_lost
            self._on_message = self._on_lost = self._on_close_frame = None
            if on_lost is not None:
                on_lost()

    def abort(self) -> None:
        peer = self.peer
        self._lose()
        if peer is not None:
            peer._lose()

    async def wait_closed(self) -> None:
        await self._gone_event.wait()

    @property
    def is_closing(self) -> bool:
        return self._gone or self._frames.sent is not None or self._frames.received is not None

    @property
    def close_frames(self) -> CloseFrames:
        return self._frames

    # -- the opening request -------------------------------------------------------

    @property
    def remote_ip(self) -> str:
        return "memory"

    @property
    def request_path(self) -> str:
        return "/"

    @property
    def request_headers(self) -> list[tuple[str, str]]:
        return []


def channel_pair() -> tuple[MemoryChannel, MemoryChannel]:
    """Two connected ends: (client, server)."""
    client, server = MemoryChannel(), MemoryChannel()
    client.peer, server.peer = server, client
    return client, server


def open_protocols(
    client_max_calls: int = 128, server_max_calls: int = 128
) -> tuple[RpcProtocol, RpcProtocol]:
    """A client and a server protocol, through the handshake: both OPEN."""
    codec = MsgpackCodec()
    client = RpcProtocol(Side.CLIENT, codec, max_calls=client_max_calls, max_size=2**20)
    server = RpcProtocol(Side.SERVER, codec, max_calls=server_max_calls, max_size=2**20)
    server.receive_header(client.send_header(None))
    client.receive_accept(server.send_accept())
    return client, server


@dataclass
class Closed:
    """What a communicator reported when its connection was gone."""

    infos: list[CloseInfo] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, info: CloseInfo) -> None:
        self.infos.append(info)
        self.done.set()


def communicator(
    channel: MemoryChannel, protocol: RpcProtocol, provider: object, **options: Any
) -> tuple[Communicator, Closed]:
    """A communicator on ``channel`` serving ``provider``, and its close report."""
    closed = Closed()
    settings: dict[str, Any] = {
        "call_timeout": None,
        "ping_interval": None,
        "ping_timeout": None,
        "call_error_log_level": 10,
        "close_timeout": 5.0,
        "decode_budget": None,
        **options,
    }
    return Communicator(channel, protocol, provider, on_closed=closed, **settings), closed


async def settle() -> None:
    """Let every message in flight be delivered and handled (steps the loop)."""
    # Each delivery is one loop callback; each task step, one more. A fixed
    # number of steps covers what these tests put in flight, and it is a
    # count of steps, not a time: nothing here waits on the clock.
    for _ in range(50):
        await asyncio.sleep(0)
