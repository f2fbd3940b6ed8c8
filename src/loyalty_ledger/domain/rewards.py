"""Offer evaluation: which offers a customer event qualifies for, and what each awards. No I/O.

Amounts are integer minor units; percentages are basis points (1 % = 100) and are rounded with
integer arithmetic only. Calendar conditions (days, hours, seasons, cap windows) are judged in
the scheme's timezone. The caller supplies what each offer has already given the wallet
(`OfferUsage`); `evaluate` never exceeds a cap or a budget, cutting the last award to what is
left.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from zoneinfo import ZoneInfo

BASIS_POINTS_WHOLE = 10_000


class Rounding(Enum):
    DOWN = "DOWN"
    HALF_UP = "HALF_UP"
    UP = "UP"


class EventType(Enum):
    PURCHASE = "PURCHASE"
    SIGN_UP = "SIGN_UP"
    BIRTHDAY = "BIRTHDAY"
    REFERRAL = "REFERRAL"
    CUSTOM = "CUSTOM"


class CapWindow(Enum):
    DAY = "DAY"
    MONTH = "MONTH"
    LIFETIME = "LIFETIME"


class Operator(Enum):
    EQ = "EQ"
    NE = "NE"
    GT = "GT"
    GTE = "GTE"
    LT = "LT"
    LTE = "LTE"


def percent_of(amount: int, basis_points: int, rounding: Rounding) -> int:
    """`basis_points` of `amount` (both >= 0), rounded as asked, with integers only."""
    whole, rest = divmod(amount * basis_points, BASIS_POINTS_WHOLE)
    if rounding is Rounding.UP:
        return whole + (rest > 0)
    if rounding is Rounding.HALF_UP:
        return whole + (2 * rest >= BASIS_POINTS_WHOLE)
    return whole


# -- what happened ------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    product_id: str
    product_type: str
    product_family: str
    quantity: int
    unit_price: int


@dataclass(frozen=True)
class CustomerEvent:
    type: EventType
    occurred_at: datetime  # aware, UTC
    merchant_id: str = ""
    amount: int = 0
    currency: str = ""
    items: tuple[Item, ...] = ()
    payment_method: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    custom_name: str = ""


# -- rules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PercentOfAmount:
    basis_points: int
    cap: int | None = None
    rounding: Rounding = Rounding.DOWN


@dataclass(frozen=True)
class FixedAmount:
    amount: int
    min_spend: int = 0


@dataclass(frozen=True)
class PointsPerSpend:
    points: int
    per_amount: int


@dataclass(frozen=True)
class ProductMatch:
    product_ids: frozenset[str] = frozenset()
    product_types: frozenset[str] = frozenset()
    product_families: frozenset[str] = frozenset()

    def matches(self, item: Item) -> bool:
        return (
            item.product_id in self.product_ids
            or item.product_type in self.product_types
            or item.product_family in self.product_families
        )


@dataclass(frozen=True)
class PerProduct:
    match: ProductMatch
    basis_points: int | None = None  # exactly one of basis_points and fixed_per_unit
    fixed_per_unit: int | None = None
    cap: int | None = None
    rounding: Rounding = Rounding.DOWN


@dataclass(frozen=True)
class EveryNthPurchase:
    n: int
    amount: int


Rule = PercentOfAmount | FixedAmount | PointsPerSpend | PerProduct | EveryNthPurchase


# -- conditions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Season:
    """Both days included, every year; may wrap the year end (12-20 to 01-06)."""

    start_month: int
    start_day: int
    end_month: int
    end_day: int

    def contains(self, month: int, day: int) -> bool:
        start, end, here = (
            (self.start_month, self.start_day),
            (self.end_month, self.end_day),
            (month, day),
        )
        return start <= here <= end if start <= end else here >= start or here <= end


@dataclass(frozen=True)
class AttributeCondition:
    key: str
    operator: Operator
    value: str

    def holds(self, attributes: Mapping[str, str]) -> bool:
        found = attributes.get(self.key)
        if found is None:
            return False
        if self.operator is Operator.EQ:
            return found == self.value
        if self.operator is Operator.NE:
            return found != self.value
        try:
            left, right = int(found), int(self.value)
        except ValueError:
            return False
        return {
            Operator.GT: left > right,
            Operator.GTE: left >= right,
            Operator.LT: left < right,
            Operator.LTE: left <= right,
        }[self.operator]


@dataclass(frozen=True)
class Conditions:
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    days_of_week: frozenset[int] = frozenset()  # 1 Monday .. 7 Sunday, local
    hours: tuple[int, int] | None = None  # [start, end) local hours, may wrap midnight
    seasons: tuple[Season, ...] = ()
    merchant_ids: frozenset[str] = frozenset()
    payment_methods: frozenset[str] = frozenset()
    min_amount: int = 0
    currency: str = ""
    event_types: frozenset[EventType] = frozenset({EventType.PURCHASE})
    custom_event_name: str = ""
    attributes: tuple[AttributeCondition, ...] = ()
    include_tags: frozenset[str] = frozenset()  # the wallet needs one of them
    exclude_tags: frozenset[str] = frozenset()  # the wallet may have none of them
    tiers: frozenset[str] = frozenset()  # the wallet's tier must be one of them
    merchant_group_ids: frozenset[str] = frozenset()  # the event's merchant in one of them


@dataclass(frozen=True)
class Context:
    """What offers may ask beyond the event: the wallet's tags and tier, and the groups of the
    merchant where the event happened."""

    tags: frozenset[str] = frozenset()
    tier: str | None = None
    merchant_groups: frozenset[str] = frozenset()


def rejection(
    event: CustomerEvent,
    conditions: Conditions,
    tz: ZoneInfo,
    context: Context = Context(),
) -> str | None:
    """Why the event (in `context`) does not qualify, or None when it does."""
    c = conditions
    if c.include_tags and not c.include_tags & context.tags:
        return "the wallet has none of the required tags"
    if c.exclude_tags & context.tags:
        return "the wallet has an excluded tag"
    if c.tiers and context.tier not in c.tiers:
        return f"for tiers {', '.join(sorted(c.tiers))} only"
    if c.merchant_group_ids and not c.merchant_group_ids & context.merchant_groups:
        return "not at a merchant of the offer's groups"
    local = event.occurred_at.astimezone(tz)
    if event.type not in c.event_types:
        return f"reacts to {', '.join(sorted(t.value for t in c.event_types))} events"
    if event.type is EventType.CUSTOM and event.custom_name != c.custom_event_name:
        return f"reacts to the custom event {c.custom_event_name!r}"
    if c.valid_from is not None and event.occurred_at < c.valid_from:
        return "not valid yet"
    if c.valid_until is not None and event.occurred_at >= c.valid_until:
        return "no longer valid"
    if c.days_of_week and local.isoweekday() not in c.days_of_week:
        return "not on this day of the week"
    if c.hours is not None:
        start, end = c.hours
        inside = (
            start <= local.hour < end if start < end else local.hour >= start or local.hour < end
        )
        if not inside:
            return "not at this hour"
    if c.seasons and not any(s.contains(local.month, local.day) for s in c.seasons):
        return "out of season"
    if c.merchant_ids and event.merchant_id not in c.merchant_ids:
        return "not at this merchant"
    if c.payment_methods and event.payment_method not in c.payment_methods:
        return "not with this payment method"
    if c.currency and event.type is EventType.PURCHASE and event.currency != c.currency:
        return f"counts {c.currency} purchases only"
    if event.amount < c.min_amount:
        return "below the minimum amount"
    for condition in c.attributes:
        if not condition.holds(event.attributes):
            return f"attribute {condition.key!r} does not qualify"
    return None


# -- offers, usage and awards ---------------------------------------------------------------


@dataclass(frozen=True)
class Cap:
    window: CapWindow
    max_count: int | None = None
    max_amount: int | None = None


@dataclass(frozen=True)
class Offer:
    offer_id: str
    asset: str
    rule: Rule
    conditions: Conditions = Conditions()
    instant: bool = False  # INSTANT discount rather than value on account
    exclusive: bool = False
    caps: tuple[Cap, ...] = ()
    budget: int | None = None


@dataclass(frozen=True)
class OfferUsage:
    """What an offer has given one wallet in each cap window now, and its budget use."""

    count: Mapping[CapWindow, int] = field(default_factory=dict)
    amount: Mapping[CapWindow, int] = field(default_factory=dict)
    budget_used: int = 0
    qualifying_count: int = 0  # earlier qualifying purchases (EveryNthPurchase)


@dataclass(frozen=True)
class Award:
    offer_id: str
    asset: str
    amount: int
    instant: bool
    explanation: str


@dataclass(frozen=True)
class Evaluation:
    awards: list[Award]
    qualified: frozenset[str]  # offers whose conditions held, awarding or not


def period_keys(moment: datetime, tz: ZoneInfo) -> dict[CapWindow, str]:
    """The cap windows `moment` falls in: its local day and month, and the lifetime."""
    local = moment.astimezone(tz)
    return {
        CapWindow.DAY: local.strftime("%Y-%m-%d"),
        CapWindow.MONTH: local.strftime("%Y-%m"),
        CapWindow.LIFETIME: "",
    }


def format_minor(amount: int, scale: int) -> str:
    """12345 with scale 2 is "123.45"; integers only."""
    if scale == 0:
        return str(amount)
    whole, part = divmod(amount, 10**scale)
    return f"{whole}.{part:0{scale}d}"


def raw_award(rule: Rule, event: CustomerEvent, usage: OfferUsage, scale: int) -> tuple[int, str]:
    """What the rule gives for the event before caps and budget, and why."""
    amount_text = f"{format_minor(event.amount, scale)} {event.currency}".strip()
    if isinstance(rule, PercentOfAmount):
        value = percent_of(event.amount, rule.basis_points, rule.rounding)
        text = f"{format_minor(rule.basis_points, 2)}% of {amount_text}, rounded {_word(rule)}"
        return _capped(value, rule.cap, text)
    if isinstance(rule, FixedAmount):
        if event.amount < rule.min_spend:
            return 0, "below the minimum spend"
        return rule.amount, "a fixed award"
    if isinstance(rule, PointsPerSpend):
        per = format_minor(rule.per_amount, scale)
        value = event.amount // rule.per_amount * rule.points
        return value, f"{rule.points} per {per} {event.currency} of {amount_text}"
    if isinstance(rule, PerProduct):
        total, lines = 0, 0
        for item in event.items:
            if rule.match.matches(item):
                lines += 1
                if rule.basis_points is not None:
                    total += percent_of(
                        item.quantity * item.unit_price, rule.basis_points, rule.rounding
                    )
                else:
                    total += item.quantity * (rule.fixed_per_unit or 0)
        how = (
            f"{format_minor(rule.basis_points, 2)}% of each matching item"
            if rule.basis_points is not None
            else "a fixed amount per matching unit"
        )
        return _capped(total, rule.cap, f"{how} ({lines} matching lines)")
    number = usage.qualifying_count + 1
    if number % rule.n:
        return 0, f"purchase {number}, awards every {rule.n}th"
    return rule.amount, f"purchase {number}, every {rule.n}th earns"


def _word(rule: PercentOfAmount | PerProduct) -> str:
    return {Rounding.DOWN: "down", Rounding.HALF_UP: "half up", Rounding.UP: "up"}[rule.rounding]


def _capped(value: int, cap: int | None, text: str) -> tuple[int, str]:
    if cap is not None and value > cap:
        return cap, f"{text}, capped"
    return value, text


def limit_by_caps_and_budget(offer: Offer, value: int, usage: OfferUsage) -> tuple[int, str]:
    """Cut `value` to what the wallet's caps and the offer's budget still allow."""
    note = ""
    for cap in offer.caps:
        if cap.max_count is not None and usage.count.get(cap.window, 0) >= cap.max_count:
            return 0, f"{cap.window.value.lower()} limit of {cap.max_count} awards reached"
        if cap.max_amount is not None:
            left = max(cap.max_amount - usage.amount.get(cap.window, 0), 0)
            if value > left:
                value, note = left, f"; cut to the {cap.window.value.lower()} limit"
    if offer.budget is not None:
        left = max(offer.budget - usage.budget_used, 0)
        if value > left:
            value, note = left, "; cut to the offer's remaining budget"
    return value, note


def evaluate(
    event: CustomerEvent,
    offers: Sequence[Offer],
    usage: Mapping[str, OfferUsage],
    tz: ZoneInfo,
    scale: int,
    context: Context = Context(),
) -> Evaluation:
    """Every qualifying offer's award. Non-exclusive offers stack; of the exclusive ones only
    the highest award applies (ties go to the smallest offer_id). Ordered by offer_id."""
    awards: list[Award] = []
    qualified: set[str] = set()
    for offer in sorted(offers, key=lambda o: o.offer_id):
        if rejection(event, offer.conditions, tz, context) is not None:
            continue
        qualified.add(offer.offer_id)
        used = usage.get(offer.offer_id, OfferUsage())
        value, text = raw_award(offer.rule, event, used, scale)
        value, note = limit_by_caps_and_budget(offer, value, used)
        if value > 0:
            awards.append(Award(offer.offer_id, offer.asset, value, offer.instant, text + note))
    exclusive = {o.offer_id for o in offers if o.exclusive}
    best = min(
        (a for a in awards if a.offer_id in exclusive),
        key=lambda a: (-a.amount, a.offer_id),
        default=None,
    )
    kept = [a for a in awards if a.offer_id not in exclusive or a is best]
    return Evaluation(kept, frozenset(qualified))


def birthdays_on(local: date) -> list[tuple[int, int]]:
    """The (month, day) birthdays celebrated on a local date: 29 February birthdays are
    celebrated on 28 February in common years."""
    days = [(local.month, local.day)]
    if (local.month, local.day) == (2, 28) and not calendar.isleap(local.year):
        days.append((2, 29))
    return days
