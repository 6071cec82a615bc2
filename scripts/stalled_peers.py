"""
Measure what peers that read nothing cost a server (docs/security.md, "Measured").

    .venv/bin/python scripts/stalled_peers.py [--transport picows]

30 clients each ask for an 8 MiB answer and read nothing: the server's RSS
and file descriptors while they wait, then how long ``server.close()`` takes
(``close_timeout=10``). Then one client floods 48 MiB of pings and reads
nothing: the server's RSS growth.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wsrpc
from tests.io.test_hostile import rss
from tests.io.test_stalled_peers import (
    MiB,
    Service,
    accepting,
    flood_until_stuck,
    flooding,
    only_acceptor,
    open_stalled,
    raw_peer,
)


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def main(transport: Any) -> None:
    service, accepted = Service(), []
    server: wsrpc.WebSocketServer[Any, Any, Any] = wsrpc.WebSocketServer(
        transport=transport, close_timeout=10.0, stall_timeout=None, ping_interval=None
    )
    await server.open(0, accepting(service, accepted))
    gc.collect()
    base_rss, base_fds = rss(), fds()
    async with AsyncExitStack() as stack:
        for _ in range(30):
            await stack.enter_async_context(open_stalled(server.port, service))
        held = rss() - base_rss
        print(
            f"30 non-reading peers: RSS +{held / MiB:.0f} MiB (both ends in this process), "
            f"fds +{fds() - base_fds}"
        )
        started = time.monotonic()
        await server.close()
        print(
            f"server.close() returned in {time.monotonic() - started:.2f} s "
            f"(close_timeout 10 s); fds +{fds() - base_fds} (the peers' own sockets)"
        )
    server = wsrpc.WebSocketServer(transport=transport, stall_timeout=None)
    await server.open(0, accepting(Service(), []))
    async with raw_peer(server.port) as sock:
        await only_acceptor(server)
        gc.collect()
        before = rss()
        with flooding(sock, 48 * MiB) as sent:
            await flood_until_stuck(sent, 48 * MiB)
            print(
                f"ping flood: {sent[0] / MiB:.1f} MiB of pings sent before the peer was "
                f"pushed back; server RSS +{(rss() - before) / MiB:.1f} MiB"
            )
    await server.close()
    server = wsrpc.WebSocketServer(transport=transport, stall_timeout=5.0)
    await server.open(0, accepting(Service(), []))
    async with raw_peer(server.port) as sock:
        acceptor = await only_acceptor(server)
        with flooding(sock, 48 * MiB):
            started = time.monotonic()
            info = await acceptor.join()
            print(
                f"ping flood, stall_timeout=5: closed with {info.code} after "
                f"{time.monotonic() - started:.2f} s"
            )
    await server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", default="websockets", choices=["websockets", "picows"])
    asyncio.run(main(parser.parse_args().transport))
