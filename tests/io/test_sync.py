"""
wsrpc.sync: the blocking connector used from threads, and ThreadsafeAcceptor.

The server runs on an event loop of its own in a background thread, as a
threaded program's server would; the tests' threads play the foreign
threads. Threads are joined with timeouts and checked to have finished, so
that a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import queue
import signal
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar, assert_type, cast

import pytest

import wsrpc
import wsrpc.sync
from wsrpc.sync import ThreadsafeAcceptor

from ..conftest import UNIT, AnyAcceptor

T = TypeVar("T")

Header = dict[str, str]
HEADER: Header = {"token": "secret"}


# -- the server's side --------------------------------------------------------


class Gate:
    """Counts, across threads, the server's calls that started and were cancelled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = 0
        self.cancelled = 0
        self.expected = 1
        self.all_started = threading.Event()
        self.all_cancelled = threading.Event()

    def expect(self, count: int) -> None:
        self.expected = count

    def start(self) -> None:
        with self._lock:
            self.started += 1
            if self.started >= self.expected:
                self.all_started.set()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled += 1
            if self.cancelled >= self.expected:
                self.all_cancelled.set()


class ClientRemote(Protocol):
    """The sync connector's provider, as the server's foreign threads call it."""

    def on_message(self, text: str) -> int: ...


class Scientific:
    def sqrt(self, x: float) -> float:
        return math.sqrt(x)


class Calculator:
    """The server's provider; runs on the server's event loop."""

    def __init__(self, acceptor: AnyAcceptor, gate: Gate) -> None:
        self.scientific = Scientific()
        self._acceptor = acceptor
        self._gate = gate

    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, value: Any) -> Any:
        return value

    def greet(self, name: str, *, polite: bool = False) -> str:
        return f"Good day, {name}." if polite else f"hi {name}"

    def fail(self, message: str) -> None:
        raise ValueError(message)

    async def wait(self, tag: str) -> str:
        """Never returns by itself: ends when cancelled (timeout, close)."""
        self._gate.start()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            self._gate.cancel()
            raise
        return tag

    async def call_back(self, text: str) -> int:
        result: int = await self._acceptor.get_driver().on_message(text)
        return result

    async def relay_via_client(self, a: int, b: int) -> int:
        result: int = await self._acceptor.get_driver().relay(a, b)
        return result

    async def ask_client_to_close(self) -> None:
        await self._acceptor.get_driver().close_me()

    async def reenter_client(self) -> list[str]:
        result: list[str] = await self._acceptor.get_driver().reenter()
        return result

    def threadsafe_from_the_loop(self) -> list[str]:
        handle = ThreadsafeAcceptor[ClientRemote](self._acceptor)
        attempts: list[Callable[[], object]] = [
            lambda: handle.get_driver().on_message("x"),
            lambda: handle.close(),
            lambda: handle.join(),
        ]
        return [_outcome(attempt) for attempt in attempts]


def _outcome(attempt: Callable[[], object]) -> str:
    try:
        attempt()
    except wsrpc.StateError:
        return "StateError"
    return "returned"


class ScientificRemote(Protocol):
    def sqrt(self, x: float) -> float: ...


class CalculatorRemote(Protocol):
    """What the sync connector sees of Calculator: plain methods."""

    scientific: ScientificRemote

    def add(self, a: int, b: int) -> int: ...
    def echo(self, value: Any) -> Any: ...
    def greet(self, name: str, *, polite: bool = False) -> str: ...
    def fail(self, message: str) -> None: ...
    def wait(self, tag: str) -> str: ...
    def call_back(self, text: str) -> int: ...
    def relay_via_client(self, a: int, b: int) -> int: ...
    def ask_client_to_close(self) -> None: ...
    def reenter_client(self) -> list[str]: ...
    def threadsafe_from_the_loop(self) -> list[str]: ...


