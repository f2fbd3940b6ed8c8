"""Worked examples of the spend order (DESIGN rule 4)."""

from __future__ import annotations

import pytest

from loyalty_ledger.domain.errors import InsufficientFunds
from loyalty_ledger.domain.spend_order import (
    Funding,
    LotView,
    SpendContext,
    allocate,
    eligible_available,
    is_eligible,
)

NOW = 1_000
CTX = SpendContext(merchant_id="shop", product_ids=frozenset({"shoes"}), at_us=NOW)


def lot(
    lot_id: str,
    remaining: int,
    *,
    expires: int | None = None,
    funding: Funding = Funding.CASH,
    created: int = 0,
    available: int = 0,
    merchants: frozenset[str] = frozenset(),
    products: frozenset[str] = frozenset(),
) -> LotView:
    return LotView(lot_id, remaining, available, expires, funding, created, merchants, products)


def test_soonest_expiry_first_and_never_expiring_last() -> None:
    lots = [
        lot("never", 100),
        lot("late", 10, expires=5_000),
        lot("soon", 10, expires=2_000),
    ]
    assert allocate(lots, 25, CTX, asset="POINTS") == [("soon", 10), ("late", 10), ("never", 5)]


def test_promotional_before_cash_at_equal_expiry() -> None:
    lots = [
        lot("cash", 10, expires=2_000, funding=Funding.CASH, created=1),
        lot("promo", 10, expires=2_000, funding=Funding.PROMOTIONAL, created=2),
    ]
    assert allocate(lots, 15, CTX, asset="EUR") == [("promo", 10), ("cash", 5)]


def test_expiry_beats_funding() -> None:
    lots = [
        lot("promo", 10, expires=3_000, funding=Funding.PROMOTIONAL),
        lot("cash", 10, expires=2_000, funding=Funding.CASH),
    ]
    assert allocate(lots, 5, CTX, asset="EUR") == [("cash", 5)]


def test_oldest_then_id_break_ties() -> None:
    lots = [lot("b", 5, created=1), lot("a", 5, created=1), lot("z", 5, created=0)]
    assert allocate(lots, 12, CTX, asset="POINTS") == [("z", 5), ("a", 5), ("b", 2)]


def test_merchant_condition() -> None:
    lots = [
        lot("elsewhere", 50, expires=1_500, merchants=frozenset({"other"})),
        lot("here", 20, expires=1_800, merchants=frozenset({"shop", "other"})),
        lot("anywhere", 20),
    ]
    assert eligible_available(lots, CTX) == 40
    assert allocate(lots, 30, CTX, asset="EUR") == [("here", 20), ("anywhere", 10)]


def test_product_condition_needs_every_basket_product_covered() -> None:
    shoes_only = lot("shoes", 10, products=frozenset({"shoes"}))
    assert is_eligible(shoes_only, CTX)
    basket = SpendContext("shop", frozenset({"shoes", "socks"}), NOW)
    assert not is_eligible(shoes_only, basket)
    no_products = SpendContext("shop", frozenset(), NOW)
    assert not is_eligible(shoes_only, no_products)
    assert is_eligible(lot("any", 10), no_products)


def test_expiry_boundary_and_activation_delay() -> None:
    assert not is_eligible(lot("x", 10, expires=NOW), CTX)  # expiring at T is not usable at T
    assert is_eligible(lot("x", 10, expires=NOW + 1), CTX)
    assert is_eligible(lot("x", 10, available=NOW), CTX)
    assert not is_eligible(lot("x", 10, available=NOW + 1), CTX)
    assert not is_eligible(lot("x", 0), CTX)


def test_short_funds_raise_with_the_eligible_available() -> None:
    lots = [lot("a", 10), lot("pending", 100, available=NOW + 1)]
    with pytest.raises(InsufficientFunds) as info:
        allocate(lots, 11, CTX, asset="EUR")
    assert (info.value.requested, info.value.available) == (11, 10)
    assert info.value.metadata == {"asset": "EUR", "requested": "11", "available": "10"}


def test_allow_partial_takes_everything_eligible() -> None:
    lots = [lot("a", 10, expires=2_000), lot("b", 5)]
    assert allocate(lots, 100, CTX, asset="EUR", allow_partial=True) == [("a", 10), ("b", 5)]
    assert allocate(lots, 12, CTX, asset="EUR", allow_partial=True) == [("a", 10), ("b", 2)]


def test_allow_partial_with_nothing_available_still_raises() -> None:
    with pytest.raises(InsufficientFunds) as info:
        allocate([lot("gone", 10, expires=NOW)], 5, CTX, asset="EUR", allow_partial=True)
    assert info.value.available == 0


def test_duplicate_lot_ids_are_a_programming_error() -> None:
    with pytest.raises(ValueError):
        allocate([lot("a", 1), lot("a", 2)], 1, CTX, asset="EUR")
