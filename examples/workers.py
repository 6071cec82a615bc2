"""
One application on every core: N worker processes serving one port.

The launcher reserves a free port, starts two workers (this same script
with ``--worker PORT``), each opening the port with ``reuse_port=True``
(``SO_REUSEPORT``, Linux): the kernel spreads new connections among them.
Clients connect until both workers have answered, then the launcher sends
each worker SIGTERM, which stops it gracefully (``server.shutdown()``).
``wsrpc serve MODULE:ATTR --workers N`` does the same for any application.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from typing import Protocol

import wsrpc

WORKERS = 2


class Service:
    def pid(self) -> int:
        return os.getpid()


class ServiceRemote(Protocol):
    async def pid(self) -> int: ...


async def handler(acceptor: wsrpc.WebSocketAcceptor[None, Service, None]) -> None:
    await acceptor.accept(Service())


async def worker(port: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    server = wsrpc.WebSocketServer[None, Service, None]()
    await server.open(port, handler, reuse_port=True)
    print("READY", flush=True)
    await stop.wait()
    await server.shutdown(grace=5.0)


async def launcher() -> None:
    # Bound with SO_REUSEPORT but never listening: it keeps the port free
    # for the workers and receives no connection itself.
    reservation = socket.socket()
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reservation.bind(("127.0.0.1", 0))
    port = reservation.getsockname()[1]
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--worker", str(port), stdout=asyncio.subprocess.PIPE
        )
        for _ in range(WORKERS)
    ]
    try:
        for process in workers:
            assert process.stdout is not None
            assert await process.stdout.readline() == b"READY\n"
        print(f"{WORKERS} workers serve ws://127.0.0.1:{port}/")
        answered: set[int] = set()
        for _ in range(100):  # each connection lands on one worker or the other
            async with wsrpc.WebSocketConnector[None, None, ServiceRemote](None) as client:
                await client.connect(f"ws://127.0.0.1:{port}/")
                answered.add(await client.get_driver().pid())
            if len(answered) == WORKERS:
                break
        print(f"connections answered by {len(answered)} different worker processes")
    finally:
        for process in workers:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        codes = [await process.wait() for process in workers]
        reservation.close()
    print(f"workers stopped on SIGTERM, exit codes {codes}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        asyncio.run(worker(int(sys.argv[2])))
    else:
        asyncio.run(launcher())
