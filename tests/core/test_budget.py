"""The decode budget's accounting (wsrpc._budget), on a clock the tests set."""

from __future__ import annotations

import pytest

from wsrpc._budget import DECODE_ALLOWANCE, DECODE_WINDOW, DecodeBudget

MiB = 2**20


def test_a_copy_is_not_charged() -> None:
    budget = DecodeBudget(0.1, window=1.0, allowance=2e-9)
    # 1 MiB decoded in 1.5 ms: under its 2 ms allowance, charged nothing,
    # however many arrive in the window.
    for i in range(1000):
        start = 10.0 + i * 0.0015
        assert budget.charge(start, start + 0.0015, MiB) is None
    assert budget.spent == 0.0


def test_decoding_beyond_the_allowance_is_charged() -> None:
    budget = DecodeBudget(0.1, window=1.0, allowance=2e-9)
    # 1 MiB of small values decoded in 22 ms: 20 ms over its allowance.
    assert budget.charge(10.0, 10.022, MiB) is None
    assert budget.spent == pytest.approx(0.022 - MiB * 2e-9)
    # Small messages get next to no allowance: nearly all of it counts.
    assert budget.charge(10.1, 10.101, 300) is None
    assert budget.spent == pytest.approx(0.022 - MiB * 2e-9 + 0.001 - 300 * 2e-9)


def test_over_the_budget_reading_resumes_when_the_window_ends() -> None:
    budget = DecodeBudget(0.1, window=1.0, allowance=0.0)
    assert budget.charge(5.0, 5.06, 1000) is None  # 60 ms: within
    assert budget.charge(5.2, 5.25, 1000) == pytest.approx(6.0)  # 110 ms: over
    # Still in the window: still over, same end.
    assert budget.charge(5.9, 5.91, 1000) == pytest.approx(6.0)


def test_a_new_window_starts_afresh_when_the_last_one_ended() -> None:
    budget = DecodeBudget(0.1, window=1.0, allowance=0.0)
    assert budget.charge(5.0, 5.2, 1000) == pytest.approx(6.0)
    # Read again after the window: the next message opens a new one, at its
    # own start, with nothing spent.
    assert budget.charge(6.5, 6.55, 1000) is None
    assert budget.spent == pytest.approx(0.05)
    assert budget.charge(7.4, 7.46, 1000) == pytest.approx(7.5)


def test_one_message_over_the_whole_budget_is_reported_at_once() -> None:
    budget = DecodeBudget(0.1, window=1.0, allowance=2e-9)
    # The budget bounds a window's total, plus the one message that crossed it.
    assert budget.charge(1.0, 1.3, 4 * MiB) == pytest.approx(2.0)


def test_the_defaults_are_the_module_constants() -> None:
    budget = DecodeBudget(0.1)
    # 1 MiB within its allowance, then one byte over it (the constants' values
    # are what docs/security.md states).
    assert DECODE_WINDOW == 1.0 and DECODE_ALLOWANCE == 2e-9
    assert budget.charge(3.0, 3.0 + MiB * DECODE_ALLOWANCE * 0.99, MiB) is None
    assert budget.spent == 0.0
    assert budget.charge(3.5, 3.5 + 0.2, 1) == pytest.approx(3.0 + DECODE_WINDOW)
