"""Plain records the ledger returns; the API layer turns them into protobuf messages."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from loyalty_ledger.domain import contributions
from loyalty_ledger.domain.contributions import Contribution
from loyalty_ledger.domain.expiry import ExpiryPolicy, policy_from_dict
from loyalty_ledger.domain.redemption import RedemptionRate
from loyalty_ledger.domain.spend_order import Funding, LotView
from loyalty_ledger.domain.tiers import TierProgram

T = TypeVar("T")


class WalletStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    FROZEN = "FROZEN"
    CLOSED = "CLOSED"


class LotState(enum.StrEnum):
    OPEN = "OPEN"
    EXHAUSTED = "EXHAUSTED"
    EXPIRED = "EXPIRED"
    REVERSED = "REVERSED"


class TxType(enum.StrEnum):
    AWARD = "AWARD"
    TOP_UP = "TOP_UP"
    SPEND = "SPEND"
    HOLD = "HOLD"
    CAPTURE = "CAPTURE"
    VOID = "VOID"
    REFUND = "REFUND"
    REVERSAL = "REVERSAL"
    TRANSFER = "TRANSFER"
    EXPIRE = "EXPIRE"
    ADJUST = "ADJUST"
    MERGE = "MERGE"


class HoldStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"
    EXPIRED = "EXPIRED"


class RefundHandling(enum.StrEnum):
    EXPIRE = "EXPIRE"
    RECREDIT = "RECREDIT"


@dataclass
class SchemeRecord:
    id: str
    name: str
    assets: dict[str, int]  # code -> scale
    timezone: str
    default_expiry_policy: ExpiryPolicy
    refund_handling: RefundHandling
    refund_grace_seconds: int
    cash_expiry_allowed: bool
    warning_lead_seconds: list[int]
    created_at_us: int
    updated_at_us: int
    redemption_rates: list[RedemptionRate] = field(default_factory=list)
    tier_program: TierProgram | None = None
    contributions: tuple[Contribution, ...] = ()

    @classmethod
    def from_row(cls, row: Any, assets: dict[str, int]) -> SchemeRecord:
        return cls(
            id=row.id,
            name=row.name,
            assets=assets,
            timezone=row.timezone,
            default_expiry_policy=policy_from_dict(json.loads(row.default_expiry_policy)),
            refund_handling=RefundHandling(row.refund_expired_handling),
            refund_grace_seconds=row.refund_grace_seconds,
            cash_expiry_allowed=bool(row.cash_expiry_allowed),
            warning_lead_seconds=json.loads(row.warning_lead_seconds),
            created_at_us=row.created_at_us,
            updated_at_us=row.updated_at_us,
            redemption_rates=[RedemptionRate(*r) for r in json.loads(row.redemption_rates)],
            tier_program=(
                TierProgram.from_dict(json.loads(row.tier_program)) if row.tier_program else None
            ),
            contributions=contributions.from_list(json.loads(row.contributions)),
        )


@dataclass
class WalletRecord:
    id: str
    scheme_id: str
    customer_ref: str
    status: WalletStatus
    status_reason: str
    merged_into: str | None
    metadata: dict[str, str]
    created_at_us: int
    updated_at_us: int
    tags: list[str] = field(default_factory=list)
    referred_by: str | None = None
    referral_rewarded_at_us: int | None = None
    birthday: tuple[int, int] | None = None  # (month, day)
    tier_id: str | None = None
    tier_since_us: int | None = None

    @classmethod
    def from_row(cls, row: Any) -> WalletRecord:
        return cls(
            id=row.id,
            scheme_id=row.scheme_id,
            customer_ref=row.customer_ref,
            status=WalletStatus(row.status),
            status_reason=row.status_reason,
            merged_into=row.merged_into,
            metadata=json.loads(row.metadata),
            created_at_us=row.created_at_us,
            updated_at_us=row.updated_at_us,
            tags=json.loads(row.tags),
            referred_by=row.referred_by,
            referral_rewarded_at_us=row.referral_rewarded_at_us,
            birthday=(row.birth_month, row.birth_day) if row.birth_month else None,
            tier_id=row.tier_id,
            tier_since_us=row.tier_since_us,
        )


@dataclass
class LotRecord:
    id: str
    wallet_id: str
    scheme_id: str
    asset: str
    amount: int
    remaining: int
    spent: int
    held: int
    expired: int
    reversed: int
    state: LotState
    funding: Funding
    sponsor_id: str | None
    available_at_us: int
    expires_at_us: int | None
    merchant_ids: list[str]
    product_ids: list[str]
    source_transaction_id: str
    origin_lot_id: str | None
    created_at_us: int
    inactivity_days: int | None = None

    @classmethod
    def from_row(cls, row: Any) -> LotRecord:
        return cls(
            id=row.id,
            wallet_id=row.wallet_id,
            scheme_id=row.scheme_id,
            asset=row.asset,
            amount=row.amount,
            remaining=row.remaining,
            spent=row.spent,
            held=row.held,
            expired=row.expired,
            reversed=row.reversed,
            state=LotState(row.state),
            funding=Funding(row.funding),
            sponsor_id=row.sponsor_id,
            available_at_us=row.available_at_us,
            expires_at_us=row.expires_at_us,
            merchant_ids=json.loads(row.merchant_ids),
            product_ids=json.loads(row.product_ids),
            source_transaction_id=row.source_transaction_id,
            origin_lot_id=row.origin_lot_id,
            created_at_us=row.created_at_us,
            inactivity_days=row.inactivity_days,
        )

    def view(self) -> LotView:
        return LotView(
            lot_id=self.id,
            remaining=self.remaining,
            available_at_us=self.available_at_us,
            expires_at_us=self.expires_at_us,
            funding=self.funding,
            created_at_us=self.created_at_us,
            merchant_ids=frozenset(self.merchant_ids),
            product_ids=frozenset(self.product_ids),
        )

    def is_expired_at(self, now_us: int) -> bool:
        return self.expires_at_us is not None and self.expires_at_us <= now_us

    def settle_state(self) -> None:
        """Recompute OPEN/EXHAUSTED after a change; EXPIRED and REVERSED are final labels."""
        if self.state in (LotState.OPEN, LotState.EXHAUSTED):
            open_value = self.remaining + self.held
            self.state = LotState.OPEN if open_value > 0 else LotState.EXHAUSTED
        # Rule 3 of DESIGN.md, checked on every write (the schema checks it again).
        assert self.amount == (
            self.remaining + self.spent + self.held + self.expired + self.reversed
        ), f"lot {self.id} parts do not add up"
        assert min(self.remaining, self.spent, self.held, self.expired, self.reversed) >= 0


@dataclass
class PostingRecord:
    account: str
    asset: str
    amount: int


@dataclass
class AllocationRecord:
    lot_id: str
    wallet_id: str
    asset: str
    amount: int


@dataclass
class TransactionRecord:
    id: str
    type: TxType
    scheme_id: str
    wallet_id: str | None
    counterpart_wallet_id: str | None = None
    merchant_id: str | None = None
    hold_id: str | None = None
    related_transaction_id: str | None = None
    reference: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    postings: list[PostingRecord] = field(default_factory=list)
    allocations: list[AllocationRecord] = field(default_factory=list)
    created_at_us: int = 0


@dataclass
class HoldRecord:
    id: str
    wallet_id: str
    scheme_id: str
    asset: str
    amount: int
    captured_amount: int
    status: HoldStatus
    merchant_id: str
    product_ids: list[str]
    reference: str
    expires_at_us: int
    hold_transaction_id: str
    created_at_us: int
    updated_at_us: int
    allocations: dict[str, int] = field(default_factory=dict)  # lot id -> amount reserved

    @classmethod
    def from_row(cls, row: Any, allocations: dict[str, int]) -> HoldRecord:
        return cls(
            id=row.id,
            wallet_id=row.wallet_id,
            scheme_id=row.scheme_id,
            asset=row.asset,
            amount=row.amount,
            captured_amount=row.captured_amount,
            status=HoldStatus(row.status),
            merchant_id=row.merchant_id,
            product_ids=json.loads(row.product_ids),
            reference=row.reference,
            expires_at_us=row.expires_at_us,
            hold_transaction_id=row.hold_transaction_id,
            created_at_us=row.created_at_us,
            updated_at_us=row.updated_at_us,
            allocations=allocations,
        )

    def is_lapsed_at(self, now_us: int) -> bool:
        return self.status is HoldStatus.ACTIVE and self.expires_at_us <= now_us


@dataclass
class ExpiringAmount:
    amount: int
    expires_at_us: int


@dataclass
class AssetBalance:
    asset: str
    available: int = 0
    pending: int = 0
    held: int = 0
    next_expirations: list[ExpiringAmount] = field(default_factory=list)


class RunKind(enum.StrEnum):
    EXPIRY = "EXPIRY"
    EXPIRY_WARNING = "EXPIRY_WARNING"
    HOLD_TIMEOUT = "HOLD_TIMEOUT"
    INACTIVITY = "INACTIVITY"
    BIRTHDAY = "BIRTHDAY"
    TIER_REVIEW = "TIER_REVIEW"
    SETTLEMENT = "SETTLEMENT"


class RunStatus(enum.StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


@dataclass
class RunRecord:
    id: str
    kind: RunKind
    as_of_us: int
    status: RunStatus
    items_processed: int
    chunks_committed: int
    error: str
    trigger: str
    started_at_us: int
    finished_at_us: int | None

    @classmethod
    def from_row(cls, row: Any) -> RunRecord:
        return cls(
            id=row.id,
            kind=RunKind(row.kind),
            as_of_us=row.as_of_us,
            status=RunStatus(row.status),
            items_processed=row.items_processed,
            chunks_committed=row.chunks_committed,
            error=row.error,
            trigger=row.trigger,
            started_at_us=row.started_at_us,
            finished_at_us=row.finished_at_us,
        )


@dataclass
class UpcomingExpiration:
    lot: LotRecord
    customer_ref: str


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_token: str
