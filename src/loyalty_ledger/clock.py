"""The one source of time in the server. Tests and `--clock=test` inject a controllable clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

from loyalty_ledger.domain.timeutil import from_us, to_us


class Clock(Protocol):
    """Returns the current instant in epoch microseconds (UTC)."""

    def now_us(self) -> int: ...


class SystemClock:
    """Wall-clock time."""

    def now_us(self) -> int:
        return time.time_ns() // 1_000


class TestClock:
    """A clock that only moves when told to (Stripe-style test clocks)."""

    __test__ = False  # not a pytest test class

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime.now(UTC)
        self._now_us = to_us(start)

    def now_us(self) -> int:
        return self._now_us

    def now(self) -> datetime:
        return from_us(self._now_us)

    def advance(self, delta: timedelta) -> None:
        if delta < timedelta(0):
            raise ValueError("a test clock only moves forward")
        self._now_us += delta // timedelta(microseconds=1)
