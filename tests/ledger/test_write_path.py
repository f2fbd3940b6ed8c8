"""The hot write path (credit, spend, hold) reads less than it used to; these tests pin what it
may skip and what it must still see.

- The wallet, its scheme and the scheme's assets come from one statement, never from a cache:
  a scheme update is seen by the next write, even at the same instant.
- The holds query runs only when a hold has lapsed (SQLite; PostgreSQL always runs it, see
  `PostingTx._lapsed_hold_possible`), and a lapsed hold is still released first.
- Statement counts per write (counts, not timings).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine

from loyalty_ledger.clock import TestClock
from loyalty_ledger.domain.errors import InvalidArgument
from loyalty_ledger.domain.expiry import FixedTime, Never
from loyalty_ledger.domain.redemption import RedemptionRate
from loyalty_ledger.domain.spend_order import Funding
from loyalty_ledger.domain.tiers import Tier, TierBasis, TierProgram
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.engine import CreditCommand, DebitCommand, Tx
from loyalty_ledger.ledger.records import HoldStatus, TxType
from loyalty_ledger.ledger.service import Ledger
from tests.ledger.conftest import SCHEME

HOUR_US = 3600 * 1_000_000


def points(wallet: str, amount: int, asset: str = "POINTS") -> CreditCommand:
    return CreditCommand(
        wallet,
        TxType.AWARD,
        asset,
        amount,
        Funding.PROMOTIONAL,
        "",
        expire_at_us=None,
        expiry_policy=None,
        available_at_us=None,
    )


async def new_wallet(ledger: Ledger, scheme: Any = SCHEME) -> str:
    async def setup(tx: Tx) -> str:
        await tx.create_scheme("s", scheme)
        return (await tx.create_wallet("s", "c", {})).id

    return await ledger.write(setup)


@contextmanager
def counted() -> Iterator[Counter[str]]:
    """SELECT/INSERT/UPDATE/DELETE statements executed while the block runs, by verb."""
    verbs: Counter[str] = Counter()

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            verbs[verb] += 1

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield verbs
    finally:
        event.remove(Engine, "before_cursor_execute", count)


def is_sqlite(ledger: Ledger) -> bool:
    return ledger.db.is_sqlite


# -- the scheme is read with the wallet, and always fresh ------------------------------------


async def test_the_scheme_read_with_the_wallet_equals_get_scheme(ledger: Ledger) -> None:
    scheme = replace(
        SCHEME,
        assets={"POINTS": 0, "EUR": 2, "MILES": 0},
        warning_lead_seconds=(86_400, 3_600),
        redemption_rates=(RedemptionRate("POINTS", 100, "EUR", 50),),
        tier_program=TierProgram(TierBasis.POINTS, "POINTS", 365, (Tier("gold", "Gold", 1000),)),
    )
    wallet = await new_wallet(ledger, scheme)

    async def both(tx: Tx) -> tuple[Any, Any]:
        _, joined = await tx._lock_wallet_with_scheme(wallet)
        return joined, await tx.get_scheme("s")

    joined, read = await ledger.write(both)
    assert joined == read
    assert list(joined.assets) == ["EUR", "MILES", "POINTS"]


async def test_a_scheme_update_is_seen_by_the_next_write_at_the_same_instant(
    ledger: Ledger, clock: TestClock
) -> None:
    """The clock does not move: a cache validated by `updated_at_us` would miss both changes."""
    wallet = await new_wallet(ledger)
    await ledger.write(lambda tx: tx.credit(points(wallet, 10)))
    with pytest.raises(InvalidArgument):
        await ledger.write(lambda tx: tx.credit(points(wallet, 10, "MILES")))

    expires = clock.now_us() + 24 * HOUR_US
    changed = replace(
        SCHEME,
        assets={**SCHEME.assets, "MILES": 0},
        default_expiry_policy=FixedTime(clock.now() + timedelta(days=1)),
    )
    await ledger.write(lambda tx: tx.update_scheme("s", changed))
    _, lot = await ledger.write(lambda tx: tx.credit(points(wallet, 10, "MILES")))
    assert lot.asset == "MILES" and lot.expires_at_us == expires
    _, lot = await ledger.write(lambda tx: tx.credit(points(wallet, 10)))
    assert lot.expires_at_us == expires

    await ledger.write(lambda tx: tx.update_scheme("s", replace(changed, assets=changed.assets)))
    reverted = replace(changed, default_expiry_policy=Never())
    await ledger.write(lambda tx: tx.update_scheme("s", reverted))
    _, lot = await ledger.write(lambda tx: tx.credit(points(wallet, 10)))
    assert lot.expires_at_us is None


async def test_an_unknown_asset_is_refused_naming_the_schemes_assets(ledger: Ledger) -> None:
    wallet = await new_wallet(ledger)
    with pytest.raises(InvalidArgument, match=r"\(EUR, POINTS\)"):
        await ledger.write(lambda tx: tx.credit(points(wallet, 10, "MILES")))
    with pytest.raises(InvalidArgument, match=r"\(EUR, POINTS\)"):
        await ledger.write(lambda tx: tx.spend(DebitCommand(wallet, "MILES", 1, "m")))


# -- lapsed holds ---------------------------------------------------------------------------


async def place_hold(ledger: Ledger, wallet: str, amount: int, ttl_us: int) -> str:
    async def op(tx: Tx) -> str:
        hold, _ = await tx.authorize_hold(DebitCommand(wallet, "POINTS", amount, "m"), ttl_us)
        return hold.id

    return await ledger.write(op)


async def hold_status(ledger: Ledger, hold_id: str) -> HoldStatus:
    async def read(r: Any) -> HoldStatus:
        return (await r.get_hold(hold_id)).status  # type: ignore[no-any-return]

    return await ledger.read(read)


async def hold_expired_events(ledger: Ledger) -> int:
    async def read(r: Any) -> int:
        rows = await r.conn.execute(
            select(t.outbox_events.c.seq).where(t.outbox_events.c.type == "HOLD_EXPIRED")
        )
        return len(list(rows))

    return await ledger.read(read)


@pytest.mark.parametrize("write", ["credit", "spend", "hold"])
async def test_a_write_releases_a_lapsed_hold_first(
    ledger: Ledger, clock: TestClock, write: str
) -> None:
    wallet = await new_wallet(ledger)
    await ledger.write(lambda tx: tx.credit(points(wallet, 100)))
    hold_id = await place_hold(ledger, wallet, 40, ttl_us=HOUR_US)

    # Not lapsed yet: the write leaves the hold alone.
    await ledger.write(lambda tx: tx.credit(points(wallet, 1)))
    assert await hold_status(ledger, hold_id) is HoldStatus.ACTIVE

    clock.advance(timedelta(hours=1))  # expires_at_us <= now: lapsed
    if write == "credit":
        await ledger.write(lambda tx: tx.credit(points(wallet, 1)))
    elif write == "spend":
        # Only the released 40 make this spend possible (61 were available before).
        _txn, spent = await ledger.write(
            lambda tx: tx.spend(DebitCommand(wallet, "POINTS", 101, "m"))
        )
        assert spent == 101
    else:  # the same: only the released 40 make a hold of 101 possible
        await place_hold(ledger, wallet, 101, ttl_us=HOUR_US)
    assert await hold_status(ledger, hold_id) is HoldStatus.EXPIRED
    assert await hold_expired_events(ledger) == 1


# -- statements per write -------------------------------------------------------------------


async def test_statements_per_credit_and_spend(ledger: Ledger, clock: TestClock) -> None:
    """SQLite: one SELECT (wallet, scheme, assets, lapsed holds) before a credit's four INSERTs
    (transaction, postings, outbox event, lot); a spend adds its lots' SELECT and UPDATE and the
    allocations' INSERT. PostgreSQL reads the holds after the lock (one SELECT more)."""
    wallet = await new_wallet(ledger)
    await ledger.write(lambda tx: tx.credit(points(wallet, 100)))  # warm-up
    holds_query = 0 if is_sqlite(ledger) else 1

    with counted() as credit:
        await ledger.write(lambda tx: tx.credit(points(wallet, 100)))
    assert credit == {"SELECT": 1 + holds_query, "INSERT": 4}

    with counted() as spend:
        await ledger.write(lambda tx: tx.spend(DebitCommand(wallet, "POINTS", 150, "m")))
    assert spend == {"SELECT": 2 + holds_query, "INSERT": 4, "UPDATE": 1}

    await place_hold(ledger, wallet, 10, ttl_us=HOUR_US)
    clock.advance(timedelta(hours=1))
    with counted() as with_lapsed_hold:
        await ledger.write(lambda tx: tx.credit(points(wallet, 100)))
    # The holds and their allocations are read, and the hold released, first.
    assert with_lapsed_hold["SELECT"] > credit["SELECT"]


