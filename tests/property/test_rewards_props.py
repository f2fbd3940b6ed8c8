"""Properties of offer evaluation: never above a cap or budget, deterministic, one exclusive."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from loyalty_ledger.domain import rewards as r

TZ = ZoneInfo("Europe/Amsterdam")
MOMENT = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
amounts = st.integers(min_value=0, max_value=10**12)
basis_points = st.integers(min_value=1, max_value=100_000)

rules = st.one_of(
    st.builds(
        r.PercentOfAmount,
        basis_points,
        st.none() | st.integers(1, 10**9),
        st.sampled_from(r.Rounding),
    ),
    st.builds(r.FixedAmount, st.integers(1, 10**9), st.integers(0, 10**6)),
    st.builds(r.PointsPerSpend, st.integers(1, 1000), st.integers(1, 10**5)),
    st.builds(r.EveryNthPurchase, st.integers(1, 10), st.integers(1, 10**6)),
)


@st.composite
def offers(draw: st.DrawFn, offer_id: str) -> r.Offer:
    caps = draw(
        st.lists(
            st.builds(
                r.Cap,
                st.sampled_from(r.CapWindow),
                st.none() | st.integers(1, 5),
                st.none() | st.integers(1, 10**6),
            ),
            max_size=2,
        )
    )
    return r.Offer(
        offer_id,
        "EUR",
        draw(rules),
        exclusive=draw(st.booleans()),
        caps=tuple(caps),
        budget=draw(st.none() | st.integers(1, 10**7)),
    )


usages = st.builds(
    r.OfferUsage,
    count=st.dictionaries(st.sampled_from(r.CapWindow), st.integers(0, 6)),
    amount=st.dictionaries(st.sampled_from(r.CapWindow), st.integers(0, 2 * 10**6)),
    budget_used=st.integers(0, 10**7),
    qualifying_count=st.integers(0, 100),
)


@given(amounts, basis_points)
def test_rounding_modes_are_ordered_and_one_unit_apart(amount: int, bp: int) -> None:
    down = r.percent_of(amount, bp, r.Rounding.DOWN)
    half = r.percent_of(amount, bp, r.Rounding.HALF_UP)
    up = r.percent_of(amount, bp, r.Rounding.UP)
    assert 0 <= down <= half <= up <= down + 1
    assert down * 10_000 <= amount * bp <= up * 10_000


@given(
    st.lists(st.integers(0, 9), min_size=1, max_size=6, unique=True).flatmap(
        lambda ids: st.tuples(*(offers(f"o{i}") for i in ids))
    ),
    st.data(),
    amounts,
)
def test_awards_respect_caps_and_budgets_and_do_not_depend_on_order(
    offer_tuple: tuple[r.Offer, ...], data: st.DataObject, amount: int
) -> None:
    usage = {o.offer_id: data.draw(usages) for o in offer_tuple}
    event = r.CustomerEvent(r.EventType.PURCHASE, MOMENT, amount=amount, currency="EUR")
    result = r.evaluate(event, list(offer_tuple), usage, TZ, 2)
    shuffled = data.draw(st.permutations(list(offer_tuple)))
    assert r.evaluate(event, shuffled, usage, TZ, 2) == result
    by_id = {o.offer_id: o for o in offer_tuple}
    for award in result.awards:
        offer, used = by_id[award.offer_id], usage[award.offer_id]
        assert award.amount > 0
        if offer.budget is not None:
            assert award.amount <= offer.budget - used.budget_used
        for cap in offer.caps:
            if cap.max_amount is not None:
                assert award.amount <= cap.max_amount - used.amount.get(cap.window, 0)
            if cap.max_count is not None:
                assert used.count.get(cap.window, 0) < cap.max_count
    assert sum(1 for a in result.awards if by_id[a.offer_id].exclusive) <= 1
    assert [a.offer_id for a in result.awards] == sorted(a.offer_id for a in result.awards)
