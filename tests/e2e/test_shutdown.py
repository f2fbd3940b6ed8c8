"""Graceful shutdown, one behaviour at a time: health turns NOT_SERVING, new calls are refused,
calls under way finish within the grace (and are cut after it), and runs stop after the
chunk under way and resume at the next start. (Streams ending with UNAVAILABLE: test_watch.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loyalty.v1 import wallet_pb2
from sqlalchemy import func, select

from loyalty_ledger.clock import TestClock
from loyalty_ledger.domain.errors import Unavailable
from loyalty_ledger.jobs.runner import Runner
from loyalty_ledger.jobs.scheduler import Scheduler
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.db import Database
from loyalty_ledger.ledger.engine import Tx
from loyalty_ledger.ledger.reads import Reader
from loyalty_ledger.ledger.records import LotState, RunKind, RunStatus
from loyalty_ledger.server import App
from loyalty_ledger.settings import Settings
from tests.ledger.conftest import SCHEME
from tests.ledger.test_runs import HOUR_US, award

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LOTS = 8


async def test_health_watchers_see_not_serving_when_shutdown_begins(app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING
        stopping = asyncio.create_task(app.stop(2))
        assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
        await asyncio.wait_for(stopping, 10)


class _ThreadEvent:
    """An event that may be set from any thread and awaited on any thread's event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._is_set = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def set(self) -> None:
        with self._lock:
            self._is_set = True
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that waiter's loop has closed meanwhile
                loop.call_soon_threadsafe(event.set)

    async def wait(self) -> None:
        event = asyncio.Event()
        with self._lock:
            if self._is_set:
                return
            self._waiters.append((asyncio.get_running_loop(), event))
        await event.wait()


class Gate:
    """Holds a patched coroutine until released; `entered` tells that a call is waiting.

    Thread-safe: on SQLite a write job runs on the writer's own thread and event loop."""

    def __init__(self) -> None:
        self.entered = _ThreadEvent()
        self.released = _ThreadEvent()

    async def wait(self) -> None:
        self.entered.set()
        await self.released.wait()


@pytest.fixture
def slow_get_wallet(monkeypatch: pytest.MonkeyPatch) -> Gate:
    """GetWallet waits at the gate, then answers as usual."""
    gate, original = Gate(), Reader.get_wallet

    async def gated(self: Reader, wallet_id: str):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await original(self, wallet_id)

    monkeypatch.setattr(Reader, "get_wallet", gated)
    return gate


