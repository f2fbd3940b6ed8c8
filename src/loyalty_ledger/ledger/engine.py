"""The posting engine: every change of value goes through `Tx`, inside one database transaction.

Each operation locks the wallets it touches (in id order), reads the lots, asks `domain` which
lots to use, updates the lots' parts, and records one or more journal entries whose postings sum
to zero per asset, with the allocations that explain each lot change and one outbox event per
entry. Nothing else is updated in place.

Accounts (see Posting in wallet.proto): wallet:<id>, hold:<id>, sponsor:<scheme>:<sponsor>,
cash:<scheme>, merchant:<scheme>:<merchant>, breakage:<scheme>. The balance of a wallet account
always equals the sum of `remaining` over the wallet's lots.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, String, bindparam, cast, exists, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Executable

from loyalty_ledger.domain import contributions
from loyalty_ledger.domain.contributions import Contribution
from loyalty_ledger.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InsufficientFunds,
    InvalidArgument,
    NotFound,
)
from loyalty_ledger.domain.expiry import (
    ExpiryPolicy,
    FixedTime,
    Inactivity,
    Never,
    compute_expire_time,
    policy_to_dict,
)
from loyalty_ledger.domain.redemption import RedemptionRate
from loyalty_ledger.domain.spend_order import (
    Funding,
    SpendContext,
    allocate,
    spend_order_key,
)
from loyalty_ledger.domain.tiers import TierProgram
from loyalty_ledger.domain.timeutil import from_us, to_us
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger import tiers
from loyalty_ledger.ledger.expiry_chunk import expire_whole_lots
from loyalty_ledger.ledger.ids import new_id
from loyalty_ledger.ledger.outbox import (
    EXPIRED,
    EXPIRING_SOON,
    HOLD_EXPIRED,
    append_event,
    append_rows,
    event_row,
    expiration_row,
)
from loyalty_ledger.ledger.reads import Reader, rate_for
from loyalty_ledger.ledger.records import (
    AllocationRecord,
    HoldRecord,
    HoldStatus,
    LotRecord,
    LotState,
    PostingRecord,
    RefundHandling,
    RunKind,
    RunRecord,
    RunStatus,
    SchemeRecord,
    TransactionRecord,
    TxType,
    WalletRecord,
    WalletStatus,
)

OPERATOR_SPONSOR = contributions.OPERATOR
DAY_US = 86_400_000_000


# -- accounts ---------------------------------------------------------------------------


def wallet_account(wallet_id: str) -> str:
    return f"wallet:{wallet_id}"


def hold_account(hold_id: str) -> str:
    return f"hold:{hold_id}"


def merchant_account(scheme_id: str, merchant_id: str) -> str:
    return f"merchant:{scheme_id}:{merchant_id}"


def sponsor_account(scheme_id: str, sponsor_id: str | None) -> str:
    return f"sponsor:{scheme_id}:{sponsor_id}"


def funding_account(lot: LotRecord) -> str:
    """Where a lot's value came from, and where it goes back to on reversal."""
    if lot.funding is Funding.PROMOTIONAL:
        return sponsor_account(lot.scheme_id, lot.sponsor_id)
    return f"cash:{lot.scheme_id}"


def expiry_account(lot: LotRecord) -> str:
    """Rule 7: expired promotional value returns to its sponsor; expired cash is breakage."""
    if lot.funding is Funding.PROMOTIONAL:
        return sponsor_account(lot.scheme_id, lot.sponsor_id)
    return f"breakage:{lot.scheme_id}"


# Entries that change a wallet's qualifying points (see domain.tiers).
_TIER_ACTIVITY = frozenset({TxType.AWARD, TxType.REVERSAL})

# -- hot-path statements ----------------------------------------------------------------
# Built once: a statement built per call costs its construction and SQLAlchemy's cache-key
# walk on every write. Values are passed as parameters at execution.

# Whether a wallet has an ACTIVE hold past its TTL at :b_now_us. Only then is there a hold to
# release before the write (`_release_lapsed_holds`), so most writes skip the holds query.
# SQLite only (see `_lapsed_hold_possible`).
_HAS_LAPSED_HOLD = (
    exists()
    .where(
        t.holds.c.wallet_id == t.wallets.c.id,
        t.holds.c.status == HoldStatus.ACTIVE.value,
        t.holds.c.expires_at_us <= bindparam("b_now_us"),
    )
    .label("has_lapsed_hold")
)

# Wallet rows locked in id order (PostgreSQL: FOR UPDATE; SQLite has one writer).
_LOCK_WALLETS = (
    select(t.wallets, _HAS_LAPSED_HOLD)
    .where(t.wallets.c.id.in_(bindparam("b_wallet_ids", expanding=True)))
    .order_by(t.wallets.c.id)
    .with_for_update(of=t.wallets)
)

# One wallet, locked, with its scheme's row and assets: what a credit, spend or hold needs
# before it looks at lots, in one statement instead of four (wallet, holds, scheme, assets).
# Nothing is cached: every write reads the scheme as it is, so scheme updates by any server
# process are seen at once. Scheme columns are labelled `scheme__<column>`; the assets come
# as "CODE:scale,..." (asset codes are [A-Z0-9_], see api/validation.py).
_SCHEME_PREFIX = "scheme__"
_SCHEME_ASSETS = (
    select(
        func.aggregate_strings(
            t.scheme_assets.c.code + ":" + cast(t.scheme_assets.c.scale, String), ","
        )
    )
    .where(t.scheme_assets.c.scheme_id == t.wallets.c.scheme_id)
    .scalar_subquery()
    .label(f"{_SCHEME_PREFIX}assets")
)
_LOCK_WALLET_WITH_SCHEME = (
    select(
        t.wallets,
        _HAS_LAPSED_HOLD,
        *[c.label(f"{_SCHEME_PREFIX}{c.name}") for c in t.schemes.c],
        _SCHEME_ASSETS,
    )
    .join_from(t.wallets, t.schemes, t.schemes.c.id == t.wallets.c.scheme_id)
    .where(t.wallets.c.id == bindparam("b_wallet_id"))
    .with_for_update(of=t.wallets)
)


class _SchemeColumns:
    """The `scheme__` columns of a `_LOCK_WALLET_WITH_SCHEME` row, as SchemeRecord.from_row
    reads a `schemes` row."""

    def __init__(self, row: Any) -> None:
        self._mapping = row._mapping

    def __getattr__(self, name: str) -> Any:
        return self._mapping[_SCHEME_PREFIX + name]


def _scheme_from_joined_row(row: Any) -> SchemeRecord:
    listed = row._mapping[f"{_SCHEME_PREFIX}assets"] or ""
    pairs = (item.split(":") for item in listed.split(",") if item)
    assets = {code: int(scale) for code, scale in sorted(pairs)}
    return SchemeRecord.from_row(_SchemeColumns(row), assets)


_UPDATE_LOTS = (
    update(t.lots)
    .where(t.lots.c.id == bindparam("b_id"))
    .values(
        remaining=bindparam("remaining"),
        spent=bindparam("spent"),
        held=bindparam("held"),
        expired=bindparam("expired"),
        reversed=bindparam("reversed"),
        state=bindparam("state"),
    )
)
_INSERT_LOT = t.lots.insert()
_INSERT_TRANSACTIONS = t.transactions.insert()
_INSERT_POSTINGS = t.postings.insert()
_INSERT_ALLOCATIONS = t.allocations.insert()

# -- commands ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemeSpec:
    """A scheme's writable fields, validated by the caller."""

    name: str
    assets: dict[str, int]
    timezone: str
    default_expiry_policy: ExpiryPolicy
    refund_handling: RefundHandling
    refund_grace_seconds: int
    cash_expiry_allowed: bool
    warning_lead_seconds: tuple[int, ...] = ()
    redemption_rates: tuple[RedemptionRate, ...] = ()
    tier_program: TierProgram | None = None
    contributions: tuple[Contribution, ...] = ()


@dataclass(frozen=True)
class CreditCommand:
    wallet_id: str
    kind: TxType  # AWARD or TOP_UP
    asset: str
    amount: int
    funding: Funding
    sponsor_id: str
    expire_at_us: int | None  # explicit instant, or None
    expiry_policy: ExpiryPolicy | None  # override, or None for the scheme default
    available_at_us: int | None
    merchant_ids: tuple[str, ...] = ()
    product_ids: tuple[str, ...] = ()
    reference: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DebitCommand:
    """A spend or a hold authorization."""

    wallet_id: str
    asset: str
    amount: int
    merchant_id: str
    product_ids: tuple[str, ...] = ()
    allow_partial: bool = False
    reference: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class RefundResult:
    refund: TransactionRecord
    amount: int
    expire: TransactionRecord | None


@dataclass
class ReversalResult:
    transaction: TransactionRecord
    reversed: int
    already_spent: int
    held: int


