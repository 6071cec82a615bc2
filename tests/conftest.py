"""
Shared test helpers.

Every timeout in the tests is a multiple of ``UNIT`` seconds, so a slow
machine can scale them all with ``WSRPC_TEST_UNIT=2``.

The folders: ``core`` (sans-I/O, no sockets), ``io`` (the asyncio layer
over real sockets), ``transports`` (each transport on its own) and
``system`` (examples, docs, typing, packaging, TGrid, the browser).
``WSRPC_TEST_TRANSPORT=picows`` runs the tests on the fast transport: it
becomes the default of every server and connector the tests make (``make
test`` runs ``tests/io`` once more this way). Nothing synchronises with
sleep(): tests wait on events, futures or ``join()``, bounded by these
generous timeouts. Servers bind 127.0.0.1 on port 0.
"""

from __future__ import annotations

import gc
import logging
import os
import shlex
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest

import wsrpc

UNIT = float(os.environ.get("WSRPC_TEST_UNIT", "1.0"))
"""One unit of test time, in seconds."""

TRANSPORT = os.environ.get("WSRPC_TEST_TRANSPORT", "websockets")
"""The transport the tests' servers and connectors use unless they say."""

if TRANSPORT != "websockets":
    for _cls in (wsrpc.WebSocketServer, wsrpc.WebSocketConnector, wsrpc.sync.WebSocketConnector):
        _defaults = _cls.__init__.__kwdefaults__
        assert _defaults is not None and "transport" in _defaults
        _defaults["transport"] = TRANSPORT


def url_of(server: wsrpc.WebSocketServer[Any, Any, Any], path: str = "/") -> str:
    """The ws:// URL of a server opened on 127.0.0.1."""
    return f"ws://127.0.0.1:{server.port}{path}"


AnyAcceptor = wsrpc.WebSocketAcceptor[Any, Any, Any]


@asynccontextmanager
async def running_server(
    handler: Callable[[AnyAcceptor], Awaitable[None]],
    **options: Any,
) -> AsyncIterator[wsrpc.WebSocketServer[Any, Any, Any]]:
    """A server on 127.0.0.1, port 0, closed on exit."""
    server: wsrpc.WebSocketServer[Any, Any, Any] = wsrpc.WebSocketServer(**options)
    await server.open(0, handler)
    try:
        yield server
    finally:
        await server.close()


def accept_with(provider: object) -> Callable[[AnyAcceptor], Awaitable[None]]:
    """A handler that accepts every client with ``provider``."""

    async def handler(acceptor: AnyAcceptor) -> None:
        await acceptor.accept(provider)

    return handler


@pytest.fixture
def unit() -> float:
    return UNIT


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _asyncio_errors_recorded() -> Iterator[_Recorder]:
    recorder = _Recorder()
    logger = logging.getLogger("asyncio")
    logger.addHandler(recorder)
    try:
        yield recorder
    finally:
        logger.removeHandler(recorder)


# The collections below are full ones, and a full collection walks every
# object the collector tracks: the session's (modules, test items and their
# parameters, what earlier tests keep, a few hundred thousand objects) as
# well as the test's. Walking those after each of a thousand async tests cost
# a third of the suite's time. So, once a collection has run, what survived it
# is frozen (gc.freeze(): left out of later collections) and the next
# collection walks only what was made since. What the frozen objects drop
# later (a module-scoped fixture's server, say) is unfrozen and collected at
# the end of each module, under the same check.


def pytest_collection_finish(session: pytest.Session) -> None:
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def no_asyncio_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """
    Fail an async test that leaves asyncio logging an error, such as a task or
    future whose exception nobody retrieved: those are lost errors.
    """
    if request.node.get_closest_marker("asyncio") is None:
        yield
        return
    with _asyncio_errors_recorded() as recorder:
        yield
        gc.collect()  # "never retrieved" is reported when the object dies
        gc.freeze()
    assert not recorder.records, [record.getMessage() for record in recorder.records]


@pytest.fixture(scope="module", autouse=True)
def no_asyncio_errors_after_the_module() -> Iterator[None]:
    """
    The same check once the module's fixtures are gone, over everything
    frozen meanwhile: an error there fails the module's last test (teardown).
    """
    yield
    with _asyncio_errors_recorded() as recorder:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
    assert not recorder.records, [record.getMessage() for record in recorder.records]


# pytest-xdist (`make test` runs the suite on every core with it): its workers
# start as a bare interpreter, without this one's -X dev; and the hostile-input
# figures are measured in whichever worker ran tests/io/test_hostile.py, so
# that worker hands them over at its end.


def pytest_configure(config: pytest.Config) -> None:
    specs = getattr(config.option, "tx", None)
    if specs and sys.flags.dev_mode:
        python = f"{shlex.quote(sys.executable)} -X dev"
        config.option.tx = [f"popen//python={python}" if s == "popen" else s for s in specs]


def _hostile_lines() -> list[str]:
    hostile = sys.modules.get("tests.io.test_hostile")
    lines: list[str] = hostile.report_lines() if hostile is not None else []
    return lines


_lines_from_workers: list[str] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker
        workeroutput["hostile_lines"] = _hostile_lines()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    _lines_from_workers.extend(getattr(node, "workeroutput", {}).get("hostile_lines", []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the hostile-input figures (latency, memory) if those tests ran."""
    lines = _hostile_lines() + _lines_from_workers
    if lines:
        terminalreporter.section("hostile input: measured")
        for line in lines:
            terminalreporter.write_line(line)