async def test_a_redemption_costs_the_statements_of_a_spend(ledger: Ledger) -> None:
    """RedeemPoints locks the wallet once and spends under that lock (not a second lock)."""
    scheme = replace(
        SCHEME,
        assets={"POINTS": 0, "EUR": 2},
        redemption_rates=(RedemptionRate("POINTS", 100, "EUR", 50),),
    )
    wallet = await new_wallet(ledger, scheme)
    await ledger.write(lambda tx: tx.credit(points(wallet, 1_000)))
    with counted() as spend:
        await ledger.write(lambda tx: tx.spend(DebitCommand(wallet, "POINTS", 100, "m")))
    with counted() as redeem:
        txn, spent = await ledger.write(
            lambda tx: tx.redeem_points(DebitCommand(wallet, "POINTS", 0, "m"), "EUR", 50)
        )
    assert spent == 100 and txn.metadata["redeemed_value"] == "50"
    assert redeem == spend


# -- reads by index -------------------------------------------------------------------------


async def test_reversing_a_credit_finds_its_lot_without_scanning_every_lot(
    ledger: Ledger, database_url: str
) -> None:
    """A reversal looks its lot up through the wallet (an index), not by scanning `lots`,
    which holds every lot ever credited (SQLite's plan; PostgreSQL plans by its statistics)."""
    if not is_sqlite(ledger):
        pytest.skip("checks SQLite's query plan")
    wallet = await new_wallet(ledger)
    txn, _ = await ledger.write(lambda tx: tx.credit(points(wallet, 10)))
    lot_reads: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and " lots" in statement:
            lot_reads.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", capture)
    try:
        await ledger.write(lambda tx: tx.reverse_credit(txn.id, "fraud"))
    finally:
        event.remove(Engine, "before_cursor_execute", capture)
    assert lot_reads
    with sqlite3.connect(database_url.split("///", 1)[1]) as raw:
        plans = [
            " / ".join(row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            for sql, params in lot_reads
        ]
    assert not [plan for plan in plans if "SCAN lots" in plan], plans
