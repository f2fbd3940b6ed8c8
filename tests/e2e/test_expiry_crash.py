"""Rule 5 under a crash: SIGKILL the server in the middle of an expiry run over 10,000 due lots,
start it again, and the run completes with every lot expired exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from loyalty.v1 import expiry_pb2, wallet_pb2_grpc
from sqlalchemy import func, select

from loyalty_ledger.clock import TestClock
from loyalty_ledger.domain.spend_order import Funding
from loyalty_ledger.ledger import migrate
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.db import Database
from loyalty_ledger.ledger.engine import CreditCommand, Tx
from loyalty_ledger.ledger.records import TxType
from loyalty_ledger.ledger.service import Ledger
from tests.helpers import open_channel
from tests.invariants import check_invariants
from tests.ledger.conftest import SCHEME

LOTS = 10_000
WALLETS = 500
LOYALTY = str(Path(sys.executable).parent / "loyalty")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _seed(url: str) -> int:
    """10,000 lots that expired long ago (credited with a clock set in 2020)."""
    clock = TestClock(datetime(2020, 1, 1, tzinfo=UTC))
    db = Database(url)
    await db.start()
    ledger = Ledger(db, clock, idempotency_retention_us=86_400_000_000)
    expires = clock.now_us() + 3600 * 1_000_000

    async def scheme(tx: Tx) -> list[str]:
        await tx.create_scheme("s", SCHEME)
        return [(await tx.create_wallet("s", f"c{i}", {})).id for i in range(WALLETS)]

    wallets = await ledger.write(scheme)
    total = 0
    for start in range(0, LOTS, 1000):

        async def batch(tx: Tx, start: int = start) -> int:
            added = 0
            for i in range(start, start + 1000):
                amount = 1 + i % 97
                await tx.credit(
                    CreditCommand(
                        wallets[i % WALLETS],
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


async def _counts(url: str) -> tuple[int, int, int]:
    db = Database(url)
    try:

        async def job(conn):  # type: ignore[no-untyped-def]
            expirations = await conn.scalar(
                select(func.count()).select_from(t.lots).where(t.lots.c.expired_at_us.is_not(None))
            )
            expired = await conn.scalar(select(func.coalesce(func.sum(t.lots.c.expired), 0)))
            events = await conn.scalar(
                select(func.count())
                .select_from(t.outbox_events)
                .where(t.outbox_events.c.type == "EXPIRED")
            )
            return int(expirations), int(expired), int(events)

        return await db.read(job)
    finally:
        await db.close()


async def _start(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        LOYALTY, "serve", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def test_sigkill_during_an_expiry_run_then_restart_expires_each_lot_once(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    await migrate.upgrade_async(url)
    total = await _seed(url)
    port = _free_port()
    env = {
        **os.environ,
        "LOYALTY_PORT": str(port),
        "LOYALTY_DATABASE_URL": url,
        "LOYALTY_EXPIRY_CHUNK_MAX": "250",
        "LOYALTY_SCHEDULER": "false",  # the restart finishes the run; no schedule needed
    }
    server = await _start(env)
    try:
        async with open_channel(f"127.0.0.1:{port}") as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            await asyncio.wait_for(channel.channel_ready(), 30)
            call = stub.RunExpiry(
                expiry_pb2.RunExpiryRequest(request_id="crash-run"), wait_for_ready=True
            )
            # Up to a minute: on a disk busy with another job's writes a chunk's fsync has been
            # seen to take 200 ms, and the run may not have committed a chunk within 20 s.
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                expirations, _, _ = await _counts(url)
                if expirations >= LOTS // 4 or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.01)
            assert 0 < expirations < LOTS, f"the run must be killed halfway, not at {expirations}"
            server.send_signal(signal.SIGKILL)
            await server.wait()
            call.cancel()
        halfway = await _counts(url)
        assert halfway[0] < LOTS

        server = await _start(env)  # resumes the interrupted run once the database is ready
        for _ in range(600):
            expirations, expired, events = await _counts(url)
            if expirations == LOTS:
                break
            await asyncio.sleep(0.1)
        assert (expirations, expired, events) == (LOTS, total, LOTS)
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
    db = Database(url)
    try:
        await db.read(check_invariants)
    finally:
        await db.close()