@dataclass
class _Journal:
    """A journal entry being assembled: postings and allocations to record together."""

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

    def post(self, account: str, asset: str, amount: int) -> None:
        if amount != 0:
            self.postings.append(PostingRecord(account, asset, amount))

    def move(self, source: str, target: str, asset: str, amount: int) -> None:
        """Two balanced legs: `amount` leaves `source` and arrives in `target`."""
        self.post(source, asset, -amount)
        self.post(target, asset, amount)

    def allocate(self, lot: LotRecord, amount: int) -> None:
        if amount != 0:
            self.allocations.append(AllocationRecord(lot.id, lot.wallet_id, lot.asset, amount))


class PostingTx(Reader):
    """All ledger writes, on one connection inside one database transaction."""

    def __init__(self, conn: AsyncConnection, now_us: int) -> None:
        super().__init__(conn, now_us)
        # Wallets whose tier may have moved: re-evaluated before commit (ledger.tiers).
        self.tier_activity: set[str] = set()

    # -- plumbing --------------------------------------------------------------------------

    async def _record(self, journal: _Journal) -> TransactionRecord:
        """Insert a journal entry, its postings and allocations, and its outbox event."""
        (txn,) = await self._record_many([journal])
        return txn

    async def _record_many(
        self, journals: list[_Journal], *, transaction_events: bool = True
    ) -> list[TransactionRecord]:
        """Insert journal entries in a few statements (expiry runs write thousands).

        Without `transaction_events` the caller appends the events that name each entry.
        """
        txns, txn_rows, posting_rows, allocation_rows, event_rows = [], [], [], [], []
        for journal in journals:
            if journal.type in _TIER_ACTIVITY and journal.wallet_id is not None:
                scheme = self.schemes_read.get(journal.scheme_id)
                if scheme is None or scheme.tier_program is not None:  # else: no tiers to move
                    self.tier_activity.add(journal.wallet_id)
            totals: dict[str, int] = defaultdict(int)
            for posting in journal.postings:
                totals[posting.asset] += posting.amount
            # Rule 1: a transaction that does not balance is a programming error.
            assert all(v == 0 for v in totals.values()), f"unbalanced {journal.type}: {totals}"
            txn = TransactionRecord(
                id=new_id("txn"),
                type=journal.type,
                scheme_id=journal.scheme_id,
                wallet_id=journal.wallet_id,
                counterpart_wallet_id=journal.counterpart_wallet_id,
                merchant_id=journal.merchant_id,
                hold_id=journal.hold_id,
                related_transaction_id=journal.related_transaction_id,
                reference=journal.reference,
                metadata=dict(journal.metadata),
                postings=journal.postings,
                allocations=journal.allocations,
                created_at_us=self.now_us,
            )
            txns.append(txn)
            txn_rows.append(
                {
                    "id": txn.id,
                    "type": txn.type.value,
                    "scheme_id": txn.scheme_id,
                    "wallet_id": txn.wallet_id,
                    "counterpart_wallet_id": txn.counterpart_wallet_id,
                    "merchant_id": txn.merchant_id,
                    "hold_id": txn.hold_id,
                    "related_transaction_id": txn.related_transaction_id,
                    "reference": txn.reference,
                    "metadata": json.dumps(txn.metadata, sort_keys=True),
                    "created_at_us": txn.created_at_us,
                }
            )
            posting_rows += [
                {
                    "transaction_id": txn.id,
                    "account": p.account,
                    "asset": p.asset,
                    "amount": p.amount,
                }
                for p in txn.postings
            ]
            allocation_rows += [
                {
                    "transaction_id": txn.id,
                    "lot_id": a.lot_id,
                    "wallet_id": a.wallet_id,
                    "asset": a.asset,
                    "amount": a.amount,
                }
                for a in txn.allocations
            ]
            if transaction_events:
                amounts: dict[str, int] = defaultdict(int)
                for p in txn.postings:
                    if txn.wallet_id is not None and p.account == wallet_account(txn.wallet_id):
                        amounts[p.asset] += p.amount
                event_rows.append(
                    event_row(
                        event_type=f"TRANSACTION_{txn.type.value}",
                        scheme_id=txn.scheme_id,
                        wallet_id=txn.wallet_id,
                        transaction_id=txn.id,
                        now_us=self.now_us,
                        payload={"wallet_amounts": dict(amounts), "hold_id": txn.hold_id},
                    )
                )
        for statement, rows in (
            (_INSERT_TRANSACTIONS, txn_rows),
            (_INSERT_POSTINGS, posting_rows),
            (_INSERT_ALLOCATIONS, allocation_rows),
        ):
            if rows:
                await self.conn.execute(statement, rows)
        await append_rows(self.conn, event_rows)
        return txns

    async def _save_lots(self, lots: Iterable[LotRecord]) -> None:
        rows = []
        for lot in lots:
            lot.settle_state()
            rows.append(
                {
                    "b_id": lot.id,
                    "remaining": lot.remaining,
                    "spent": lot.spent,
                    "held": lot.held,
                    "expired": lot.expired,
                    "reversed": lot.reversed,
                    "state": lot.state.value,
                }
            )
        if rows:
            await self.conn.execute(_UPDATE_LOTS, rows)

    async def _insert_lot(self, lot: LotRecord) -> None:
        lot.settle_state()
        await self.conn.execute(
            _INSERT_LOT,
            {
                "id": lot.id,
                "wallet_id": lot.wallet_id,
                "scheme_id": lot.scheme_id,
                "asset": lot.asset,
                "amount": lot.amount,
                "remaining": lot.remaining,
                "spent": lot.spent,
                "held": lot.held,
                "expired": lot.expired,
                "reversed": lot.reversed,
                "state": lot.state.value,
                "funding": lot.funding.value,
                "sponsor_id": lot.sponsor_id,
                "available_at_us": lot.available_at_us,
                "expires_at_us": lot.expires_at_us,
                "merchant_ids": json.dumps(lot.merchant_ids),
                "product_ids": json.dumps(lot.product_ids),
                "source_transaction_id": lot.source_transaction_id,
                "origin_lot_id": lot.origin_lot_id,
                "created_at_us": lot.created_at_us,
                "inactivity_days": lot.inactivity_days,
            },
        )

    def _copy_lot(
        self,
        lot: LotRecord,
        *,
        wallet_id: str,
        remaining: int,
        held: int = 0,
        expires_at_us: int | None = None,
        keep_expiry: bool = True,
    ) -> LotRecord:
        """A new lot carrying `lot`'s funding, sponsor and conditions (moves, re-credits)."""
        return LotRecord(
            id=new_id("lot"),
            wallet_id=wallet_id,
            scheme_id=lot.scheme_id,
            asset=lot.asset,
            amount=remaining + held,
            remaining=remaining,
            spent=0,
            held=held,
            expired=0,
            reversed=0,
            state=LotState.OPEN,
            funding=lot.funding,
            sponsor_id=lot.sponsor_id,
            available_at_us=lot.available_at_us,
            expires_at_us=lot.expires_at_us if keep_expiry else expires_at_us,
            merchant_ids=list(lot.merchant_ids),
            product_ids=list(lot.product_ids),
            source_transaction_id="",
            origin_lot_id=lot.id,
            created_at_us=self.now_us,
            inactivity_days=lot.inactivity_days if keep_expiry else None,
        )

    async def _insert_unique(self, statement: Executable, conflict: AlreadyExists) -> None:
        """Insert; a concurrent insert of the same key (PostgreSQL) becomes `conflict`."""
        try:
            async with self.conn.begin_nested():
                await self.conn.execute(statement)
        except IntegrityError:
            raise conflict from None

    async def _lock_wallets(
        self, wallet_ids: Iterable[str], *, release_lapsed: bool = True
    ) -> dict[str, WalletRecord]:
        """Lock wallet rows in id order (PostgreSQL; SQLite has one writer) and return them.

        Holds past their TTL are released first, so every write sees them as released.
        """
        ids = sorted(set(wallet_ids))
        rows = list(
            await self.conn.execute(_LOCK_WALLETS, {"b_wallet_ids": ids, "b_now_us": self.now_us})
        )
        found = {r.id: WalletRecord.from_row(r) for r in rows}
        for wallet_id in ids:
            if wallet_id not in found:
                raise NotFound("wallet", wallet_id)
        if release_lapsed:
            for row in rows:
                if self._lapsed_hold_possible(row):
                    await self._release_lapsed_holds(found[row.id])
        return found

    def _lapsed_hold_possible(self, locked_row: Any) -> bool:
        """Whether a wallet just locked may have a lapsed hold to release.

        On SQLite the lock statement's `has_lapsed_hold` is exact: the single writer runs
        nothing between it and this write. On PostgreSQL it is not: the statement's snapshot
        predates the wait for the row lock, so it misses holds that the lock's previous holder
        created or moved in (merges). The holds are then read after the lock, as always.
        """
        return bool(locked_row.has_lapsed_hold) or self.conn.dialect.name != "sqlite"

    async def _lock_wallet(self, wallet_id: str, *, release_lapsed: bool = True) -> WalletRecord:
        return (await self._lock_wallets([wallet_id], release_lapsed=release_lapsed))[wallet_id]

    async def _lock_wallet_with_scheme(self, wallet_id: str) -> tuple[WalletRecord, SchemeRecord]:
        """`_lock_wallet` (lapsed holds released) and `get_scheme` of its scheme, in one
        statement."""
        row = (
            await self.conn.execute(
                _LOCK_WALLET_WITH_SCHEME, {"b_wallet_id": wallet_id, "b_now_us": self.now_us}
            )
        ).first()
        if row is None:
            raise NotFound("wallet", wallet_id)
        wallet = WalletRecord.from_row(row)
        scheme = _scheme_from_joined_row(row)
        self.schemes_read[scheme.id] = scheme
        if self._lapsed_hold_possible(row):
            await self._release_lapsed_holds(wallet)
        return wallet, scheme

    @staticmethod
    def _require_open(wallet: WalletRecord) -> None:
        if wallet.status is WalletStatus.CLOSED:
            raise FailedPrecondition(
                f"wallet {wallet.id} is closed",
                reason="WALLET_CLOSED",
                wallet_id=wallet.id,
                merged_into=wallet.merged_into or "",
            )

    @classmethod
    def require_active(cls, wallet: WalletRecord) -> None:
        """WALLET_CLOSED or WALLET_FROZEN unless the wallet is ACTIVE."""
        cls._require_active(wallet)

    @classmethod
    def _require_active(cls, wallet: WalletRecord) -> None:
        cls._require_open(wallet)
        if wallet.status is WalletStatus.FROZEN:
            raise FailedPrecondition(
                f"wallet {wallet.id} is frozen", reason="WALLET_FROZEN", wallet_id=wallet.id
            )

    @staticmethod
    def _require_asset(scheme: SchemeRecord, asset: str, field_path: str = "asset") -> None:
        if asset not in scheme.assets:
            raise InvalidArgument.single(
                field_path,
                f"{asset!r} is not an asset of scheme {scheme.id} ({', '.join(scheme.assets)})",
            )

    async def _set_wallet(self, wallet: WalletRecord, **values: object) -> WalletRecord:
        await self.conn.execute(
            update(t.wallets)
            .where(t.wallets.c.id == wallet.id)
            .values(updated_at_us=self.now_us, **values)
        )
        return await self.get_wallet(wallet.id)

    # -- schemes ---------------------------------------------------------------------------

    async def create_scheme(self, scheme_id: str, spec: SchemeSpec) -> SchemeRecord:
        exists = AlreadyExists(
            f"scheme {scheme_id!r} exists already", reason="SCHEME_EXISTS", scheme_id=scheme_id
        )
        if await self.find_scheme(scheme_id) is not None:
            raise exists
        await self._insert_unique(
            t.schemes.insert().values(
                id=scheme_id, created_at_us=self.now_us, **self._scheme_values(spec)
            ),
            exists,
        )
        await self._insert_assets(scheme_id, spec.assets)
        await append_event(
            self.conn, event_type="SCHEME_CREATED", scheme_id=scheme_id, now_us=self.now_us
        )
        return await self.get_scheme(scheme_id)

    def _scheme_values(self, spec: SchemeSpec) -> dict[str, object]:
        return {
            "name": spec.name,
            "timezone": spec.timezone,
            "default_expiry_policy": json.dumps(policy_to_dict(spec.default_expiry_policy)),
            "refund_expired_handling": spec.refund_handling.value,
            "refund_grace_seconds": spec.refund_grace_seconds,
            "cash_expiry_allowed": spec.cash_expiry_allowed,
            "warning_lead_seconds": json.dumps(sorted(spec.warning_lead_seconds)),
            "redemption_rates": json.dumps(
                [[r.asset, r.points, r.currency, r.value] for r in spec.redemption_rates]
            ),
            "tier_program": (
                json.dumps(spec.tier_program.to_dict()) if spec.tier_program is not None else None
            ),
            "contributions": json.dumps(contributions.to_list(spec.contributions)),
            "updated_at_us": self.now_us,
        }

    async def _insert_assets(self, scheme_id: str, assets: dict[str, int]) -> None:
        if assets:
            await self.conn.execute(
                t.scheme_assets.insert(),
                [{"scheme_id": scheme_id, "code": c, "scale": s} for c, s in assets.items()],
            )

    async def update_scheme(self, scheme_id: str, spec: SchemeSpec) -> SchemeRecord:
        current = await self.get_scheme(scheme_id)
        for code, scale in current.assets.items():
            if code not in spec.assets:
                raise FailedPrecondition(
                    f"asset {code} cannot be removed from a scheme",
                    reason="ASSET_IN_USE",
                    asset=code,
                )
            if spec.assets[code] != scale:
                raise FailedPrecondition(
                    f"asset {code} cannot be rescaled ({scale} -> {spec.assets[code]})",
                    reason="ASSET_IN_USE",
                    asset=code,
                )
        await self.conn.execute(
            update(t.schemes).where(t.schemes.c.id == scheme_id).values(**self._scheme_values(spec))
        )
        added = {c: s for c, s in spec.assets.items() if c not in current.assets}
        await self._insert_assets(scheme_id, added)
        await append_event(
            self.conn, event_type="SCHEME_UPDATED", scheme_id=scheme_id, now_us=self.now_us
        )
        return await self.get_scheme(scheme_id)

    # -- wallets ---------------------------------------------------------------------------

    async def create_wallet(
        self,
        scheme_id: str,
        customer_ref: str,
        metadata: dict[str, str],
        tags: Iterable[str] = (),
        referred_by: str | None = None,
        birthday: tuple[int, int] | None = None,
    ) -> WalletRecord:
        await self.get_scheme(scheme_id)
        if referred_by is not None:
            referrer = await self.get_wallet(referred_by)
            if referrer.scheme_id != scheme_id:
                raise InvalidArgument.single(
                    "referred_by_wallet_id", f"wallet {referred_by} is in another scheme"
                )
            self._require_open(referrer)
        existing = (
            await self.conn.execute(
                select(t.wallets.c.id).where(
                    t.wallets.c.scheme_id == scheme_id, t.wallets.c.customer_ref == customer_ref
                )
            )
        ).scalar()
        if existing is not None:
            raise AlreadyExists(
                f"customer {customer_ref!r} already has wallet {existing} in scheme {scheme_id}",
                reason="WALLET_EXISTS",
                wallet_id=existing,
            )
        wallet_id = new_id("wal")
        await self._insert_unique(
            t.wallets.insert().values(
                id=wallet_id,
                scheme_id=scheme_id,
                customer_ref=customer_ref,
                status=WalletStatus.ACTIVE.value,
                status_reason="",
                merged_into=None,
                metadata=json.dumps(metadata, sort_keys=True),
                created_at_us=self.now_us,
                updated_at_us=self.now_us,
                tags=json.dumps(sorted(set(tags))),
                referred_by=referred_by,
                birth_month=birthday[0] if birthday else None,
                birth_day=birthday[1] if birthday else None,
            ),
            AlreadyExists(
                f"customer {customer_ref!r} already has a wallet in scheme {scheme_id}",
                reason="WALLET_EXISTS",
            ),
        )
        await append_event(
            self.conn,
            event_type="WALLET_CREATED",
            scheme_id=scheme_id,
            wallet_id=wallet_id,
            now_us=self.now_us,
        )
        # A new wallet enters a tier of threshold 0 at once (and the response shows it).
        await tiers.evaluate(self, [wallet_id], self.now_us, cause=tiers.ACTIVITY)
        return await self.get_wallet(wallet_id)

    async def change_wallet_status(
        self, wallet_id: str, target: WalletStatus, reason: str
    ) -> WalletRecord:
        """Freeze, unfreeze or close. Asking for the current status again changes nothing."""
        wallet = await self._lock_wallet(wallet_id)
        self._require_open(wallet)
        if wallet.status is target:
            return wallet
        if target is WalletStatus.CLOSED:
            await self._require_empty(wallet)
        await append_event(
            self.conn,
            event_type=f"WALLET_{target.value}",
            scheme_id=wallet.scheme_id,
            wallet_id=wallet.id,
            now_us=self.now_us,
            payload={"reason": reason},
        )
        return await self._set_wallet(wallet, status=target.value, status_reason=reason)

    async def _require_empty(self, wallet: WalletRecord) -> None:
        left: dict[str, int] = defaultdict(int)
        for lot in await self.open_lots(wallet.id):
            left[lot.asset] += lot.remaining + lot.held
        if left or await self.active_holds(wallet.id):
            detail = ", ".join(f"{v} {k}" for k, v in sorted(left.items())) or "active holds"
            raise FailedPrecondition(
                f"wallet {wallet.id} still holds value ({detail}); spend, reverse or merge it "
                "first",
                reason="WALLET_NOT_EMPTY",
                wallet_id=wallet.id,
            )

    # -- credit ----------------------------------------------------------------------------

    async def credit(self, cmd: CreditCommand) -> tuple[TransactionRecord, LotRecord]:
        wallet, scheme = await self._lock_wallet_with_scheme(cmd.wallet_id)
        self._require_open(wallet)
        self._require_asset(scheme, cmd.asset)
        available_at = max(self.now_us, cmd.available_at_us or self.now_us)
        expires_at, inactivity_days = self._credit_expiry(scheme, cmd, available_at)
        sponsor = cmd.sponsor_id or OPERATOR_SPONSOR
        lot = LotRecord(
            id=new_id("lot"),
            wallet_id=wallet.id,
            scheme_id=scheme.id,
            asset=cmd.asset,
            amount=cmd.amount,
            remaining=cmd.amount,
            spent=0,
            held=0,
            expired=0,
            reversed=0,
            state=LotState.OPEN,
            funding=cmd.funding,
            sponsor_id=sponsor if cmd.funding is Funding.PROMOTIONAL else None,
            available_at_us=available_at,
            expires_at_us=expires_at,
            merchant_ids=list(cmd.merchant_ids),
            product_ids=list(cmd.product_ids),
            source_transaction_id="",
            origin_lot_id=None,
            created_at_us=self.now_us,
            inactivity_days=inactivity_days,
        )
        journal = _Journal(
            cmd.kind, scheme.id, wallet.id, reference=cmd.reference, metadata=cmd.metadata
        )
        journal.move(funding_account(lot), wallet_account(wallet.id), cmd.asset, cmd.amount)
        txn = await self._record(journal)
        lot.source_transaction_id = txn.id
        await self._insert_lot(lot)
        return txn, lot

    async def set_wallet_tags(self, wallet_id: str, tags: Iterable[str]) -> WalletRecord:
        """Replace a wallet's tags (offers read them as conditions)."""
        wallet = await self._lock_wallet(wallet_id)
        self._require_open(wallet)
        return await self._set_wallet(wallet, tags=json.dumps(sorted(set(tags))))

    async def set_wallet_birthday(
        self, wallet_id: str, birthday: tuple[int, int] | None
    ) -> WalletRecord:
        """Set or clear a wallet's birthday (month, day), read by the birthday run."""
        wallet = await self._lock_wallet(wallet_id)
        self._require_open(wallet)
        month, day = birthday if birthday else (None, None)
        return await self._set_wallet(wallet, birth_month=month, birth_day=day)

    async def lock_wallet_for_reversal(self, wallet_id: str) -> WalletRecord:
        """Lock a wallet for a claw-back: a frozen wallet can still be reversed (fraud), a
        closed one is read-only."""
        wallet = await self._lock_wallet(wallet_id)
        self._require_open(wallet)
        return wallet

    async def lock_active_wallet(self, wallet_id: str) -> WalletRecord:
        """Lock a wallet for a write that needs it ACTIVE (not frozen, not closed)."""
        wallet = await self._lock_wallet(wallet_id)
        self._require_active(wallet)
        return wallet

    async def instant_discount(
        self,
        wallet: WalletRecord,
        asset: str,
        amount: int,
        *,
        sponsor_id: str,
        merchant_id: str,
        reference: str,
        metadata: dict[str, str],
    ) -> TransactionRecord:
        """An INSTANT offer award: awarded and spent at once, in one AWARD entry. The sponsor
        pays the merchant through the wallet, whose balance does not change (no lot)."""
        journal = _Journal(
            TxType.AWARD,
            wallet.scheme_id,
            wallet.id,
            merchant_id=merchant_id or None,
            reference=reference,
            metadata=metadata,
        )
        journal.move(
            sponsor_account(wallet.scheme_id, sponsor_id), wallet_account(wallet.id), asset, amount
        )
        journal.move(
            wallet_account(wallet.id),
            merchant_account(wallet.scheme_id, merchant_id or OPERATOR_SPONSOR),
            asset,
            amount,
        )
        return await self._record(journal)

    def _credit_expiry(
        self, scheme: SchemeRecord, cmd: CreditCommand, base_us: int
    ) -> tuple[int | None, int | None]:
        """The lot's expiry instant, or its inactivity days (promotional value only)."""
        explicit = cmd.expire_at_us is not None or cmd.expiry_policy is not None
        if cmd.funding is Funding.CASH and isinstance(cmd.expiry_policy, Inactivity):
            raise InvalidArgument.single(
                "expiry_policy.inactivity", "inactivity applies to promotional value only"
            )
        if cmd.funding is Funding.CASH and not scheme.cash_expiry_allowed:
            if explicit and not _never(cmd.expiry_policy, cmd.expire_at_us):
                raise FailedPrecondition(
                    f"scheme {scheme.id} does not let cash value expire",
                    reason="CASH_EXPIRY_NOT_ALLOWED",
                    scheme_id=scheme.id,
                )
            return None, None  # the scheme default applies to promotional value only
        if cmd.expire_at_us is not None:
            policy: ExpiryPolicy = FixedTime(from_us(cmd.expire_at_us))
        else:
            policy = cmd.expiry_policy or scheme.default_expiry_policy
        if isinstance(policy, Inactivity):
            return None, policy.days if cmd.funding is Funding.PROMOTIONAL else None
        expires = compute_expire_time(policy, from_us(base_us), ZoneInfo(scheme.timezone))
        if expires is None:
            return None, None
        expires_us = to_us(expires)
        if expires_us <= base_us:
            field_path = "expire_time" if cmd.expire_at_us is not None else "expiry_policy"
            raise InvalidArgument.single(
                field_path, "the value would expire before it becomes available"
            )
        return expires_us, None

    # -- holds ------------------------------------------------------------------------------

    async def _hold_for_update(self, hold_id: str) -> tuple[HoldRecord, WalletRecord]:
        hold = await self.get_hold(hold_id)
        # The hold itself is judged by the caller (HOLD_EXPIRED), so do not release it here.
        wallet = await self._lock_wallet(hold.wallet_id, release_lapsed=False)
        return await self.get_hold(hold_id), wallet  # re-read under the wallet lock

    async def _release_lapsed_holds(self, wallet: WalletRecord) -> None:
        """Holds past their TTL reserve nothing: release them before anything else happens."""
        for hold in await self.active_holds(wallet.id):
            if hold.is_lapsed_at(self.now_us):
                await self._release_hold(hold, HoldStatus.EXPIRED)

    async def _release_hold(
        self,
        hold: HoldRecord,
        status: HoldStatus,
        *,
        captured: int = 0,
        related_transaction_id: str | None = None,
    ) -> TransactionRecord | None:
        """End a hold: what was not captured goes back to its lots in a VOID entry."""
        lots = await self.lots_by_id(list(hold.allocations))
        release = {lot_id: amount for lot_id, amount in hold.allocations.items() if amount}
        # The captured part was already taken out of `release` by the caller.
        released_total = sum(release.values())
        journal = _Journal(
            TxType.VOID,
            hold.scheme_id,
            hold.wallet_id,
            hold_id=hold.id,
            merchant_id=hold.merchant_id,
            related_transaction_id=related_transaction_id,
        )
        touched = []
        for lot_id, amount in release.items():
            lot = lots[lot_id]
            lot.held -= amount
            lot.remaining += amount
            journal.allocate(lot, -amount)
            touched.append(lot)
        journal.move(
            hold_account(hold.id), wallet_account(hold.wallet_id), hold.asset, released_total
        )
        await self._save_lots(touched)
        await self.conn.execute(
            update(t.holds)
            .where(t.holds.c.id == hold.id)
            .values(status=status.value, captured_amount=captured, updated_at_us=self.now_us)
        )
        txn = None
        if released_total or status is not HoldStatus.CAPTURED:
            txn = await self._record(journal)
        if status is HoldStatus.EXPIRED:
            wallet = await self.get_wallet(hold.wallet_id)
            await append_rows(
                self.conn,
                [
                    expiration_row(
                        HOLD_EXPIRED,
                        scheme_id=hold.scheme_id,
                        wallet_id=hold.wallet_id,
                        customer_ref=wallet.customer_ref,
                        asset=hold.asset,
                        amount=released_total,
                        expires_at_us=hold.expires_at_us,
                        now_us=self.now_us,
                        transaction_id=txn.id if txn else None,
                        hold_id=hold.id,
                    )
                ],
            )
        await self._settle_restored(touched, txn)
        return txn

    async def _settle_restored(
        self, lots: Iterable[LotRecord], cause: TransactionRecord | None
    ) -> None:
        """Value restored (released, refunded) into a reversed lot is clawed back at once, and
        into a lot an expiry already closed is expired at once: neither becomes spendable."""
        expire = []
        for lot in lots:
            if not lot.remaining:
                continue
            if lot.state is LotState.EXPIRED:
                expire.append((lot, lot.remaining))
            elif lot.state is LotState.REVERSED:
                journal = _Journal(
                    TxType.REVERSAL,
                    lot.scheme_id,
                    lot.wallet_id,
                    related_transaction_id=cause.id if cause else None,
                )
                journal.move(
                    wallet_account(lot.wallet_id), funding_account(lot), lot.asset, lot.remaining
                )
                journal.allocate(lot, lot.remaining)
                lot.reversed += lot.remaining
                lot.remaining = 0
                await self._save_lots([lot])
                await self._record(journal)
        await self._expire_values(expire, related_transaction_id=cause.id if cause else None)

    async def _expire_values(
        self,
        entries: list[tuple[LotRecord, int]],
        *,
        related_transaction_id: str | None = None,
        save_lots: bool = True,
    ) -> dict[str, str]:
        """Expire `amount` of each lot's remaining value: one EXPIRE entry per wallet, value to
        the sponsor (promotional) or breakage (cash), and one EXPIRED event per lot.

        Returns the EXPIRE transaction id per wallet id. Saves the lots.
        """
        by_wallet: dict[str, list[tuple[LotRecord, int]]] = defaultdict(list)
        for lot, amount in entries:
            assert 0 <= amount <= lot.remaining, f"cannot expire {amount} of lot {lot.id}"
            if amount:
                by_wallet[lot.wallet_id].append((lot, amount))
        journals = []
        for wallet_id, items in by_wallet.items():
            journal = _Journal(
                TxType.EXPIRE,
                items[0][0].scheme_id,
                wallet_id,
                related_transaction_id=related_transaction_id,
            )
            legs: dict[tuple[str, str], int] = defaultdict(int)
            for lot, amount in items:
                legs[(wallet_account(wallet_id), lot.asset)] -= amount
                legs[(expiry_account(lot), lot.asset)] += amount
                journal.allocate(lot, amount)
                lot.remaining -= amount
                lot.expired += amount
            for (account, asset), amount in legs.items():
                journal.post(account, asset, amount)
            journals.append(journal)
        txns = await self._record_many(journals, transaction_events=False)
        txn_of_wallet = {txn.wallet_id or "": txn.id for txn in txns}
        refs = await self._customer_refs(list(by_wallet))
        await append_rows(
            self.conn,
            [
                expiration_row(
                    EXPIRED,
                    scheme_id=lot.scheme_id,
                    wallet_id=lot.wallet_id,
                    customer_ref=refs[lot.wallet_id],
                    asset=lot.asset,
                    amount=amount,
                    expires_at_us=lot.expires_at_us,
                    now_us=self.now_us,
                    transaction_id=txn_of_wallet[lot.wallet_id],
                    lot_id=lot.id,
                    sponsor_id=lot.sponsor_id,
                )
                for items in by_wallet.values()
                for lot, amount in items
            ],
        )
        if save_lots:
            await self._save_lots([lot for lot, _ in entries])
        return txn_of_wallet

    async def _customer_refs(self, wallet_ids: list[str]) -> dict[str, str]:
        if not wallet_ids:
            return {}
        rows = await self.conn.execute(
            select(t.wallets.c.id, t.wallets.c.customer_ref).where(t.wallets.c.id.in_(wallet_ids))
        )
        return {row.id: row.customer_ref for row in rows}

    async def _debit_plan(
        self, wallet: WalletRecord, scheme: SchemeRecord, cmd: DebitCommand
    ) -> tuple[dict[str, LotRecord], list[tuple[str, int]]]:
        self._require_active(wallet)
        self._require_asset(scheme, cmd.asset)
        lots = {lot.id: lot for lot in await self.open_lots(wallet.id, cmd.asset)}
        ctx = SpendContext(cmd.merchant_id, frozenset(cmd.product_ids), self.now_us)
        plan = allocate(
            [lot.view() for lot in lots.values()],
            cmd.amount,
            ctx,
            asset=cmd.asset,
            allow_partial=cmd.allow_partial,
        )
        return lots, plan

    async def spend(self, cmd: DebitCommand) -> tuple[TransactionRecord, int]:
        wallet, scheme = await self._lock_wallet_with_scheme(cmd.wallet_id)
        return await self._spend_locked(wallet, scheme, cmd)

    async def _spend_locked(
        self, wallet: WalletRecord, scheme: SchemeRecord, cmd: DebitCommand
    ) -> tuple[TransactionRecord, int]:
        """`spend` once the wallet is locked (its lapsed holds released)."""
        lots, plan = await self._debit_plan(wallet, scheme, cmd)
        journal = _Journal(
            TxType.SPEND,
            scheme.id,
            wallet.id,
            merchant_id=cmd.merchant_id,
            reference=cmd.reference,
            metadata=cmd.metadata,
        )
        total = 0
        for lot_id, amount in plan:
            lot = lots[lot_id]
            lot.remaining -= amount
            lot.spent += amount
            journal.allocate(lot, amount)
            total += amount
        journal.move(
            wallet_account(wallet.id),
            merchant_account(scheme.id, cmd.merchant_id),
            cmd.asset,
            total,
        )
        await self._save_lots(lots[lot_id] for lot_id, _ in plan)
        return await self._record(journal), total

    async def redeem_points(
        self, cmd: DebitCommand, currency: str, value: int
    ) -> tuple[TransactionRecord, int]:
        """Spend the points `value` costs at the scheme's rate; the entry records both."""
        wallet, scheme = await self._lock_wallet_with_scheme(cmd.wallet_id)
        rate = rate_for(scheme, cmd.asset, currency)
        points = rate.points_for(value)
        metadata = {"redeemed_value": str(value), "redeemed_currency": currency}
        redeemed = replace(cmd, amount=points, metadata=cmd.metadata | metadata)
        return await self._spend_locked(wallet, scheme, redeemed)

    async def authorize_hold(
        self, cmd: DebitCommand, ttl_us: int
    ) -> tuple[HoldRecord, TransactionRecord]:
        wallet, scheme = await self._lock_wallet_with_scheme(cmd.wallet_id)
        lots, plan = await self._debit_plan(wallet, scheme, cmd)
        hold_id = new_id("hld")
        journal = _Journal(
            TxType.HOLD,
            scheme.id,
            wallet.id,
            merchant_id=cmd.merchant_id,
            hold_id=hold_id,
            reference=cmd.reference,
        )
        total = 0
        for lot_id, amount in plan:
            lot = lots[lot_id]
            lot.remaining -= amount
            lot.held += amount
            journal.allocate(lot, amount)
            total += amount
        journal.move(wallet_account(wallet.id), hold_account(hold_id), cmd.asset, total)
        await self._save_lots(lots[lot_id] for lot_id, _ in plan)
        txn = await self._record(journal)
        await self.conn.execute(
            t.holds.insert().values(
                id=hold_id,
                wallet_id=wallet.id,
                scheme_id=scheme.id,
                asset=cmd.asset,
                amount=total,
                captured_amount=0,
                status=HoldStatus.ACTIVE.value,
                merchant_id=cmd.merchant_id,
                product_ids=json.dumps(list(cmd.product_ids)),
                reference=cmd.reference,
                expires_at_us=self.now_us + ttl_us,
                hold_transaction_id=txn.id,
                created_at_us=self.now_us,
                updated_at_us=self.now_us,
            )
        )
        await self.conn.execute(
            t.hold_allocations.insert(),
            [{"hold_id": hold_id, "lot_id": lot_id, "amount": amount} for lot_id, amount in plan],
        )
        return await self.get_hold(hold_id), txn

    def _require_active_hold(self, hold: HoldRecord) -> None:
        if hold.status is not HoldStatus.ACTIVE:
            raise FailedPrecondition(
                f"hold {hold.id} is {hold.status.value.lower()}",
                reason="HOLD_NOT_ACTIVE",
                hold_id=hold.id,
                status=hold.status.value,
            )

    async def capture_hold(self, hold_id: str, amount: int) -> tuple[HoldRecord, TransactionRecord]:
        hold, wallet = await self._hold_for_update(hold_id)
        self._require_active_hold(hold)
        if hold.is_lapsed_at(self.now_us):
            raise FailedPrecondition(
                f"hold {hold.id} expired at {from_us(hold.expires_at_us).isoformat()}",
                reason="HOLD_EXPIRED",
                hold_id=hold.id,
            )
        self._require_active(wallet)
        amount = amount or hold.amount
        if amount > hold.amount:
            raise InvalidArgument.single(
                "amount", f"cannot capture {amount}: the hold reserves {hold.amount}"
            )
        lots = await self.lots_by_id(list(hold.allocations))
        journal = _Journal(
            TxType.CAPTURE,
            hold.scheme_id,
            wallet.id,
            hold_id=hold.id,
            merchant_id=hold.merchant_id,
            related_transaction_id=hold.hold_transaction_id,
            reference=hold.reference,
        )
        left = amount
        for lot in sorted(lots.values(), key=lambda lot: spend_order_key(lot.view())):
            take = min(left, hold.allocations[lot.id])
            if take == 0:
                continue
            lot.held -= take
            lot.spent += take
            hold.allocations[lot.id] -= take
            journal.allocate(lot, take)
            left -= take
        assert left == 0, "hold allocations do not cover the hold"
        journal.move(
            hold_account(hold.id),
            merchant_account(hold.scheme_id, hold.merchant_id),
            hold.asset,
            amount,
        )
        await self._save_lots(lots.values())
        txn = await self._record(journal)
        await self._release_hold(
            hold, HoldStatus.CAPTURED, captured=amount, related_transaction_id=txn.id
        )
        return await self.get_hold(hold.id), txn

    async def void_hold(self, hold_id: str) -> tuple[HoldRecord, TransactionRecord | None]:
        """Release an active hold. A hold already past its TTL is released as EXPIRED."""
        hold, _wallet = await self._hold_for_update(hold_id)
        self._require_active_hold(hold)
        status = HoldStatus.EXPIRED if hold.is_lapsed_at(self.now_us) else HoldStatus.VOIDED
        txn = await self._release_hold(hold, status)
        return await self.get_hold(hold.id), txn

    # -- refunds and reversals -------------------------------------------------------------

    async def refund(self, transaction_id: str, amount: int, reference: str) -> RefundResult:
        original = await self.get_transaction(transaction_id)
        if original.type not in (TxType.SPEND, TxType.CAPTURE):
            raise FailedPrecondition(
                f"transaction {transaction_id} is a {original.type.value}, not a spend or capture",
                reason="NOT_REFUNDABLE",
                transaction_id=transaction_id,
            )
        consumed: dict[str, int] = defaultdict(int)
        for a in original.allocations:
            consumed[a.lot_id] += a.amount
        lots = await self.lots_by_id(list(consumed))
        wallets = await self._lock_wallets({lot.wallet_id for lot in lots.values()})
        for wallet in wallets.values():
            self._require_open(wallet)
        lots = await self.lots_by_id(list(consumed))  # re-read under the locks
        for a in await self._refund_allocations(transaction_id):
            consumed[a.lot_id] += a.amount  # refund allocations are negative
        refundable = sum(consumed.values())
        amount = amount or refundable
        if refundable == 0 or amount > refundable:
            raise FailedPrecondition(
                f"cannot refund {amount}: {refundable} of the spend is left to refund",
                reason="REFUND_EXCEEDS_SPEND",
                refundable=refundable,
            )
        scheme = await self.get_scheme(original.scheme_id)
        # Refund the lots consumed last first: the reverse of the spend order.
        order = sorted(lots.values(), key=lambda lot: spend_order_key(lot.view()), reverse=True)
        refund = _Journal(
            TxType.REFUND,
            scheme.id,
            original.wallet_id,
            merchant_id=original.merchant_id,
            related_transaction_id=original.id,
            reference=reference,
        )
        expire: list[tuple[LotRecord, int]] = []
        new_lots: list[LotRecord] = []
        left = amount
        asset = lots[next(iter(lots))].asset
        for lot in order:
            take = min(left, consumed[lot.id])
            if take <= 0:
                continue
            left -= take
            refund.allocate(lot, -take)
            refund.move(
                merchant_account(scheme.id, original.merchant_id or ""),
                wallet_account(lot.wallet_id),
                asset,
                take,
            )
            if lot.state is not LotState.EXPIRED and not lot.is_expired_at(self.now_us):
                lot.spent -= take
                lot.remaining += take
            elif scheme.refund_handling is RefundHandling.EXPIRE:
                lot.spent -= take
                lot.remaining += take
                expire.append((lot, take))
            else:
                grace_end = self.now_us + scheme.refund_grace_seconds * 1_000_000
                new_lots.append(
                    self._copy_lot(
                        lot,
                        wallet_id=lot.wallet_id,
                        remaining=take,
                        expires_at_us=grace_end,
                        keep_expiry=False,
                    )
                )
        await self._save_lots(lots.values())
        refund_txn = await self._record(refund)
        for lot in new_lots:
            lot.available_at_us = self.now_us
            lot.source_transaction_id = refund_txn.id
            await self._insert_lot(lot)
        expired = await self._expire_values(expire, related_transaction_id=refund_txn.id)
        expire_txn = (
            await self.get_transaction(expired[original.wallet_id or ""]) if expired else None
        )
        await self._settle_restored(lots.values(), refund_txn)
        return RefundResult(refund_txn, amount, expire_txn)

    async def _refund_allocations(self, transaction_id: str) -> list[AllocationRecord]:
        refund_ids = select(t.transactions.c.id).where(
            t.transactions.c.related_transaction_id == transaction_id,
            t.transactions.c.type == TxType.REFUND.value,
        )
        rows = await self.conn.execute(
            select(t.allocations).where(t.allocations.c.transaction_id.in_(refund_ids))
        )
        return [AllocationRecord(r.lot_id, r.wallet_id, r.asset, r.amount) for r in rows]

    async def reverse_credit(self, transaction_id: str, reason: str) -> ReversalResult:
        original = await self.get_transaction(transaction_id)
        if original.type not in (TxType.AWARD, TxType.TOP_UP):
            raise FailedPrecondition(
                f"transaction {transaction_id} is a {original.type.value}, not a credit",
                reason="NOT_REVERSIBLE",
                transaction_id=transaction_id,
            )
        assert original.wallet_id is not None
        # A frozen wallet can still be clawed back (fraud); a closed one is read only.
        self._require_open(await self._lock_wallet(original.wallet_id))
        # Through the wallet's index: the credit's lot stays in its wallet (a merge copies it).
        row = (
            await self.conn.execute(
                select(t.lots).where(
                    t.lots.c.wallet_id == original.wallet_id,
                    t.lots.c.source_transaction_id == transaction_id,
                )
            )
        ).one()
        lot = LotRecord.from_row(row)
        if lot.state is LotState.REVERSED:
            raise FailedPrecondition(
                f"credit {transaction_id} was already reversed",
                reason="ALREADY_REVERSED",
                transaction_id=transaction_id,
            )
        journal = _Journal(
            TxType.REVERSAL,
            lot.scheme_id,
            lot.wallet_id,
            related_transaction_id=original.id,
            metadata={"reason": reason},
        )
        reversed_amount = lot.remaining
        journal.move(
            wallet_account(lot.wallet_id), funding_account(lot), lot.asset, reversed_amount
        )
        journal.allocate(lot, reversed_amount)
        lot.reversed += reversed_amount
        lot.remaining = 0
        lot.state = LotState.REVERSED
        await self._save_lots([lot])
        txn = await self._record(journal)
        return ReversalResult(txn, reversed_amount, lot.spent, lot.held)

    async def reverse_award_part(
        self, award_transaction_id: str, lot_id: str, amount: int, reason: str
    ) -> tuple[TransactionRecord | None, int]:
        """Take back up to `amount` of an award's lot (ReverseCredit semantics, in part): what
        is left of the lot goes back to its funding account; the rest was already spent or
        expired and is reported, never clawed from other value. Returns the REVERSAL entry
        (None when nothing was left) and the part that could not be taken back."""
        lot = (await self.lots_by_id([lot_id]))[lot_id]
        self._require_open(await self._lock_wallet(lot.wallet_id))
        lot = (await self.lots_by_id([lot_id]))[lot_id]  # re-read under the wallet lock
        taken = min(amount, lot.remaining) if lot.state is LotState.OPEN else 0
        if taken == 0:
            return None, amount
        journal = _Journal(
            TxType.REVERSAL,
            lot.scheme_id,
            lot.wallet_id,
            related_transaction_id=award_transaction_id,
            metadata={"reason": reason},
        )
        journal.move(wallet_account(lot.wallet_id), funding_account(lot), lot.asset, taken)
        journal.allocate(lot, taken)
        lot.reversed += taken
        lot.remaining -= taken
        await self._save_lots([lot])
        return await self._record(journal), amount - taken

    async def reverse_instant_part(
        self,
        award: TransactionRecord,
        asset: str,
        amount: int,
        *,
        sponsor_id: str,
        merchant_id: str,
        reason: str,
    ) -> TransactionRecord:
        """Give back `amount` of an INSTANT discount: the merchant returns it to the sponsor
        (the goods came back, so the discount no longer applies)."""
        assert award.wallet_id is not None
        journal = _Journal(
            TxType.REVERSAL,
            award.scheme_id,
            award.wallet_id,
            merchant_id=merchant_id or None,
            related_transaction_id=award.id,
            metadata={"reason": reason},
        )
        journal.move(
            merchant_account(award.scheme_id, merchant_id or OPERATOR_SPONSOR),
            sponsor_account(award.scheme_id, sponsor_id),
            asset,
            amount,
        )
        return await self._record(journal)

    # -- moving value between wallets --------------------------------------------------------

    async def transfer(
        self, from_wallet_id: str, to_wallet_id: str, asset: str, amount: int, reference: str
    ) -> tuple[TransactionRecord, list[LotRecord]]:
        if from_wallet_id == to_wallet_id:
            raise InvalidArgument.single("to_wallet_id", "must differ from from_wallet_id")
        wallets = await self._lock_wallets([from_wallet_id, to_wallet_id])
        source, target = wallets[from_wallet_id], wallets[to_wallet_id]
        self._require_active(source)
        self._require_open(target)
        if source.scheme_id != target.scheme_id:
            raise FailedPrecondition(
                "transfers stay within one scheme",
                reason="SCHEME_MISMATCH",
                from_scheme_id=source.scheme_id,
                to_scheme_id=target.scheme_id,
            )
        scheme = await self.get_scheme(source.scheme_id)
        self._require_asset(scheme, asset)
        lots = await self.open_lots(source.id, asset)
        usable = [
            lot
            for lot in lots
            if lot.remaining > 0
            and lot.available_at_us <= self.now_us
            and not lot.is_expired_at(self.now_us)
        ]
        available = sum(lot.remaining for lot in usable)
        if available < amount:
            raise InsufficientFunds(asset, amount, available)
        journal = _Journal(
            TxType.TRANSFER,
            scheme.id,
            source.id,
            counterpart_wallet_id=target.id,
            reference=reference,
        )
        moved, new_lots, left = [], [], amount
        for lot in usable:  # already in spend order
            take = min(left, lot.remaining)
            if take == 0:
                break
            lot.remaining -= take
            lot.spent += take
            journal.allocate(lot, take)
            moved.append(lot)
            new_lots.append(self._copy_lot(lot, wallet_id=target.id, remaining=take))
            left -= take
        journal.move(wallet_account(source.id), wallet_account(target.id), asset, amount)
        await self._save_lots(moved)
        txn = await self._record(journal)
        for lot in new_lots:
            lot.source_transaction_id = txn.id
            await self._insert_lot(lot)
        return txn, new_lots

    async def merge_wallets(
        self, survivor_id: str, duplicate_id: str
    ) -> tuple[WalletRecord, WalletRecord, TransactionRecord]:
        if survivor_id == duplicate_id:
            raise InvalidArgument.single("duplicate_wallet_id", "must differ from the survivor")
        wallets = await self._lock_wallets([survivor_id, duplicate_id])
        survivor, duplicate = wallets[survivor_id], wallets[duplicate_id]
        self._require_active(survivor)
        self._require_active(duplicate)
        if survivor.scheme_id != duplicate.scheme_id:
            raise FailedPrecondition(
                "only wallets of one scheme can be merged",
                reason="SCHEME_MISMATCH",
                survivor_scheme_id=survivor.scheme_id,
                duplicate_scheme_id=duplicate.scheme_id,
            )
        journal = _Journal(
            TxType.MERGE, survivor.scheme_id, duplicate.id, counterpart_wallet_id=survivor.id
        )
        moved, new_lots, lot_map = [], [], {}
        # Open lots, and reversed or expired ones still reserved by a hold: the hold moves, so
        # its value must move too (and keep its state: a void then sends it where it belongs).
        held_closed = await self.conn.execute(
            select(t.lots).where(
                t.lots.c.wallet_id == duplicate.id,
                t.lots.c.state.in_([LotState.REVERSED.value, LotState.EXPIRED.value]),
                t.lots.c.held > 0,
            )
        )
        lots = await self.open_lots(duplicate.id)
        lots += [LotRecord.from_row(row) for row in held_closed]
        for lot in lots:
            copy = self._copy_lot(
                lot, wallet_id=survivor.id, remaining=lot.remaining, held=lot.held
            )
            copy.state = lot.state
            journal.allocate(lot, lot.remaining + lot.held)
            journal.move(
                wallet_account(duplicate.id), wallet_account(survivor.id), lot.asset, lot.remaining
            )
            lot.spent += lot.remaining + lot.held
            lot.remaining = lot.held = 0
            moved.append(lot)
            new_lots.append(copy)
            lot_map[lot.id] = copy.id
        await self._save_lots(moved)
        txn = await self._record(journal)
        for lot in new_lots:
            lot.source_transaction_id = txn.id
            await self._insert_lot(lot)
        for old_id, new_id_ in lot_map.items():
            await self.conn.execute(
                update(t.hold_allocations)
                .where(t.hold_allocations.c.lot_id == old_id)
                .values(lot_id=new_id_)
            )
        await self.conn.execute(
            update(t.holds)
            .where(t.holds.c.wallet_id == duplicate.id, t.holds.c.status == HoldStatus.ACTIVE.value)
            .values(wallet_id=survivor.id, updated_at_us=self.now_us)
        )
        await append_event(
            self.conn,
            event_type="WALLET_MERGED",
            scheme_id=survivor.scheme_id,
            wallet_id=duplicate.id,
            transaction_id=txn.id,
            now_us=self.now_us,
            payload={"survivor_wallet_id": survivor.id},
        )
        closed = await self._set_wallet(
            duplicate,
            status=WalletStatus.CLOSED.value,
            merged_into=survivor.id,
            status_reason=f"merged into {survivor.id}",
        )
        return await self.get_wallet(survivor.id), closed, txn


