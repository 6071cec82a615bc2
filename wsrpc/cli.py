"""
The ``wsrpc`` command (also ``python -m wsrpc``): call a server, or serve one.

A front end: it may import anything of wsrpc, and nothing of wsrpc imports it.

``wsrpc call URL PATH [ARG ...]`` connects, makes one call, prints its result
as JSON on stdout and exits; see :data:`CALL_EPILOG` for the exit codes and
how values JSON cannot hold are printed.

``wsrpc serve MODULE:ATTR --port P`` runs a server application, in one
process or in ``--workers N`` processes sharing the port (``SO_REUSEPORT``),
logging to stderr as uvicorn does; on SIGTERM or Ctrl-C it stops accepting,
lets running calls finish for up to ``--grace`` seconds, then closes every
client with 1001 (:meth:`wsrpc.WebSocketServer.shutdown`). See
:data:`SERVE_EPILOG`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import importlib
import inspect
import json
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .cluster import RedisBackplane
from .exceptions import (
    ConnectError,
    ConnectionClosedError,
    EncodeError,
    RejectedError,
    RemoteError,
    RpcTimeoutError,
)
from .server import WebSocketServer

__all__ = ["EXIT_CONNECT", "EXIT_OK", "EXIT_REMOTE", "EXIT_TIMEOUT", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_REMOTE = 1
"""The remote method raised: ``Name: message`` on stderr."""
EXIT_USAGE = 2
"""Bad arguments (argparse's own code), or arguments that are not JSON."""
EXIT_CONNECT = 3
"""The server could not be reached, refused the upgrade or TLS, rejected the
header, or closed the connection before answering."""
EXIT_TIMEOUT = 4
"""No answer (connect and call together) within ``--timeout``."""

CALL_EPILOG = """\
Arguments and --header are JSON: 1, 2.5, '"text"', '[1, 2]', '{"a": 1}', null.
The result is printed as one line of JSON (UTF-8). Bytes, which JSON
cannot hold, are printed as {"$bytes": "<base64>"}, wherever they are.

exit codes:
  0  the call returned; its result is on stdout
  1  the remote method raised: "Name: message" on stderr
  2  usage error (bad options, an argument that is not JSON or is larger
     than the server accepts, an unreadable certificate file)
  3  connection error: unreachable, TLS or upgrade refused, header rejected
     (code and reason on stderr), or the connection closed before the answer
  4  timeout: no answer within --timeout seconds
"""

SERVE_EPILOG = """\
MODULE:ATTR names, in an importable module (the current directory is on
sys.path), either
  a handler:  async def handler(acceptor) -> None, served by a
              WebSocketServer() with the default settings; or
  a factory:  a plain function of no arguments returning (server, handler),
              a WebSocketServer you configured and its handler.
With --workers N, N processes each import it and open the port with
reuse_port=True (SO_REUSEPORT, Linux): the kernel spreads new connections
among them. With --redis URL, each worker's server joins one application
on that Redis (a handler target only; a factory gives its server the
backplane itself): connection ids, groups, broadcasts, get_driver(id) and
disconnect(id) span every worker and machine (see docs/scaling.md). On
SIGTERM or Ctrl-C each stops accepting, lets running calls finish for up to
--grace seconds, then closes its clients with 1001.
"""

_logger = logging.getLogger("wsrpc")


class _Formatter(logging.Formatter):
    """``INFO:     message``, as uvicorn prints it."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return f"{record.levelname + ':':<9} {message}"


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(message)s"))
    _logger.addHandler(handler)
    _logger.setLevel(logging.INFO)
    _logger.propagate = False


# -- call -----------------------------------------------------------------------


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r} ({exc})") from None


def to_json(value: Any) -> Any:
    """``value`` as JSON can hold it (see :data:`CALL_EPILOG`)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, dict):  # wsrpc's values have string keys only
        return {key: to_json(item) for key, item in value.items()}
    return value


def _client_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not str(args.url).lower().startswith("wss://"):
        return None
    context = ssl.create_default_context(cafile=args.cafile)
    if args.certfile is not None:
        context.load_cert_chain(args.certfile, args.keyfile)
    return context


async def _call(args: argparse.Namespace) -> Any:
    from .connector import WebSocketConnector

    connector: WebSocketConnector[Any, None, Any] = WebSocketConnector(
        args.header,
        codec="tgrid" if args.tgrid else "msgpack",
        transport=args.transport,
    )
    async with asyncio.timeout(args.timeout):
        async with connector:
            await connector.connect(args.url, timeout=None, ssl=_client_context(args))
            target: Any = connector.get_driver()
            for name in args.path.split("."):
                target = getattr(target, name)
            return await target(*args.args)


