"""Where value goes (rules 1 and 7): account balances after worked scenarios."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import select

from loyalty_ledger.clock import TestClock
from loyalty_ledger.domain.spend_order import Funding
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.engine import CreditCommand, DebitCommand, Tx
from loyalty_ledger.ledger.reads import Reader
from loyalty_ledger.ledger.records import RefundHandling, TxType
from loyalty_ledger.ledger.service import Ledger
from tests.invariants import check_invariants
from tests.ledger.conftest import SCHEME

HOUR_US = 3600 * 1_000_000


async def balances(reader: Reader) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for p in await reader.conn.execute(select(t.postings).where(t.postings.c.asset == "EUR")):
        out[p.account] += p.amount
    return {k: v for k, v in out.items() if v}


def eur(wallet: str, amount: int, funding: Funding, sponsor: str, expires_at_us: int | None):
    return CreditCommand(
        wallet,
        TxType.AWARD if funding is Funding.PROMOTIONAL else TxType.TOP_UP,
        "EUR",
        amount,
        funding,
        sponsor,
        expire_at_us=expires_at_us,
        expiry_policy=None,
        available_at_us=None,
    )


async def test_refund_of_expired_value_returns_promotional_to_sponsor_and_cash_to_breakage(
    ledger: Ledger, clock: TestClock
) -> None:
    scheme = replace(SCHEME, cash_expiry_allowed=True, refund_handling=RefundHandling.EXPIRE)
    expires = clock.now_us() + HOUR_US

    async def setup(tx: Tx) -> tuple[str, str]:
        await tx.create_scheme("s", scheme)
        wallet = (await tx.create_wallet("s", "c", {})).id
        await tx.credit(eur(wallet, 100, Funding.PROMOTIONAL, "m1", expires))
        await tx.credit(eur(wallet, 50, Funding.CASH, "", expires))
        spend, _ = await tx.spend(DebitCommand(wallet, "EUR", 120, "m2"))
        return wallet, spend.id

    wallet, spend_id = await ledger.write(setup)
    # Same expiry: the promotional 100 goes first, then 20 of the cash.
    assert await ledger.read(balances) == {
        "sponsor:s:m1": -100,
        "cash:s": -50,
        f"wallet:{wallet}": 30,
        "merchant:s:m2": 120,
    }
    clock.advance(timedelta(hours=2))
    result = await ledger.write(lambda tx: tx.refund(spend_id, 0, "return"))
    assert result.amount == 120 and result.expire is not None
    # Both lots had expired: nothing comes back to the customer; the sponsor gets its 100
    # back and the 20 of cash becomes breakage.
    assert await ledger.read(balances) == {
        "cash:s": -50,
        f"wallet:{wallet}": 30,
        "breakage:s": 20,
    }
    await ledger.read(lambda r: check_invariants(r.conn))


async def test_reversal_returns_what_is_left_to_the_sponsor(ledger: Ledger) -> None:
    async def setup(tx: Tx) -> tuple[str, str]:
        await tx.create_scheme("s", SCHEME)
        wallet = (await tx.create_wallet("s", "c", {})).id
        credit, _ = await tx.credit(eur(wallet, 80, Funding.PROMOTIONAL, "m1", None))
        await tx.spend(DebitCommand(wallet, "EUR", 30, "m2"))
        return wallet, credit.id

    wallet, credit_id = await ledger.write(setup)
    result = await ledger.write(lambda tx: tx.reverse_credit(credit_id, "returned purchase"))
    assert (result.reversed, result.already_spent, result.held) == (50, 30, 0)
    assert await ledger.read(balances) == {"sponsor:s:m1": -30, "merchant:s:m2": 30}
    assert wallet  # the wallet account is back to zero, so it is absent above


async def test_recredit_policy_makes_a_new_lot_with_a_grace_period(
    ledger: Ledger, clock: TestClock
) -> None:
    scheme = replace(SCHEME, refund_handling=RefundHandling.RECREDIT, refund_grace_seconds=7200)
    expires = clock.now_us() + HOUR_US

    async def setup(tx: Tx) -> tuple[str, str]:
        await tx.create_scheme("s", scheme)
        wallet = (await tx.create_wallet("s", "c", {})).id
        await tx.credit(eur(wallet, 100, Funding.PROMOTIONAL, "m1", expires))
        spend, _ = await tx.spend(DebitCommand(wallet, "EUR", 60, "m2"))
        return wallet, spend.id

    wallet, spend_id = await ledger.write(setup)
    clock.advance(timedelta(hours=2))
    refund = await ledger.write(lambda tx: tx.refund(spend_id, 25, ""))
    assert refund.expire is None
    lots = await ledger.read(lambda r: r.open_lots(wallet, "EUR"))
    fresh = [lot for lot in lots if lot.origin_lot_id is not None]
    assert len(fresh) == 1
    assert fresh[0].remaining == 25
    assert fresh[0].expires_at_us == clock.now_us() + 7200 * 1_000_000
    (balance,) = await ledger.read(lambda r: r.get_balance(wallet, "EUR"))
    assert balance.available == 25  # the old lot's 40 expired with time; the 25 is new
    await ledger.read(lambda r: check_invariants(r.conn))