class ServerThread:
    """A wsrpc server on an event loop of its own, in a background thread."""

    def __init__(self) -> None:
        self.gate = Gate()
        self.accepted: queue.Queue[ThreadsafeAcceptor[ClientRemote]] = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name="test-server", daemon=True)
        self.thread.start()
        self.server = self.run(self._open())
        self.url = f"ws://127.0.0.1:{self.server.port}/"

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _open(self) -> wsrpc.WebSocketServer[Header, Calculator, Any]:
        server = wsrpc.WebSocketServer[Header, Calculator, Any]()
        await server.open(0, self._handler)
        return server

    async def _handler(self, acceptor: wsrpc.WebSocketAcceptor[Header, Calculator, Any]) -> None:
        if acceptor.header != HEADER:
            await acceptor.reject(4001, "bad token")
            return
        await acceptor.accept(Calculator(acceptor, self.gate))
        self.accepted.put(ThreadsafeAcceptor[ClientRemote](acceptor))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10 * UNIT)

    def next_acceptor(self) -> ThreadsafeAcceptor[ClientRemote]:
        return self.accepted.get(timeout=5 * UNIT)

    def stop(self) -> None:
        """Close the server, stop and close its loop; idempotent."""
        if self.loop.is_closed():
            return
        try:
            self.run(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10 * UNIT)
            assert not self.thread.is_alive()
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            asyncio.set_event_loop(None)
            self.loop.close()


@pytest.fixture
def server() -> Iterator[ServerThread]:
    server = ServerThread()
    try:
        yield server
    finally:
        server.stop()


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_logged_errors() -> Iterator[None]:
    """Nothing logs an error in any thread: no lost task exception, no wsrpc bug."""
    recorder = _Recorder()
    loggers = [logging.getLogger("asyncio"), logging.getLogger("wsrpc")]
    for logger in loggers:
        logger.addHandler(recorder)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(recorder)
    assert not recorder.records, [record.getMessage() for record in recorder.records]


# -- the client's side --------------------------------------------------------


class Client:
    """The sync connector's provider; runs on the connector's loop thread."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self._connector: SyncConnector | None = None

    def on_message(self, text: str) -> int:
        self.threads.append(threading.current_thread())
        return len(text)

    @wsrpc.blocking
    def relay(self, a: int, b: int) -> int:
        """In a worker thread of the connector's loop: the sync driver works there."""
        assert self._connector is not None
        return self._connector.get_driver().add(a, b)

    @wsrpc.blocking
    def close_me(self) -> None:
        assert self._connector is not None
        self._connector.close(4003, "closed by a worker")

    def reenter(self) -> list[str]:
        """Try the connector's blocking API from its own event loop thread."""
        connector = self._connector
        assert connector is not None
        attempts: list[Callable[[], object]] = [
            lambda: connector.get_driver().add(1, 2),
            lambda: connector.close(),
            lambda: connector.join(UNIT),
        ]
        return [_outcome(attempt) for attempt in attempts]


SyncConnector = wsrpc.sync.WebSocketConnector[Header, Client, CalculatorRemote]


def connect(server: ServerThread, client: Client | None = None) -> SyncConnector:
    connector = SyncConnector(HEADER, client)
    connector.connect(server.url, timeout=5 * UNIT)
    return connector


def start_threads(count: int, target: Callable[[int], None]) -> list[threading.Thread]:
    threads = [
        threading.Thread(target=target, args=(i,), name=f"test-worker-{i}", daemon=True)
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(10 * UNIT)
    assert not [thread.name for thread in threads if thread.is_alive()]


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("wsrpc.sync.")]


# -- tests --------------------------------------------------------------------


