"""Properties of contribution splits and settlement arithmetic (domain, no I/O)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loyalty_ledger.domain.contributions import (
    OPERATOR,
    Contribution,
    ContributorKind,
    split,
)
from loyalty_ledger.domain.redemption import RedemptionRate
from loyalty_ledger.domain.settlement import EntryKind, Period, last_boundary, line, value


@st.composite
def share_lists(draw: st.DrawFn) -> list[Contribution]:
    """1-8 shares adding up to 10,000 basis points."""
    count = draw(st.integers(1, 8))
    cuts = sorted(
        draw(st.lists(st.integers(1, 9_999), min_size=count - 1, max_size=count - 1, unique=True))
    )
    bounds = [0, *cuts, 10_000]
    kinds = st.sampled_from(list(ContributorKind))
    shares = []
    for low, high in itertools.pairwise(bounds):
        kind = draw(kinds)
        sponsor = (
            draw(st.sampled_from(["brand-x", "brand-y"])) if kind is ContributorKind.SPONSOR else ""
        )
        shares.append(Contribution(kind, sponsor, high - low))
    return shares


@given(st.integers(0, 10**12), share_lists(), st.sampled_from(["", "shop-a"]))
def test_parts_add_up_and_each_party_gets_at_least_its_share_rounded_down(
    amount, shares, merchant
) -> None:
    parts = dict(split(amount, shares, merchant))
    assert sum(parts.values()) == amount
    assert all(part > 0 for part in parts.values())
    wanted: dict[str, int] = {}
    for share in shares:
        party = (
            share.sponsor_id
            if share.kind is ContributorKind.SPONSOR
            else merchant or OPERATOR
            if share.kind is ContributorKind.EVENT_MERCHANT
            else OPERATOR
        )
        wanted[party] = wanted.get(party, 0) + share.basis_points * amount // 10_000
    for party, floor in wanted.items():
        assert parts.get(party, 0) >= floor
        assert parts.get(party, 0) - floor < len(shares) + 1  # only rounding goes astray


@given(st.integers(-(10**12), 10**12), st.integers(1, 10**6), st.integers(1, 10**6))
def test_valuation_favours_the_operator(net, points, worth) -> None:
    rate = RedemptionRate("POINTS", points, "EUR", worth)
    valued = value(net, rate)
    exact = Fraction(net * worth, points)
    assert abs(valued - exact) < 1
    assert valued <= exact  # receivers rounded down, payers rounded up (more negative)


def test_a_line_nets_accepted_against_redeemed_elsewhere() -> None:
    totals = {EntryKind.ACCEPTED: 700, EntryKind.REDEEMED_ELSEWHERE: 1000, EntryKind.ISSUED: 5}
    got = line("POINTS", totals, 30, RedemptionRate("POINTS", 10, "EUR", 1))
    assert (got.net, got.net_value, got.value_currency, got.direction.value) == (
        -300,
        -30,
        "EUR",
        "PAY",
    )
    money = line("EUR", {EntryKind.ACCEPTED: 5}, 0, None)
    assert (money.net, money.net_value, money.value_currency) == (5, 5, "EUR")


@pytest.mark.parametrize("period", list(Period))
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
def test_the_boundary_is_the_latest_local_period_start(period, naive) -> None:
    tz = ZoneInfo("America/Santiago")  # DST changes at local midnight
    moment = naive.replace(tzinfo=UTC)
    boundary = last_boundary(moment, tz, period)
    local = moment.astimezone(tz)
    assert boundary <= moment
    assert boundary.astimezone(tz).date() == (
        local.date().replace(day=1) if period is Period.MONTH else local.date()
    )
    assert moment - boundary < timedelta(days=32)
