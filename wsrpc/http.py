"""
Plain HTTP beside the WebSocket endpoint.

Give :meth:`WebSocketServer.open` an ``http_handler`` and it sees every HTTP
request before the WebSocket upgrade: it may answer it (a health check, a
page) with an :class:`HttpResponse`, let the upgrade go on with extra
response headers (cookies) by returning an :class:`Upgrade`, or return None
to let the upgrade go on unchanged. A request that is not an upgrade and
that the handler does not answer gets websockets' error response (426).

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["HttpHandler", "HttpRequest", "HttpResponse", "Upgrade"]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP request as the server received it."""

    path: str
    """The request target: path and query string."""
    headers: Mapping[str, str]
    """The request headers, read-only and case-insensitive."""

    @property
    def is_upgrade(self) -> bool:
        """Whether the request asks for a WebSocket upgrade."""
        return "websocket" in self.headers.get("Upgrade", "").lower()


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A plain HTTP response, sent instead of the upgrade."""

    status: int = 200
    body: bytes | str = b""
    """The body; a str is sent as UTF-8 text/plain unless headers say otherwise."""
    headers: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True, slots=True)
class Upgrade:
    """Go on with the WebSocket upgrade, adding these headers to the 101 response."""

    headers: Sequence[tuple[str, str]] = ()
    """For example ``[("Set-Cookie", "session=abc; HttpOnly")]``."""


HttpHandler = Callable[
    [HttpRequest],
    Awaitable[HttpResponse | Upgrade | None] | HttpResponse | Upgrade | None,
]
"""Called with every HTTP request before the upgrade; plain or async."""


class HeadersView(Mapping[str, str]):
    """
    Read-only, case-insensitive HTTP headers, from (name, value) pairs.

    A header sent several times reads as its values joined with ``", "``.
    """

    __slots__ = ("_values",)

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        values: dict[str, list[str]] = {}
        for name, value in pairs:
            values.setdefault(name.lower(), []).append(value)
        self._values = values

    def __getitem__(self, name: str) -> str:
        values = self._values.get(name.lower())
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<headers {dict(self)!r}>"