def test_connect_call_nested_and_close(server: ServerThread) -> None:
    connector = SyncConnector(HEADER)
    # (Tuples, because mypy would narrow connector.state across the calls.)
    assert (connector.state, connector.header) == (wsrpc.ConnectorState.NONE, HEADER)
    connector.connect(server.url, timeout=5 * UNIT)
    assert (connector.state, connector.is_closed, connector.close_info) == (
        wsrpc.ConnectorState.OPEN,
        False,
        None,
    )
    calc = connector.get_driver()
    # Statically too: the driver is the sync protocol, its calls return values.
    assert_type(calc, CalculatorRemote)
    assert assert_type(calc.add(1, 2), int) == 3
    assert calc.scientific.sqrt(16) == 4.0
    assert calc.greet("Ada") == "hi Ada"
    assert calc.greet("Ada", polite=True) == "Good day, Ada."
    assert calc.echo({"a": [1, b"x", None]}) == {"a": [1, b"x", None]}
    assert connector.get_driver() is calc  # cached, like the async driver
    assert calc.scientific is calc.scientific
    assert repr(calc.scientific.sqrt) == "<wsrpc.sync.SyncDriver scientific.sqrt>"
    with pytest.raises(AttributeError):
        _ = cast(Any, calc)._private
    with pytest.raises(TypeError):
        cast(Any, calc)()

    connector.close()
    assert (connector.state, connector.is_closed) == (wsrpc.ConnectorState.CLOSED, True)
    info = connector.close_info
    assert info is not None and (info.code, info.clean, info.by_peer) == (1000, True, False)
    assert connector.join(UNIT) == info
    connector.close()  # idempotent
    # The loop is gone: a call fails at once with the close's code.
    with pytest.raises(wsrpc.ConnectionClosedError) as error:
        calc.add(1, 2)
    assert error.value.code == 1000
    with pytest.raises(wsrpc.StateError):
        connector.connect(server.url)
    assert server.next_acceptor().join(5 * UNIT).code == 1000


def test_context_manager_closes_on_exit(server: ServerThread) -> None:
    with SyncConnector(HEADER, additional_headers={"X-Client": "sync"}) as connector:
        assert dict(connector.response_headers) == {}
        connector.connect(server.url, timeout=5 * UNIT)
        assert connector.get_driver().add(2, 2) == 4
        assert server.next_acceptor().acceptor.request_headers["x-client"] == "sync"
        assert connector.response_headers["upgrade"].lower() == "websocket"
    assert connector.state is wsrpc.ConnectorState.CLOSED
    assert loop_threads() == []


def test_rejection_raises_rejected_error(server: ServerThread) -> None:
    connector = SyncConnector({"token": "wrong"})
    with pytest.raises(wsrpc.RejectedError) as error:
        connector.connect(server.url, timeout=5 * UNIT)
    assert (error.value.code, error.value.reason) == (4001, "bad token")
    assert connector.state is wsrpc.ConnectorState.CLOSED
    info = connector.close_info
    assert info is not None and info.code == 4001 and info.by_peer
    assert loop_threads() == []  # a failed connect stops the loop thread
    with pytest.raises(wsrpc.ConnectionClosedError) as closed:
        connector.get_driver().add(1, 1)  # the driver exists; the connection is gone
    assert closed.value.code == 4001
    with pytest.raises(wsrpc.StateError):
        connector.connect(server.url)
    connector.close()  # still idempotent


def test_connect_timeout(server: ServerThread) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never answers
        port = silent.getsockname()[1]
        connector = SyncConnector(HEADER)
        with pytest.raises(wsrpc.RpcTimeoutError):
            connector.connect(f"ws://127.0.0.1:{port}/", timeout=0.2 * UNIT)
    assert connector.join(UNIT).code == 1006
    assert loop_threads() == []


def test_connect_error_on_a_closed_port(server: ServerThread) -> None:
    url = server.url
    server.stop()
    with pytest.raises(wsrpc.ConnectError):
        SyncConnector(HEADER).connect(url, timeout=5 * UNIT)
    assert loop_threads() == []


