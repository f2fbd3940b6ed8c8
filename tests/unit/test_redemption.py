"""Redemption rates and quotes (domain/redemption.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from loyalty_ledger.domain.redemption import RedemptionRate, find_rate, quote

# 1000 points = 100.00 EUR: one point is 10 cents.
RATE = RedemptionRate("POINTS", 1000, "EUR", 10_000)


def test_a_thousand_points_against_a_200_eur_basket() -> None:
    assert quote(RATE, available_points=1_000, basket_amount=20_000).__dict__ == {
        "points": 1_000,
        "value": 10_000,
    }
    # Plenty of points: the basket is the limit (2000 points pay 200 EUR).
    assert quote(RATE, available_points=5_000, basket_amount=20_000).points == 2_000


def test_rounding_never_favours_the_customer() -> None:
    odd = RedemptionRate("POINTS", 3, "EUR", 10)  # 3 points = 0.10 EUR
    assert odd.value_of(4) == 13  # 13.33 cents, rounded down
    assert odd.points_for(13) == 4  # 3.9 points, rounded up
    assert quote(odd, available_points=4, basket_amount=1_000).__dict__ == {
        "points": 4,
        "value": 13,
    }


def test_rates_are_found_by_asset_and_currency() -> None:
    usd = RedemptionRate("POINTS", 100, "USD", 100)
    assert find_rate([RATE, usd], "POINTS", "USD") is usd
    assert find_rate([RATE, usd], "POINTS", "GBP") is None


@given(
    st.integers(1, 10**6),
    st.integers(1, 10**6),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
)
def test_a_quote_is_affordable_and_never_pays_more_than_the_points_are_worth(
    points: int, value: int, available: int, basket: int
) -> None:
    rate = RedemptionRate("POINTS", points, "EUR", value)
    q = quote(rate, available, basket)
    assert 0 <= q.points <= available
    assert 0 <= q.value <= basket
    assert q.value <= rate.value_of(q.points)
    assert q.value == min(rate.value_of(available), basket)
