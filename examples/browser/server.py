"""
A web page whose TGrid client calls this wsrpc server, and is called back.

The server serves the page itself (``index.html`` and the bundled
``dist/main.js``, through ``http_handler``) and the WebSocket endpoint
``/rpc`` on the same port. The page connects with TGrid's own
``WebSocketConnector`` (npm ``tgrid`` 1.2.1, bundled by esbuild), sending
``{"name": ..., "token": ...}`` as its header:

- a wrong token is rejected with 4001 ``"bad token"``, a missing name with
  4000, and the page shows the code and reason TGrid reports;
- an accepted page calls :class:`Session`'s methods (``add``, ``split``,
  ``post``), and the server calls the page's provider, ``addItem(text)``, to
  push items to the live list of every connected page: a welcome to the page
  that just connected, ``"<name> joined"`` and each post to all of them.

Only the page's own origin, ``http://127.0.0.1:<port>``, may open the
WebSocket (``origins=``): another site's page, or a client sending no
``Origin``, gets HTTP 403. Build the bundle, then run::

    make browser                       # npm ci + esbuild (also installs chromium)
    python examples/browser/server.py  # prints http://127.0.0.1:43125/, say

and open the printed URL (``127.0.0.1``, not ``localhost``: that would be
another origin). The server listens on 127.0.0.1, on ``--port`` (default 0:
a free port), and runs until its standard input closes (Ctrl-D) or Ctrl-C.
``tests/test_browser.py`` drives the page in headless Chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path
from typing import Protocol

import wsrpc
from wsrpc.http import HttpHandler, HttpRequest, HttpResponse

HERE = Path(__file__).resolve().parent
BUNDLE = HERE / "dist" / "main.js"
PAGE = HERE / "index.html"
TOKEN = "letmein"
"""The token a page must send unless ``--token`` says otherwise."""

# -- the contract ---------------------------------------------------------------
#
# The page's script (src/main.js) mirrors these, as TypeScript would:
#
#   interface ISession {
#     add(a: number, b: number): number;
#     split(text: string): string[];
#     post(text: string): number;
#   }
#   interface IPage { addItem(text: string): void }


class PageRemote(Protocol):
    """The page's provider (a plain JavaScript object), as this server sees it."""

    async def addItem(self, text: str) -> None: ...  # JavaScript's camelCase, not translated


class Session:
    """What one connected page may call: its public methods."""

    def __init__(self, server: Server, name: str) -> None:
        self._server = server  # private: out of the page's reach
        self._name = name

    def add(self, a: float, b: float) -> float:
        return a + b

    def split(self, text: str) -> list[str]:
        """The words of ``text``: a list arrives in JavaScript as an Array."""
        return text.split()

    async def post(self, text: str) -> int:
        """Push ``"<name>: <text>"`` to every connected page; return how many got it."""
        return await push(self._server, f"{self._name}: {text}")


# The header is untrusted JSON from the browser: typed ``object``, checked below.
Server = wsrpc.WebSocketServer[object, Session, PageRemote]
Acceptor = wsrpc.WebSocketAcceptor[object, Session, PageRemote]


async def push(server: Server, text: str) -> int:
    """Call ``addItem(text)`` on every connected page; return how many answered."""
    outcomes = await server.broadcast(lambda page: page.addItem(text))
    return sum(outcome.ok for outcome in outcomes)


def make_handler(server: Server, token: str) -> wsrpc.Handler[object, Session, PageRemote]:
    """The handshake handler: accept a page with ``token`` and a name, reject others."""

    async def handler(acceptor: Acceptor) -> None:
        header = acceptor.header
        fields = header if isinstance(header, dict) else {}
        name = fields.get("name")
        if fields.get("token") != token:
            print("rejected a bad token", flush=True)
            await acceptor.reject(4001, "bad token")
            return
        if not isinstance(name, str) or not name.strip():
            print("rejected a page without a name", flush=True)
            await acceptor.reject(4000, "a name is required")
            return
        name = name.strip()[:40]
        page = acceptor.get_driver()  # TGrid's acceptor.getDriver(), before accept()
        # For a TGrid client, accept() also waits until the page can receive
        # calls: calling it right after is safe.
        await acceptor.accept(Session(server, name))
        print(f"accepted {name}", flush=True)
        try:
            await page.addItem(f"welcome, {name}")
            await push(server, f"{name} joined")
        except wsrpc.WsrpcError as error:  # the page left already
            print(f"could not greet {name}: {error}", flush=True)
        info = await acceptor.join()
        print(f"{name} left (code {info.code})", flush=True)

    return handler


def load_files(bundle: Path) -> dict[str, HttpResponse]:
    """
    The page's files as responses, by path; read once, at startup.

    Raises:
        FileNotFoundError: the bundle has not been built (its message says how).
    """
    if not bundle.is_file():
        raise FileNotFoundError(
            f"{bundle} is missing: build the page's script first with `make browser`, or "
            "`npm ci --prefix examples/browser && npm run --prefix examples/browser build`"
        )
    # Scripts, styles and WebSocket only from this origin ('self' covers
    # ws:// to the same host and port); the page has inline styles only.
    policy = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"
    common = [("Content-Security-Policy", policy), ("X-Content-Type-Options", "nosniff")]
    return {
        "/": HttpResponse(
            200, PAGE.read_bytes(), [("Content-Type", "text/html; charset=utf-8"), *common]
        ),
        "/main.js": HttpResponse(
            200, bundle.read_bytes(), [("Content-Type", "text/javascript; charset=utf-8"), *common]
        ),
    }


def make_http_handler(files: dict[str, HttpResponse]) -> HttpHandler:
    """Serve ``files``; let WebSocket upgrades through (the origin check comes next)."""

    def http_handler(request: HttpRequest) -> HttpResponse | None:
        if request.is_upgrade:
            return None  # on to the Origin check, then the handshake handler
        path = request.path.split("?", 1)[0]
        return files.get(path) or HttpResponse(404, "not found\n")

    return http_handler


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def open_server(port: int, token: str, files: dict[str, HttpResponse]) -> Server:
    """
    An open server on 127.0.0.1:``port`` (0: a free port) admitting only
    the origin ``http://127.0.0.1:<port>``.

    ``origins`` is fixed when the server is created, but the page's origin
    contains the port, which ``open(0, ...)`` only picks later. So for port
    0 the port is chosen first, and if another program takes it before the
    server binds it, another one is tried.
    """
    for _ in range(10):
        chosen = port or free_port()
        server = Server(origins=[f"http://127.0.0.1:{chosen}"])
        try:
            await server.open(
                chosen, make_handler(server, token), http_handler=make_http_handler(files)
            )
        except OSError:
            await server.close()
            if port:
                raise
            continue
        return server
    raise OSError("no free port found for the server")


async def stdin_closed() -> None:
    """Return once standard input reaches its end."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while await reader.read(4096):
            pass
    finally:
        transport.close()


async def main(port: int, token: str, files: dict[str, HttpResponse]) -> None:
    async with await open_server(port, token, files) as server:
        print(f"http://127.0.0.1:{server.port}/", flush=True)
        await stdin_closed()
    # Leaving the block closed the server and every page's connection (1001).


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    parser.add_argument("--token", default=TOKEN, help=f"the token pages must send ({TOKEN})")
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help="the built page script")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    try:
        page_files = load_files(args.bundle)
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")  # status 1, the message on stderr
    try:
        asyncio.run(main(args.port, args.token, page_files))
    except KeyboardInterrupt:
        pass