def test_close_before_connect(server: ServerThread) -> None:
    connector = SyncConnector(HEADER)
    with pytest.raises(wsrpc.StateError):
        connector.get_driver().add(1, 1)  # not connected yet
    connector.close(4000, "never mind")
    assert connector.state is wsrpc.ConnectorState.CLOSED
    info = connector.join(UNIT)
    assert (info.code, info.reason) == (4000, "never mind")
    with pytest.raises(wsrpc.StateError):
        connector.connect(server.url)
    assert loop_threads() == []


def test_the_api_is_the_async_connectors() -> None:
    def parameters(function: Callable[..., Any]) -> list[tuple[str, object, object, object]]:
        return [
            (p.name, p.kind, p.default, p.annotation)
            for p in inspect.signature(function).parameters.values()
        ]

    sync, aio = wsrpc.sync.WebSocketConnector, wsrpc.WebSocketConnector
    for name in ("__init__", "connect", "get_driver", "close"):
        assert parameters(getattr(sync, name)) == parameters(getattr(aio, name)), name


def test_bad_arguments_fail_before_anything_starts() -> None:
    connector = SyncConnector(HEADER)
    with pytest.raises(ValueError):
        connector.close(1005)
    with pytest.raises(ValueError):
        SyncConnector(HEADER, max_concurrent_calls=0)
    with pytest.raises(wsrpc.RpcTimeoutError):
        connector.join(0.01 * UNIT)  # not closed yet
    assert loop_threads() == []
    connector.close()


def test_remote_errors(server: ServerThread) -> None:
    with connect(server) as connector:
        calc = connector.get_driver()
        with pytest.raises(wsrpc.RemoteError) as error:
            calc.fail("boom")
        assert (error.value.name, error.value.message) == ("ValueError", "boom")
        with pytest.raises(wsrpc.RemoteError) as error:
            cast(Any, calc).missing()
        assert error.value.name == "MemberAccessError"
        with pytest.raises(wsrpc.EncodeError):
            calc.echo(object())
        assert calc.add(1, 1) == 2  # the connection is unharmed


def test_server_calls_the_sync_clients_provider_on_its_loop_thread(
    server: ServerThread,
) -> None:
    client = Client()
    with connect(server, client) as connector:
        assert connector.get_driver().call_back("hello") == 5
        # And from a foreign thread of the server, through ThreadsafeAcceptor.
        assert server.next_acceptor().get_driver().on_message("hi") == 2
    [first, second] = client.threads
    assert first is second
    assert first.name.startswith("wsrpc.sync.WebSocketConnector-")
    assert first.daemon
    assert first is not threading.current_thread() and first is not server.thread


def test_eight_threads_share_one_connector(server: ServerThread) -> None:
    threads_count, calls = 8, 200
    barrier = threading.Barrier(threads_count, timeout=10 * UNIT)
    errors: list[BaseException] = []
    done = [0] * threads_count
    with connect(server) as connector:
        calc = connector.get_driver()

        def work(index: int) -> None:
            try:
                barrier.wait()
                for i in range(calls):
                    assert calc.add(index * 1000, i) == index * 1000 + i
                    if i % 10 == 0:
                        assert calc.echo([index, i]) == [index, i]
                    done[index] += 1
            except BaseException as exc:
                errors.append(exc)

        join_all(start_threads(threads_count, work))
    assert errors == []
    assert done == [calls] * threads_count


def test_call_timeout_cancels_the_call_on_the_server(server: ServerThread) -> None:
    with connect(server) as connector:
        slow = connector.get_driver(timeout=0.2 * UNIT)
        assert slow is not connector.get_driver()
        with pytest.raises(wsrpc.RpcTimeoutError):
            slow.wait("late")
        assert server.gate.all_cancelled.wait(5 * UNIT)
        assert slow.add(1, 2) == 3  # the connection is unharmed
        with pytest.raises(ValueError):
            connector.get_driver(timeout=0)


