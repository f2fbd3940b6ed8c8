"""Properties of lot allocation (DESIGN rule 4), checked against oracles written from the rule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loyalty_ledger.domain.errors import InsufficientFunds
from loyalty_ledger.domain.spend_order import (
    Funding,
    LotView,
    SpendContext,
    allocate,
    eligible_available,
    is_eligible,
    spend_order_key,
)

MERCHANTS = ["m1", "m2", "m3"]
PRODUCTS = ["p1", "p2", "p3"]
# Small time range so equal expiries / creation times (tie-breaks) are common.
times = st.integers(0, 20)


def oracle_eligible(lot: LotView, ctx: SpendContext) -> bool:
    """Eligibility as the rule reads, written independently of the code under test."""
    checks = [
        lot.remaining > 0,
        lot.available_at_us <= ctx.at_us,
        lot.expires_at_us is None or ctx.at_us < lot.expires_at_us,
        not lot.merchant_ids or ctx.merchant_id in lot.merchant_ids,
        not lot.product_ids
        or (len(ctx.product_ids) > 0 and all(p in lot.product_ids for p in ctx.product_ids)),
    ]
    return all(checks)


def oracle_key(lot: LotView) -> tuple:
    """Soonest expiry (never = infinitely late), promotional first, oldest, then id."""
    expiry = math.inf if lot.expires_at_us is None else lot.expires_at_us
    return (expiry, 0 if lot.funding is Funding.PROMOTIONAL else 1, lot.created_at_us, lot.lot_id)


@st.composite
def lot_lists(draw: st.DrawFn) -> list[LotView]:
    count = draw(st.integers(0, 8))
    ids = draw(
        st.lists(
            st.text("abcdef", min_size=1, max_size=3), min_size=count, max_size=count, unique=True
        )
    )
    lots = []
    for lot_id in ids:
        lots.append(
            LotView(
                lot_id=lot_id,
                remaining=draw(st.integers(-1, 50)),
                available_at_us=draw(times),
                expires_at_us=draw(st.none() | times),
                funding=draw(st.sampled_from(list(Funding))),
                created_at_us=draw(times),
                merchant_ids=draw(st.frozensets(st.sampled_from(MERCHANTS), max_size=2)),
                product_ids=draw(st.frozensets(st.sampled_from(PRODUCTS), max_size=2)),
            )
        )
    return lots


contexts = st.builds(
    SpendContext,
    merchant_id=st.sampled_from(MERCHANTS),
    product_ids=st.frozensets(st.sampled_from(PRODUCTS), max_size=2),
    at_us=times,
)
amounts = st.integers(1, 200)


def run(lots, amount, ctx, allow_partial):
    try:
        return allocate(lots, amount, ctx, asset="EUR", allow_partial=allow_partial), None
    except InsufficientFunds as exc:
        return None, exc


@settings(max_examples=400, deadline=None)
@given(lots=lot_lists(), amount=amounts, ctx=contexts, allow_partial=st.booleans())
def test_allocation_obeys_the_rule(lots, amount, ctx, allow_partial) -> None:
    by_id = {lot.lot_id: lot for lot in lots}
    eligible = [lot for lot in lots if oracle_eligible(lot, ctx)]
    available = sum(lot.remaining for lot in eligible)
    taken, error = run(lots, amount, ctx, allow_partial)

    assert eligible_available(lots, ctx) == available
    if available == 0 or (available < amount and not allow_partial):
        assert error is not None
        assert (error.requested, error.available) == (amount, available)
        assert error.reason == "INSUFFICIENT_FUNDS"
        return
    assert error is None
    assert sum(t for _, t in taken) == min(amount, available)

    used = dict(taken)
    assert len(used) == len(taken), "each lot appears once"
    for lot_id, take in taken:
        lot = by_id[lot_id]
        assert oracle_eligible(lot, ctx), "only eligible lots are used"
        assert 0 < take <= lot.remaining
    # Returned in spend order.
    assert [oracle_key(by_id[i]) for i, _ in taken] == sorted(oracle_key(by_id[i]) for i in used)
    # A lot is touched only when every eligible lot before it is exhausted.
    for lot_id in used:
        for other in eligible:
            if oracle_key(other) < oracle_key(by_id[lot_id]):
                assert used.get(other.lot_id) == other.remaining
    assert sum(1 for i, t in taken if t < by_id[i].remaining) <= 1, "at most one partial lot"


@settings(max_examples=200, deadline=None)
@given(lots=lot_lists(), amount=amounts, ctx=contexts, allow_partial=st.booleans(), data=st.data())
def test_allocation_ignores_input_order(lots, amount, ctx, allow_partial, data) -> None:
    shuffled = data.draw(st.permutations(lots))
    first, first_error = run(lots, amount, ctx, allow_partial)
    second, second_error = run(shuffled, amount, ctx, allow_partial)
    assert first == second
    assert (first_error is None) == (second_error is None)
    if first_error is not None:
        assert first_error.available == second_error.available


@settings(max_examples=200, deadline=None)
@given(lots=lot_lists(), ctx=contexts)
def test_expired_and_pending_lots_are_never_used(lots, ctx) -> None:
    taken, _ = run(lots, 10_000, ctx, allow_partial=True)
    by_id = {lot.lot_id: lot for lot in lots}
    for lot_id, _take in taken or []:
        lot = by_id[lot_id]
        assert lot.available_at_us <= ctx.at_us
        assert lot.expires_at_us is None or lot.expires_at_us > ctx.at_us


@settings(max_examples=200, deadline=None)
@given(lots=lot_lists(), ctx=contexts)
def test_key_and_eligibility_match_the_oracles(lots, ctx) -> None:
    assert sorted(lots, key=spend_order_key) == sorted(lots, key=oracle_key)
    for lot in lots:
        assert is_eligible(lot, ctx) == oracle_eligible(lot, ctx)


@given(amount=st.integers(-5, 0), ctx=contexts)
def test_non_positive_amount_is_a_programming_error(amount, ctx) -> None:
    with pytest.raises(ValueError):
        allocate([], amount, ctx, asset="POINTS")
