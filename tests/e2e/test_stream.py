"""WatchExpirations through a real server: replay then live, resume across a restart without
gaps, filters, heartbeats, a stalled subscriber, the subscriber cap, rolled-back events."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from loyalty.v1 import expiry_pb2, wallet_pb2, wallet_pb2_grpc

from loyalty_ledger.domain.errors import ResourceExhausted
from loyalty_ledger.events.hub import StoredEvent, WatchFilter
from loyalty_ledger.ledger.engine import Tx
from loyalty_ledger.ledger.outbox import append_rows, expiration_row
from loyalty_ledger.server import App
from loyalty_ledger.settings import Settings
from tests.helpers import credit, error_info, make_scheme, make_wallet, open_channel, rid

ET = expiry_pb2.ExpirationEventType


def rows(
    count: int,
    *,
    scheme: str = "acme",
    wallet: str = "wal_a",
    kind: str = "EXPIRED",
    now_us: int = 0,
) -> list[dict[str, object]]:
    return [
        expiration_row(
            kind,
            scheme_id=scheme,
            wallet_id=wallet,
            customer_ref=f"cust-{wallet}",
            asset="POINTS",
            amount=i + 1,
            expires_at_us=now_us,
            now_us=now_us,
            lot_id=f"lot_{i}",
            sponsor_id="m1",
        )
        for i in range(count)
    ]


async def publish(app: App, batch: list[dict[str, object]]) -> None:
    async def job(tx: Tx) -> None:
        await append_rows(tx.conn, batch)

    await app.ledger.write(job)


async def read_events(
    call: grpc.aio.UnaryStreamCall, count: int
) -> list[expiry_pb2.ExpirationEvent]:
    events = []
    while len(events) < count:
        message = await asyncio.wait_for(call.read(), 10)
        assert message is not grpc.aio.EOF
        if message.HasField("event"):
            events.append(message.event)
    return events


def watch(stub: wallet_pb2_grpc.WalletServiceStub, **fields: object) -> grpc.aio.UnaryStreamCall:
    return stub.WatchExpirations(expiry_pb2.WatchExpirationsRequest(**fields))


async def test_replay_then_live_in_sequence_order_with_every_field(app, wallets, clock) -> None:
    await publish(app, rows(3, now_us=clock.now_us()))
    call = watch(wallets)
    replayed = await read_events(call, 3)
    await publish(app, rows(2, wallet="wal_b", now_us=clock.now_us()))
    live = await read_events(call, 2)
    call.cancel()
    sequences = [e.sequence for e in replayed + live]
    assert sequences == sorted(sequences) and len(set(sequences)) == 5
    first = replayed[0]
    assert (first.type, first.scheme_id, first.wallet_id, first.customer_ref) == (
        ET.EXPIRATION_EVENT_TYPE_EXPIRED,
        "acme",
        "wal_a",
        "cust-wal_a",
    )
    assert (first.lot_id, first.asset, first.amount, first.sponsor_id) == (
        "lot_0",
        "POINTS",
        1,
        "m1",
    )
    assert first.event_id.startswith("evt_") and first.HasField("expire_time")
    assert [e.wallet_id for e in live] == ["wal_b", "wal_b"]


async def test_resume_across_a_server_restart_has_no_gaps(
    app, wallets, clock, database_url
) -> None:
    await publish(app, rows(10, now_us=clock.now_us()))
    call = watch(wallets)
    seen = await read_events(call, 4)
    call.cancel()
    await app.stop(0)
    second = App(
        Settings(host="127.0.0.1", port=0, database_url=database_url, watch_heartbeat_seconds=1.0),
        clock=clock,
    )
    await second.start()
    await asyncio.wait_for(second.serving.wait(), timeout=10)
    try:
        await publish(second, rows(5, wallet="wal_c", now_us=clock.now_us()))
        async with open_channel(f"127.0.0.1:{second.port}") as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            resumed = watch(stub, after_sequence=seen[-1].sequence)
            rest = await read_events(resumed, 11)
            resumed.cancel()
    finally:
        await second.stop(0)
    sequences = [e.sequence for e in seen + rest]
    assert len(sequences) == 15
    assert sequences == sorted(sequences)
    assert len({e.event_id for e in seen + rest}) == 15


async def test_two_subscribers_with_different_filters(app, wallets, clock) -> None:
    by_wallet = watch(wallets, wallet_ids=["wal_b"])
    by_type = watch(wallets, event_types=[ET.EXPIRATION_EVENT_TYPE_EXPIRING_SOON], scheme_id="acme")
    await publish(app, rows(3, wallet="wal_a", now_us=clock.now_us()))
    await publish(app, rows(2, wallet="wal_b", now_us=clock.now_us()))
    await publish(app, rows(4, kind="EXPIRING_SOON", now_us=clock.now_us()))
    await publish(app, rows(1, scheme="other", kind="EXPIRING_SOON", now_us=clock.now_us()))
    got_wallet = await read_events(by_wallet, 2)
    got_type = await read_events(by_type, 4)
    assert {e.wallet_id for e in got_wallet} == {"wal_b"}
    assert {(e.type, e.scheme_id) for e in got_type} == {
        (ET.EXPIRATION_EVENT_TYPE_EXPIRING_SOON, "acme")
    }
    # Nothing else arrives for either: the next message is a heartbeat.
    for call in (by_wallet, by_type):
        message = await asyncio.wait_for(call.read(), 5)
        assert message.HasField("heartbeat")
        call.cancel()


async def test_a_lapsed_hold_produces_a_hold_expired_event(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    await credit(wallets, wallet.wallet_id, 50)
    hold = await wallets.AuthorizeHold(
        wallet_pb2.AuthorizeHoldRequest(
            request_id=rid(),
            wallet_id=wallet.wallet_id,
            asset="POINTS",
            amount=20,
            merchant_id="m-1",
            ttl=Duration(seconds=1),
        )
    )
    clock.advance(timedelta(seconds=2))
    await credit(wallets, wallet.wallet_id, 1)  # any write to the wallet releases it
    call = watch(wallets, event_types=[ET.EXPIRATION_EVENT_TYPE_HOLD_EXPIRED])
    (event,) = await read_events(call, 1)
    call.cancel()
    assert (event.hold_id, event.wallet_id, event.customer_ref, event.amount) == (
        hold.hold.hold_id,
        wallet.wallet_id,
        wallet.customer_ref,
        20,
    )


async def test_a_stalled_subscriber_is_cut_off_and_never_slows_writers(database_url, clock) -> None:
    """gRPC's own buffers absorb a slow client for a while, so the hub is driven directly:
    a subscriber that stops consuming overflows its bounded buffer, is dropped without
    holding anyone up, gets what was buffered, then RESOURCE_EXHAUSTED; it resumes cleanly."""
    app = App(
        Settings(
            host="127.0.0.1",
            port=0,
            database_url=database_url,
            watch_buffer_max=5,
            watch_heartbeat_seconds=1.0,
        ),
        clock=clock,
    )
    await app.start()
    await asyncio.wait_for(app.serving.wait(), timeout=10)
    try:
        stream = app.hub.subscribe(WatchFilter(), after_sequence=0, from_now=True)
        await publish(app, rows(1, now_us=clock.now_us()))
        first = await asyncio.wait_for(anext(stream), 5)
        started = time.perf_counter()
        for _ in range(50):  # nobody consumes the stream meanwhile
            await publish(app, rows(1, now_us=clock.now_us()))
        assert time.perf_counter() - started < 20
        await asyncio.sleep(0.5)  # let the reader dispatch everything
        assert app.hub.subscriber_count == 0  # dropped, not waited for
        delivered = [first]
        with pytest.raises(ResourceExhausted) as caught:
            while True:
                delivered.append(await asyncio.wait_for(anext(stream), 5))
        assert caught.value.reason == "SUBSCRIBER_TOO_SLOW"
        assert len(delivered) == 1 + 5
        last = delivered[-1].seq
        assert caught.value.metadata["last_sequence"] == str(last)
        async with open_channel(f"127.0.0.1:{app.port}") as channel:
            resumed = watch(wallet_pb2_grpc.WalletServiceStub(channel), after_sequence=last)
            assert len(await read_events(resumed, 45)) == 45
            resumed.cancel()
    finally:
        await app.stop(0)


async def test_the_subscriber_cap(wallets, database_url, clock) -> None:
    app = App(
        Settings(
            host="127.0.0.1",
            port=0,
            database_url=database_url,
            watch_subscribers_max=2,
            watch_heartbeat_seconds=0.2,
        ),
        clock=clock,
    )
    await app.start()
    await asyncio.wait_for(app.serving.wait(), timeout=10)
    try:
        async with open_channel(f"127.0.0.1:{app.port}") as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            open_calls = [watch(stub, from_now=True) for _ in range(2)]
            for call in open_calls:
                assert (await asyncio.wait_for(call.read(), 5)).HasField("heartbeat")
            third = watch(stub, from_now=True)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(third.read(), 5)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_info(caught.value).reason == "TOO_MANY_SUBSCRIBERS"
            for call in open_calls:
                call.cancel()
    finally:
        await app.stop(0)


async def test_bad_filters_are_refused(wallets) -> None:
    for request in (
        expiry_pb2.WatchExpirationsRequest(after_sequence=-1),
        expiry_pb2.WatchExpirationsRequest(event_types=[ET.EXPIRATION_EVENT_TYPE_UNSPECIFIED]),
        expiry_pb2.WatchExpirationsRequest(wallet_ids=[""]),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(wallets.WatchExpirations(request).read(), 5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_events_of_a_rolled_back_write_never_appear(app, wallets, clock) -> None:
    async def fails(tx: Tx) -> None:
        await append_rows(tx.conn, rows(3, wallet="wal_ghost", now_us=clock.now_us()))
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await app.ledger.write(fails)
    await publish(app, rows(1, wallet="wal_real", now_us=clock.now_us()))
    call = watch(wallets)
    (event,) = await read_events(call, 1)
    message = await asyncio.wait_for(call.read(), 5)
    call.cancel()
    assert event.wallet_id == "wal_real"
    assert message.HasField("heartbeat")


async def test_the_hub_reads_nothing_while_nobody_subscribes_and_the_first_subscriber_misses_none(
    app, clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the outbox after every commit cost a quarter of the CPU of a write that commits
    alone; with nobody to tell, the hub skips it, and the first subscriber catches it up."""
    hub = app.hub
    pages = 0
    read_page = hub._read_page

    async def counted() -> bool:
        nonlocal pages
        pages += 1
        return await read_page()

    monkeypatch.setattr(hub, "_read_page", counted)
    for wallet in ("wal_1", "wal_2", "wal_3"):
        await publish(app, rows(1, wallet=wallet, now_us=clock.now_us()))
    await asyncio.sleep(0.3)  # time for the reader to wake up on each commit
    assert pages == 0

    async def events(stream, count: int) -> list[StoredEvent]:
        got: list[StoredEvent] = []
        while len(got) < count:
            item = await asyncio.wait_for(anext(stream), 5)
            if isinstance(item, StoredEvent):
                got.append(item)
        return got

    everything = hub.subscribe(WatchFilter(), after_sequence=0, from_now=False)
    from_now = hub.subscribe(WatchFilter(), after_sequence=0, from_now=True)
    replayed = await events(everything, 3)  # registers, then replays what came meanwhile
    next_for_now = asyncio.ensure_future(events(from_now, 1))
    for _ in range(50):
        if hub.subscriber_count == 2:
            break
        await asyncio.sleep(0.02)
    assert hub.subscriber_count == 2
    await publish(app, rows(1, wallet="wal_4", now_us=clock.now_us()))
    (live,) = await events(everything, 1)
    (first_now,) = await next_for_now
    assert [e.wallet_id for e in replayed] == ["wal_1", "wal_2", "wal_3"]
    assert (live.wallet_id, first_now.wallet_id) == ("wal_4", "wal_4")
    assert live.seq == first_now.seq > replayed[-1].seq
    assert pages > 0
    await everything.aclose()
    await from_now.aclose()


