"""Expiry, warning and hold-timeout runs against real databases (rule 5 of DESIGN.md)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import BigInteger, func, literal, select, text, update
from sqlalchemy.exc import IntegrityError

from loyalty_ledger.clock import TestClock
from loyalty_ledger.domain.errors import InvalidArgument
from loyalty_ledger.domain.expiry import Inactivity
from loyalty_ledger.domain.spend_order import Funding
from loyalty_ledger.jobs.runner import Runner
from loyalty_ledger.ledger import expiry_chunk
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.engine import CreditCommand, DebitCommand, Tx
from loyalty_ledger.ledger.expiry_chunk import expire_whole_lots
from loyalty_ledger.ledger.records import HoldStatus, LotState, RunKind, RunStatus, TxType
from loyalty_ledger.ledger.service import Ledger
from tests.invariants import check_invariants
from tests.ledger.conftest import SCHEME

HOUR_US = 3600 * 1_000_000
DAY_US = 24 * HOUR_US


def award(
    wallet: str,
    amount: int,
    expires_at_us: int | None,
    *,
    asset: str = "POINTS",
    sponsor: str = "m1",
) -> CreditCommand:
    return CreditCommand(
        wallet,
        TxType.AWARD,
        asset,
        amount,
        Funding.PROMOTIONAL,
        sponsor,
        expire_at_us=expires_at_us,
        expiry_policy=None,
        available_at_us=None,
    )


async def setup_lots(
    ledger: Ledger,
    clock: TestClock,
    amounts: list[int],
    *,
    expires_in_us: int = HOUR_US,
    wallets: int = 3,
) -> list[str]:
    """Wallets with one lot per amount (round robin), all expiring at now + expires_in."""
    expires = clock.now_us() + expires_in_us

    async def op(tx: Tx) -> list[str]:
        await tx.create_scheme("s", replace(SCHEME, warning_lead_seconds=(7 * 86400, 2 * 86400)))
        ids = [(await tx.create_wallet("s", f"c{i}", {})).id for i in range(wallets)]
        for i, amount in enumerate(amounts):
            await tx.credit(award(ids[i % wallets], amount, expires))
        return ids

    return await ledger.write(op)


async def count(ledger: Ledger, table: t.Table, *where: object) -> int:
    return await ledger.read(
        lambda r: r.conn.scalar(select(func.count()).select_from(table).where(*where))
    )


async def expired_by_wallet(ledger: Ledger) -> dict[str, int]:
    rows = await ledger.read(
        lambda r: r.conn.execute(
            select(t.lots.c.wallet_id, func.sum(t.lots.c.expired)).group_by(t.lots.c.wallet_id)
        )
    )
    return {wallet: int(total) for wallet, total in rows.all()}


async def test_expiry_run_expires_each_due_lot_once_in_bounded_chunks(
    ledger: Ledger, clock: TestClock
) -> None:
    amounts = list(range(1, 11))
    await setup_lots(ledger, clock, amounts)
    runner = Runner(ledger, chunk_max=3)
    clock.advance(timedelta(hours=1))  # exactly at expire_time: due
    run = await runner.run(RunKind.EXPIRY, clock.now_us(), "test")
    assert run.status is RunStatus.SUCCEEDED
    assert (run.items_processed, run.chunks_committed) == (10, 4)  # 3 + 3 + 3 + 1
    assert await count(ledger, t.lots, t.lots.c.expired_at_us.is_not(None)) == 10
    assert sum((await expired_by_wallet(ledger)).values()) == sum(amounts)
    assert await count(ledger, t.outbox_events, t.outbox_events.c.type == "EXPIRED") == 10
    again = await runner.run(RunKind.EXPIRY, clock.now_us(), "test")
    assert again.items_processed == 0
    assert sum((await expired_by_wallet(ledger)).values()) == sum(amounts)
    # Promotional value went back to its sponsor: the sponsor account is whole again.
    sponsor = await ledger.read(
        lambda r: r.conn.scalar(
            select(func.sum(t.postings.c.amount)).where(t.postings.c.account == "sponsor:s:m1")
        )
    )
    assert sponsor == 0
    await ledger.read(lambda r: check_invariants(r.conn))


async def test_lots_due_at_one_instant_expire_wallet_by_wallet(
    ledger: Ledger, clock: TestClock
) -> None:
    """Lots due at the same instant are taken wallet by wallet (tables.EXPIRY_ORDER), so a
    chunk holding all of a wallet's due lots writes one EXPIRE entry for them. The lots are
    credited round robin, so in creation (lot id) order every chunk would span wallets."""
    wallets = await setup_lots(ledger, clock, [1] * 12, wallets=3)  # four lots each
    clock.advance(timedelta(hours=1))
    upcoming = await ledger.read(
        lambda r: r.list_upcoming_expirations(
            scheme_id="s", wallet_id="", start_us=0, end_us=clock.now_us() + 1, size=5, token=""
        )
    )
    assert [u.lot.wallet_id for u in upcoming.items] == [min(wallets)] * 4 + [sorted(wallets)[1]]
    run = await Runner(ledger, chunk_max=4).run(RunKind.EXPIRY, clock.now_us(), "test")
    assert (run.items_processed, run.chunks_committed) == (12, 3)
    entries = await ledger.read(
        lambda r: r.conn.execute(
            select(t.transactions.c.wallet_id, func.count())
            .where(t.transactions.c.type == TxType.EXPIRE.value)
            .group_by(t.transactions.c.wallet_id)
        )
    )
    assert dict(entries.all()) == {wallet: 1 for wallet in wallets}
    assert await expired_by_wallet(ledger) == {wallet: 4 for wallet in wallets}
    await ledger.read(lambda r: check_invariants(r.conn))


async def test_lots_not_yet_due_are_left_alone(ledger: Ledger, clock: TestClock) -> None:
    await setup_lots(ledger, clock, [5, 6])
    clock.advance(timedelta(minutes=59))
    run = await Runner(ledger).run(RunKind.EXPIRY, clock.now_us(), "test")
    assert run.items_processed == 0
    assert await count(ledger, t.lots, t.lots.c.state == LotState.OPEN.value) == 2


async def test_expiry_runs_have_a_chunk_size_of_their_own(ledger: Ledger, clock: TestClock) -> None:
    """`expiry_chunk_max` sizes the chunks of the set-based expiry run; the other runs keep
    `chunk_max`, and without it expiry does too."""
    await setup_lots(ledger, clock, [1] * 12, wallets=3)
    runner = Runner(ledger, chunk_max=2, expiry_chunk_max=5)
    warned = await runner.run(RunKind.EXPIRY_WARNING, clock.now_us(), "test")
    assert warned.items_processed > 2
    assert warned.chunks_committed == -(-warned.items_processed // 2)
    clock.advance(timedelta(hours=1))
    run = await runner.run(RunKind.EXPIRY, clock.now_us(), "test")
    assert (run.items_processed, run.chunks_committed) == (12, 3)
    with pytest.raises(ValueError, match="positive"):
        Runner(ledger, chunk_max=2, expiry_chunk_max=0)


async def test_a_long_lived_connection_numbers_past_32_bits(
    ledger: Ledger, clock: TestClock
) -> None:
    """On PostgreSQL the scratch tables' sequences keep counting for as long as the connection
    lives (ON COMMIT DELETE ROWS empties the rows, not the sequences): the numbers must not
    overflow a 32-bit integer."""
    if ledger.db.is_sqlite:
        pytest.skip("PostgreSQL's sequences; SQLite's rowids are 64-bit")
    wallets = await setup_lots(ledger, clock, [1] * 6, wallets=3)
    clock.advance(timedelta(hours=1))

    async def chunk(tx: Tx) -> int:
        await tx.conn.run_sync(lambda sync: expiry_chunk._scratch.create_all(sync))
        for table, column in (("chunk_wallets", "wallet_n"), ("expiry_chunk", "n")):
            await tx.conn.execute(
                text(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), 2147483647)")
            )
        return await tx.expire_due_chunk(None, clock.now_us(), 100)

    assert await ledger.write(chunk) == 6
    assert await expired_by_wallet(ledger) == {wallet: 2 for wallet in wallets}


async def test_expiry_chunks_follow_chunk_max_without_a_size_of_their_own(
    ledger: Ledger, clock: TestClock
) -> None:
    await setup_lots(ledger, clock, [1] * 12, wallets=3)
    clock.advance(timedelta(hours=1))
    run = await Runner(ledger, chunk_max=2).run(RunKind.EXPIRY, clock.now_us(), "test")
    assert (run.items_processed, run.chunks_committed) == (12, 6)


async def test_an_interrupted_run_resumes_and_expires_the_rest_exactly_once(
    ledger: Ledger, clock: TestClock
) -> None:
    amounts = [7] * 9
    await setup_lots(ledger, clock, amounts)
    clock.advance(timedelta(hours=2))
    runner = Runner(ledger, chunk_max=2)
    run = await runner.start(RunKind.EXPIRY, clock.now_us(), "test")

    async def one_chunk(tx: Tx) -> int:
        done = await tx.expire_due_chunk(run.id, run.as_of_us, 2)
        await tx.count_chunk(run.id, done)
        return done

    await ledger.write(one_chunk)
    await ledger.write(one_chunk)  # ... and the process dies here
    (resumed,) = await runner.resume_interrupted()
    assert resumed.id == run.id and resumed.status is RunStatus.SUCCEEDED
    assert resumed.items_processed == 9
    assert await count(ledger, t.lots, t.lots.c.expired_at_us.is_not(None)) == 9
    assert sum((await expired_by_wallet(ledger)).values()) == sum(amounts)
    await ledger.read(lambda r: check_invariants(r.conn))


async def test_overlapping_runs_expire_each_lot_once(ledger: Ledger, clock: TestClock) -> None:
    amounts = list(range(1, 41))
    await setup_lots(ledger, clock, amounts, wallets=8)
    clock.advance(timedelta(hours=2))
    runners = [Runner(ledger, chunk_max=5) for _ in range(3)]
    runs = await asyncio.gather(*(r.run(RunKind.EXPIRY, clock.now_us(), "test") for r in runners))
    assert sum(run.items_processed for run in runs) == 40
    assert await count(ledger, t.lots, t.lots.c.expired_at_us.is_not(None)) == 40
    assert sum((await expired_by_wallet(ledger)).values()) == sum(amounts)
    await ledger.read(lambda r: check_invariants(r.conn))


async def test_the_schema_refuses_a_second_expiry_of_a_lot(
    ledger: Ledger, clock: TestClock
) -> None:
    await setup_lots(ledger, clock, [3])
    clock.advance(timedelta(hours=2))
    await Runner(ledger).run(RunKind.EXPIRY, clock.now_us(), "test")
    lot_id = await ledger.read(lambda r: r.conn.scalar(select(t.lots.c.id)))

    async def expire_again(tx: Tx) -> None:
        await tx.conn.execute(
            update(t.lots).where(t.lots.c.id == lot_id).values(expired_at_us=tx.now_us)
        )

    with pytest.raises(IntegrityError):
        await ledger.write(expire_again)


async def test_a_chunk_expires_the_amounts_it_posts_or_nothing(
    ledger: Ledger, clock: TestClock
) -> None:
    """A chunk copied a lot with 10 left, but 4 went meanwhile (a stale copy): the lot cannot
    give up the 10 the entry would post, so the chunk fails whole instead of posting 10 and
    closing the lot with 6."""
    (wallet,) = await setup_lots(ledger, clock, [10], wallets=1)
    await ledger.write(lambda tx: tx.spend(DebitCommand(wallet, "POINTS", 4, "m2")))
    clock.advance(timedelta(hours=2))
    stale = select(
        *(
            literal(10, BigInteger).label("remaining") if c.name == "remaining" else c
            for c in t.lots.c
        )
    )

    with pytest.raises(IntegrityError):
        await ledger.write(
            lambda tx: expire_whole_lots(tx.conn, stale, run_id=None, now_us=tx.now_us)
        )
    assert await count(ledger, t.lots, t.lots.c.expired_at_us.is_not(None)) == 0
    assert await count(ledger, t.transactions, t.transactions.c.type == TxType.EXPIRE.value) == 0
    run = await Runner(ledger).run(RunKind.EXPIRY, clock.now_us(), "test")
    assert run.items_processed == 1
    assert await expired_by_wallet(ledger) == {wallet: 6}
    await ledger.read(lambda r: check_invariants(r.conn))


async def test_held_value_survives_expiry_and_expires_when_released(
    ledger: Ledger, clock: TestClock
) -> None:
    (wallet,) = await setup_lots(ledger, clock, [100], wallets=1)
    hold, _ = await ledger.write(
        lambda tx: tx.authorize_hold(DebitCommand(wallet, "POINTS", 30, "m2"), 3 * HOUR_US)
    )
    clock.advance(timedelta(hours=1, minutes=30))
    await Runner(ledger).run(RunKind.EXPIRY, clock.now_us(), "test")
    assert sum((await expired_by_wallet(ledger)).values()) == 70  # the 30 held stays held
    (balance,) = await ledger.read(lambda r: r.get_balance(wallet, "POINTS"))
    assert (balance.available, balance.held) == (0, 30)
    await ledger.write(lambda tx: tx.void_hold(hold.id))
    assert sum((await expired_by_wallet(ledger)).values()) == 100  # released into an expired lot
    (balance,) = await ledger.read(lambda r: r.get_balance(wallet, "POINTS"))
    assert (balance.available, balance.held) == (0, 0)
    assert await count(ledger, t.outbox_events, t.outbox_events.c.type == "EXPIRED") == 2
    await ledger.read(lambda r: check_invariants(r.conn))


async def test_a_capture_after_the_lot_expired_still_spends_the_held_value(
    ledger: Ledger, clock: TestClock
) -> None:
    (wallet,) = await setup_lots(ledger, clock, [50], wallets=1)
    hold, _ = await ledger.write(
        lambda tx: tx.authorize_hold(DebitCommand(wallet, "POINTS", 20, "m2"), 3 * HOUR_US)
    )
    clock.advance(timedelta(hours=2))
    await Runner(ledger).run(RunKind.EXPIRY, clock.now_us(), "test")
    captured, _ = await ledger.write(lambda tx: tx.capture_hold(hold.id, 0))
    assert captured.captured_amount == 20
    await ledger.read(lambda r: check_invariants(r.conn))


async def warnings(ledger: Ledger) -> list[dict[str, object]]:
    rows = await ledger.read(
        lambda r: r.conn.execute(
            select(t.outbox_events.c.payload)
            .where(t.outbox_events.c.type == "EXPIRING_SOON")
            .order_by(t.outbox_events.c.seq)
        )
    )
    return [json.loads(p) for (p,) in rows.all()]


async def test_warnings_go_out_once_per_lot_and_lead_time(ledger: Ledger, clock: TestClock) -> None:
    await setup_lots(ledger, clock, [40], expires_in_us=10 * DAY_US, wallets=1)
    runner = Runner(ledger)
    assert (await runner.run(RunKind.EXPIRY_WARNING, clock.now_us(), "t")).items_processed == 0
    clock.advance(timedelta(days=3, hours=1))  # 6 days 23 h left: inside 7 days
    assert (await runner.run(RunKind.EXPIRY_WARNING, clock.now_us(), "t")).items_processed == 1
    assert (await runner.run(RunKind.EXPIRY_WARNING, clock.now_us(), "t")).items_processed == 0
    clock.advance(timedelta(days=5))  # 1 day 23 h left: inside 48 hours
    await runner.run(RunKind.EXPIRY_WARNING, clock.now_us(), "t")
    sent = await warnings(ledger)
    assert [w["lead_seconds"] for w in sent] == [7 * 86400, 2 * 86400]
    assert all(w["amount"] == 40 and w["customer_ref"] == "c0" for w in sent)


async def test_a_lot_already_inside_both_lead_times_gets_one_warning(
    ledger: Ledger, clock: TestClock
) -> None:
    await setup_lots(ledger, clock, [5], expires_in_us=DAY_US, wallets=1)
    runner = Runner(ledger)
    await runner.run(RunKind.EXPIRY_WARNING, clock.now_us(), "t")
    clock.advance(timedelta(hours=1))
    await runner.run(RunKind.EXPIRY_WARNING, clock.now_us(), "t")
    assert [w["lead_seconds"] for w in await warnings(ledger)] == [2 * 86400]


async def test_extending_a_lot_rearms_its_warnings_and_is_audited(
    ledger: Ledger, clock: TestClock
) -> None:
    await setup_lots(ledger, clock, [5], expires_in_us=DAY_US, wallets=1)
    runner = Runner(ledger)
    await runner.run(RunKind.EXPIRY_WARNING, clock.now_us(), "t")
    lot_id = await ledger.read(lambda r: r.conn.scalar(select(t.lots.c.id)))
    new_expiry = clock.now_us() + 30 * HOUR_US
    txn, lot = await ledger.write(lambda tx: tx.extend_lot(lot_id, new_expiry, "goodwill"))
    assert txn.type is TxType.ADJUST and not txn.postings
    assert txn.metadata["new_expire_time_us"] == str(new_expiry)
    assert lot.expires_at_us == new_expiry
    await runner.run(RunKind.EXPIRY_WARNING, clock.now_us(), "t")
    assert len(await warnings(ledger)) == 2


async def test_hold_timeout_run_releases_lapsed_holds(ledger: Ledger, clock: TestClock) -> None:
    (wallet,) = await setup_lots(ledger, clock, [100], expires_in_us=10 * DAY_US, wallets=1)
    hold, _ = await ledger.write(
        lambda tx: tx.authorize_hold(DebitCommand(wallet, "POINTS", 30, "m2"), 60 * 1_000_000)
    )
    clock.advance(timedelta(minutes=2))
    run = await Runner(ledger).run(RunKind.HOLD_TIMEOUT, clock.now_us(), "t")
    assert run.items_processed == 1
    released = await ledger.read(lambda r: r.get_hold(hold.id))
    assert released.status is HoldStatus.EXPIRED
    assert await count(ledger, t.outbox_events, t.outbox_events.c.type == "HOLD_EXPIRED") == 1
    await ledger.read(lambda r: check_invariants(r.conn))


async def test_expire_lot_early_by_hand(ledger: Ledger, clock: TestClock) -> None:
    await setup_lots(ledger, clock, [25], expires_in_us=10 * DAY_US, wallets=1)
    lot_id = await ledger.read(lambda r: r.conn.scalar(select(t.lots.c.id)))
    txn, lot = await ledger.write(lambda tx: tx.expire_lot(lot_id, "fraud"))
    assert txn.type is TxType.EXPIRE and txn.metadata["reason"] == "fraud"
    assert (lot.remaining, lot.expired, lot.state) == (0, 25, LotState.EXPIRED)
    clock.advance(timedelta(days=11))
    assert (await Runner(ledger).run(RunKind.EXPIRY, clock.now_us(), "t")).items_processed == 0
    await ledger.read(lambda r: check_invariants(r.conn))


async def test_a_lease_is_held_by_one_holder_until_it_lapses(
    ledger: Ledger, clock: TestClock
) -> None:
    assert await ledger.write(lambda tx: tx.acquire_lease("run:EXPIRY", "a", HOUR_US)) == 1
    assert await ledger.write(lambda tx: tx.acquire_lease("run:EXPIRY", "b", HOUR_US)) is None
    assert await ledger.write(lambda tx: tx.acquire_lease("run:EXPIRY", "a", HOUR_US)) == 1
    clock.advance(timedelta(hours=1))
    assert await ledger.write(lambda tx: tx.acquire_lease("run:EXPIRY", "b", HOUR_US)) == 2


def inactive_award(wallet: str, amount: int, days: int) -> CreditCommand:
    return CreditCommand(
        wallet,
        TxType.AWARD,
        "POINTS",
        amount,
        Funding.PROMOTIONAL,
        "m1",
        expire_at_us=None,
        expiry_policy=Inactivity(days),
        available_at_us=None,
    )


async def test_inactivity_expires_promotional_value_after_days_without_activity(
    ledger: Ledger, clock: TestClock
) -> None:
    quiet, busy = await setup_lots(ledger, clock, [], wallets=2)
    for wallet in (quiet, busy):
        await ledger.write(lambda tx, w=wallet: tx.credit(inactive_award(w, 30, days=10)))
    runner = Runner(ledger)
    clock.advance(timedelta(days=6))
    await ledger.write(lambda tx: tx.spend(DebitCommand(busy, "POINTS", 5, "m2")))  # activity
    clock.advance(timedelta(days=4, seconds=1))  # quiet: 10 days idle; busy: 4 days
    run = await runner.run(RunKind.INACTIVITY, clock.now_us(), "t")
    assert run.items_processed == 1
    assert await expired_by_wallet(ledger) == {quiet: 30, busy: 0}
    clock.advance(timedelta(days=6))  # busy: now 10 days since its spend
    await runner.run(RunKind.INACTIVITY, clock.now_us(), "t")
    assert await expired_by_wallet(ledger) == {quiet: 30, busy: 25}
    assert (await runner.run(RunKind.INACTIVITY, clock.now_us(), "t")).items_processed == 0
    await ledger.read(lambda r: check_invariants(r.conn))


async def test_inactivity_is_for_promotional_value_only(ledger: Ledger, clock: TestClock) -> None:
    (wallet,) = await setup_lots(ledger, clock, [], wallets=1)
    cash = replace(
        inactive_award(wallet, 5, 3), kind=TxType.TOP_UP, funding=Funding.CASH, sponsor_id=""
    )
    with pytest.raises(InvalidArgument):
        await ledger.write(lambda tx: tx.credit(cash))


async def test_one_chunk_writes_one_balanced_entry_per_wallet_and_one_event_per_lot(
    ledger: Ledger, clock: TestClock
) -> None:
    """The set-based chunk, row by row: several wallets, each with several lots of two
    sponsors, two assets and cash, plus a lot whose whole remainder is held."""
    expires = clock.now_us() + HOUR_US
    # (wallet index, asset, amount, funding, sponsor)
    credits = [
        (0, "POINTS", 10, Funding.PROMOTIONAL, "m1"),
        (0, "POINTS", 20, Funding.PROMOTIONAL, "m2"),
        (0, "EUR", 300, Funding.PROMOTIONAL, "m1"),
        (0, "EUR", 400, Funding.CASH, None),
        (1, "POINTS", 50, Funding.PROMOTIONAL, "m1"),
        (1, "POINTS", 60, Funding.PROMOTIONAL, "m1"),
        (2, "POINTS", 70, Funding.PROMOTIONAL, "m2"),  # fully held below
    ]

    async def op(tx: Tx) -> list[str]:
        await tx.create_scheme("s", replace(SCHEME, cash_expiry_allowed=True))
        ids = [(await tx.create_wallet("s", f"c{i}", {})).id for i in range(3)]
        for wallet, asset, amount, funding, sponsor in credits:
            cmd = award(ids[wallet], amount, expires, asset=asset, sponsor=sponsor or "")
            await tx.credit(replace(cmd, funding=funding, sponsor_id=sponsor))
        return ids

    wallets = await ledger.write(op)
    await ledger.write(
        lambda tx: tx.authorize_hold(DebitCommand(wallets[2], "POINTS", 70, "m9"), 3 * HOUR_US)
    )
    clock.advance(timedelta(hours=2))
    run = await Runner(ledger, chunk_max=100).run(RunKind.EXPIRY, clock.now_us(), "test")
    assert (run.items_processed, run.chunks_committed) == (len(credits), 1)

    # Expected legs per wallet, from the credits: the wallet loses what was not held, each
    # sponsor gets its promotional value back, cash goes to breakage.
    expected: dict[str, dict[tuple[str, str], int]] = {}
    for wallet, asset, amount, funding, sponsor in credits:
        if wallet == 2:
            continue  # all of it is held: nothing to expire now
        legs = expected.setdefault(wallets[wallet], {})
        target = f"sponsor:s:{sponsor}" if funding is Funding.PROMOTIONAL else "breakage:s"
        legs[(f"wallet:{wallets[wallet]}", asset)] = (
            legs.get((f"wallet:{wallets[wallet]}", asset), 0) - amount
        )
        legs[(target, asset)] = legs.get((target, asset), 0) + amount

    async def entries(r):  # type: ignore[no-untyped-def]
        txns = (
            await r.conn.execute(
                select(
                    t.transactions.c.id, t.transactions.c.wallet_id, t.transactions.c.metadata
                ).where(t.transactions.c.type == TxType.EXPIRE.value)
            )
        ).all()
        postings = (
            await r.conn.execute(
                select(t.postings).where(t.postings.c.transaction_id.in_([x.id for x in txns]))
            )
        ).all()
        expirations = (
            await r.conn.execute(
                select(t.allocations).where(
                    t.allocations.c.transaction_id.in_([x.id for x in txns])
                )
            )
        ).all()
        events = (
            await r.conn.execute(select(t.outbox_events).where(t.outbox_events.c.type == "EXPIRED"))
        ).all()
        lots = (await r.conn.execute(select(t.lots))).all()
        return txns, postings, expirations, events, lots

    txns, postings, expirations, events, lots = await ledger.read(entries)
    txn_of_wallet = {x.wallet_id: x.id for x in txns}
    assert set(txn_of_wallet) == set(expected)  # one entry per wallet that lost value
    assert len(txns) == len(expected)
    for wallet_id, legs in expected.items():
        got = {
            (p.account, p.asset): p.amount
            for p in postings
            if p.transaction_id == txn_of_wallet[wallet_id]
        }
        assert got == legs
    by_lot = {e.lot_id: e for e in expirations}
    assert len(by_lot) == len(expirations) == len(credits) - 1  # one allocation per lot
    held_lot = next(lot for lot in lots if lot.wallet_id == wallets[2])
    assert held_lot.id not in by_lot  # nothing left to expire: no allocation
    assert (held_lot.state, held_lot.held, held_lot.remaining) == ("EXPIRED", 70, 0)
    assert all(lot.expired_at_us == clock.now_us() for lot in lots)
    assert {x.id: json.loads(x.metadata) for x in txns} == {x.id: {"run_id": run.id} for x in txns}
    payloads = {json.loads(e.payload)["lot_id"]: (e, json.loads(e.payload)) for e in events}
    assert held_lot.id not in payloads and len(payloads) == len(credits) - 1
    customer = {w: f"c{i}" for i, w in enumerate(wallets)}
    for lot in lots:
        if lot.id == held_lot.id:
            continue
        assert (lot.state, lot.remaining, lot.expired) == ("EXPIRED", 0, lot.amount)
        event, payload = payloads[lot.id]
        assert event.transaction_id == txn_of_wallet[lot.wallet_id] == by_lot[lot.id].transaction_id
        assert payload == {
            "customer_ref": customer[lot.wallet_id],
            "lot_id": lot.id,
            "hold_id": None,
            "asset": lot.asset,
            "amount": lot.amount,
            "expires_at_us": expires,
            "sponsor_id": lot.sponsor_id,
            "lead_seconds": 0,
        }
    assert len({e.event_id for e in events}) == len(events)
    await ledger.read(lambda r: check_invariants(r.conn))
