"""
Threads and blocking code beside wsrpc's event loop.

A server runs on an asyncio event loop, one thread for every connection.
This script shows the four ways wsrpc lets other threads and blocking code
in without stalling that loop:

* ``@wsrpc.blocking`` runs a provider method that blocks (here, a slow key
  derivation) in a worker thread, so other calls are answered meanwhile;
* ``wsrpc.sync.WebSocketConnector`` is a blocking client with the async
  connector's API; one connector is shared by four threads at once;
* ``wsrpc.sync.ThreadsafeAcceptor`` lets a thread that is not the event
  loop's call a connected client back, and close its connection;
* close hooks tell "the client asked to close" (``on_close_request``: its
  close frame arrived, the socket is still open) apart from "the connection
  is gone" (``on_closed``, whose ``CloseInfo.clean`` says graceful close or
  failure). Both run before the connection leaves ``server.acceptors``.

Run it with::

    python examples/threads.py
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import wsrpc
import wsrpc.sync

# -- the server's provider, and how clients see it ---------------------------


class Vault:
    """Derives keys: deliberately slow, blocking work."""

    @wsrpc.blocking
    def derive(self, password: str) -> str:
        # Blocks its worker thread for a while, not the event loop.
        key = hashlib.pbkdf2_hmac("sha256", password.encode(), b"wsrpc-salt", 20_000)
        return key.hex()[:16]

    def ping(self) -> str:
        return "pong"


class VaultSync(Protocol):
    """The vault as a *blocking* client sees it: plain methods."""

    def derive(self, password: str) -> str: ...
    def ping(self) -> str: ...


class VaultRemote(Protocol):
    """The vault as an asyncio client sees it."""

    async def derive(self, password: str) -> str: ...
    async def ping(self) -> str: ...


# -- a client's provider, for the server to call back -------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def on_message(self, text: str) -> str:
        self.messages.append(text)
        return "thanks"


class InboxSync(Protocol):
    def on_message(self, text: str) -> str: ...


Acceptor = wsrpc.WebSocketAcceptor[str, Vault, InboxSync]


async def main() -> None:
    log: list[str] = []  # what the server's hooks saw, printed at the end
    accepted: dict[str, Acceptor] = {}
    inbox_ready = asyncio.Event()

    async def handler(acceptor: Acceptor) -> None:
        name = acceptor.header
        acceptor.on_close_request(
            lambda code, reason: log.append(f"{name} asked to close: {code} {reason!r}")
        )

        @acceptor.on_closed
        def gone(which: Acceptor, info: wsrpc.CloseInfo) -> None:
            how = "clean" if info.clean else "failed"
            side = "by the client" if info.by_peer else "by the server"
            log.append(f"{name} gone: {info.code} {info.reason!r}, {how}, {side}")

        await acceptor.accept(Vault())
        accepted[name] = acceptor
        if name == "inbox":
            inbox_ready.set()

    async with wsrpc.WebSocketServer[str, Vault, InboxSync]() as server:
        await server.open(0, handler)
        url = f"ws://127.0.0.1:{server.port}/"

        # 1. A blocking client, shared by four threads. It runs in a worker
        #    thread here because this thread is busy running the server.
        def threaded_client() -> list[str]:
            with wsrpc.sync.WebSocketConnector[str, None, VaultSync]("threads") as client:
                client.connect(url)
                vault = client.get_driver()
                with ThreadPoolExecutor(max_workers=4) as pool:
                    keys = list(pool.map(vault.derive, ["red", "green", "blue", "gold"]))
                assert vault.ping() == "pong"
                return keys

        keys = await asyncio.to_thread(threaded_client)
        print("keys derived by 4 threads:", ", ".join(keys))

        # 2. The event loop stays free while derive() blocks a worker thread.
        inbox = Inbox()
        async with wsrpc.WebSocketConnector[str, Inbox, VaultRemote]("inbox", inbox) as connector:
            await connector.connect(url)
            vault = connector.get_driver()
            slow = asyncio.ensure_future(vault.derive("slow"))
            print("while derive() runs, ping() ->", await vault.ping())
            print("derive('slow') ->", await slow)

            # 3. A thread that is not the event loop's calls the client back,
            #    then closes the connection with a code and a reason.
            await inbox_ready.wait()
            handle = wsrpc.sync.ThreadsafeAcceptor[InboxSync](accepted["inbox"])
            answers: list[str] = []

            def worker() -> None:
                answers.append(handle.get_driver().on_message("hello from a worker thread"))
                handle.close(4000, "job done")

            thread = threading.Thread(target=worker)
            thread.start()
            info = await connector.join()
            await asyncio.to_thread(thread.join)
            print("the client got:", inbox.messages, "and answered", answers)
            print(f"the client saw the close: {info.code} {info.reason!r}")
        await accepted["threads"].join()

    print("server hooks:")
    for line in sorted(log):  # two connections: sort for a stable order
        print("  " + line)


if __name__ == "__main__":
    asyncio.run(main())
