"""Offer definitions at the edge: validate an Offer message against its scheme, field by field,
so every mistake comes back as a BadRequest violation naming the proto field."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from loyalty.v1 import rewards_pb2

from loyalty_ledger.api import convert, limits
from loyalty_ledger.api.validation import Checks
from loyalty_ledger.domain import contributions, rewards
from loyalty_ledger.domain.contributions import Contribution, ContributorKind
from loyalty_ledger.domain.timeutil import from_us
from loyalty_ledger.ledger.records import SchemeRecord
from loyalty_ledger.ledger.rewarding import AwardSettings

BASIS_POINTS_MAX = 100_000  # 1000 %
WALLET_CAPS_MAX = 4
SEASONS_MAX = 12
ATTRIBUTE_CONDITIONS_MAX = 16
ACTIVATION_DELAY_SECONDS_MAX = 366 * 24 * 3600
NTH_PURCHASE_MAX = 1000
EVENT_ITEMS_MAX = 200
EVENT_ATTRIBUTES_MAX = 32
ITEM_QUANTITY_MAX = 1_000_000

_AMOUNT_RULES = ("percent_of_amount", "points_per_spend", "per_product")


def validated(checks: Checks, offer: rewards_pb2.Offer, scheme: SchemeRecord, path: str) -> None:
    """Record a violation for every field of `offer` that is wrong for `scheme`."""
    checks.text(f"{path}.name", offer.name, max_chars=limits.NAME_CHARS_MAX, required=True)
    checks.asset(f"{path}.asset", offer.asset)
    if offer.asset and offer.asset not in scheme.assets:
        checks.fail(f"{path}.asset", f"{offer.asset} is not an asset of scheme {scheme.id}")
    _rule(checks, offer.rule, f"{path}.rule")
    _conditions(checks, offer, scheme, f"{path}.conditions")
    if offer.spend_method == rewards_pb2.SPEND_METHOD_INSTANT:
        if rewards_pb2.CUSTOMER_EVENT_TYPE_REFERRAL in offer.conditions.event_types:
            checks.fail(f"{path}.spend_method", "a referral rewards the referrer: ON_ACCOUNT only")
        if offer.asset != offer.conditions.currency:
            checks.fail(
                f"{path}.asset",
                "an INSTANT discount is in the event's currency: asset must equal "
                "conditions.currency",
            )
    elif offer.spend_method not in (
        rewards_pb2.SPEND_METHOD_UNSPECIFIED,
        rewards_pb2.SPEND_METHOD_ON_ACCOUNT,
    ):
        checks.fail(f"{path}.spend_method", "unknown value")
    if len(offer.wallet_caps) > WALLET_CAPS_MAX:
        checks.fail(f"{path}.wallet_caps", f"at most {WALLET_CAPS_MAX}")
    for i, cap in enumerate(offer.wallet_caps[:WALLET_CAPS_MAX]):
        cap_path = f"{path}.wallet_caps[{i}]"
        if cap.window not in (
            rewards_pb2.CAP_WINDOW_DAY,
            rewards_pb2.CAP_WINDOW_MONTH,
            rewards_pb2.CAP_WINDOW_LIFETIME,
        ):
            checks.fail(f"{cap_path}.window", "must be DAY, MONTH or LIFETIME")
        if not cap.HasField("max_count") and not cap.HasField("max_amount"):
            checks.fail(cap_path, "set max_count, max_amount or both")
        if cap.HasField("max_count") and not 1 <= cap.max_count <= limits.AMOUNT_MAX:
            checks.fail(f"{cap_path}.max_count", "must be 1 or more")
        if cap.HasField("max_amount"):
            checks.amount(f"{cap_path}.max_amount", cap.max_amount)
    if offer.HasField("budget"):
        checks.amount(f"{path}.budget", offer.budget)
    if offer.HasField("expiry_policy") and offer.expiry_policy.WhichOneof("rule"):
        convert.policy_from_proto(checks, f"{path}.expiry_policy", offer.expiry_policy)
    if offer.HasField("activation_delay"):
        checks.duration_us(
            f"{path}.activation_delay",
            offer.activation_delay,
            low=0,
            high=ACTIVATION_DELAY_SECONDS_MAX,
        )
    if offer.sponsor_id:
        checks.resource_id(f"{path}.sponsor_id", offer.sponsor_id)
    contributions_from_proto(checks, offer.contributions, f"{path}.contributions")
    checks.ids(f"{path}.spend_conditions.merchant_ids", offer.spend_conditions.merchant_ids)
    checks.ids(f"{path}.spend_conditions.product_ids", offer.spend_conditions.product_ids)


CONTRIBUTIONS_MAX = 8


def contributions_from_proto(
    checks: Checks, items: Sequence[rewards_pb2.Contribution], path: str
) -> tuple[Contribution, ...]:
    """Validate contribution shares (none, or up to 8 adding up to 10,000 basis points)."""
    if len(items) > CONTRIBUTIONS_MAX:
        checks.fail(path, f"at most {CONTRIBUTIONS_MAX} shares")
        return ()
    shares = []
    for i, item in enumerate(items):
        kind = convert.CONTRIBUTOR_KINDS.get(item.kind)
        if kind is None:
            checks.fail(f"{path}[{i}].kind", "EVENT_MERCHANT, SPONSOR or OPERATOR is required")
            continue
        if kind is ContributorKind.SPONSOR:
            checks.resource_id(f"{path}[{i}].sponsor_id", item.sponsor_id)
        elif item.sponsor_id:
            checks.fail(f"{path}[{i}].sponsor_id", "only a SPONSOR share names a sponsor")
        if not 1 <= item.basis_points <= contributions.BASIS_POINTS_WHOLE:
            checks.fail(f"{path}[{i}].basis_points", "must be 1 to 10000")
        shares.append(Contribution(kind, item.sponsor_id, item.basis_points))
    if items and sum(item.basis_points for item in items) != contributions.BASIS_POINTS_WHOLE:
        checks.fail(path, "the shares must add up to 10000 basis points (100 %)")
    return tuple(shares)


def _rounding(checks: Checks, path: str, value: int) -> None:
    if value not in (
        rewards_pb2.ROUNDING_UNSPECIFIED,
        rewards_pb2.ROUNDING_DOWN,
        rewards_pb2.ROUNDING_HALF_UP,
        rewards_pb2.ROUNDING_UP,
    ):
        checks.fail(path, "unknown value")


def _basis_points(checks: Checks, path: str, value: int) -> None:
    if not 1 <= value <= BASIS_POINTS_MAX:
        checks.fail(path, f"must be 1 to {BASIS_POINTS_MAX} (1 % = 100)")


def _rule(checks: Checks, rule: rewards_pb2.AwardRule, path: str) -> None:
    kind = rule.WhichOneof("rule")
    if kind is None:
        checks.fail(path, "choose one rule")
    elif kind == "percent_of_amount":
        r = rule.percent_of_amount
        _basis_points(checks, f"{path}.{kind}.basis_points", r.basis_points)
        if r.HasField("cap"):
            checks.amount(f"{path}.{kind}.cap", r.cap)
        _rounding(checks, f"{path}.{kind}.rounding", r.rounding)
    elif kind == "fixed_amount":
        checks.amount(f"{path}.{kind}.amount", rule.fixed_amount.amount)
        checks.amount(f"{path}.{kind}.min_spend", rule.fixed_amount.min_spend, allow_zero=True)
    elif kind == "points_per_spend":
        checks.amount(f"{path}.{kind}.points", rule.points_per_spend.points)
        checks.amount(f"{path}.{kind}.per_amount", rule.points_per_spend.per_amount)
    elif kind == "per_product":
        r2 = rule.per_product
        match = r2.match
        if not (match.product_ids or match.product_types or match.product_families):
            checks.fail(f"{path}.{kind}.match", "name product ids, types or families")
        for field in ("product_ids", "product_types", "product_families"):
            checks.ids(f"{path}.{kind}.match.{field}", getattr(match, field))
        if r2.HasField("basis_points") == r2.HasField("fixed_per_unit"):
            checks.fail(f"{path}.{kind}", "set exactly one of basis_points and fixed_per_unit")
        if r2.HasField("basis_points"):
            _basis_points(checks, f"{path}.{kind}.basis_points", r2.basis_points)
        if r2.HasField("fixed_per_unit"):
            checks.amount(f"{path}.{kind}.fixed_per_unit", r2.fixed_per_unit)
        if r2.HasField("cap"):
            checks.amount(f"{path}.{kind}.cap", r2.cap)
        _rounding(checks, f"{path}.{kind}.rounding", r2.rounding)
    else:  # every_nth_purchase
        if not 1 <= rule.every_nth_purchase.n <= NTH_PURCHASE_MAX:
            checks.fail(f"{path}.{kind}.n", f"must be 1 to {NTH_PURCHASE_MAX}")
        checks.amount(f"{path}.{kind}.amount", rule.every_nth_purchase.amount)


def _conditions(checks: Checks, offer: rewards_pb2.Offer, scheme: SchemeRecord, path: str) -> None:
    c = offer.conditions
    start = (
        checks.timestamp(f"{path}.valid_from", c.valid_from) if c.HasField("valid_from") else None
    )
    end = (
        checks.timestamp(f"{path}.valid_until", c.valid_until)
        if c.HasField("valid_until")
        else None
    )
    if start is not None and end is not None and end <= start:
        checks.fail(f"{path}.valid_until", "must be after valid_from")
    for i, day in enumerate(c.days_of_week):
        if not 1 <= day <= 7:
            checks.fail(f"{path}.days_of_week[{i}]", "must be 1 (Monday) to 7 (Sunday)")
    if c.HasField("hours"):
        h = c.hours
        if not (0 <= h.start_hour <= 23 and 0 <= h.end_hour <= 23) or h.start_hour == h.end_hour:
            checks.fail(f"{path}.hours", "hours are 0 to 23 and start differs from end")
    if len(c.seasons) > SEASONS_MAX:
        checks.fail(f"{path}.seasons", f"at most {SEASONS_MAX}")
    for i, season in enumerate(c.seasons[:SEASONS_MAX]):
        for end_name in ("start", "end"):
            checks.month_day(
                f"{path}.seasons[{i}].{end_name}_day",
                getattr(season, f"{end_name}_month"),
                getattr(season, f"{end_name}_day"),
            )
    checks.ids(f"{path}.merchant_ids", c.merchant_ids)
    checks.ids(f"{path}.payment_methods", c.payment_methods)
    checks.tags(f"{path}.include_tags", c.include_tags)
    checks.tags(f"{path}.exclude_tags", c.exclude_tags)
    for i, group_id in enumerate(c.merchant_group_ids):
        checks.tag(f"{path}.merchant_group_ids[{i}]", group_id)
    known_tiers = scheme.tier_program.tier_ids() if scheme.tier_program else []
    for i, tier_id in enumerate(c.tiers):
        if tier_id not in known_tiers:
            checks.fail(f"{path}.tiers[{i}]", f"{tier_id!r} is not a tier of scheme {scheme.id}")
    checks.amount(f"{path}.min_amount", c.min_amount, allow_zero=True)
    needs_currency = offer.rule.WhichOneof("rule") in _AMOUNT_RULES or c.min_amount > 0
    if c.currency or needs_currency:
        checks.asset(f"{path}.currency", c.currency)
        if c.currency and c.currency not in scheme.assets:
            checks.fail(f"{path}.currency", f"{c.currency} is not an asset of scheme {scheme.id}")
    for i, kind in enumerate(c.event_types):
        if kind == rewards_pb2.CUSTOMER_EVENT_TYPE_UNSPECIFIED or kind not in (
            rewards_pb2.CustomerEventType.values()
        ):
            checks.fail(f"{path}.event_types[{i}]", "unknown event type")
    if rewards_pb2.CUSTOMER_EVENT_TYPE_CUSTOM in c.event_types:
        checks.text(
            f"{path}.custom_event_name",
            c.custom_event_name,
            max_chars=limits.ID_CHARS_MAX,
            required=True,
        )
    if len(c.attributes) > ATTRIBUTE_CONDITIONS_MAX:
        checks.fail(f"{path}.attributes", f"at most {ATTRIBUTE_CONDITIONS_MAX}")
    for i, attr in enumerate(c.attributes[:ATTRIBUTE_CONDITIONS_MAX]):
        a_path = f"{path}.attributes[{i}]"
        checks.text(
            f"{a_path}.key", attr.key, max_chars=limits.METADATA_KEY_CHARS_MAX, required=True
        )
        checks.text(f"{a_path}.value", attr.value, max_chars=limits.METADATA_VALUE_CHARS_MAX)
        if attr.operator == rewards_pb2.ATTRIBUTE_OPERATOR_UNSPECIFIED or attr.operator not in (
            rewards_pb2.AttributeOperator.values()
        ):
            checks.fail(f"{a_path}.operator", "unknown value")
        elif attr.operator >= rewards_pb2.ATTRIBUTE_OPERATOR_GT and not _is_int(attr.value):
            checks.fail(f"{a_path}.value", "must be an integer for GT, GTE, LT and LTE")


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


# -- to the domain ----------------------------------------------------------------------------

_ROUNDING = {
    rewards_pb2.ROUNDING_UNSPECIFIED: rewards.Rounding.DOWN,
    rewards_pb2.ROUNDING_DOWN: rewards.Rounding.DOWN,
    rewards_pb2.ROUNDING_HALF_UP: rewards.Rounding.HALF_UP,
    rewards_pb2.ROUNDING_UP: rewards.Rounding.UP,
}
EVENT_TYPES = {
    rewards_pb2.CUSTOMER_EVENT_TYPE_PURCHASE: rewards.EventType.PURCHASE,
    rewards_pb2.CUSTOMER_EVENT_TYPE_SIGN_UP: rewards.EventType.SIGN_UP,
    rewards_pb2.CUSTOMER_EVENT_TYPE_BIRTHDAY: rewards.EventType.BIRTHDAY,
    rewards_pb2.CUSTOMER_EVENT_TYPE_REFERRAL: rewards.EventType.REFERRAL,
    rewards_pb2.CUSTOMER_EVENT_TYPE_CUSTOM: rewards.EventType.CUSTOM,
}
_WINDOWS = {
    rewards_pb2.CAP_WINDOW_DAY: rewards.CapWindow.DAY,
    rewards_pb2.CAP_WINDOW_MONTH: rewards.CapWindow.MONTH,
    rewards_pb2.CAP_WINDOW_LIFETIME: rewards.CapWindow.LIFETIME,
}
_OPERATORS = {
    rewards_pb2.ATTRIBUTE_OPERATOR_EQ: rewards.Operator.EQ,
    rewards_pb2.ATTRIBUTE_OPERATOR_NE: rewards.Operator.NE,
    rewards_pb2.ATTRIBUTE_OPERATOR_GT: rewards.Operator.GT,
    rewards_pb2.ATTRIBUTE_OPERATOR_GTE: rewards.Operator.GTE,
    rewards_pb2.ATTRIBUTE_OPERATOR_LT: rewards.Operator.LT,
    rewards_pb2.ATTRIBUTE_OPERATOR_LTE: rewards.Operator.LTE,
}


def _domain_rule(rule: rewards_pb2.AwardRule) -> rewards.Rule:
    kind = rule.WhichOneof("rule")
    if kind == "percent_of_amount":
        p = rule.percent_of_amount
        return rewards.PercentOfAmount(
            p.basis_points, p.cap if p.HasField("cap") else None, _ROUNDING[p.rounding]
        )
    if kind == "fixed_amount":
        return rewards.FixedAmount(rule.fixed_amount.amount, rule.fixed_amount.min_spend)
    if kind == "points_per_spend":
        return rewards.PointsPerSpend(
            rule.points_per_spend.points, rule.points_per_spend.per_amount
        )
    if kind == "per_product":
        q = rule.per_product
        return rewards.PerProduct(
            rewards.ProductMatch(
                frozenset(q.match.product_ids),
                frozenset(q.match.product_types),
                frozenset(q.match.product_families),
            ),
            basis_points=q.basis_points if q.HasField("basis_points") else None,
            fixed_per_unit=q.fixed_per_unit if q.HasField("fixed_per_unit") else None,
            cap=q.cap if q.HasField("cap") else None,
            rounding=_ROUNDING[q.rounding],
        )
    assert kind == "every_nth_purchase", kind  # stored offers were validated
    return rewards.EveryNthPurchase(rule.every_nth_purchase.n, rule.every_nth_purchase.amount)


def _domain_conditions(c: rewards_pb2.OfferConditions) -> rewards.Conditions:
    return rewards.Conditions(
        valid_from=c.valid_from.ToDatetime(tzinfo=UTC) if c.HasField("valid_from") else None,
        valid_until=c.valid_until.ToDatetime(tzinfo=UTC) if c.HasField("valid_until") else None,
        days_of_week=frozenset(c.days_of_week),
        hours=(c.hours.start_hour, c.hours.end_hour) if c.HasField("hours") else None,
        seasons=tuple(
            rewards.Season(s.start_month, s.start_day, s.end_month, s.end_day) for s in c.seasons
        ),
        merchant_ids=frozenset(c.merchant_ids),
        payment_methods=frozenset(c.payment_methods),
        min_amount=c.min_amount,
        currency=c.currency,
        event_types=frozenset(EVENT_TYPES[t] for t in c.event_types)
        or frozenset({rewards.EventType.PURCHASE}),
        custom_event_name=c.custom_event_name,
        attributes=tuple(
            rewards.AttributeCondition(a.key, _OPERATORS[a.operator], a.value) for a in c.attributes
        ),
        include_tags=frozenset(c.include_tags),
        exclude_tags=frozenset(c.exclude_tags),
        tiers=frozenset(c.tiers),
        merchant_group_ids=frozenset(c.merchant_group_ids),
    )


def domain_offer(offer_id: str, offer: rewards_pb2.Offer) -> tuple[rewards.Offer, AwardSettings]:
    """A stored (validated) offer as the domain evaluates it, and how its awards are posted."""
    evaluated = rewards.Offer(
        offer_id=offer_id,
        asset=offer.asset,
        rule=_domain_rule(offer.rule),
        conditions=_domain_conditions(offer.conditions),
        instant=offer.spend_method == rewards_pb2.SPEND_METHOD_INSTANT,
        exclusive=offer.exclusive,
        caps=tuple(
            rewards.Cap(
                _WINDOWS[c.window],
                c.max_count if c.HasField("max_count") else None,
                c.max_amount if c.HasField("max_amount") else None,
            )
            for c in offer.wallet_caps
        ),
        budget=offer.budget if offer.HasField("budget") else None,
    )
    policy = None
    if offer.HasField("expiry_policy") and offer.expiry_policy.WhichOneof("rule"):
        checks = Checks()
        policy = convert.policy_from_proto(checks, "expiry_policy", offer.expiry_policy)
        checks.done()
    settings = AwardSettings(
        sponsor_id=offer.sponsor_id,
        expiry_policy=policy,
        activation_delay_us=offer.activation_delay.seconds * 1_000_000
        + offer.activation_delay.nanos // 1_000,
        merchant_ids=tuple(offer.spend_conditions.merchant_ids),
        product_ids=tuple(offer.spend_conditions.product_ids),
        contributions=contributions_from_proto(Checks(), offer.contributions, "contributions"),
    )
    return evaluated, settings


def customer_event(
    checks: Checks, event: rewards_pb2.CustomerEvent, path: str
) -> rewards.CustomerEvent | None:
    """Validate a CustomerEvent message; None (with violations recorded) when it is wrong."""
    kind = EVENT_TYPES.get(event.type)
    if kind is None:
        checks.fail(f"{path}.type", "choose the event type")
    if kind is rewards.EventType.CUSTOM:
        checks.text(
            f"{path}.custom_name", event.custom_name, max_chars=limits.ID_CHARS_MAX, required=True
        )
    occurred = None
    if not event.HasField("occur_time"):
        checks.fail(f"{path}.occur_time", "is required")
    else:
        occurred = checks.timestamp(f"{path}.occur_time", event.occur_time)
    if event.merchant_id:
        checks.resource_id(f"{path}.merchant_id", event.merchant_id)
    checks.amount(f"{path}.amount", event.amount, allow_zero=True)
    if event.amount or event.currency:
        checks.asset(f"{path}.currency", event.currency)
    if len(event.items) > EVENT_ITEMS_MAX:
        checks.fail(f"{path}.items", f"at most {EVENT_ITEMS_MAX} lines")
    for i, item in enumerate(event.items[:EVENT_ITEMS_MAX]):
        checks.resource_id(f"{path}.items[{i}].product_id", item.product_id)
        if not 1 <= item.quantity <= ITEM_QUANTITY_MAX:
            checks.fail(f"{path}.items[{i}].quantity", f"must be 1 to {ITEM_QUANTITY_MAX}")
        checks.amount(f"{path}.items[{i}].unit_price", item.unit_price, allow_zero=True)
        for name in ("product_type", "product_family"):
            checks.text(
                f"{path}.items[{i}].{name}", getattr(item, name), max_chars=limits.ID_CHARS_MAX
            )
    checks.text(f"{path}.payment_method", event.payment_method, max_chars=limits.ID_CHARS_MAX)
    if len(event.attributes) > EVENT_ATTRIBUTES_MAX:
        checks.fail(f"{path}.attributes", f"at most {EVENT_ATTRIBUTES_MAX} entries")
    else:
        checks.metadata(f"{path}.attributes", event.attributes)
    checks.text(f"{path}.reference", event.reference, max_chars=limits.REFERENCE_CHARS_MAX)
    if kind is None or occurred is None:
        return None
    return rewards.CustomerEvent(
        type=kind,
        occurred_at=from_us(occurred),
        merchant_id=event.merchant_id,
        amount=event.amount,
        currency=event.currency,
        items=tuple(
            rewards.Item(i.product_id, i.product_type, i.product_family, i.quantity, i.unit_price)
            for i in event.items
        ),
        payment_method=event.payment_method,
        attributes=dict(event.attributes),
        custom_name=event.custom_name,
    )