async def test_two_first_subscribers_at_once_both_get_what_commits_between_them(
    app, clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both find nobody subscribed and catch the hub up in turn; an event that commits after
    the first registered is the first's to get live, so the second must not move the
    position past it."""
    hub = app.hub
    database_read = app.db.read
    catch_ups = 0

    async def read(job):  # type: ignore[no-untyped-def]
        nonlocal catch_ups
        if job == hub._start_position:
            catch_ups += 1
            if catch_ups == 2:  # the second subscriber's turn, once the first registered
                await publish(app, rows(1, wallet="wal_between", now_us=clock.now_us()))
        return await database_read(job)

    monkeypatch.setattr(app.db, "read", read)

    async def first_event(stream) -> StoredEvent:
        while True:
            item = await asyncio.wait_for(anext(stream), 5)
            if isinstance(item, StoredEvent):
                return item

    streams = [hub.subscribe(WatchFilter(), after_sequence=0, from_now=False) for _ in range(2)]
    async with hub._reading:  # both get past "nobody subscribed" before either catches up
        waiting = [asyncio.ensure_future(first_event(stream)) for stream in streams]
        await asyncio.sleep(0.1)
    for _ in range(50):
        if hub.subscriber_count == 2:
            break
        await asyncio.sleep(0.02)
    assert hub.subscriber_count == 2
    if catch_ups < 2:  # the second did not catch up again: publish the event now
        await publish(app, rows(1, wallet="wal_between", now_us=clock.now_us()))
    got = await asyncio.wait_for(asyncio.gather(*waiting), 10)  # heartbeats come meanwhile
    assert [event.wallet_id for event in got] == ["wal_between", "wal_between"]
    for stream in streams:
        await stream.aclose()