def test_calls_from_foreign_threads_while_the_connection_closes(server: ServerThread) -> None:
    count = 4
    server.gate.expect(count)
    errors: list[BaseException] = []
    results: list[object] = []
    connector = connect(server)
    calc = connector.get_driver()

    def call(index: int) -> None:
        try:
            results.append(calc.wait(f"t{index}"))
        except BaseException as exc:
            errors.append(exc)

    callers = start_threads(count, call)
    assert server.gate.all_started.wait(5 * UNIT)
    join_all(start_threads(1, lambda _: connector.close(4000, "bye")))
    join_all(callers)
    assert results == []
    assert len(errors) == count
    for error in errors:
        assert isinstance(error, wsrpc.ConnectionClosedError)
        assert (error.code, error.reason) == (4000, "bye")
    assert server.gate.all_cancelled.wait(5 * UNIT)  # cancelled on the server too
    assert loop_threads() == []


def test_the_server_closes_while_foreign_threads_wait(server: ServerThread) -> None:
    count = 3
    server.gate.expect(count)
    errors: list[BaseException] = []
    connector = connect(server)
    handle = server.next_acceptor()
    calc = connector.get_driver()

    def call(index: int) -> None:
        try:
            calc.wait(f"t{index}")
        except BaseException as exc:
            errors.append(exc)

    callers = start_threads(count, call)
    assert server.gate.all_started.wait(5 * UNIT)
    handle.close(4002, "kicked")  # from this thread, foreign to the server
    assert handle.state is wsrpc.AcceptorState.CLOSED
    join_all(callers)
    assert len(errors) == count
    closed = [(e.code, e.reason) for e in errors if isinstance(e, wsrpc.ConnectionClosedError)]
    assert closed == [(4002, "kicked")] * count
    # The connector's loop stops by itself once the server has closed.
    info = connector.join(5 * UNIT)
    assert (info.code, info.by_peer) == (4002, True)
    assert loop_threads() == []
    with pytest.raises(wsrpc.ConnectionClosedError):
        calc.add(1, 2)
    connector.close()  # nothing left to do


async def test_threadsafe_acceptor_calls_an_async_client_and_closes_it(
    server: ServerThread,
) -> None:
    class AsyncClient:
        def __init__(self) -> None:
            self.messages: list[str] = []

        async def on_message(self, text: str) -> int:
            self.messages.append(text)
            return len(text)

    client = AsyncClient()
    connector = wsrpc.WebSocketConnector[Header, AsyncClient, Any](HEADER, client)
    await connector.connect(server.url, timeout=5 * UNIT)
    handle = await asyncio.to_thread(server.next_acceptor)
    assert handle.id == handle.acceptor.id
    assert (handle.state, handle.is_closed, handle.close_info) == (
        wsrpc.AcceptorState.OPEN,
        False,
        None,
    )

    def in_a_foreign_thread() -> int:
        driver = assert_type(handle.get_driver(), ClientRemote)
        assert driver is handle.get_driver()
        result = driver.on_message("hello")
        with pytest.raises(wsrpc.RpcTimeoutError):
            handle.join(0.05 * UNIT)
        handle.close(4000, "done")
        return result

    assert await asyncio.to_thread(in_a_foreign_thread) == 5
    assert client.messages == ["hello"]
    info = await connector.join()
    assert (info.code, info.reason, info.by_peer) == (4000, "done", True)
    assert handle.is_closed and handle.state is wsrpc.AcceptorState.CLOSED
    closed = handle.close_info
    assert closed is not None and (closed.code, closed.by_peer) == (4000, False)
    assert handle.join() == closed
    with pytest.raises(wsrpc.ConnectionClosedError) as error:
        await asyncio.to_thread(handle.get_driver().on_message, "late")
    assert error.value.code == 4000
    await asyncio.to_thread(handle.close)  # idempotent


