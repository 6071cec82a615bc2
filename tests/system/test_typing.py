"""
Remote calls are type-checked: mypy --strict rejects a misspelled remote
method and a wrong argument type, and accepts the correct program.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent.parent

PROGRAM = textwrap.dedent(
    """
    import dataclasses
    import datetime
    from collections.abc import AsyncIterator, Iterator
    from decimal import Decimal
    from typing import Protocol, TypedDict

    import wsrpc
    import wsrpc.sync


    class Header(TypedDict):
        token: str


    class ScientificRemote(Protocol):
        async def sqrt(self, x: float) -> float: ...


    @dataclasses.dataclass
    class Order:
        placed: datetime.datetime
        total: Decimal


    class CalculatorRemote(Protocol):
        scientific: ScientificRemote

        async def add(self, a: int, b: int) -> int: ...

        def ticks(self, n: int) -> AsyncIterator[int]: ...

        async def place(self, order: Order) -> Order: ...

        def orders(self, since: datetime.date) -> AsyncIterator[Order]: ...


    class SyncCalculatorRemote(Protocol):
        def add(self, a: int, b: int) -> int: ...

        def ticks(self, n: int) -> Iterator[int]: ...


    class ClientRemote(Protocol):
        async def on_message(self, text: str) -> None: ...


    class Calculator:
        def add(self, a: int, b: int) -> int:
            return a + b

        async def ticks(self, n: int) -> AsyncIterator[int]:
            for i in range(n):
                yield i


    class Chat:  # a provider that calls its own client back (TGrid's idiom)
        def __init__(self, client: ClientRemote) -> None:
            self.client = client

        async def say(self, text: str) -> None:
            await self.client.on_message(text)


    async def chat_handler(acceptor: wsrpc.WebSocketAcceptor[Header, Chat, ClientRemote]) -> None:
        client = acceptor.get_driver()  # before accept(): typed as ClientRemote
        await acceptor.accept(Chat(client))


    async def handler(
        acceptor: wsrpc.WebSocketAcceptor[Header, Calculator, ClientRemote],
    ) -> None:
        token: str = acceptor.header["token"]
        await acceptor.accept(Calculator())
        await acceptor.get_driver().on_message(token)


    async def client(
        url: str, server: wsrpc.WebSocketServer[Header, Calculator, ClientRemote]
    ) -> None:
        connector = wsrpc.WebSocketConnector[Header, None, CalculatorRemote]({"token": "t"})
        await connector.connect(url)
        calc = connector.get_driver()
        total: int = await calc.add(1, 2)
        root: float = await calc.scientific.sqrt(16.0)
        print(total, root)
        async for tick in calc.ticks(3):
            doubled: int = tick * 2
            print(doubled)
        header: Header = {"token": "t"}
        typed = wsrpc.WebSocketConnector[Header, None, CalculatorRemote](header, validate=True)
        shop = typed.get_driver()
        order = await shop.place(Order(datetime.datetime.now(datetime.UTC), Decimal("1.5")))
        year: int = order.placed.year
        async for past in shop.orders(datetime.date(2026, 1, 1)):
            cents: Decimal = past.total * 100
            print(year, cents)
        sync = wsrpc.sync.WebSocketConnector[None, None, SyncCalculatorRemote](None)
        for item in sync.get_driver().ticks(3):
            print(item + 1)
        outcomes = await server.broadcast(lambda remote: remote.on_message("hi"))
        done: list[None] = [outcome.result() for outcome in outcomes]
        print(done)
        {extra}
    """
)


_CACHE = tempfile.TemporaryDirectory(prefix="wsrpc-typing-cache-")
"""
mypy's cache for this module's checks: the first analyses wsrpc and the
standard library (seconds), the others reuse that. Each program is written
to a new folder, so it is always checked afresh.
"""
atexit.register(_CACHE.cleanup)


def check(extra: str) -> tuple[str, int]:
    """Type-check PROGRAM with ``extra`` appended in client(); return (report, status)."""
    source = PROGRAM.replace("{extra}", extra)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "typing_case.py"
        path.write_text(source)
        # The project's mypy.ini: strict, and mypy_path = stubs (for msgpack).
        stdout, stderr, status = api.run(
            ["--config-file", str(ROOT / "mypy.ini"), "--cache-dir", _CACHE.name, str(path)]
        )
    return stdout + stderr, status


def test_correct_program_passes() -> None:
    report, status = check("")
    assert status == 0, report


def test_misspelled_remote_method_is_an_error() -> None:
    report, status = check("await calc.addd(1, 2)")
    assert status == 1
    assert '"CalculatorRemote" has no attribute "addd"' in report


def test_misspelled_nested_method_is_an_error() -> None:
    report, status = check("await calc.scientific.sqr(2.0)")
    assert status == 1
    assert '"ScientificRemote" has no attribute "sqr"' in report


def test_wrong_argument_type_is_an_error() -> None:
    report, status = check('await calc.add(1, "2")')
    assert status == 1
    assert 'Argument 2 to "add" of "CalculatorRemote" has incompatible type "str"' in report


def test_wrong_result_type_is_an_error() -> None:
    report, status = check("wrong: str = await calc.add(1, 2)")
    assert status == 1
    assert "incompatible types in assignment" in report.lower()


def test_a_wrong_rich_argument_is_an_error() -> None:
    report, status = check('await shop.place({"placed": "2026-01-01", "total": "1"})')
    assert status == 1
    assert 'Argument 1 to "place" of "CalculatorRemote" has incompatible type' in report


def test_a_datetime_where_a_date_is_wanted_is_not_an_error_but_a_string_is() -> None:
    # datetime subclasses date, so mypy takes it (and msgspec refuses it at
    # run time, strictly); a string is refused by mypy.
    report, status = check('shop.orders("2026-01-01")')
    assert status == 1
    assert 'Argument 1 to "orders" of "CalculatorRemote" has incompatible type "str"' in report


def test_a_rich_result_is_typed_as_its_annotation() -> None:
    report, status = check("wrong: str = (await shop.place(order)).total")
    assert status == 1
    assert 'expression has type "Decimal", variable has type "str"' in report


def test_a_rich_stream_item_is_typed_as_its_annotation() -> None:
    report, status = check(
        "async for bought in shop.orders(datetime.date.today()):\n        when: str = bought.placed"
    )
    assert status == 1
    assert 'expression has type "datetime", variable has type "str"' in report


def test_forgetting_await_is_an_error() -> None:
    report, status = check("never: int = calc.add(1, 2)")
    assert status == 1
    assert "Coroutine" in report


def test_a_call_left_unawaited_is_an_error() -> None:
    # The run-time warning for it is asyncio's debug mode's alone (see RemoteCall).
    report, status = check("calc.add(1, 2)")
    assert status == 1
    assert "[unused-coroutine]" in report


def test_a_wrong_stream_item_type_is_an_error() -> None:
    report, status = check("async for tick in calc.ticks(3):\n        text: str = tick")
    assert status == 1
    assert 'expression has type "int", variable has type "str"' in report


def test_a_wrong_stream_argument_type_is_an_error() -> None:
    report, status = check('async for tick in calc.ticks("3"):\n        print(tick)')
    assert status == 1
    assert 'Argument 1 to "ticks" of "CalculatorRemote" has incompatible type "str"' in report


def test_awaiting_a_stream_is_an_error() -> None:
    report, status = check("await calc.ticks(3)")
    assert status == 1
    assert 'Incompatible types in "await" (actual type "AsyncIterator[int]"' in report


def test_iterating_a_plain_method_is_an_error() -> None:
    report, status = check("async for x in calc.add(1, 2):\n        print(x)")
    assert status == 1
    assert 'has no attribute "__aiter__"' in report


def test_a_plain_for_over_an_async_stream_is_an_error() -> None:
    report, status = check("for x in calc.ticks(3):\n        print(x)")
    assert status == 1
    assert 'has no attribute "__iter__"' in report


def test_misspelled_method_in_a_broadcast_is_an_error() -> None:
    report, status = check('await server.broadcast(lambda remote: remote.on_mesage("x"))')
    assert status == 1
    assert '"ClientRemote" has no attribute "on_mesage"' in report


def test_wrong_argument_in_a_group_broadcast_is_an_error() -> None:
    report, status = check('await server.group("g").broadcast(lambda r: r.on_message(42))')
    assert status == 1
    assert 'Argument 1 to "on_message" of "ClientRemote" has incompatible type "int"' in report


def test_a_driver_of_the_wrong_remote_for_a_provider_is_an_error() -> None:
    # The driver fetched before accept()/connect() carries its Remote type:
    # handing the server's driver to a provider that wants its client's is caught.
    report, status = check("Chat(calc)")
    assert status == 1
    assert 'Argument 1 to "Chat" has incompatible type "CalculatorRemote"' in report


def test_a_program_outside_the_repository_type_checks_against_wsrpc() -> None:
    # What a user does: mypy --strict on their own file, in their own folder,
    # with the venv that `make` created and no MYPYPATH.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "user_program.py"
        path.write_text(
            textwrap.dedent(
                """
                from typing import Protocol
                import wsrpc

                class Remote(Protocol):
                    async def add(self, a: int, b: int) -> int: ...

                async def main() -> None:
                    connector = wsrpc.WebSocketConnector[None, None, Remote](None)
                    await connector.get_driver().add(1, "2")
                """
            )
        )
        env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", path.name],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    report = result.stdout + result.stderr
    assert 'Argument 2 to "add" of "Remote" has incompatible type "str"' in report, report
    assert "import-not-found" not in report, report


def test_a_callable_header_is_checked_against_the_header_type() -> None:
    # A header may be a callable (plain or async) returning the Header.
    report, status = check(
        "fresh = wsrpc.WebSocketConnector[Header, None, CalculatorRemote]("
        'lambda: {"token": "t"}, reconnect=wsrpc.ReconnectPolicy(max_attempts=3))'
    )
    assert status == 0, report
    report, status = check(
        "fresh = wsrpc.WebSocketConnector[Header, None, CalculatorRemote]("
        'lambda: {"tokn": "t"}, reconnect=True)'
    )
    assert status == 1
    assert 'expected "Header | Awaitable[Header]"' in report, report
