"""Settings shared by the server and the connector, validated once."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Options"]

DEFAULT_MAX_MESSAGE_SIZE = 2**20
DEFAULT_MAX_CONCURRENT_CALLS = 128


@dataclass(frozen=True, slots=True)
class Options:
    """Validated connection settings; see the constructors for their meaning."""

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 10.0
    compression: bool = False
    send_tracebacks: bool = False
    call_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.max_message_size < 64:
            raise ValueError("max_message_size must be at least 64 bytes")
        if self.max_concurrent_calls < 1:
            raise ValueError("max_concurrent_calls must be at least 1")
        for name in ("ping_interval", "ping_timeout", "call_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None")
        if self.close_timeout <= 0:
            raise ValueError("close_timeout must be positive")

    def websockets_kwargs(self) -> dict[str, object]:
        """Keyword arguments for websockets' ``serve()`` and ``connect()``."""
        return {
            "max_size": self.max_message_size,
            "ping_interval": self.ping_interval,
            "ping_timeout": self.ping_timeout,
            "close_timeout": self.close_timeout,
            "compression": "deflate" if self.compression else None,
        }