def _never(policy: ExpiryPolicy | None, expire_at_us: int | None) -> bool:
    return expire_at_us is None and (policy is None or isinstance(policy, Never))


# -- expiry: runs, manual expiry and extension ---------------------------------------------


class Tx(PostingTx):
    """Expiry, warnings and hold timeouts, in chunks of bounded size (one database transaction
    each). A chunk that commits is never redone: what it processed is no longer due."""

    def _due_lots_query(self, as_of_us: int, chunk_max: int) -> Any:
        query = (
            select(t.lots)
            .where(t.LOT_IS_OPEN, t.lots.c.expires_at_us <= as_of_us)
            .order_by(*t.EXPIRY_ORDER)
            .limit(chunk_max)
        )
        if self.conn.dialect.name == "postgresql":
            # Overlapping runs on several replicas take disjoint chunks.
            query = query.with_for_update(skip_locked=True)
        return query

    async def expire_due_chunk(self, run_id: str | None, as_of_us: int, chunk_max: int) -> int:
        """Expire up to `chunk_max` due lots (rule 5). Returns how many lots it expired."""
        return await expire_whole_lots(
            self.conn, self._due_lots_query(as_of_us, chunk_max), run_id=run_id, now_us=self.now_us
        )

    async def _open_lot(self, lot_id: str) -> LotRecord:
        lot = (await self.lots_by_id([lot_id])).get(lot_id)
        if lot is None:
            raise NotFound("lot", lot_id)
        self._require_open(await self._lock_wallet(lot.wallet_id))
        lot = (await self.lots_by_id([lot_id]))[lot_id]  # re-read under the wallet lock
        if lot.state is not LotState.OPEN:
            raise FailedPrecondition(
                f"lot {lot_id} is {lot.state.value.lower()}",
                reason="LOT_NOT_OPEN",
                lot_id=lot_id,
                state=lot.state.value,
            )
        return lot

    async def expire_lot(self, lot_id: str, reason: str) -> tuple[TransactionRecord, LotRecord]:
        """Expire a lot early, by hand (audited: the EXPIRE entry carries the reason)."""
        lot = await self._open_lot(lot_id)
        if lot.remaining == 0:
            raise FailedPrecondition(
                f"lot {lot_id} has nothing left to expire",
                reason="NOTHING_TO_EXPIRE",
                lot_id=lot_id,
            )
        await expire_whole_lots(
            self.conn, select(t.lots).where(t.lots.c.id == lot.id), run_id=None, now_us=self.now_us
        )
        txn_id: str = (
            await self.conn.execute(
                select(t.allocations.c.transaction_id)
                .join(t.transactions, t.transactions.c.id == t.allocations.c.transaction_id)
                .where(
                    t.allocations.c.wallet_id == lot.wallet_id,
                    t.allocations.c.lot_id == lot.id,
                    t.transactions.c.type == TxType.EXPIRE.value,
                )
            )
        ).scalar_one()
        await self.conn.execute(
            update(t.transactions)
            .where(t.transactions.c.id == txn_id)
            .values(metadata=json.dumps({"reason": reason, "manual": "true"}, sort_keys=True))
        )
        return await self.get_transaction(txn_id), (await self.lots_by_id([lot_id]))[lot_id]

    async def extend_lot(
        self, lot_id: str, expires_at_us: int, reason: str
    ) -> tuple[TransactionRecord, LotRecord]:
        """Give an open lot a later expiry, recorded as an ADJUST entry with an event."""
        lot = await self._open_lot(lot_id)
        if lot.is_expired_at(self.now_us):
            raise FailedPrecondition(
                f"lot {lot_id} has already expired", reason="LOT_EXPIRED", lot_id=lot_id
            )
        if expires_at_us <= self.now_us or (
            lot.expires_at_us is not None and expires_at_us <= lot.expires_at_us
        ):
            raise InvalidArgument.single(
                "expire_time", "must be in the future and later than the lot's current expiry"
            )
        if lot.expires_at_us is None and lot.funding is Funding.CASH:
            scheme = await self.get_scheme(lot.scheme_id)
            if not scheme.cash_expiry_allowed:
                raise FailedPrecondition(
                    f"scheme {scheme.id} does not let cash value expire",
                    reason="CASH_EXPIRY_NOT_ALLOWED",
                    scheme_id=scheme.id,
                )
        journal = _Journal(
            TxType.ADJUST,
            lot.scheme_id,
            lot.wallet_id,
            metadata={
                "reason": reason,
                "lot_id": lot.id,
                "old_expire_time_us": "" if lot.expires_at_us is None else str(lot.expires_at_us),
                "new_expire_time_us": str(expires_at_us),
            },
        )
        txn = await self._record(journal)
        await self.conn.execute(
            update(t.lots).where(t.lots.c.id == lot.id).values(expires_at_us=expires_at_us)
        )
        lot.expires_at_us = expires_at_us
        return txn, lot

    async def warn_chunk(self, run_id: str, as_of_us: int, chunk_max: int) -> int:
        """Emit EXPIRING_SOON once per (lot, lead time, expiry). A lot inside several lead
        times at once gets one event, for the shortest; the longer ones are marked as sent."""
        sent = 0
        schemes = await self.conn.execute(
            select(t.schemes.c.id, t.schemes.c.warning_lead_seconds).where(
                t.schemes.c.warning_lead_seconds != "[]"
            )
        )
        for row in list(schemes):
            scheme_id: str = row.id
            leads = sorted(json.loads(row.warning_lead_seconds))
            for i, lead in enumerate(leads):
                if sent >= chunk_max:
                    return sent
                sent += await self._warn(
                    scheme_id, lead, leads[i:], run_id, as_of_us, chunk_max - sent
                )
        return sent

    async def _warn(
        self,
        scheme_id: str,
        lead: int,
        covered: list[int],
        run_id: str,
        as_of_us: int,
        limit: int,
    ) -> int:
        warned = (
            select(t.expiry_warnings.c.lot_id)
            .where(
                t.expiry_warnings.c.lot_id == t.lots.c.id,
                t.expiry_warnings.c.lead_seconds == lead,
                t.expiry_warnings.c.expires_at_us == t.lots.c.expires_at_us,
            )
            .exists()
        )
        rows = list(
            await self.conn.execute(
                select(t.lots, t.wallets.c.customer_ref)
                .join(t.wallets, t.wallets.c.id == t.lots.c.wallet_id)
                .where(
                    t.lots.c.scheme_id == scheme_id,
                    t.LOT_IS_OPEN,
                    t.lots.c.remaining > 0,
                    t.lots.c.expires_at_us > as_of_us,
                    t.lots.c.expires_at_us <= as_of_us + lead * 1_000_000,
                    ~warned,
                )
                .order_by(*t.EXPIRY_ORDER)
                .limit(limit)
            )
        )
        if not rows:
            return 0
        insert = pg_insert if self.conn.dialect.name == "postgresql" else sqlite_insert
        await self.conn.execute(
            insert(t.expiry_warnings).on_conflict_do_nothing(),
            [
                {
                    "lot_id": r.id,
                    "lead_seconds": longer,
                    "expires_at_us": r.expires_at_us,
                    "run_id": run_id,
                    "created_at_us": self.now_us,
                }
                for r in rows
                for longer in covered
            ],
        )
        await append_rows(
            self.conn,
            [
                expiration_row(
                    EXPIRING_SOON,
                    scheme_id=r.scheme_id,
                    wallet_id=r.wallet_id,
                    customer_ref=r.customer_ref,
                    asset=r.asset,
                    amount=r.remaining,
                    expires_at_us=r.expires_at_us,
                    now_us=self.now_us,
                    lot_id=r.id,
                    sponsor_id=r.sponsor_id,
                    lead_seconds=lead,
                )
                for r in rows
            ],
        )
        return len(rows)

    async def expire_inactive_chunk(self, run_id: str, as_of_us: int, chunk_max: int) -> int:
        """Expire up to `chunk_max` INACTIVITY lots whose wallet had no earn or spend in the
        lot's asset during the lot's inactivity days before `as_of_us`."""
        lots, postings, txns = t.lots, t.postings, t.transactions
        recent_activity = (
            select(postings.c.id)
            .join(txns, txns.c.id == postings.c.transaction_id)
            .where(
                postings.c.account == literal("wallet:") + lots.c.wallet_id,
                postings.c.asset == lots.c.asset,
                txns.c.type.in_(
                    [TxType.AWARD.value, TxType.TOP_UP.value, TxType.SPEND.value, TxType.HOLD.value]
                ),
                txns.c.created_at_us
                > literal(as_of_us, BigInteger)
                - lots.c.inactivity_days * literal(DAY_US, BigInteger),
            )
            .exists()
        )
        query = (
            select(lots)
            .where(
                t.LOT_IS_OPEN,
                lots.c.inactivity_days.is_not(None),
                lots.c.funding == Funding.PROMOTIONAL.value,
                lots.c.remaining > 0,
                ~recent_activity,
            )
            .order_by(lots.c.id)
            .limit(chunk_max)
        )
        if self.conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True, of=lots)
        return await expire_whole_lots(self.conn, query, run_id=run_id, now_us=self.now_us)

    async def start_run(self, kind: RunKind, as_of_us: int, trigger: str) -> RunRecord:
        run_id = new_id("run")
        await self.conn.execute(
            t.runs.insert().values(
                id=run_id,
                kind=kind.value,
                as_of_us=as_of_us,
                status=RunStatus.RUNNING.value,
                trigger=trigger,
                started_at_us=self.now_us,
            )
        )
        return await self.get_run(run_id)

    async def count_chunk(self, run_id: str, items: int) -> None:
        """Record a committed chunk (in that chunk's own transaction)."""
        await self.conn.execute(
            update(t.runs)
            .where(t.runs.c.id == run_id)
            .values(
                items_processed=t.runs.c.items_processed + items,
                chunks_committed=t.runs.c.chunks_committed + 1,
            )
        )

    async def finish_run(self, run_id: str, status: RunStatus, error: str = "") -> RunRecord:
        await self.conn.execute(
            update(t.runs)
            .where(t.runs.c.id == run_id)
            .values(status=status.value, error=error[:1000], finished_at_us=self.now_us)
        )
        return await self.get_run(run_id)

    async def acquire_lease(self, name: str, holder: str, ttl_us: int) -> int | None:
        """Take or renew the lease `name` for `ttl_us`; its fencing token, or None if another
        holder's lease is still valid."""
        lease = t.job_leases
        row = (
            await self.conn.execute(select(lease).where(lease.c.name == name).with_for_update())
        ).first()
        if row is None:
            try:
                await self._insert_unique(
                    lease.insert().values(
                        name=name,
                        holder=holder,
                        fencing_token=1,
                        expires_at_us=self.now_us + ttl_us,
                    ),
                    AlreadyExists(f"lease {name} was just taken", reason="LEASE_TAKEN"),
                )
            except AlreadyExists:
                return None  # another replica created it first
            return 1
        if row.holder != holder and row.expires_at_us > self.now_us:
            return None
        token = row.fencing_token + (0 if row.holder == holder else 1)
        await self.conn.execute(
            update(lease)
            .where(lease.c.name == name)
            .values(holder=holder, fencing_token=token, expires_at_us=self.now_us + ttl_us)
        )
        return int(token)

    async def interrupted_runs(self) -> list[RunRecord]:
        """Runs left RUNNING by a process that died: they are resumed, not restarted."""
        rows = await self.conn.execute(
            select(t.runs)
            .where(t.runs.c.status == RunStatus.RUNNING.value)
            .order_by(t.runs.c.started_at_us)
        )
        return [RunRecord.from_row(r) for r in rows]

    async def release_lapsed_holds_chunk(self, as_of_us: int, chunk_max: int) -> int:
        """Release up to `chunk_max` holds whose TTL ended at or before `as_of_us`."""
        query = (
            select(t.holds.c.id, t.holds.c.wallet_id)
            .where(t.holds.c.status == HoldStatus.ACTIVE.value, t.holds.c.expires_at_us <= as_of_us)
            .order_by(t.holds.c.expires_at_us, t.holds.c.id)
            .limit(chunk_max)
        )
        due = list(await self.conn.execute(query))
        # Wallets first, in id order, as every other write locks them (the holds' rows are
        # not locked before: VoidHold locks the wallet, then the hold).
        await self._lock_wallets({row.wallet_id for row in due}, release_lapsed=False)
        for row in due:
            hold = await self.get_hold(row.id)  # re-read under the lock: a void may have won
            if hold.status is HoldStatus.ACTIVE:
                await self._release_hold(hold, HoldStatus.EXPIRED)
        return len(due)
