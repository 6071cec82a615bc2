"""
Small checks shared by the server side and the client side.

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

__all__ = ["check_close"]


def check_close(code: int, reason: str) -> None:
    """
    Raise ValueError unless ``code`` and ``reason`` may go in a close frame.

    Allowed codes are those RFC 6455 lets an endpoint send (1000–1003,
    1007–1014) and the registered and private ranges 3000–4999; applications
    should use 4000–4999. The reason is at most 123 bytes of UTF-8.
    """
    if (
        not isinstance(code, int)
        or isinstance(code, bool)
        or not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999)
    ):
        raise ValueError(f"close code {code!r} may not be sent; use 4000-4999 for applications")
    if len(reason.encode()) > 123:
        raise ValueError("a close reason is at most 123 bytes of UTF-8")
