"""
How a reconnecting :class:`~wsrpc.WebSocketConnector` comes back:
:class:`ReconnectPolicy`.

``WebSocketConnector(header, provider, reconnect=True)`` uses the default
policy; ``reconnect=ReconnectPolicy(...)`` another one. See
``docs/reconnect.md`` ("Clients that come back").

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from .states import CloseInfo

__all__ = ["RECONNECT_CODES", "ReconnectPolicy"]

logger = logging.getLogger("wsrpc")

RECONNECT_CODES: frozenset[int] = frozenset({1001, 1006, 1011, 1012, 1013, 1014})
"""
The close codes after which a connector reconnects by default: the server
going away or restarting (1001, 1012), a dropped connection (1006), a
server error or a lost keepalive (1011), a busy server or gateway (1013,
1014). Every other code ends reconnection: 1000 and the application's
3000-4999 (the server closed this client on purpose), protocol errors
(1002, 1003, 1007, 1009: the next connection would fail the same way) and
1008 (a policy: a rejected header, a peer not reading).
"""


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """
    When and how often a connector reconnects after losing its connection.

    The delay before attempt ``n`` (1 for the first after a loss) is
    ``min(max_delay, initial_delay * multiplier ** (n - 1))``, less a random
    part of up to ``jitter`` times itself (so that clients dropped together
    do not all come back in the same instant). A successful handshake
    starts the count again.
    """

    initial_delay: float = 0.5
    """Seconds before the first attempt after a loss; 0 tries at once."""
    max_delay: float = 30.0
    """The longest delay between two attempts, in seconds."""
    multiplier: float = 2.0
    """How much each delay grows over the previous one; at least 1."""
    jitter: float = 0.5
    """The random part of each delay, as a fraction of it, from 0 (none) to 1."""
    max_attempts: int | None = None
    """Failed attempts in a row after which the connector gives up and
    closes for good; None: never gives up."""
    reconnect_codes: frozenset[int] = RECONNECT_CODES
    """The close codes of a lost connection (and of a rejected handshake)
    after which the connector reconnects; any other code closes it for good."""
    should_reconnect: Callable[[CloseInfo], bool] | None = None
    """If given, decides instead of ``reconnect_codes``: called with the
    :class:`~wsrpc.CloseInfo` of the lost connection (or of the rejected
    handshake), True to reconnect. It may be called more than once for one
    loss, so it should only look at its argument. If it raises, the
    connector closes for good (the error is logged)."""

    def __post_init__(self) -> None:
        for name in ("initial_delay", "max_delay", "multiplier", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        if self.max_delay < self.initial_delay:
            raise ValueError("max_delay must be at least initial_delay")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, not {self.multiplier!r}")
        if self.jitter > 1:
            raise ValueError(f"jitter must be between 0 and 1, not {self.jitter!r}")
        attempts = self.max_attempts
        if attempts is not None and (
            isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1
        ):
            raise ValueError(f"max_attempts must be None or at least 1, not {attempts!r}")
        object.__setattr__(self, "reconnect_codes", frozenset(self.reconnect_codes))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before attempt number ``attempt`` (1, 2, ...) after a loss."""
        base = self.initial_delay
        for _ in range(attempt - 1):
            base *= self.multiplier
            if base >= self.max_delay:
                break
        base = min(base, self.max_delay)
        return base * (1.0 - self.jitter * rand())

    def reconnects_after(self, info: CloseInfo) -> bool:
        """Whether a connection that ended as ``info`` is to be reconnected."""
        if self.should_reconnect is None:
            return info.code in self.reconnect_codes
        try:
            return bool(self.should_reconnect(info))
        except Exception:
            logger.exception(
                "error in should_reconnect %r: not reconnecting", self.should_reconnect
            )
            return False
