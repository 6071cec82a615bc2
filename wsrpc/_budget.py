"""
The decode budget: how much decoding one connection may cost per window.

A peer can send valid frames that cost far more to decode than to receive:
trees of small arrays, long runs of small values (each a Python object to
build). :class:`DecodeBudget` adds up the time a connection's messages took
to decode and says when it went over its budget; the connection is then not
read until the window ends (the caller pauses reading; TCP pushes back).

What a plain copy costs is not charged: every message is allowed
:data:`DECODE_ALLOWANCE` seconds per byte, and only decoding beyond that
counts. A 1 MiB blob decodes into one ``bytes`` at the speed of memory (0.03
to 0.9 ns per byte measured, the high end when the copy lands on fresh pages),
so bulk data never spends the budget, however fast it comes; the frames the
budget is for cost 20 to 700 ns per byte (small ints 22, strings 100, small
arrays 90 to 700), and are charged nearly all of it. Before the allowance, a
connection echoing 1 MiB blobs spent 0.6 to 0.9 ms of its budget on each and
was paused for the rest of every second at some 150 blobs a second.

Layer: the sans-I/O core (docs/architecture.md). The caller passes the
clock's readings; nothing here reads a clock or touches I/O.
"""

from __future__ import annotations

__all__ = ["DECODE_ALLOWANCE", "DECODE_WINDOW", "DecodeBudget"]

DECODE_WINDOW = 1.0
"""Seconds over which a connection's decode budget is counted."""

DECODE_ALLOWANCE = 2e-9
"""
Seconds of decoding per byte of a message that are not charged (2 ns per
byte, 2 ms per MiB): twice the slowest plain copy measured (0.9 ns per byte,
fresh pages on a loaded 2-core VM), a tenth of the cheapest costly frame (22
ns per byte, small ints). A peer can thus make decoding cost at most 2 ns per
byte it sends, plus the budget.
"""


class DecodeBudget:
    """
    The decoding time one connection spends, per window of ``window`` seconds.

    The budget is ``budget`` seconds per window, charged what each message's
    decoding took beyond ``allowance`` seconds per byte of it. Times are
    readings of one monotonic clock, in seconds.
    """

    __slots__ = ("_allowance", "_budget", "_spent", "_start", "_window")

    def __init__(
        self, budget: float, window: float | None = None, allowance: float | None = None
    ) -> None:
        """``window`` and ``allowance`` default to the module's constants, read now."""
        self._budget = budget
        self._window = DECODE_WINDOW if window is None else window
        self._allowance = DECODE_ALLOWANCE if allowance is None else allowance
        self._start = 0.0
        self._spent = 0.0

    @property
    def spent(self) -> float:
        """Seconds charged in the current window."""
        return self._spent

    def charge(self, started: float, now: float, size: int) -> float | None:
        """
        Charge the decoding of a message of ``size`` bytes, from ``started``
        to ``now``; return None while the window's total is within the
        budget, else the time the window ends (reading may resume then).

        A message decoded after its window ended starts a new window, at
        ``started``.
        """
        if now - self._start >= self._window:
            self._start = started
            self._spent = 0.0
        cost = now - started - size * self._allowance
        if cost > 0.0:
            self._spent += cost
        if self._spent > self._budget:
            return self._start + self._window
        return None
