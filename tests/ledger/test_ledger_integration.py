"""The unit of work against real databases: random operations keep every invariant,
and a failure halfway leaves nothing behind."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from loyalty_ledger.clock import TestClock
from loyalty_ledger.domain.errors import LedgerError
from loyalty_ledger.domain.expiry import After, DurationUnit
from loyalty_ledger.domain.spend_order import Funding
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.engine import CreditCommand, DebitCommand, Tx
from loyalty_ledger.ledger.records import TxType
from loyalty_ledger.ledger.service import Ledger
from tests.invariants import check_invariants
from tests.ledger.conftest import SCHEME


async def _setup(ledger: Ledger, wallet_count: int) -> list[str]:
    async def op(tx: Tx) -> list[str]:
        await tx.create_scheme("s1", SCHEME)
        return [(await tx.create_wallet("s1", f"c{i}", {})).id for i in range(wallet_count)]

    return await ledger.write(op)


def _credit(wallet_id: str, rng: random.Random) -> CreditCommand:
    promotional = rng.random() < 0.7
    return CreditCommand(
        wallet_id=wallet_id,
        kind=TxType.AWARD if promotional else TxType.TOP_UP,
        asset=rng.choice(["POINTS", "EUR"]),
        amount=rng.randint(1, 500),
        funding=Funding.PROMOTIONAL if promotional else Funding.CASH,
        sponsor_id=rng.choice(["m1", "m2"]) if promotional else "",
        expire_at_us=None,
        expiry_policy=After(rng.randint(1, 72), DurationUnit.HOURS) if promotional else None,
        available_at_us=None,
        merchant_ids=("m1",) if rng.random() < 0.2 else (),
    )


async def _random_step(
    ledger: Ledger,
    clock: TestClock,
    rng: random.Random,
    wallets: list[str],
    history: dict[str, list[str]],
) -> None:
    action = rng.choice(
        [
            "credit",
            "credit",
            "spend",
            "spend",
            "hold",
            "capture",
            "void",
            "refund",
            "reverse",
            "transfer",
            "advance",
        ]
    )
    wallet = rng.choice(wallets)
    debit = DebitCommand(
        wallet,
        rng.choice(["POINTS", "EUR"]),
        rng.randint(1, 300),
        rng.choice(["m1", "m2"]),
        allow_partial=rng.random() < 0.3,
    )

    async def op(tx: Tx) -> None:
        if action == "credit":
            txn, _ = await tx.credit(_credit(wallet, rng))
            history["credits"].append(txn.id)
        elif action == "spend":
            txn, _ = await tx.spend(debit)
            history["spends"].append(txn.id)
        elif action == "hold":
            hold, _ = await tx.authorize_hold(debit, rng.randint(1, 7200) * 1_000_000)
            history["holds"].append(hold.id)
        elif action == "capture" and history["holds"]:
            hold_id = rng.choice(history["holds"])
            hold, txn = await tx.capture_hold(hold_id, rng.randint(0, 50))
            history["spends"].append(txn.id)
        elif action == "void" and history["holds"]:
            await tx.void_hold(rng.choice(history["holds"]))
        elif action == "refund" and history["spends"]:
            await tx.refund(rng.choice(history["spends"]), rng.randint(0, 100), "")
        elif action == "reverse" and history["credits"]:
            await tx.reverse_credit(rng.choice(history["credits"]), "test")
        elif action == "transfer":
            other = rng.choice([w for w in wallets if w != wallet])
            await tx.transfer(wallet, other, debit.asset, debit.amount, "")

    if action == "advance":
        clock.advance(timedelta(minutes=rng.randint(1, 600)))
        return
    try:
        await ledger.write(op)
    except LedgerError:
        pass  # refusals are expected; the invariants below must hold either way


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_operations_keep_every_invariant(
    ledger: Ledger, clock: TestClock, seed: int
) -> None:
    rng = random.Random(seed)
    wallets = await _setup(ledger, 4)
    history: dict[str, list[str]] = {"credits": [], "spends": [], "holds": []}
    for step in range(150):
        await _random_step(ledger, clock, rng, wallets, history)
        if step % 25 == 0:
            await ledger.read(lambda r: check_invariants(r.conn))
    await ledger.read(lambda r: check_invariants(r.conn))
    for wallet in wallets:
        for balance in await ledger.read(lambda r, w=wallet: r.get_balance(w)):
            assert min(balance.available, balance.pending, balance.held) >= 0
    assert len(history["credits"]) > 10 and len(history["spends"]) > 5  # the walk did things


async def test_failure_halfway_leaves_nothing_behind(ledger: Ledger) -> None:
    (wallet,) = await _setup(ledger, 1)
    lot = CreditCommand(
        wallet,
        TxType.AWARD,
        "POINTS",
        40,
        Funding.PROMOTIONAL,
        "m1",
        expire_at_us=None,
        expiry_policy=None,
        available_at_us=None,
    )
    await ledger.write(lambda tx: tx.credit(lot))

    async def counts(tx: Tx) -> tuple[int, ...]:
        out = []
        for table in (t.transactions, t.postings, t.allocations, t.outbox_events):
            out.append((await tx.conn.execute(select(func.count()).select_from(table))).scalar())
        remaining = (await tx.conn.execute(select(func.sum(t.lots.c.remaining)))).scalar()
        return (*out, remaining)

    before = await ledger.read(counts)

    async def spend_then_crash(tx: Tx) -> None:
        await tx.spend(DebitCommand(wallet, "POINTS", 15, "m2"))
        raise RuntimeError("crash after the postings were written")

    with pytest.raises(RuntimeError):
        await ledger.write(spend_then_crash)
    assert await ledger.read(counts) == before
    await ledger.read(lambda r: check_invariants(r.conn))
