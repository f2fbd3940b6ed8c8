"""Item 6: an expiry run SIGKILLed again and again at random points, then completed.

Extends tests/e2e/test_expiry_crash.py (one kill, SQLite) to both backends and many kills.
LOTS due lots are seeded over many wallets. The server (a child process, small run chunks)
starts an expiry run and is SIGKILLed KILLS times: each time once a random number of further
lots has expired, plus a random 0-10 ms, so kills land anywhere in a chunk, a commit or between
chunks. Each restart resumes the interrupted run. At the end every lot expired exactly once
(an expiry instant on the lot, one EXPIRE allocation and one EXPIRED event per lot, the expired
total equals what was credited), no run is left RUNNING, the ledger invariants hold, and a
second full run expires nothing and writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from loyalty.v1 import expiry_pb2, wallet_pb2_grpc
from sqlalchemy import func, select

from loyalty_ledger.clock import TestClock
from loyalty_ledger.domain.spend_order import Funding
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.db import Database
from loyalty_ledger.ledger.engine import CreditCommand, Tx
from loyalty_ledger.ledger.records import TxType
from loyalty_ledger.ledger.service import Ledger
from tests.ledger.conftest import SCHEME
from tests.reliability.support import ServerProcess, aio_channel, invariants_hold, size

LOTS = size(ci=300, soak=10_000)
KILLS = size(ci=2, soak=20)
CHUNK = size(ci=2, soak=5)
WALLETS = size(ci=40, soak=500)


async def seed(url: str, lots: int, wallets: int) -> int:
    """`lots` lots over `wallets` wallets that expired long ago; returns their total."""
    clock = TestClock(datetime(2020, 1, 1, tzinfo=UTC))
    db = Database(url)
    await db.start()
    ledger = Ledger(db, clock, idempotency_retention_us=86_400_000_000)
    expires = clock.now_us() + 3600 * 1_000_000

    async def scheme(tx: Tx) -> list[str]:
        await tx.create_scheme("s", SCHEME)
        return [(await tx.create_wallet("s", f"c{i}", {})).id for i in range(wallets)]

    ids = await ledger.write(scheme)
    total = 0
    for start in range(0, lots, 500):

        async def batch(tx: Tx, start: int = start) -> int:
            added = 0
            for i in range(start, min(lots, start + 500)):
                amount = 1 + i % 97
                await tx.credit(
                    CreditCommand(
                        ids[i % wallets],
                        TxType.AWARD,
                        "POINTS",
                        amount,
                        Funding.PROMOTIONAL,
                        "m1",
                        expire_at_us=expires,
                        expiry_policy=None,
                        available_at_us=None,
                    )
                )
                added += amount
            return added

        total += await ledger.write(batch)
    await db.close()
    return total


async def tally(url: str) -> dict[str, int]:
    """Counts that show how far expiry went (a fresh connection each time: the server is
    killed in between)."""
    db = Database(url)
    try:
        return await _tally(db)
    finally:
        await db.close()


async def _tally(db: Database) -> dict[str, int]:
    async def job(conn: Any) -> dict[str, int]:
        expire_allocations = (
            select(t.allocations.c.lot_id, func.count().label("n"))
            .join(t.transactions, t.transactions.c.id == t.allocations.c.transaction_id)
            .where(t.transactions.c.type == "EXPIRE")
            .group_by(t.allocations.c.lot_id)
            .subquery()
        )
        return {
            "expirations": await conn.scalar(
                select(func.count()).select_from(t.lots).where(t.lots.c.expired_at_us.is_not(None))
            ),
            "expired": await conn.scalar(select(func.coalesce(func.sum(t.lots.c.expired), 0))),
            "events": await conn.scalar(
                select(func.count())
                .select_from(t.outbox_events)
                .where(t.outbox_events.c.type == "EXPIRED")
            ),
            "expired_lots": await conn.scalar(
                select(func.count()).select_from(t.lots).where(t.lots.c.state == "EXPIRED")
            ),
            "lots_expired_twice": await conn.scalar(
                select(func.count())
                .select_from(expire_allocations)
                .where(expire_allocations.c.n > 1)
            ),
            "transactions": await conn.scalar(select(func.count()).select_from(t.transactions)),
            "outbox": await conn.scalar(select(func.count()).select_from(t.outbox_events)),
            "running": await conn.scalar(
                select(func.count()).select_from(t.runs).where(t.runs.c.status == "RUNNING")
            ),
        }

    return {k: int(v) for k, v in (await db.read(job)).items()}


async def _start_run(stub: Any) -> None:
    """Start the run; the call itself dies with the first kill."""
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        await stub.RunExpiry(expiry_pb2.RunExpiryRequest(request_id="kill-run"), timeout=300)


async def reach(url: str, target: int) -> None:
    """Poll (one connection, one cheap count, every 2 ms) until `target` lots have expired."""
    db = Database(url)

    async def expirations(conn: Any) -> int:
        return int(
            await conn.scalar(
                select(func.count()).select_from(t.lots).where(t.lots.c.expired_at_us.is_not(None))
            )
        )

    try:
        for _ in range(30_000):
            if await db.read(expirations) >= target:
                return
            await asyncio.sleep(0.002)
    finally:
        await db.close()
    raise AssertionError(f"{target} expirations not reached")


async def _kill_repeatedly(url: str, server: ServerProcess, rng: random.Random) -> None:
    """KILLS kills spread over the first 60% of the lots (kill k past a random point of its
    share, at least one chunk after the previous kill). The poller runs while the server
    restarts, so a fast resumed run cannot slip past the target."""
    expired = 0
    for k in range(KILLS):
        target = max(expired + 1, int(LOTS * 0.6 * (k + rng.random()) / KILLS))
        poller = asyncio.create_task(reach(url, target))
        if k > 0:
            await server.start()  # resumes the interrupted run once SERVING
        try:
            await poller
        except AssertionError as error:
            raise AssertionError(f"{error}\n{server.tail()}") from None
        await asyncio.sleep(rng.uniform(0, 0.01))
        await server.kill()
        done = await tally(url)
        expired = done["expirations"]
        assert expired == done["expired_lots"] == done["events"]
        if expired >= LOTS:
            # A fast machine can outrun the later kills between the poll and the SIGKILL;
            # the kills that landed mid-run are what the rest of the test checks.
            assert k > 0, "the run finished before the first kill"
            break
    await server.start()


async def test_expiry_run_killed_many_times_expires_each_lot_once(
    database_url: str, tmp_path: Path
) -> None:
    total = await seed(database_url, LOTS, WALLETS)
    server = ServerProcess(
        database_url, tmp_path, LOYALTY_EXPIRY_CHUNK_MAX=str(CHUNK), LOYALTY_SCHEDULER="false"
    )
    rng = random.Random(6)
    try:
        await server.start()
        channel = aio_channel(server.target)
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        started = asyncio.create_task(_start_run(stub))
        try:
            await _kill_repeatedly(database_url, server, rng)
        finally:
            started.cancel()
            await channel.close()
        for _ in range(3000):
            done = await tally(database_url)
            if done["expirations"] == LOTS and done["running"] == 0:
                break
            await asyncio.sleep(0.05)
        assert done["expirations"] == done["events"] == done["expired_lots"] == LOTS, done
        assert done["expired"] == total
        assert done["lots_expired_twice"] == 0
        assert done["running"] == 0

        # A second full run expires nothing and writes no transaction or event.
        async with aio_channel(server.target) as again:
            run = (
                await wallet_pb2_grpc.WalletServiceStub(again).RunExpiry(
                    expiry_pb2.RunExpiryRequest(request_id="second-run"), timeout=120
                )
            ).run
        assert run.status == expiry_pb2.RUN_STATUS_SUCCEEDED
        assert run.items_processed == 0
        after = await tally(database_url)
        assert {k: v for k, v in after.items()} == done
    finally:
        await server.kill()
    await invariants_hold(database_url)
