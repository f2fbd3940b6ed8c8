"""Settlement arithmetic: a party's statement line for one asset from its entry totals.

Parties are merchants, named sponsors and the operator. For every redemption of value that
party S sponsored at merchant R (S != R), S owes R the amount: it is S's `redeemed_elsewhere`
and R's `accepted`, and refunds count negatively on both. So across all parties the nets
(accepted - redeemed_elsewhere) of one asset and period add up to zero exactly. Value a party
sponsored and accepted itself owes nobody anything.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from loyalty_ledger.domain.redemption import RedemptionRate


class EntryKind(enum.StrEnum):
    ISSUED = "ISSUED"
    REVERSED = "REVERSED"
    EXPIRED = "EXPIRED"
    REDEEMED_ELSEWHERE = "REDEEMED_ELSEWHERE"
    ACCEPTED = "ACCEPTED"


class Period(enum.StrEnum):
    """How long the scheduled settlement's periods are, in the scheme's timezone."""

    DAY = "DAY"
    MONTH = "MONTH"


def last_boundary(moment: datetime, tz: ZoneInfo, period: Period) -> datetime:
    """The latest start of a local period at or before `moment`: local midnight, or local
    midnight of the 1st (at the end of a DST gap when midnight does not exist)."""
    local = moment.astimezone(tz)
    day = 1 if period is Period.MONTH else local.day
    start = datetime(local.year, local.month, day, tzinfo=tz)
    if start > local:  # pragma: no cover - midnight is never after the same local day
        raise AssertionError(start)
    return start


class Direction(enum.StrEnum):
    RECEIVE = "RECEIVE"
    PAY = "PAY"
    NONE = "NONE"


@dataclass(frozen=True)
class Line:
    asset: str
    issued: int
    reversed: int
    expired: int
    redeemed_elsewhere: int
    accepted: int
    refunded: int
    net: int
    net_value: int
    value_currency: str

    @property
    def direction(self) -> Direction:
        if self.net > 0:
            return Direction.RECEIVE
        if self.net < 0:
            return Direction.PAY
        return Direction.NONE


def valuation_rate(rates: list[RedemptionRate], asset: str) -> RedemptionRate | None:
    """The rate that values a points asset (the first by currency code), or None for money."""
    found = sorted((r for r in rates if r.asset == asset), key=lambda r: r.currency)
    return found[0] if found else None


def value(net: int, rate: RedemptionRate | None) -> int:
    """The net in money: rounded down for a receiver and up for a payer, so the operator never
    pays out more than the points are worth."""
    if rate is None:
        return net
    if net >= 0:
        return rate.value_of(net)
    owed = -net
    return -((owed * rate.value + rate.points - 1) // rate.points)  # rounded up


def line(
    asset: str,
    totals: dict[EntryKind, int],
    refunded: int,
    rate: RedemptionRate | None,
) -> Line:
    """The line for `asset` from the sums of its entries per kind (refunds included, as
    negative entries) and the refunds' total."""
    accepted = totals.get(EntryKind.ACCEPTED, 0)
    owed = totals.get(EntryKind.REDEEMED_ELSEWHERE, 0)
    net = accepted - owed
    return Line(
        asset=asset,
        issued=totals.get(EntryKind.ISSUED, 0),
        reversed=totals.get(EntryKind.REVERSED, 0),
        expired=totals.get(EntryKind.EXPIRED, 0),
        redeemed_elsewhere=owed,
        accepted=accepted,
        refunded=refunded,
        net=net,
        net_value=value(net, rate),
        value_currency=rate.currency if rate is not None else asset,
    )
