"""WatchExpirations through a real server, on SQLite and PostgreSQL: replay then live with
every field, resume without gaps (after a disconnect and across a server restart), filters,
a HOLD_EXPIRED event made through the API, heartbeats, a stalled subscriber, the subscriber
cap, bad filters, rolled-back writes and (PostgreSQL) a later sequence committing first."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.v1 import expiry_pb2, wallet_pb2, wallet_pb2_grpc
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty_ledger.clock import TestClock
from loyalty_ledger.events.hub import GAP_WAIT_MAX_S
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.engine import Tx
from loyalty_ledger.ledger.outbox import (
    EXPIRATION_EVENT_TYPES,
    append_rows,
    event_row,
    expiration_row,
)
from loyalty_ledger.server import App
from loyalty_ledger.settings import Settings
from tests.helpers import (
    credit,
    error_info,
    field_violations,
    make_scheme,
    make_wallet,
    open_channel,
    quota_failure,
    rid,
)

ET = expiry_pb2.ExpirationEventType
Row = dict[str, Any]
Stub = wallet_pb2_grpc.WalletServiceStub
READ_TIMEOUT_S = 10.0
_numbers = itertools.count(1)


# -- helpers ------------------------------------------------------------------------------


def row(
    kind: str = "EXPIRED",
    *,
    scheme: str = "acme",
    wallet: str = "wal_a",
    now_us: int,
    **fields: Any,
) -> Row:
    """One expiration event with distinct values in every field (`fields` override them)."""
    n = next(_numbers)
    values: dict[str, Any] = {
        "customer_ref": f"cust-{wallet}",
        "asset": "POINTS",
        "amount": n,
        "expires_at_us": now_us + n * 1_000_000,
        "lot_id": None if kind == "HOLD_EXPIRED" else f"lot_{n}",
        "hold_id": f"hld_{n}" if kind == "HOLD_EXPIRED" else None,
        "sponsor_id": "m-sponsor",
        "lead_seconds": 48 * 3600 if kind == "EXPIRING_SOON" else 0,
        "transaction_id": f"txn_{n}",
    }
    values.update(fields)
    return expiration_row(kind, scheme_id=scheme, wallet_id=wallet, now_us=now_us, **values)


def rows(count: int, **fields: Any) -> list[Row]:
    return [row(**fields) for _ in range(count)]


async def publish(app: App, batch: list[Row]) -> None:
    """Commit the rows through the ledger's write path (which wakes the hub)."""

    async def job(tx: Tx) -> None:
        await append_rows(tx.conn, batch)

    await app.ledger.write(job)


async def stored(app: App, keep: Callable[[Any], bool] = lambda r: True) -> list[tuple[int, str]]:
    """(sequence, event_id) of the stored expiration events that `keep` accepts, in order."""

    async def job(conn: AsyncConnection) -> list[tuple[int, str]]:
        result = await conn.execute(
            select(t.outbox_events)
            .where(t.outbox_events.c.type.in_(EXPIRATION_EVENT_TYPES))
            .order_by(t.outbox_events.c.seq)
        )
        return [(r.seq, r.event_id) for r in result if keep(r)]

    return await app.db.read(job)


async def hub_has_read(stub: Stub, app: App) -> None:
    """Wait until the hub has dispatched every stored event, so a new subscriber replays them
    from the database (the replay path) instead of receiving them live."""
    newest = (await stored(app))[-1][0]
    probe = watch(stub, after_sequence=newest - 1)
    # Replayed: the hub had read it at registration. Live: the hub has read it now.
    assert [e.sequence for e in await read_events(probe, 1)] == [newest]
    probe.cancel()


def keys(events: list[expiry_pb2.ExpirationEvent]) -> list[tuple[int, str]]:
    return [(e.sequence, e.event_id) for e in events]