def _run_call(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_call(args))
    except RemoteError as exc:
        print(f"{exc.name}: {exc.message}", file=sys.stderr)
        return EXIT_REMOTE
    except (TimeoutError, RpcTimeoutError):
        print(f"timeout: no answer within {args.timeout} s", file=sys.stderr)
        return EXIT_TIMEOUT
    except RejectedError as exc:
        print(f"rejected: {exc.code} {exc.reason}", file=sys.stderr)
        return EXIT_CONNECT
    except ConnectionClosedError as exc:
        print(f"connection closed: {exc.code} {exc.reason}", file=sys.stderr)
        return EXIT_CONNECT
    except ConnectError as exc:
        print(f"cannot connect: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    except (EncodeError, ValueError, AttributeError, TypeError, OSError) as exc:
        # A bad URL, a path the driver refuses, an argument too large for
        # the server, an unreadable certificate file.
        print(f"wsrpc call: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(to_json(result), ensure_ascii=False))
    return EXIT_OK


# -- serve ------------------------------------------------------------------------


def _load(
    target: str, redis: str | None = None, name: str = "wsrpc"
) -> tuple[WebSocketServer[Any, Any, Any], Any]:
    """
    The server and handler ``MODULE:ATTR`` names (see :data:`SERVE_EPILOG`);
    a handler's server joins the application ``name`` on ``redis`` if given.
    """
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected MODULE:ATTR, not {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    obj: Any = module
    for name in attr.split("."):
        obj = getattr(obj, name)
    if inspect.iscoroutinefunction(obj):
        if redis is None:
            return WebSocketServer(), obj
        return WebSocketServer(backplane=RedisBackplane(redis, name=name)), obj
    if redis is not None:
        raise ValueError(
            "--redis serves a handler; a factory configures its own server: "
            "give it the backplane (WebSocketServer(backplane=RedisBackplane(url)))"
        )
    if callable(obj):
        made = obj()
        if (
            isinstance(made, tuple)
            and len(made) == 2
            and isinstance(made[0], WebSocketServer)
            and callable(made[1])
        ):
            return made[0], made[1]
        raise TypeError(f"{target}() must return (WebSocketServer, handler), not {made!r}")
    raise TypeError(f"{target} is neither an async handler nor a factory")


def _server_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.ssl_certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.ssl_certfile, args.ssl_keyfile)
    if args.ssl_ca_certs is not None:
        context.load_verify_locations(args.ssl_ca_certs)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _serve_one(args: argparse.Namespace, reuse_port: bool) -> int:
    """Serve in this process until SIGTERM or SIGINT; then shut down gracefully."""
    server, handler = _load(args.target, args.redis, args.app)
    context = _server_context(args)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.open(args.port, handler, host=args.host, ssl=context, reuse_port=reuse_port)
    scheme = "wss" if context is not None else "ws"
    _logger.info(
        "wsrpc serving on %s://%s:%d (pid %d)", scheme, args.host, server.port, os.getpid()
    )
    await stop.wait()
    _logger.info("shutting down (pid %d)", os.getpid())
    await server.shutdown(grace=args.grace)
    _logger.info("stopped (pid %d)", os.getpid())
    return EXIT_OK


def _reserve_port(host: str) -> socket.socket:
    """
    A socket bound to a free port of ``host`` with ``SO_REUSEPORT``, never
    listening: it keeps the port for the workers, which open it with
    ``reuse_port=True``, and receives no connection itself.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock


def _worker_command(args: argparse.Namespace, port: int) -> list[str]:
    command = [sys.executable, "-m", "wsrpc", "serve", args.target, "--port", str(port)]
    command += ["--host", args.host, "--grace", str(args.grace), "--reuse-port"]
    for option in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs", "redis", "app", "loop"):
        value = getattr(args, option)
        if value is not None:
            command += [f"--{option.replace('_', '-')}", value]
    return command


async def _supervise(args: argparse.Namespace) -> int:
    """Run ``--workers`` processes on one port; forward SIGTERM and SIGINT to them."""
    reserved = _reserve_port(args.host) if args.port == 0 else None
    port = reserved.getsockname()[1] if reserved is not None else args.port
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    _logger.info(
        "wsrpc supervisor (pid %d) starting %d workers on port %d", os.getpid(), args.workers, port
    )
    workers = [
        await asyncio.create_subprocess_exec(*_worker_command(args, port))
        for _ in range(args.workers)
    ]
    waits = {asyncio.ensure_future(worker.wait()): worker for worker in workers}
    stop_wait = asyncio.ensure_future(stopping.wait())
    try:
        done, _ = await asyncio.wait([*waits, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        if not stopping.is_set():
            died = next(waits[task] for task in done if task in waits)
            _logger.error(
                "worker %d exited with %s: stopping the others", died.pid, died.returncode
            )
        for worker in workers:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
        codes = [await worker.wait() for worker in workers]
    finally:
        stop_wait.cancel()
        if reserved is not None:
            reserved.close()
    _logger.info("wsrpc supervisor stopped: workers exited with %s", codes)
    return EXIT_OK if stopping.is_set() and not any(codes) else 1


def _run_serve(args: argparse.Namespace) -> int:
    _configure_logging()
    try:
        if args.workers > 1:
            return asyncio.run(_supervise(args))  # the supervisor only waits: asyncio's loop
        return _loop_runner(args.loop)(_serve_one(args, args.reuse_port))
    except (ImportError, AttributeError, TypeError, ValueError, OSError) as exc:
        _logger.error("cannot serve %s: %s", args.target, exc)
        return 1


def _loop_runner(loop: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """``asyncio.run``, on uvloop's event loop for ``--loop uvloop``."""
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            raise ImportError("--loop uvloop needs uvloop: pip install 'wsrpc[fast]'") from exc
        return functools.partial(_run_with, uvloop.new_event_loop)
    return asyncio.run


def _run_with(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], coro: Coroutine[Any, Any, int]
) -> int:
    # asyncio.run() takes a loop_factory from Python 3.12 only; the Runner, from 3.11.
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


# -- the command line -------------------------------------------------------------


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsrpc", description="Call a wsrpc (or TGrid) server, or serve one."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    call = commands.add_parser(
        "call",
        help="connect, make one call, print its result as JSON",
        description="Connect to URL, call PATH with ARGs, print the result as JSON.",
        epilog=CALL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_argument("url", metavar="URL", help="ws:// or wss:// URL of the server")
    call.add_argument("path", metavar="PATH", help="the method's dotted path, e.g. scientific.sqrt")
    call.add_argument("args", metavar="ARG", nargs="*", type=_json_arg, help="JSON arguments")
    call.add_argument("--header", type=_json_arg, default=None, help="the header, as JSON")
    call.add_argument("--tgrid", action="store_true", help="speak TGrid's protocol (JSON)")
    call.add_argument(
        "--timeout", type=_positive, default=10.0, help="seconds for everything (default 10)"
    )
    call.add_argument(
        "--transport",
        choices=["websockets", "picows"],
        default="websockets",
        help=argparse.SUPPRESS,
    )
    call.add_argument("--cafile", help="wss://: trust the CAs of this PEM file")
    call.add_argument("--certfile", help="wss://: client certificate (PEM)")
    call.add_argument("--keyfile", help="wss://: the client certificate's key (PEM)")

    serve = commands.add_parser(
        "serve",
        help="run a server application",
        description="Serve MODULE:ATTR until SIGTERM or Ctrl-C.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("target", metavar="MODULE:ATTR")
    serve.add_argument(
        "--port", type=int, required=True, help="TCP port; 0 picks a free one (it is logged)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the port (default 1)"
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds running calls get to finish on SIGTERM (default 10)",
    )
    serve.add_argument("--ssl-certfile", help="serve wss://: certificate chain (PEM)")
    serve.add_argument("--ssl-keyfile", help="its private key (PEM)")
    serve.add_argument("--ssl-ca-certs", help="require client certificates of these CAs (PEM)")
    serve.add_argument(
        "--redis",
        metavar="URL",
        help="join an application over Redis (redis:// or rediss://): ids, groups, "
        "broadcasts and get_driver(id) span every worker and machine (wsrpc[redis])",
    )
    serve.add_argument(
        "--app", default="wsrpc", help="the application's name on Redis (default wsrpc)"
    )
    serve.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of each worker (uvloop: wsrpc[fast]; with transport='picows', "
        "the fast path)",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``wsrpc`` command with ``argv`` (default: ``sys.argv[1:]``); return its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "call":
        if args.keyfile is not None and args.certfile is None:
            parser.error("--keyfile needs --certfile")
        return _run_call(args)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.grace < 0:
        parser.error("--grace must be 0 or more")
    if args.ssl_keyfile is not None and args.ssl_certfile is None:
        parser.error("--ssl-keyfile needs --ssl-certfile")
    if args.ssl_ca_certs is not None and args.ssl_certfile is None:
        parser.error("--ssl-ca-certs needs --ssl-certfile")
    return _run_serve(args)