def test_threadsafe_acceptor_after_the_server_loop_is_closed(server: ServerThread) -> None:
    with connect(server, Client()):
        handle = server.next_acceptor()
        driver = handle.get_driver()
        server.stop()
        assert server.loop.is_closed()
        with pytest.raises(wsrpc.ConnectionClosedError) as error:
            driver.on_message("late")
        assert error.value.code == 1001  # the server's close
        handle.close()  # nothing left to close
        assert handle.join().code == 1001


def test_blocking_api_from_the_loop_thread_raises_state_error(server: ServerThread) -> None:
    client = Client()
    with connect(server, client) as connector:
        client._connector = connector
        calc = connector.get_driver()
        assert calc.reenter_client() == ["StateError", "StateError", "StateError"]
        assert calc.threadsafe_from_the_loop() == ["StateError", "StateError", "StateError"]
        assert calc.add(1, 2) == 3  # neither side is stuck
        assert connector.state is wsrpc.ConnectorState.OPEN


def test_no_thread_or_loop_is_left_behind(server: ServerThread) -> None:
    baseline = threading.active_count()
    for _ in range(3):
        with connect(server, Client()) as connector:
            calc = connector.get_driver()
            assert threading.active_count() == baseline + 1

            def call_back(index: int, calc: CalculatorRemote = calc) -> None:
                assert calc.call_back(str(index)) == 1

            join_all(start_threads(4, call_back))
        assert threading.active_count() == baseline
    connector = connect(server)
    server.next_acceptor()  # the fixture's queue fills with every connection
    server.run(server.server.close())  # the server ends it, not close()
    connector.join(5 * UNIT)
    assert threading.active_count() == baseline


def test_worker_threads_of_the_connectors_loop_may_use_it(server: ServerThread) -> None:
    client = Client()
    connector = connect(server, client)
    client._connector = connector
    calc = connector.get_driver()
    # Server -> client's blocking method, in a worker thread -> server again.
    assert calc.relay_via_client(20, 22) == 42
    # A worker thread may close the connector: it must not wait for the
    # loop's thread, which waits for the worker threads as it ends.
    with pytest.raises(wsrpc.ConnectionClosedError) as error:
        calc.ask_client_to_close()
    assert (error.value.code, error.value.reason) == (4003, "closed by a worker")
    assert connector.join(5 * UNIT).code == 4003
    assert loop_threads() == []


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
def test_an_interrupted_call_is_cancelled_on_the_server(server: ServerThread) -> None:
    main = threading.main_thread()
    assert threading.current_thread() is main
    # Python's own handler, whatever this process inherited: a command run
    # in the background by a non-interactive shell (as a CI job may be)
    # starts with SIGINT ignored, and Python leaves it so. The interrupt
    # below then never arrived, the call waited until pytest's timeout
    # ended the worker, and xdist waited for ever.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with connect(server) as connector:

            def interrupt(_: int) -> None:
                if server.gate.all_started.wait(5 * UNIT):
                    assert main.ident is not None
                    signal.pthread_kill(main.ident, signal.SIGINT)

            helper = start_threads(1, interrupt)
            with pytest.raises(KeyboardInterrupt):
                connector.get_driver().wait("interrupted")
            join_all(helper)
            assert server.gate.all_cancelled.wait(5 * UNIT)
            assert connector.get_driver().add(1, 2) == 3
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_driver_fetched_before_connect_works_once_connected(server: ServerThread) -> None:
    connector = SyncConnector(HEADER)
    calc = connector.get_driver()
    with pytest.raises(wsrpc.StateError, match="not connected"):
        calc.add(1, 2)
    assert loop_threads() == []  # the refused call started nothing
    connector.connect(server.url, timeout=5 * UNIT)
    assert calc.add(1, 2) == 3
    assert connector.get_driver() is calc
    assert connector.url == server.url
    connector.close(4000, "done")
    with pytest.raises(wsrpc.ConnectionClosedError) as closed:
        calc.add(1, 2)
    assert closed.value.code == 4000
