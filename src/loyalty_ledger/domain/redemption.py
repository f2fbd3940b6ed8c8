"""What points are worth: a scheme's redemption rates, quotes and the points a value costs.

A rate says `points` of an asset are worth `value` minor units of a currency (1000 POINTS =
100.00 EUR is points=1000, value=10000). Integers only: a value costs the points rounded up
(the customer never gets more than the points are worth), and points are worth their value
rounded down.
"""

from __future__ import annotations

from dataclasses import dataclass

from loyalty_ledger.domain.errors import FailedPrecondition


@dataclass(frozen=True)
class RedemptionRate:
    asset: str  # the points asset
    points: int
    currency: str
    value: int  # minor units of `currency` that `points` are worth

    def __post_init__(self) -> None:
        assert self.points > 0 and self.value > 0, self

    def points_for(self, value: int) -> int:
        """The points `value` costs, rounded up."""
        return -(-value * self.points // self.value)

    def value_of(self, points: int) -> int:
        """What `points` are worth, rounded down."""
        return points * self.value // self.points


@dataclass(frozen=True)
class Quote:
    points: int  # the most points the basket can use
    value: int  # what they pay for, in minor units of the basket's currency


def quote(rate: RedemptionRate, available_points: int, basket_amount: int) -> Quote:
    """The "pay part with points" slider's end: as many points as are available and useful,
    never paying for more than the basket and never costing more points than it pays for."""
    value = min(rate.value_of(available_points), basket_amount)
    points = rate.points_for(value)
    assert points <= available_points and rate.value_of(points) >= value
    return Quote(points, value)


def find_rate(rates: list[RedemptionRate], asset: str, currency: str) -> RedemptionRate | None:
    return next((r for r in rates if r.asset == asset and r.currency == currency), None)


def require_rate(
    scheme_id: str, rates: list[RedemptionRate], asset: str, currency: str
) -> RedemptionRate:
    """The rate, or FAILED_PRECONDITION NO_REDEMPTION_RATE."""
    rate = find_rate(rates, asset, currency)
    if rate is None:
        raise FailedPrecondition(
            f"scheme {scheme_id} has no redemption rate for {asset} in {currency}",
            reason="NO_REDEMPTION_RATE",
            asset=asset,
            currency=currency,
        )
    return rate
