"""Item 9: expiration events while the server restarts and subscribers drop at random.

EVENTS due lots are seeded; the server (a child process, small run chunks) expires them while
SUBSCRIBERS WatchExpirations streams follow the EXPIRED events. Each subscriber drops its
stream at random (after 1-40 events) and resumes from the last sequence it processed; when the
server goes away it reconnects and resumes the same way. The server restarts RESTARTS times:
the first one is a crash (SIGKILL from the crash hook) inside an ExpireLot transaction that had
already written its EXPIRED event, the others are plain SIGKILLs while the run is going. In the
end every subscriber has seen every committed EXPIRED event exactly once in sequence order (0
lost, 0 gaps, nothing twice within a connection), nothing that is not in the outbox, and
nothing of the rolled-back ExpireLot.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.v1 import common_pb2, expiry_pb2, wallet_pb2, wallet_pb2_grpc
from sqlalchemy import select

from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.db import Database
from tests.reliability.support import ServerProcess, aio_channel, invariants_hold, size
from tests.reliability.test_expiry_kills import seed

EVENTS = size(ci=150, soak=5_000)
RESTARTS = size(ci=2, soak=5)
SUBSCRIBERS = 3
EXPIRED = expiry_pb2.EXPIRATION_EVENT_TYPE_EXPIRED


@dataclass
class Subscriber:
    name: str
    rng: random.Random
    last: int = 0
    seen: list[tuple[int, str, str]] = field(default_factory=list)  # (sequence, id, lot)
    connections: int = 0
    drops: int = 0


async def follow(sub: Subscriber, server: ServerProcess, stop: asyncio.Event) -> None:
    """Follow the stream until `stop`, dropping it at random and resuming from `last`."""
    while not stop.is_set():
        drop_after = sub.rng.randint(1, 40)
        got = 0
        try:
            async with aio_channel(server.target) as channel:
                call = wallet_pb2_grpc.WalletServiceStub(channel).WatchExpirations(
                    expiry_pb2.WatchExpirationsRequest(
                        event_types=[EXPIRED], after_sequence=sub.last
                    )
                )
                sub.connections += 1
                previous = sub.last
                async for message in call:
                    if stop.is_set():
                        break
                    if not message.HasField("event"):
                        continue
                    event = message.event
                    assert event.sequence > previous, (sub.name, previous, event.sequence)
                    previous = event.sequence
                    sub.seen.append((event.sequence, event.event_id, event.lot_id))
                    sub.last = event.sequence
                    got += 1
                    if got >= drop_after:
                        sub.drops += 1
                        call.cancel()
                        break
        except grpc.aio.AioRpcError as error:
            assert error.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.CANCELLED,
            ), (sub.name, error.code(), error.details())
            await asyncio.sleep(0.05)


async def committed_events(url: str) -> list[tuple[int, str, str]]:
    db = Database(url)
    try:

        async def job(conn: Any) -> list[tuple[int, str, str]]:
            rows = await conn.execute(
                select(t.outbox_events.c.seq, t.outbox_events.c.event_id, t.outbox_events.c.payload)
                .where(t.outbox_events.c.type == "EXPIRED")
                .order_by(t.outbox_events.c.seq)
            )
            return [(int(r.seq), r.event_id, str(r.payload)) for r in rows]

        return await db.read(job)
    finally:
        await db.close()


async def _start_run(server: ServerProcess, request_id: str) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        async with aio_channel(server.target) as channel:
            await wallet_pb2_grpc.WalletServiceStub(channel).RunExpiry(
                expiry_pb2.RunExpiryRequest(request_id=request_id), timeout=300
            )


async def _rolled_back_expire_lot(server: ServerProcess) -> str:
    """Credit a lot that is not due, then crash inside ExpireLot before it commits."""
    async with aio_channel(server.target) as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        wallet = (
            await stub.CreateWallet(
                wallet_pb2.CreateWalletRequest(
                    request_id="ghost-w", scheme_id="s", customer_ref="ghost"
                )
            )
        ).wallet.wallet_id
        later = Timestamp(seconds=4_102_444_800)  # 2100
        lot = (
            await stub.Credit(
                wallet_pb2.CreditRequest(
                    request_id="ghost-c",
                    wallet_id=wallet,
                    kind=wallet_pb2.CREDIT_KIND_AWARD,
                    asset="POINTS",
                    amount=7,
                    funding=common_pb2.FUNDING_PROMOTIONAL,
                    sponsor_id="m1",
                    expire_time=later,
                )
            )
        ).lot.lot_id
        server.arm("before_commit", "ghost-expire")
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.ExpireLot(
                wallet_pb2.ExpireLotRequest(request_id="ghost-expire", lot_id=lot, reason="x")
            )
            raise AssertionError("ExpireLot should have crashed the server")
    assert await server.died() == -9
    return lot


def _least(subs: list[Subscriber]) -> int:
    """Distinct events received by the subscriber that is furthest behind."""
    return min(len({e[0] for e in s.seen}) for s in subs)


async def _until(done: Any, followers: list[asyncio.Task[None]]) -> None:
    """Wait for `done()` (at most 60 s); a follower that fails fails the test at once."""
    for _ in range(6000):
        if done():
            return
        for task in followers:
            if task.done():
                task.result()
                raise AssertionError("a follower stopped")
        await asyncio.sleep(0.01)
    raise AssertionError("the subscribers did not get there in 60 s")


async def test_no_event_lost_or_doubled_across_restarts_and_drops(
    database_url: str, tmp_path: Path
) -> None:
    await seed(database_url, EVENTS, max(10, EVENTS // 10))
    server = ServerProcess(
        database_url,
        tmp_path,
        LOYALTY_RUN_CHUNK_MAX="3",
        LOYALTY_EXPIRY_CHUNK_MAX="3",
        LOYALTY_SCHEDULER="false",
        LOYALTY_WATCH_HEARTBEAT_SECONDS="1",
        LOYALTY_WATCH_POLL_SECONDS="0.05",
    )
    rng = random.Random(9)
    subs = [Subscriber(f"sub{i}", random.Random(rng.random())) for i in range(SUBSCRIBERS)]
    stop = asyncio.Event()
    await server.start()
    ghost_lot = await _rolled_back_expire_lot(server)  # restart 1 is this crash
    await server.start()
    followers = [asyncio.create_task(follow(s, server, stop)) for s in subs]
    run = asyncio.create_task(_start_run(server, "stream-run"))
    try:
        for r in range(1, RESTARTS):
            target = EVENTS * r // RESTARTS
            await _until(lambda t=target: _least(subs) >= t, followers)
            await asyncio.sleep(rng.uniform(0, 0.05))
            await server.kill()
            await asyncio.sleep(rng.uniform(0, 0.3))  # subscribers find the server gone
            await server.start()  # resumes the interrupted run
        await _until(lambda: _least(subs) >= EVENTS, followers)
    finally:
        stop.set()
        for task in [*followers, run]:
            task.cancel()
        results = await asyncio.gather(*followers, run, return_exceptions=True)
        await server.kill()
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result

    committed = await committed_events(database_url)
    assert len(committed) == EVENTS
    assert all(ghost_lot not in payload for _, _, payload in committed)
    expected = [(seq, event_id) for seq, event_id, _ in committed]
    for sub in subs:
        unique = sorted({(seq, event_id) for seq, event_id, _ in sub.seen})
        assert unique == expected, f"{sub.name}: lost or phantom events"
        assert len(sub.seen) == len(unique), f"{sub.name}: an event came twice"
        assert ghost_lot not in {lot for _, _, lot in sub.seen}
        assert sub.drops >= 1 and sub.connections > RESTARTS
    assert server.starts == RESTARTS + 1
    await invariants_hold(database_url)
