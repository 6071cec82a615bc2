"""
Settings shared by the server and the connector, validated once.

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .validation import require

__all__ = ["Options", "TransportName", "check_timeout"]

TransportName = Literal["websockets", "picows"]
"""The WebSocket libraries wsrpc runs on (see :mod:`wsrpc._transports`)."""

# The defaults, written once: the constructors' signatures use these names.
DEFAULT_MAX_MESSAGE_SIZE = 2**20
DEFAULT_MAX_CONCURRENT_CALLS = 128
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_PING_TIMEOUT = 20.0
DEFAULT_CLOSE_TIMEOUT = 10.0
DEFAULT_STALL_TIMEOUT = 20.0
DEFAULT_CALL_ERROR_LOG_LEVEL = logging.INFO
DEFAULT_DECODE_BUDGET = 0.1


def check_timeout(timeout: float | None, name: str = "timeout") -> None:
    """Raise ValueError unless ``timeout`` is None or positive."""
    if timeout is not None and not timeout > 0:
        raise ValueError(f"{name} must be positive or None, not {timeout!r}")


@dataclass(frozen=True, slots=True)
class Options:
    """Validated connection settings; see the constructors for their meaning."""

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS
    ping_interval: float | None = DEFAULT_PING_INTERVAL
    ping_timeout: float | None = DEFAULT_PING_TIMEOUT
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    stall_timeout: float | None = DEFAULT_STALL_TIMEOUT
    compression: bool = False
    send_tracebacks: bool = False
    call_timeout: float | None = None
    call_error_log_level: int = DEFAULT_CALL_ERROR_LOG_LEVEL
    decode_budget: float | None = DEFAULT_DECODE_BUDGET
    transport: TransportName = "websockets"
    validate: bool = False

    def __post_init__(self) -> None:
        if self.validate:
            require()  # ImportError now, at construction, without msgspec
        if self.transport not in get_args(TransportName):
            choices = ", ".join(repr(name) for name in get_args(TransportName))
            raise ValueError(f"transport must be one of {choices}, not {self.transport!r}")
        if self.compression and self.transport != "websockets":
            raise ValueError(f"compression is not available with transport={self.transport!r}")
        if self.max_message_size < 64:
            raise ValueError("max_message_size must be at least 64 bytes")
        if self.max_concurrent_calls < 1:
            raise ValueError("max_concurrent_calls must be at least 1")
        check_timeout(self.ping_interval, "ping_interval")
        check_timeout(self.ping_timeout, "ping_timeout")
        check_timeout(self.call_timeout, "call_timeout")
        check_timeout(self.close_timeout, "close_timeout")
        check_timeout(self.stall_timeout, "stall_timeout")
        check_timeout(self.decode_budget, "decode_budget")
        level = self.call_error_log_level
        if not isinstance(level, int) or isinstance(level, bool) or level > logging.INFO:
            # Any peer can make a provider method raise at will: at WARNING
            # or above it could flood the logs that page people.
            raise ValueError(
                f"call_error_log_level must be logging.INFO or lower (DEBUG), not {level!r}"
            )

    def communicator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~wsrpc._communicator.Communicator`."""
        return {
            "call_timeout": self.call_timeout,
            "ping_interval": self.ping_interval,
            "ping_timeout": self.ping_timeout,
            "call_error_log_level": self.call_error_log_level,
            "close_timeout": self.close_timeout,
            "decode_budget": self.decode_budget,
            "validate": self.validate,
        }
