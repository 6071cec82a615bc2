"""
A wsrpc client that tests/io/test_faults.py runs in its own process, then kills.

Usage: ``python sigkill_client.py URL [TIMEOUT]``

It connects to the wsrpc server at ``URL``, calls the server's ``hold()``
(which never returns) and serves a provider whose ``hold()`` never returns
either. Once the server has called that ``hold()``, it prints ``READY`` and
waits for ever, with a call pending on the server and a provider call running
here: the state in which the test sends SIGKILL. ``TIMEOUT`` (seconds, 10 by
default) bounds the connection and the wait for the server's call.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Protocol

import wsrpc


class ServerRemote(Protocol):
    async def hold(self) -> None: ...


class Client:
    """The provider the server calls back: ``hold()`` runs until cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def hold(self) -> None:
        self.started.set()
        await asyncio.Event().wait()


async def main(url: str, timeout: float) -> None:
    client = Client()
    async with wsrpc.WebSocketConnector[None, Client, ServerRemote](None, client) as connector:
        await connector.connect(url, timeout=timeout)
        call = asyncio.ensure_future(connector.get_driver().hold())
        async with asyncio.timeout(timeout):
            await client.started.wait()
        print("READY", flush=True)
        await call  # never returns: the test kills this process


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 10.0))