async def _refused(port: int) -> grpc.aio.AioRpcError | None:
    """The error of a new call on a new connection, or None if it was answered."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.aio.AioRpcError as error:
            return error
    return None


async def test_calls_under_way_finish_and_new_calls_are_refused(
    app: App, wallets, slow_get_wallet: Gate
) -> None:
    in_flight = asyncio.ensure_future(
        wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="wal_missing"))
    )
    await asyncio.wait_for(slow_get_wallet.entered.wait(), 5)
    started = time.monotonic()
    stopping = asyncio.create_task(app.stop(10))
    refused = None
    for _ in range(100):
        refused = await _refused(app.port)
        if refused is not None:
            break
        await asyncio.sleep(0.05)
    # Refused: UNAVAILABLE, or CANCELLED when the call raced the server's own stop.
    assert refused is not None
    assert refused.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    await asyncio.sleep(0.2)
    assert not stopping.done()  # stop waits for the call under way
    slow_get_wallet.released.set()
    with pytest.raises(grpc.aio.AioRpcError) as answer:
        await asyncio.wait_for(in_flight, 5)
    assert answer.value.code() == grpc.StatusCode.NOT_FOUND  # its real answer, not cut short
    await asyncio.wait_for(stopping, 5)
    assert time.monotonic() - started < 5  # it did not sit out the whole grace


async def test_calls_that_outlast_the_grace_are_cut_at_its_end(
    app: App, wallets, slow_get_wallet: Gate
) -> None:
    in_flight = asyncio.ensure_future(
        wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="wal_missing"))
    )
    await asyncio.wait_for(slow_get_wallet.entered.wait(), 5)
    started = time.monotonic()
    await asyncio.wait_for(app.stop(0.5), 10)
    took = time.monotonic() - started
    slow_get_wallet.released.set()
    assert 0.5 <= took < 3
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        await asyncio.wait_for(in_flight, 5)
    assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


async def _lots_and_runs(database_url: str) -> tuple[int, list[tuple[str, int, int]]]:
    db = Database(database_url)
    await db.start()
    try:

        async def read(conn):  # type: ignore[no-untyped-def]
            expired = await conn.scalar(
                select(func.count())
                .select_from(t.lots)
                .where(t.lots.c.state == LotState.EXPIRED.value)
            )
            runs = await conn.execute(
                select(t.runs.c.status, t.runs.c.items_processed, t.runs.c.chunks_committed)
            )
            return int(expired), [tuple(r) for r in runs]

        return await db.read(read)
    finally:
        await db.close()


async def test_a_run_stops_after_its_current_chunk_and_resumes_at_the_next_start(
    app: App, clock: TestClock, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expires = clock.now_us() + HOUR_US

    async def lots(tx: Tx) -> None:
        await tx.create_scheme("s", SCHEME)
        wallet = await tx.create_wallet("s", "c1", {})
        for _ in range(LOTS):
            await tx.credit(award(wallet.id, 5, expires))

    await app.ledger.write(lots)
    # One lot per chunk; the third chunk waits at the gate until shutdown has begun.
    app.runner = Runner(app.ledger, chunk_max=1, observe=app.metrics.run_ended)
    gate, original, chunks = Gate(), Tx.expire_due_chunk, 0

    async def gated(self: Tx, run_id: str, as_of_us: int, limit: int) -> int:
        nonlocal chunks
        chunks += 1
        if chunks == 3:
            await gate.wait()
        return await original(self, run_id, as_of_us, limit)

    monkeypatch.setattr(Tx, "expire_due_chunk", gated)
    run = asyncio.create_task(app.runner.run(RunKind.EXPIRY, expires + HOUR_US, "schedule"))
    await asyncio.wait_for(gate.entered.wait(), 5)
    started = time.monotonic()
    stopping = asyncio.create_task(app.stop(10))
    for _ in range(500):
        if app.runner.stopping:
            break
        await asyncio.sleep(0.01)
    assert app.runner.stopping
    assert not stopping.done()  # waits for the chunk under way
    gate.released.set()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(run, 5)
    await asyncio.wait_for(stopping, 5)
    assert time.monotonic() - started < 5
    assert chunks == 3  # no chunk after the one under way
    interrupted = {"kind": "EXPIRY", "status": "INTERRUPTED"}
    assert app.metrics.registry.get_sample_value("loyalty_runs_total", interrupted) == 1
    # The chunk under way committed; the run is left RUNNING for the next start.
    assert await _lots_and_runs(database_url) == (3, [(RunStatus.RUNNING.value, 3, 3)])

    monkeypatch.setattr(Tx, "expire_due_chunk", original)
    settings = Settings(host="127.0.0.1", port=0, database_url=database_url, metrics=False)
    second = App(settings, clock=clock)
    await second.start()
    try:
        state = await _lots_and_runs(database_url)
        for _ in range(200):
            if state[1][0][0] != RunStatus.RUNNING.value:
                break
            await asyncio.sleep(0.05)
            state = await _lots_and_runs(database_url)
    finally:
        await second.stop(0)
    assert state == (LOTS, [(RunStatus.SUCCEEDED.value, LOTS, 4)])


async def test_a_scheduled_tick_during_shutdown_is_not_logged_as_a_failure(
    app: App, clock: TestClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="loyalty_ledger")
    scheduler = Scheduler(app.runner, clock, intervals_s={}, lease_s=30)
    app.runner.stopping = True
    await scheduler.tick(RunKind.EXPIRY)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("stopped by the shutdown" in r.getMessage() for r in caplog.records)