def micros(value: int) -> Timestamp:
    return Timestamp(seconds=value // 1_000_000, nanos=value % 1_000_000 * 1_000)


def assert_event_is(event: expiry_pb2.ExpirationEvent, stored_row: Row) -> None:
    payload = json.loads(stored_row["payload"])
    assert event.event_id == stored_row["event_id"]
    assert event.type == ET.Value(f"EXPIRATION_EVENT_TYPE_{stored_row['type']}")
    assert (event.scheme_id, event.wallet_id) == (stored_row["scheme_id"], stored_row["wallet_id"])
    assert (event.customer_ref, event.asset, event.amount) == (
        payload["customer_ref"],
        payload["asset"],
        payload["amount"],
    )
    assert (event.lot_id, event.hold_id, event.sponsor_id) == (
        payload["lot_id"] or "",
        payload["hold_id"] or "",
        payload["sponsor_id"] or "",
    )
    assert event.lead_time_seconds == payload["lead_seconds"]
    if payload["expires_at_us"] is None:
        assert not event.HasField("expire_time")
    else:
        assert event.expire_time == micros(payload["expires_at_us"])
    assert event.create_time == micros(stored_row["created_at_us"])


def watch(stub: Stub, **fields: Any) -> Any:
    return stub.WatchExpirations(expiry_pb2.WatchExpirationsRequest(**fields))


async def next_message(call: Any) -> expiry_pb2.WatchExpirationsResponse:
    message = await asyncio.wait_for(call.read(), READ_TIMEOUT_S)
    assert message is not grpc.aio.EOF, "the stream ended without an error"
    return message


async def read_events(call: Any, count: int) -> list[expiry_pb2.ExpirationEvent]:
    """The next `count` events (heartbeats in between are skipped)."""
    events = []
    while len(events) < count:
        message = await next_message(call)
        if message.HasField("event"):
            events.append(message.event)
    return events


async def read_until_error(call: Any) -> tuple[list[expiry_pb2.ExpirationEvent], Any]:
    """Every event still coming, then the error that ends the stream."""
    events = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while True:
            message = await next_message(call)
            if message.HasField("event"):
                events.append(message.event)
    return events, caught.value


@contextlib.asynccontextmanager
async def serving(
    database_url: str, clock: TestClock, **settings: Any
) -> AsyncIterator[tuple[App, Stub]]:
    """A server of our own (for settings the `app` fixture does not have), always stopped."""
    app = App(
        Settings(host="127.0.0.1", port=0, database_url=database_url, **settings), clock=clock
    )
    await app.start()
    await asyncio.wait_for(app.serving.wait(), timeout=10)
    try:
        async with open_channel(f"127.0.0.1:{app.port}") as channel:
            yield app, Stub(channel)
    finally:
        await app.stop(0)


# -- tests --------------------------------------------------------------------------------


async def test_replay_then_live_in_sequence_order_with_every_field(
    app: App, wallets: Stub, clock: TestClock
) -> None:
    now = clock.now_us()
    noise = event_row(
        event_type="TRANSACTION_AWARD", scheme_id="acme", wallet_id="wal_a", now_us=now
    )
    before = [
        row("EXPIRING_SOON", now_us=now),
        noise,  # not an expiration event: never streamed
        row("EXPIRED", now_us=now, sponsor_id=None),  # cash: no sponsor
        row("HOLD_EXPIRED", now_us=now),
    ]
    await publish(app, before)
    await hub_has_read(wallets, app)
    call = watch(wallets)  # after_sequence 0: every stored event first, from the database
    replayed = await read_events(call, 3)
    clock.advance(timedelta(minutes=5))
    after = [
        row("EXPIRED", wallet="wal_b", now_us=clock.now_us()),
        row("EXPIRING_SOON", wallet="wal_b", now_us=clock.now_us(), expires_at_us=None),
    ]
    await publish(app, after)
    live = await read_events(call, 2)
    call.cancel()
    expected_rows = [r for r in before + after if r["type"] in EXPIRATION_EVENT_TYPES]
    for event, expected in zip(replayed + live, expected_rows, strict=True):
        assert_event_is(event, expected)
    assert keys(replayed + live) == await stored(app)
    sequences = [e.sequence for e in replayed + live]
    assert sequences == sorted(set(sequences))


async def test_events_ready_together_share_a_message_when_asked(
    app: App, wallets: Stub, clock: TestClock
) -> None:
    """max_events_per_message: a replay, and a burst the stream is behind on, come in
    messages of up to that many events, in sequence order, with nothing lost or repeated."""
    await publish(app, rows(25, now_us=clock.now_us()))
    await hub_has_read(wallets, app)
    call = watch(wallets, max_events_per_message=10)
    sizes, events = [], []
    while len(events) < 25:
        message = await next_message(call)
        assert message.WhichOneof("message") in ("events", "heartbeat")
        if message.HasField("events"):
            sizes.append(len(message.events.events))
            events.extend(message.events.events)
    assert sizes == [10, 10, 5]  # the replay: one page of stored events
    await publish(app, rows(30, now_us=clock.now_us()))  # one commit: one burst
    live_sizes = []
    while len(events) < 55:
        message = await next_message(call)
        if message.HasField("events"):
            live_sizes.append(len(message.events.events))
            events.extend(message.events.events)
    call.cancel()
    assert sum(live_sizes) == 30 and max(live_sizes) <= 10 and len(live_sizes) < 30
    assert keys(events) == await stored(app)
    # The largest batch allowed, and one event per message as before when 1 is asked.
    at_limit = watch(wallets, max_events_per_message=500)
    assert len((await next_message(at_limit)).events.events) == 55
    at_limit.cancel()
    single = watch(wallets, max_events_per_message=1)
    assert (await next_message(single)).event.sequence == events[0].sequence
    single.cancel()


async def test_resume_after_a_disconnect_delivers_every_matching_event_once(
    app: App, wallets: Stub, clock: TestClock
) -> None:
    now = clock.now_us()
    mixed = [row(scheme=scheme, now_us=now) for _ in range(5) for scheme in ("acme", "other")]
    await publish(app, mixed)
    first = watch(wallets, scheme_id="acme")
    seen = await read_events(first, 3)
    first.cancel()
    await publish(app, [row(scheme=s, now_us=now) for _ in range(3) for s in ("other", "acme")])
    await hub_has_read(wallets, app)
    resumed = watch(wallets, scheme_id="acme", after_sequence=seen[-1].sequence)
    rest = await read_events(resumed, 5 + 3 - 3)
    await publish(app, rows(2, now_us=now))  # and live after the replay
    rest += await read_events(resumed, 2)
    resumed.cancel()
    assert keys(seen + rest) == await stored(app, lambda r: r.scheme_id == "acme")


async def test_resume_across_a_server_restart_has_no_gaps(
    app: App, wallets: Stub, clock: TestClock, database_url: str
) -> None:
    await publish(app, rows(8, now_us=clock.now_us()))
    call = watch(wallets)
    seen = await read_events(call, 5)
    await app.stop(0)
    # The open stream ends and tells its client to resume elsewhere.
    in_flight, error = await read_until_error(call)
    seen += in_flight
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    assert "resume from your last sequence" in error.details()
    async with serving(database_url, clock) as (second, stub):
        await publish(second, rows(2, wallet="wal_b", now_us=clock.now_us()))  # while away
        await hub_has_read(stub, second)
        resumed = watch(stub, after_sequence=seen[-1].sequence)
        rest = await read_events(resumed, 8 + 2 - len(seen))
        await publish(second, rows(2, wallet="wal_c", now_us=clock.now_us()))  # live there
        rest += await read_events(resumed, 2)
        resumed.cancel()
        expected = await stored(second)
    assert keys(seen + rest) == expected
    assert len(expected) == 12


async def test_subscribers_with_different_filters_each_get_exactly_their_events(
    app: App, wallets: Stub, clock: TestClock
) -> None:
    hold, soon, expired = "HOLD_EXPIRED", "EXPIRING_SOON", "EXPIRED"
    filters: dict[str, tuple[dict[str, Any], Callable[[Row], bool]]] = {
        "scheme": ({"scheme_id": "acme"}, lambda r: r["scheme_id"] == "acme"),
        "wallets": (
            {"wallet_ids": ["wal_b", "wal_c"]},
            lambda r: r["wallet_id"] in ("wal_b", "wal_c"),
        ),
        "types": (
            {
                "event_types": [
                    ET.EXPIRATION_EVENT_TYPE_HOLD_EXPIRED,
                    ET.EXPIRATION_EVENT_TYPE_EXPIRING_SOON,
                ]
            },
            lambda r: r["type"] in (hold, soon),
        ),
        "all three": (
            {
                "scheme_id": "acme",
                "wallet_ids": ["wal_b"],
                "event_types": [ET.EXPIRATION_EVENT_TYPE_HOLD_EXPIRED],
            },
            lambda r: (r["scheme_id"], r["wallet_id"], r["type"]) == ("acme", "wal_b", hold),
        ),
    }
    now = clock.now_us()
    events = [
        row(kind, scheme=scheme, wallet=wallet, now_us=now)
        for scheme in ("acme", "other")
        for wallet in ("wal_a", "wal_b", "wal_c")
        for kind in (expired, soon, hold)
    ]
    sentinel = row(hold, scheme="acme", wallet="wal_b", now_us=now)  # matches every filter
    await publish(app, events[:9])  # these are replayed (filtered in SQL) ...
    await hub_has_read(wallets, app)
    calls = {name: watch(wallets, **request) for name, (request, _) in filters.items()}
    await publish(app, events[9:])  # ... these arrive live (filtered by the hub)
    await publish(app, [sentinel])
    for name, (_, keep) in filters.items():
        got: list[str] = []
        while not got or got[-1] != sentinel["event_id"]:
            (event,) = await read_events(calls[name], 1)
            got.append(event.event_id)
        calls[name].cancel()
        expected = [r["event_id"] for r in [*events, sentinel] if keep(r)]
        assert got == expected, name


async def test_a_lapsed_hold_produces_a_hold_expired_event(
    offers: Any, wallets: Stub, clock: TestClock
) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    call = watch(
        wallets,
        wallet_ids=[wallet.wallet_id],
        event_types=[ET.EXPIRATION_EVENT_TYPE_HOLD_EXPIRED],
    )
    await credit(wallets, wallet.wallet_id, 50)
    hold = (
        await wallets.AuthorizeHold(
            wallet_pb2.AuthorizeHoldRequest(
                request_id=rid(),
                wallet_id=wallet.wallet_id,
                asset="POINTS",
                amount=20,
                merchant_id="m-1",
                ttl=Duration(seconds=1),
            )
        )
    ).hold
    clock.advance(timedelta(seconds=2))
    await credit(wallets, wallet.wallet_id, 1)  # any write to the wallet releases the hold
    (event,) = await read_events(call, 1)
    call.cancel()
    assert event.type == ET.EXPIRATION_EVENT_TYPE_HOLD_EXPIRED
    assert (event.hold_id, event.wallet_id, event.customer_ref) == (
        hold.hold_id,
        wallet.wallet_id,
        wallet.customer_ref,
    )
    assert (event.scheme_id, event.asset, event.amount, event.lot_id) == ("acme", "POINTS", 20, "")
    assert event.expire_time == hold.expire_time
    assert event.event_id.startswith("evt_") and event.sequence > 0


async def test_heartbeats_during_silence_carry_the_newest_examined_sequence(
    database_url: str, clock: TestClock
) -> None:
    async with serving(database_url, clock, watch_heartbeat_seconds=0.2) as (app, stub):
        call = watch(stub, scheme_id="acme")
        await publish(app, rows(1, now_us=clock.now_us()))
        (event,) = await read_events(call, 1)
        await publish(app, rows(2, scheme="other", now_us=clock.now_us()))  # filtered out
        newest = (await stored(app))[-1][0]
        clock.advance(timedelta(hours=1))
        beats: list[tuple[expiry_pb2.Heartbeat, float]] = []
        while not beats or beats[-1][0].sequence < newest:
            assert len(beats) < 20, "the heartbeat never reached the newest sequence"
            message = await next_message(call)
            assert message.HasField("heartbeat"), "nothing but heartbeats during silence"
            beats.append((message.heartbeat, time.monotonic()))
        call.cancel()
    sequences = [beat.sequence for beat, _ in beats]
    assert sequences == sorted(sequences)
    assert event.sequence <= sequences[0] and sequences[-1] == newest
    assert all(beat.time == micros(clock.now_us()) for beat, _ in beats)
    # Paced by the interval (0.2 s), not sent in a burst.
    assert all(b - a >= 0.15 for (_, a), (_, b) in itertools.pairwise(beats))


async def test_a_stalled_subscriber_is_cut_off_without_slowing_writers(
    database_url: str, clock: TestClock
) -> None:
    # Big events and no BDP probing: a client that does not read fills the HTTP/2 window
    # after a few messages, so the server cannot hand it more and its buffer (5) overflows.
    big = "x" * 16_000
    async with serving(database_url, clock, watch_buffer_max=5) as (app, stub):
        async with open_channel(
            f"127.0.0.1:{app.port}", options=[("grpc.http2.bdp_probe", 0)]
        ) as slow_channel:
            stalled = watch(Stub(slow_channel))
            await publish(app, rows(1, now_us=clock.now_us()))
            first = (await read_events(stalled, 1))[0]  # registered; now it stops reading
            reading = watch(stub, after_sequence=first.sequence)
            started = time.monotonic()
            for _ in range(50):
                await asyncio.wait_for(
                    publish(app, rows(1, now_us=clock.now_us(), customer_ref=big)), 5
                )
            writes_s = time.monotonic() - started
            assert len(await read_events(reading, 50)) == 50  # the hub kept going too
            reading.cancel()
            assert writes_s < 10, writes_s
            delivered, error = await read_until_error(stalled)
            stalled.cancel()
    # (the server is gone now; the error and the database say the rest)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    info = error_info(error)
    assert info.reason == "SUBSCRIBER_TOO_SLOW"
    assert quota_failure(error).quota_id == info.metadata["limit"] == "LOYALTY_WATCH_BUFFER_MAX"
    last = ([first, *delivered])[-1].sequence
    assert info.metadata["last_sequence"] == str(last)
    assert len(delivered) < 50
    async with serving(database_url, clock) as (app, stub):
        fresh = watch(stub)
        everything = await read_events(fresh, 51)
        fresh.cancel()
        resumed = watch(stub, after_sequence=last)
        rest = await read_events(resumed, 51 - 1 - len(delivered))
        resumed.cancel()
        expected = await stored(app)
    assert keys(everything) == expected
    assert keys([first, *delivered, *rest]) == expected


async def test_the_subscriber_cap(database_url: str, clock: TestClock) -> None:
    async with serving(
        database_url, clock, watch_subscribers_max=2, watch_heartbeat_seconds=0.2
    ) as (_, stub):
        calls = [watch(stub, from_now=True) for _ in range(2)]
        for call in calls:
            assert (await next_message(call)).HasField("heartbeat")  # both are registered
        _, error = await read_until_error(watch(stub, from_now=True))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        info = error_info(error)
        assert info.reason == "TOO_MANY_SUBSCRIBERS"
        assert (info.metadata["limit"], info.metadata["limit_value"]) == (
            "LOYALTY_WATCH_SUBSCRIBERS_MAX",
            "2",
        )
        quota = quota_failure(error)
        assert (quota.subject, quota.quota_id, quota.quota_value) == (
            "server",
            "LOYALTY_WATCH_SUBSCRIBERS_MAX",
            2,
        )
        calls[0].cancel()
        # The slot comes back once the server has seen the cancellation.
        for _ in range(100):
            again = watch(stub, from_now=True)
            try:
                message = await next_message(again)
                break
            except grpc.aio.AioRpcError as refused:
                assert error_info(refused).reason == "TOO_MANY_SUBSCRIBERS"
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the cancelled stream never gave its slot back")
        assert message.HasField("heartbeat")
        for call in (calls[1], again):
            call.cancel()


async def test_bad_filters_are_refused(app: App, wallets: Stub, clock: TestClock) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"after_sequence": -1}, "after_sequence"),
        ({"event_types": [ET.EXPIRATION_EVENT_TYPE_UNSPECIFIED]}, "event_types[0]"),
        ({"event_types": [ET.EXPIRATION_EVENT_TYPE_EXPIRED, 99]}, "event_types[1]"),
        ({"scheme_id": "s" * 65}, "scheme_id"),
        ({"wallet_ids": ["wal_a", ""]}, "wallet_ids[1]"),
        ({"wallet_ids": ["w" * 65]}, "wallet_ids[0]"),
        ({"wallet_ids": [f"wal_{i}" for i in range(1001)]}, "wallet_ids"),
        ({"max_events_per_message": -1}, "max_events_per_message"),
        ({"max_events_per_message": 501}, "max_events_per_message"),
    ]
    for request, field in cases:
        _, error = await read_until_error(watch(wallets, **request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (request, error.details())
        assert field in field_violations(error), (field, field_violations(error))
    # At the limits: 1000 wallet ids of 64 characters, a 64-character scheme id.
    wallet_ids = [f"{i:04d}".ljust(64, "w") for i in range(1000)]
    call = watch(wallets, wallet_ids=wallet_ids, scheme_id="s" * 64)
    await publish(app, [row(scheme="s" * 64, wallet=wallet_ids[-1], now_us=clock.now_us())])
    (event,) = await read_events(call, 1)
    call.cancel()
    assert event.wallet_id == wallet_ids[-1]


async def test_events_of_a_rolled_back_write_never_appear(
    app: App, wallets: Stub, clock: TestClock
) -> None:
    call = watch(wallets)
    await publish(app, [row(wallet="wal_first", now_us=clock.now_us())])
    await read_events(call, 1)  # registered and live

    async def fails(tx: Tx) -> None:
        await append_rows(tx.conn, rows(3, wallet="wal_ghost", now_us=clock.now_us()))
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await app.ledger.write(fails)
    started = time.monotonic()
    await publish(app, [row(wallet="wal_real", now_us=clock.now_us())])
    (real,) = await read_events(call, 1)
    # PostgreSQL: the hole the rollback left in the sequence is settled, not waited out.
    assert time.monotonic() - started < GAP_WAIT_MAX_S
    call.cancel()
    assert real.wallet_id == "wal_real"
    fresh = watch(wallets)
    replayed = await read_events(fresh, 2)
    fresh.cancel()
    assert [e.wallet_id for e in replayed] == ["wal_first", "wal_real"]
    assert keys(replayed) == await stored(app)


async def test_a_later_sequence_committed_first_waits_for_the_earlier_one(
    database_url: str, clock: TestClock
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite's one writer commits sequences in order")
    async with serving(database_url, clock, watch_heartbeat_seconds=0.2) as (app, stub):
        call = watch(stub)
        await publish(app, [row(wallet="wal_first", now_us=clock.now_us())])
        (first,) = await read_events(call, 1)
        early = row(wallet="wal_early", now_us=clock.now_us())
        late = row(wallet="wal_late", now_us=clock.now_us())
        async with app.db.write_engine.connect() as slow:
            await slow.begin()
            await append_rows(slow, [early])  # draws the next sequence, commits later
            await publish(app, [late])  # the sequence after it, committed first
            for _ in range(3):  # meanwhile: heartbeats that do not claim past the hole
                message = await next_message(call)
                assert message.HasField("heartbeat"), message
                assert message.heartbeat.sequence == first.sequence
            await slow.commit()
        got = await read_events(call, 2)
        call.cancel()
    assert [e.event_id for e in got] == [early["event_id"], late["event_id"]]
    assert first.sequence < got[0].sequence < got[1].sequence


async def test_a_subscriber_of_one_replica_gets_events_committed_through_another_at_once(
    database_url: str, clock: TestClock
) -> None:
    """Two replicas on one PostgreSQL database, polling only every 30 s: the NOTIFY that each
    write commits wakes the other replica's stream well before its poll would."""
    if database_url.startswith("sqlite"):
        pytest.skip("one SQLite writer: replicas share a PostgreSQL database")
    async with serving(
        database_url, clock, watch_poll_seconds=30.0, watch_heartbeat_seconds=0.2
    ) as (_, stub_a):
        async with serving(database_url, clock, watch_poll_seconds=30.0) as (b, _):
            call = watch(stub_a, from_now=True)
            await next_message(call)  # the first heartbeat: subscribed
            started = time.monotonic()
            await b.ledger.write(lambda tx: append_rows(tx.conn, rows(1, now_us=clock.now_us())))
            (event,) = await read_events(call, 1)
            waited = time.monotonic() - started
            call.cancel()
    assert event.type == expiry_pb2.EXPIRATION_EVENT_TYPE_EXPIRED
    assert waited < 5, waited
