"""The expiration hub stops promptly, even while commits keep waking its reader.

On Python 3.11 `asyncio.wait_for` can swallow a cancel that arrives as the awaited wake-up
completes; a reader loop built on it then never ends and shutdown hangs (seen once: a CI run
stuck in a server's teardown). The race depends on timing, so this test does not reproduce it
on demand; it holds stop() to its bound under constant wake-ups, where the race is likeliest.
"""

from __future__ import annotations

import asyncio
import time

from loyalty_ledger.clock import TestClock
from loyalty_ledger.events.hub import STOP_WAIT_S, ExpirationHub
from loyalty_ledger.ledger.db import Database

ROUNDS = 20


async def test_stop_returns_while_writes_keep_notifying(
    database_url: str, clock: TestClock
) -> None:
    db = Database(database_url)
    await db.start()
    try:
        for _ in range(ROUNDS):
            hub = ExpirationHub(
                db,
                clock,
                subscribers_max=4,
                buffer_max=16,
                heartbeat_interval_s=1.0,
                poll_interval_s=0.001,
            )
            await hub.start()
            stopping = asyncio.Event()

            async def keep_notifying(hub: ExpirationHub = hub, stopping=stopping) -> None:  # type: ignore[no-untyped-def]
                while not stopping.is_set():
                    hub.notify()
                    await asyncio.sleep(0)

            notifier = asyncio.create_task(keep_notifying())
            await asyncio.sleep(0.01)
            started = time.monotonic()
            await asyncio.wait_for(hub.stop(), timeout=10 * STOP_WAIT_S)
            assert time.monotonic() - started < 4 * STOP_WAIT_S
            stopping.set()
            await notifier
    finally:
        await db.close()
