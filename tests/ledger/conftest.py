"""A Ledger on a fresh database (both backends) with the test clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from loyalty_ledger.clock import TestClock
from loyalty_ledger.domain.expiry import Never
from loyalty_ledger.ledger.db import Database
from loyalty_ledger.ledger.engine import SchemeSpec
from loyalty_ledger.ledger.records import RefundHandling
from loyalty_ledger.ledger.service import Ledger

SCHEME = SchemeSpec(
    name="Test",
    assets={"POINTS": 0, "EUR": 2},
    timezone="Europe/Amsterdam",
    default_expiry_policy=Never(),
    refund_handling=RefundHandling.EXPIRE,
    refund_grace_seconds=86400,
    cash_expiry_allowed=False,
)


@pytest.fixture
async def ledger(database_url: str, clock: TestClock) -> AsyncIterator[Ledger]:
    db = Database(database_url)
    await db.start()
    yield Ledger(db, clock, idempotency_retention_us=86_400_000_000)
    await db.close()
