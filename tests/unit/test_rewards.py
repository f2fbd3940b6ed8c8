"""Offer evaluation (domain/rewards.py): rules, conditions, caps, budgets and exclusivity."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from loyalty_ledger.domain import rewards as r

NEW_YORK = ZoneInfo("America/New_York")
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
# A Thursday, 12:00 UTC.
THURSDAY_NOON_UTC = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def purchase(amount: int, **fields: object) -> r.CustomerEvent:
    return r.CustomerEvent(
        type=r.EventType.PURCHASE,
        occurred_at=fields.pop("occurred_at", THURSDAY_NOON_UTC),  # type: ignore[arg-type]
        merchant_id=fields.pop("merchant_id", "shop"),  # type: ignore[arg-type]
        amount=amount,
        currency=fields.pop("currency", "EUR"),  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


def award_of(offer: r.Offer, event: r.CustomerEvent, usage: r.OfferUsage | None = None) -> int:
    usage_map = {offer.offer_id: usage} if usage else {}
    result = r.evaluate(event, [offer], usage_map, AMSTERDAM, 2)
    return sum(a.amount for a in result.awards)


@pytest.mark.parametrize(
    ("amount", "bp", "rounding", "expected"),
    [
        (199, 200, r.Rounding.DOWN, 3),  # 3.98 cents
        (199, 200, r.Rounding.HALF_UP, 4),
        (125, 200, r.Rounding.HALF_UP, 3),  # exactly 2.5: half goes up
        (124, 200, r.Rounding.HALF_UP, 2),  # 2.48
        (101, 200, r.Rounding.UP, 3),  # 2.02
        (100, 200, r.Rounding.UP, 2),  # exact: nothing to round
        (0, 200, r.Rounding.UP, 0),
    ],
)
def test_percent_rounding_uses_integers(amount, bp, rounding, expected) -> None:
    assert r.percent_of(amount, bp, rounding) == expected


def test_percent_of_amount_is_capped() -> None:
    offer = r.Offer("o", "EUR", r.PercentOfAmount(200, cap=200), r.Conditions(currency="EUR"))
    assert award_of(offer, purchase(5000)) == 100
    assert award_of(offer, purchase(50_000)) == 200  # 2 % is 10 EUR, capped at 2 EUR


def test_points_per_spend_counts_whole_steps_only() -> None:
    offer = r.Offer("o", "POINTS", r.PointsPerSpend(5, 1000), r.Conditions(currency="EUR"))
    assert [award_of(offer, purchase(a)) for a in (999, 1000, 1999, 2000, 10_050)] == [
        0,
        5,
        5,
        10,
        50,
    ]


def test_per_product_rounds_each_line_and_matches_ids_types_or_families() -> None:
    items = (
        r.Item("case", "Accessory", "phones", 3, 333),  # 10 % of 999 = 99.9 -> 99
        r.Item("phone", "Phone", "phones", 1, 50_000),
        r.Item("bag", "Bag", "travel", 1, 1_005),  # by family: 100.5 -> 100
    )
    offer = r.Offer(
        "o",
        "EUR",
        r.PerProduct(
            r.ProductMatch(
                product_types=frozenset({"Accessory"}), product_families=frozenset({"travel"})
            ),
            basis_points=1000,
        ),
    )
    assert award_of(offer, purchase(52_004, items=items)) == 99 + 100
    per_unit = r.Offer(
        "o",
        "POINTS",
        r.PerProduct(r.ProductMatch(product_ids=frozenset({"case"})), fixed_per_unit=7),
    )
    assert award_of(per_unit, purchase(52_004, items=items)) == 3 * 7


def test_fixed_amount_needs_the_minimum_spend() -> None:
    offer = r.Offer("o", "EUR", r.FixedAmount(1000, min_spend=5000))
    assert (award_of(offer, purchase(4999)), award_of(offer, purchase(5000))) == (0, 1000)


def test_every_third_purchase() -> None:
    offer = r.Offer("o", "POINTS", r.EveryNthPurchase(3, 50))
    got = [award_of(offer, purchase(100), r.OfferUsage(qualifying_count=n)) for n in range(7)]
    assert got == [0, 0, 50, 0, 0, 50, 0]


def test_hours_wrap_midnight_in_local_time_across_a_dst_change() -> None:
    conditions = r.Conditions(hours=(22, 2))
    # New York changed to summer time on 8 March 2026 at 02:00 local (07:00 UTC).
    cases = {
        datetime(2026, 3, 8, 3, 30, tzinfo=UTC): True,  # 22:30 EST on 7 March
        datetime(2026, 3, 8, 6, 59, tzinfo=UTC): True,  # 01:59 EST
        datetime(2026, 3, 8, 7, 0, tzinfo=UTC): False,  # 03:00 EDT: 02:00 never happened
        datetime(2026, 3, 9, 2, 0, tzinfo=UTC): True,  # 22:00 EDT on 8 March
        datetime(2026, 3, 9, 1, 59, tzinfo=UTC): False,  # 21:59 EDT
    }
    for moment, inside in cases.items():
        event = purchase(100, occurred_at=moment)
        assert (r.rejection(event, conditions, NEW_YORK) is None) is inside, moment


def test_days_of_week_are_local() -> None:
    # 03:30 UTC on Friday 16 January is still Thursday 22:30 in New York.
    event = purchase(100, occurred_at=datetime(2026, 1, 16, 3, 30, tzinfo=UTC))
    assert r.rejection(event, r.Conditions(days_of_week=frozenset({4})), NEW_YORK) is None
    assert r.rejection(event, r.Conditions(days_of_week=frozenset({5})), NEW_YORK) is not None
    assert r.rejection(event, r.Conditions(days_of_week=frozenset({5})), AMSTERDAM) is None


def test_a_season_may_wrap_the_year_end() -> None:
    december = r.Season(12, 20, 1, 6)
    assert [december.contains(m, d) for m, d in ((12, 19), (12, 20), (12, 31), (1, 1), (1, 6))] == [
        False,
        True,
        True,
        True,
        True,
    ]
    assert not december.contains(1, 7)
    advent = r.Season(12, 1, 12, 24)
    assert advent.contains(12, 24) and not advent.contains(12, 25) and not advent.contains(1, 1)


def test_window_merchant_payment_currency_and_minimum() -> None:
    c = r.Conditions(
        valid_from=datetime(2026, 1, 1, tzinfo=UTC),
        valid_until=datetime(2026, 2, 1, tzinfo=UTC),
        merchant_ids=frozenset({"shop"}),
        payment_methods=frozenset({"card"}),
        currency="EUR",
        min_amount=1000,
    )
    ok = purchase(1000, payment_method="card")
    assert r.rejection(ok, c, AMSTERDAM) is None
    for bad in (
        purchase(1000, payment_method="card", occurred_at=datetime(2026, 2, 1, tzinfo=UTC)),
        purchase(1000, payment_method="card", occurred_at=datetime(2025, 12, 31, tzinfo=UTC)),
        purchase(1000, payment_method="cash"),
        purchase(1000, payment_method="card", merchant_id="other"),
        purchase(1000, payment_method="card", currency="USD"),
        purchase(999, payment_method="card"),
    ):
        assert r.rejection(bad, c, AMSTERDAM) is not None, bad


def test_attribute_conditions_never_raise() -> None:
    gte = r.AttributeCondition("months", r.Operator.GTE, "12")
    assert gte.holds({"months": "12"}) and gte.holds({"months": "40"})
    assert not gte.holds({"months": "11"}) and not gte.holds({}) and not gte.holds({"months": "x"})
    assert r.AttributeCondition("plan", r.Operator.EQ, "gold").holds({"plan": "gold"})
    assert not r.AttributeCondition("plan", r.Operator.NE, "gold").holds({})


def test_event_types_and_custom_names() -> None:
    signup = r.Conditions(event_types=frozenset({r.EventType.SIGN_UP}))
    event = r.CustomerEvent(r.EventType.SIGN_UP, THURSDAY_NOON_UTC)
    assert r.rejection(event, signup, AMSTERDAM) is None
    assert r.rejection(purchase(100), signup, AMSTERDAM) is not None
    custom = r.Conditions(event_types=frozenset({r.EventType.CUSTOM}), custom_event_name="quiz")
    quiz = r.CustomerEvent(r.EventType.CUSTOM, THURSDAY_NOON_UTC, custom_name="quiz")
    other = r.CustomerEvent(r.EventType.CUSTOM, THURSDAY_NOON_UTC, custom_name="poll")
    assert r.rejection(quiz, custom, AMSTERDAM) is None
    assert r.rejection(other, custom, AMSTERDAM) is not None


def test_caps_and_budget_cut_the_award_to_what_is_left() -> None:
    caps = (r.Cap(r.CapWindow.MONTH, max_amount=1000), r.Cap(r.CapWindow.DAY, max_count=3))
    offer = r.Offer("o", "EUR", r.FixedAmount(400), caps=caps, budget=10_000)
    month = r.CapWindow.MONTH
    day = r.CapWindow.DAY
    assert award_of(offer, purchase(1), r.OfferUsage(amount={month: 800})) == 200
    assert award_of(offer, purchase(1), r.OfferUsage(amount={month: 1000})) == 0
    assert award_of(offer, purchase(1), r.OfferUsage(count={day: 3})) == 0
    assert award_of(offer, purchase(1), r.OfferUsage(budget_used=9_900)) == 100
    assert award_of(offer, purchase(1), r.OfferUsage(budget_used=10_000)) == 0


def test_only_the_best_exclusive_offer_applies_ties_to_the_smallest_id() -> None:
    offers = [
        r.Offer("b", "EUR", r.FixedAmount(300), exclusive=True),
        r.Offer("a", "EUR", r.FixedAmount(300), exclusive=True),
        r.Offer("c", "EUR", r.FixedAmount(200), exclusive=True),
        r.Offer("d", "EUR", r.FixedAmount(50)),
    ]
    result = r.evaluate(purchase(100), offers, {}, AMSTERDAM, 2)
    assert [(a.offer_id, a.amount) for a in result.awards] == [("a", 300), ("d", 50)]
    assert result.qualified == {"a", "b", "c", "d"}


def test_period_keys_are_local_days_and_months() -> None:
    late = datetime(2026, 1, 31, 23, 30, tzinfo=UTC)  # already 1 February in Amsterdam
    assert r.period_keys(late, AMSTERDAM) == {
        r.CapWindow.DAY: "2026-02-01",
        r.CapWindow.MONTH: "2026-02",
        r.CapWindow.LIFETIME: "",
    }
    assert r.format_minor(12345, 2) == "123.45" and r.format_minor(5, 2) == "0.05"


def test_wallet_tags_include_and_exclude() -> None:
    c = r.Conditions(include_tags=frozenset({"vip", "staff"}), exclude_tags=frozenset({"banned"}))
    event = purchase(100)
    assert r.rejection(event, c, AMSTERDAM, tagged("vip")) is None
    assert r.rejection(event, c, AMSTERDAM, tagged("staff", "newsletter")) is None
    assert r.rejection(event, c, AMSTERDAM, tagged()) is not None
    assert r.rejection(event, c, AMSTERDAM, tagged("vip", "banned")) is not None
    open_to_all_but = r.Conditions(exclude_tags=frozenset({"banned"}))
    assert r.rejection(event, open_to_all_but, AMSTERDAM) is None


def tagged(*tags: str) -> r.Context:
    return r.Context(tags=frozenset(tags))


def test_tier_condition_needs_one_of_the_tiers() -> None:
    gold_or_silver = r.Conditions(tiers=frozenset({"gold", "silver"}))
    event = purchase(100)
    assert r.rejection(event, gold_or_silver, AMSTERDAM, r.Context(tier="gold")) is None
    assert r.rejection(event, gold_or_silver, AMSTERDAM, r.Context(tier="silver")) is None
    assert r.rejection(event, gold_or_silver, AMSTERDAM, r.Context(tier="bronze"))
    assert r.rejection(event, gold_or_silver, AMSTERDAM, r.Context(tier=None))
    assert r.rejection(event, r.Conditions(), AMSTERDAM, r.Context(tier=None)) is None


def test_leap_day_birthdays_are_celebrated_on_28_february_in_common_years() -> None:
    from datetime import date

    assert r.birthdays_on(date(2027, 2, 28)) == [(2, 28), (2, 29)]
    assert r.birthdays_on(date(2028, 2, 28)) == [(2, 28)]
    assert r.birthdays_on(date(2028, 2, 29)) == [(2, 29)]
    assert r.birthdays_on(date(2027, 3, 1)) == [(3, 1)]


def test_merchant_group_condition_needs_the_merchant_in_one_of_the_groups() -> None:
    fuel = r.Conditions(merchant_group_ids=frozenset({"fuel", "car-wash"}))
    event = purchase(100)
    in_fuel = r.Context(merchant_groups=frozenset({"fuel", "north"}))
    assert r.rejection(event, fuel, AMSTERDAM, in_fuel) is None
    assert r.rejection(event, fuel, AMSTERDAM, r.Context(merchant_groups=frozenset({"north"})))
    assert r.rejection(event, fuel, AMSTERDAM, r.Context())
