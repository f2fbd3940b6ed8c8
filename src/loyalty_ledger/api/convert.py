"""Translation between protobuf messages and ledger records / domain values."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.v1 import common_pb2, expiry_pb2, offer_pb2, rewards_pb2, wallet_pb2

from loyalty_ledger.api.validation import Checks
from loyalty_ledger.domain import expiry
from loyalty_ledger.domain.contributions import Contribution, ContributorKind
from loyalty_ledger.domain.errors import InvalidArgument
from loyalty_ledger.domain.spend_order import Funding
from loyalty_ledger.domain.tiers import TierBasis
from loyalty_ledger.domain.timeutil import from_us
from loyalty_ledger.ledger.records import (
    AssetBalance,
    HoldRecord,
    LotRecord,
    RefundHandling,
    RunKind,
    RunRecord,
    SchemeRecord,
    TransactionRecord,
    UpcomingExpiration,
    WalletRecord,
)


def timestamp(micros: int) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(from_us(micros))
    return ts


# -- expiry policies ----------------------------------------------------------------------

_UNITS = {
    common_pb2.DURATION_UNIT_HOURS: expiry.DurationUnit.HOURS,
    common_pb2.DURATION_UNIT_DAYS: expiry.DurationUnit.DAYS,
    common_pb2.DURATION_UNIT_MONTHS: expiry.DurationUnit.MONTHS,
}
_PERIODS = {
    common_pb2.CALENDAR_PERIOD_DAY: expiry.CalendarPeriod.DAY,
    common_pb2.CALENDAR_PERIOD_MONTH: expiry.CalendarPeriod.MONTH,
    common_pb2.CALENDAR_PERIOD_QUARTER: expiry.CalendarPeriod.QUARTER,
    common_pb2.CALENDAR_PERIOD_HALF_YEAR: expiry.CalendarPeriod.HALF_YEAR,
    common_pb2.CALENDAR_PERIOD_YEAR: expiry.CalendarPeriod.YEAR,
    common_pb2.CALENDAR_PERIOD_NAMED_MONTH: expiry.CalendarPeriod.NAMED_MONTH,
}


def _after_from_proto(
    checks: Checks, path: str, after: common_pb2.ExpireAfter
) -> expiry.After | None:
    unit = _UNITS.get(after.unit)
    if unit is None:
        checks.fail(f"{path}.unit", "must be HOURS, DAYS or MONTHS")
        return None
    return expiry.After(after.count, unit)


def policy_from_proto(
    checks: Checks, path: str, policy: common_pb2.ExpiryPolicy
) -> expiry.ExpiryPolicy | None:
    """The domain policy of a set oneof; None (and violations) when it is unusable."""
    which = policy.WhichOneof("rule")
    result: expiry.ExpiryPolicy | None = None
    if which == "never":
        result = expiry.Never()
    elif which == "fixed_time":
        micros = checks.timestamp(f"{path}.fixed_time", policy.fixed_time)
        if micros is not None:
            result = expiry.FixedTime(from_us(micros))
    elif which == "after":
        result = _after_from_proto(checks, f"{path}.after", policy.after)
    elif which == "inactivity":
        result = expiry.Inactivity(policy.inactivity.days)
    elif which == "end_of_period":
        eop = policy.end_of_period
        period = _PERIODS.get(eop.period)
        offset = None
        if eop.HasField("offset"):
            offset = _after_from_proto(checks, f"{path}.end_of_period.offset", eop.offset)
            if offset is None:
                return None
        if period is None:
            checks.fail(f"{path}.end_of_period.period", "is required")
            return None
        result = expiry.EndOfPeriod(period, eop.month or None, offset)
    else:
        checks.fail(path, "set one rule: never, fixed_time, after, end_of_period or inactivity")
    if result is not None:
        try:
            expiry.validate_policy(result, path)
        except InvalidArgument as error:  # merge its violations with the request's
            for violation in error.violations:
                checks.fail(violation.field, violation.description)
            return None
    return result


def policy_to_proto(policy: expiry.ExpiryPolicy) -> common_pb2.ExpiryPolicy:
    units = {v: k for k, v in _UNITS.items()}
    periods = {v: k for k, v in _PERIODS.items()}
    out = common_pb2.ExpiryPolicy()
    if isinstance(policy, expiry.Never):
        out.never.SetInParent()
    elif isinstance(policy, expiry.FixedTime):
        out.fixed_time.FromDatetime(policy.expire_at.astimezone(UTC))
    elif isinstance(policy, expiry.After):
        out.after.count = policy.count
        out.after.unit = units[policy.unit]
    elif isinstance(policy, expiry.Inactivity):
        out.inactivity.days = policy.days
    else:
        out.end_of_period.period = periods[policy.period]
        out.end_of_period.month = policy.month or 0
        if policy.offset is not None:
            out.end_of_period.offset.count = policy.offset.count
            out.end_of_period.offset.unit = units[policy.offset.unit]
    return out


# -- schemes ------------------------------------------------------------------------------

_REFUND_TO_PROTO = {
    RefundHandling.EXPIRE: offer_pb2.EXPIRED_REFUND_HANDLING_EXPIRE,
    RefundHandling.RECREDIT: offer_pb2.EXPIRED_REFUND_HANDLING_RECREDIT,
}
REFUND_FROM_PROTO = {v: k for k, v in _REFUND_TO_PROTO.items()}


def scheme_to_proto(scheme: SchemeRecord) -> offer_pb2.Scheme:
    out = offer_pb2.Scheme(
        scheme_id=scheme.id,
        name=scheme.name,
        assets=[offer_pb2.AssetDefinition(code=c, scale=s) for c, s in scheme.assets.items()],
        timezone=scheme.timezone,
        default_expiry_policy=policy_to_proto(scheme.default_expiry_policy),
        refund_policy=offer_pb2.RefundPolicy(
            expired_lot_handling=_REFUND_TO_PROTO[scheme.refund_handling]
        ),
        cash_expiry_allowed=scheme.cash_expiry_allowed,
        create_time=timestamp(scheme.created_at_us),
        update_time=timestamp(scheme.updated_at_us),
    )
    out.refund_policy.grace_period.FromSeconds(scheme.refund_grace_seconds)
    for seconds in sorted(scheme.warning_lead_seconds, reverse=True):
        out.warning_lead_times.add().FromSeconds(seconds)
    out.redemption_rates.extend(
        offer_pb2.RedemptionRate(asset=r.asset, points=r.points, currency=r.currency, value=r.value)
        for r in scheme.redemption_rates
    )
    out.contributions.extend(contributions_to_proto(scheme.contributions))
    if scheme.tier_program is not None:
        program = scheme.tier_program
        out.tier_program.CopyFrom(
            offer_pb2.TierProgram(
                basis=TIER_BASIS_TO_PROTO[program.basis],
                asset=program.asset,
                window_days=program.window_days,
                tiers=[
                    offer_pb2.Tier(tier_id=tier.tier_id, name=tier.name, threshold=tier.threshold)
                    for tier in program.tiers
                ],
            )
        )
    return out


CONTRIBUTOR_KINDS = {
    rewards_pb2.CONTRIBUTOR_KIND_EVENT_MERCHANT: ContributorKind.EVENT_MERCHANT,
    rewards_pb2.CONTRIBUTOR_KIND_SPONSOR: ContributorKind.SPONSOR,
    rewards_pb2.CONTRIBUTOR_KIND_OPERATOR: ContributorKind.OPERATOR,
}
_CONTRIBUTOR_KINDS_TO_PROTO = {v: k for k, v in CONTRIBUTOR_KINDS.items()}


def contributions_to_proto(shares: Sequence[Contribution]) -> list[rewards_pb2.Contribution]:
    return [
        rewards_pb2.Contribution(
            kind=_CONTRIBUTOR_KINDS_TO_PROTO[s.kind],
            sponsor_id=s.sponsor_id,
            basis_points=s.basis_points,
        )
        for s in shares
    ]


TIER_BASIS_TO_PROTO = {
    TierBasis.POINTS: offer_pb2.TIER_BASIS_POINTS,
    TierBasis.SPEND: offer_pb2.TIER_BASIS_SPEND,
}
TIER_BASIS_FROM_PROTO = {v: k for k, v in TIER_BASIS_TO_PROTO.items()}


# -- wallets, lots, holds, transactions ---------------------------------------------------

FUNDING_TO_PROTO = {
    Funding.PROMOTIONAL: common_pb2.FUNDING_PROMOTIONAL,
    Funding.CASH: common_pb2.FUNDING_CASH,
}
FUNDING_FROM_PROTO = {v: k for k, v in FUNDING_TO_PROTO.items()}


def wallet_to_proto(wallet: WalletRecord) -> wallet_pb2.Wallet:
    out = wallet_pb2.Wallet(
        wallet_id=wallet.id,
        scheme_id=wallet.scheme_id,
        customer_ref=wallet.customer_ref,
        status=wallet_pb2.WalletStatus.Value(f"WALLET_STATUS_{wallet.status.value}"),
        status_reason=wallet.status_reason,
        merged_into_wallet_id=wallet.merged_into or "",
        metadata=wallet.metadata,
        create_time=timestamp(wallet.created_at_us),
        update_time=timestamp(wallet.updated_at_us),
        tags=wallet.tags,
        referred_by_wallet_id=wallet.referred_by or "",
    )
    if wallet.birthday is not None:
        out.birthday.month, out.birthday.day = wallet.birthday
    if wallet.referral_rewarded_at_us is not None:
        out.referral_reward_time.CopyFrom(timestamp(wallet.referral_rewarded_at_us))
    if wallet.tier_id is not None and wallet.tier_since_us is not None:
        out.tier_id = wallet.tier_id
        out.tier_since.CopyFrom(timestamp(wallet.tier_since_us))
    return out


def tier_change_to_proto(row: Any) -> wallet_pb2.TierChange:
    return wallet_pb2.TierChange(
        tier_change_id=row.id,
        wallet_id=row.wallet_id,
        from_tier_id=row.from_tier or "",
        to_tier_id=row.to_tier or "",
        qualifying_amount=row.qualifying,
        cause=wallet_pb2.TierChangeCause.Value(f"TIER_CHANGE_CAUSE_{row.cause}"),
        run_id=row.run_id or "",
        create_time=timestamp(row.created_at_us),
    )


def lot_to_proto(lot: LotRecord) -> wallet_pb2.Lot:
    out = wallet_pb2.Lot(
        lot_id=lot.id,
        wallet_id=lot.wallet_id,
        asset=lot.asset,
        amount=lot.amount,
        remaining=lot.remaining,
        spent=lot.spent,
        held=lot.held,
        expired=lot.expired,
        reversed=lot.reversed,
        state=wallet_pb2.LotState.Value(f"LOT_STATE_{lot.state.value}"),
        funding=FUNDING_TO_PROTO[lot.funding],
        sponsor_id=lot.sponsor_id or "",
        available_time=timestamp(lot.available_at_us),
        spend_conditions=common_pb2.SpendConditions(
            merchant_ids=lot.merchant_ids, product_ids=lot.product_ids
        ),
        source_transaction_id=lot.source_transaction_id,
        origin_lot_id=lot.origin_lot_id or "",
        create_time=timestamp(lot.created_at_us),
    )
    if lot.expires_at_us is not None:
        out.expire_time.CopyFrom(timestamp(lot.expires_at_us))
    return out


def transaction_to_proto(txn: TransactionRecord) -> wallet_pb2.Transaction:
    return wallet_pb2.Transaction(
        transaction_id=txn.id,
        type=wallet_pb2.TransactionType.Value(f"TRANSACTION_TYPE_{txn.type.value}"),
        scheme_id=txn.scheme_id,
        wallet_id=txn.wallet_id or "",
        counterpart_wallet_id=txn.counterpart_wallet_id or "",
        merchant_id=txn.merchant_id or "",
        hold_id=txn.hold_id or "",
        related_transaction_id=txn.related_transaction_id or "",
        reference=txn.reference,
        metadata=txn.metadata,
        postings=[
            wallet_pb2.Posting(account=p.account, asset=p.asset, amount=p.amount)
            for p in txn.postings
        ],
        allocations=[
            wallet_pb2.Allocation(
                lot_id=a.lot_id, wallet_id=a.wallet_id, asset=a.asset, amount=a.amount
            )
            for a in txn.allocations
        ],
        create_time=timestamp(txn.created_at_us),
    )


def hold_to_proto(hold: HoldRecord) -> wallet_pb2.Hold:
    return wallet_pb2.Hold(
        hold_id=hold.id,
        wallet_id=hold.wallet_id,
        asset=hold.asset,
        amount=hold.amount,
        captured_amount=hold.captured_amount,
        status=wallet_pb2.HoldStatus.Value(f"HOLD_STATUS_{hold.status.value}"),
        merchant_id=hold.merchant_id,
        product_ids=hold.product_ids,
        expire_time=timestamp(hold.expires_at_us),
        allocations=[
            wallet_pb2.Allocation(
                lot_id=lot_id, wallet_id=hold.wallet_id, asset=hold.asset, amount=amount
            )
            for lot_id, amount in sorted(hold.allocations.items())
        ],
        reference=hold.reference,
        create_time=timestamp(hold.created_at_us),
        update_time=timestamp(hold.updated_at_us),
    )


def balance_to_proto(balance: AssetBalance) -> wallet_pb2.AssetBalance:
    return wallet_pb2.AssetBalance(
        asset=balance.asset,
        available=balance.available,
        pending=balance.pending,
        held=balance.held,
        next_expirations=[
            wallet_pb2.ExpiringAmount(amount=e.amount, expire_time=timestamp(e.expires_at_us))
            for e in balance.next_expirations
        ],
    )


# -- runs and expirations -----------------------------------------------------------------

RUN_KINDS = {
    expiry_pb2.RUN_KIND_EXPIRY: RunKind.EXPIRY,
    expiry_pb2.RUN_KIND_EXPIRY_WARNING: RunKind.EXPIRY_WARNING,
    expiry_pb2.RUN_KIND_HOLD_TIMEOUT: RunKind.HOLD_TIMEOUT,
    expiry_pb2.RUN_KIND_INACTIVITY: RunKind.INACTIVITY,
    expiry_pb2.RUN_KIND_BIRTHDAY: RunKind.BIRTHDAY,
    expiry_pb2.RUN_KIND_TIER_REVIEW: RunKind.TIER_REVIEW,
    expiry_pb2.RUN_KIND_SETTLEMENT: RunKind.SETTLEMENT,
}


def run_to_proto(run: RunRecord) -> expiry_pb2.Run:
    out = expiry_pb2.Run(
        run_id=run.id,
        kind=expiry_pb2.RunKind.Value(f"RUN_KIND_{run.kind.value}"),
        as_of_time=timestamp(run.as_of_us),
        status=expiry_pb2.RunStatus.Value(f"RUN_STATUS_{run.status.value}"),
        items_processed=run.items_processed,
        chunks_committed=run.chunks_committed,
        error=run.error,
        start_time=timestamp(run.started_at_us),
        trigger=run.trigger,
    )
    if run.finished_at_us is not None:
        out.finish_time.CopyFrom(timestamp(run.finished_at_us))
    return out


def upcoming_to_proto(item: UpcomingExpiration) -> expiry_pb2.UpcomingExpiration:
    lot = item.lot
    assert lot.expires_at_us is not None
    return expiry_pb2.UpcomingExpiration(
        lot_id=lot.id,
        wallet_id=lot.wallet_id,
        scheme_id=lot.scheme_id,
        customer_ref=item.customer_ref,
        asset=lot.asset,
        amount=lot.remaining,
        expire_time=timestamp(lot.expires_at_us),
        sponsor_id=lot.sponsor_id or "",
    )
