"""Read side of the ledger: resources, balances and listings on one connection."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from sqlalchemy import Select, bindparam, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty_ledger.domain.errors import InvalidArgument, NotFound
from loyalty_ledger.domain.redemption import Quote, RedemptionRate, quote, require_rate
from loyalty_ledger.domain.spend_order import SpendContext, eligible_available
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.paging import after_key, decode_token, encode_token
from loyalty_ledger.ledger.records import (
    AllocationRecord,
    AssetBalance,
    ExpiringAmount,
    HoldRecord,
    LotRecord,
    LotState,
    Page,
    PostingRecord,
    RunKind,
    RunRecord,
    SchemeRecord,
    TransactionRecord,
    TxType,
    UpcomingExpiration,
    WalletRecord,
)

NEXT_EXPIRATIONS_MAX = 5
_NEVER = 2**63 - 1  # sort key of a lot that never expires


def _lot_order_columns() -> list[Any]:
    """Spend order in SQL, matching domain.spend_order.spend_order_key."""
    return [
        func.coalesce(t.lots.c.expires_at_us, _NEVER),
        case((t.lots.c.funding == "CASH", 1), else_=0),
        t.lots.c.created_at_us,
        t.lots.c.id,
    ]


def _open_lots_query(*, by_asset: bool) -> Select[Any]:
    query = select(t.lots).where(
        t.lots.c.wallet_id == bindparam("b_wallet_id"), t.lots.c.state == LotState.OPEN.value
    )
    if by_asset:
        query = query.where(t.lots.c.asset == bindparam("b_asset"))
    return query.order_by(*_lot_order_columns())


# Built once: a spend reads its wallet's lots on every call.
_OPEN_LOTS = _open_lots_query(by_asset=False)
_OPEN_LOTS_OF_ASSET = _open_lots_query(by_asset=True)


def rate_for(scheme: SchemeRecord, asset: str, currency: str) -> RedemptionRate:
    """The scheme's rate for `asset` in `currency` (both must be its assets)."""
    for field_path, code in (("asset", asset), ("currency", currency)):
        if code not in scheme.assets:
            raise InvalidArgument.single(field_path, f"{code!r} is not an asset of {scheme.id}")
    return require_rate(scheme.id, scheme.redemption_rates, asset, currency)


class Reader:
    """Queries on one connection at one instant (`now_us`)."""

    def __init__(self, conn: AsyncConnection, now_us: int) -> None:
        self.conn = conn
        self.now_us = now_us
        self.schemes_read: dict[str, SchemeRecord] = {}  # by id, as `find_scheme` found them

    # -- schemes -----------------------------------------------------------------------

    async def _scheme_assets(self, scheme_ids: list[str]) -> dict[str, dict[str, int]]:
        rows = await self.conn.execute(
            select(t.scheme_assets).where(t.scheme_assets.c.scheme_id.in_(scheme_ids))
        )
        assets: dict[str, dict[str, int]] = defaultdict(dict)
        for row in rows:
            assets[row.scheme_id][row.code] = row.scale
        return assets

    async def find_scheme(self, scheme_id: str) -> SchemeRecord | None:
        row = (
            await self.conn.execute(select(t.schemes).where(t.schemes.c.id == scheme_id))
        ).first()
        if row is None:
            return None
        assets = await self._scheme_assets([scheme_id])
        scheme = SchemeRecord.from_row(row, dict(sorted(assets[scheme_id].items())))
        self.schemes_read[scheme_id] = scheme
        return scheme

    async def get_scheme(self, scheme_id: str) -> SchemeRecord:
        scheme = await self.find_scheme(scheme_id)
        if scheme is None:
            raise NotFound("scheme", scheme_id)
        return scheme

    async def list_schemes(self, size: int, token: str) -> Page[SchemeRecord]:
        key_cols = [t.schemes.c.created_at_us, t.schemes.c.id]
        query = select(t.schemes).order_by(*key_cols).limit(size + 1)
        after = decode_token("schemes", token, 2)
        if after is not None:
            query = query.where(after_key(key_cols, after))
        rows = list(await self.conn.execute(query))
        assets = await self._scheme_assets([r.id for r in rows[:size]])
        items = [SchemeRecord.from_row(r, dict(sorted(assets[r.id].items()))) for r in rows[:size]]
        return Page(items, self._next(rows, size, "schemes", lambda r: [r.created_at_us, r.id]))

    @staticmethod
    def _next(rows: list[Any], size: int, kind: str, key: Any) -> str:
        return encode_token(kind, key(rows[size - 1])) if len(rows) > size else ""

    # -- wallets -----------------------------------------------------------------------

    async def get_wallet(self, wallet_id: str) -> WalletRecord:
        row = (
            await self.conn.execute(select(t.wallets).where(t.wallets.c.id == wallet_id))
        ).first()
        if row is None:
            raise NotFound("wallet", wallet_id)
        return WalletRecord.from_row(row)

    async def list_wallets(
        self, scheme_id: str, customer_ref: str, size: int, token: str
    ) -> Page[WalletRecord]:
        key_cols = [t.wallets.c.created_at_us, t.wallets.c.id]
        query = select(t.wallets).order_by(*key_cols).limit(size + 1)
        if scheme_id:
            query = query.where(t.wallets.c.scheme_id == scheme_id)
        if customer_ref:
            query = query.where(t.wallets.c.customer_ref == customer_ref)
        after = decode_token("wallets", token, 2)
        if after is not None:
            query = query.where(after_key(key_cols, after))
        rows = list(await self.conn.execute(query))
        items = [WalletRecord.from_row(r) for r in rows[:size]]
        return Page(items, self._next(rows, size, "wallets", lambda r: [r.created_at_us, r.id]))

    # -- redemption ------------------------------------------------------------------------

    async def quote_redemption(
        self, wallet_id: str, asset: str, currency: str, amount: int, ctx: SpendContext
    ) -> tuple[Quote, int, RedemptionRate]:
        """How many eligible points a basket of `amount` can use, and the points available."""
        wallet = await self.get_wallet(wallet_id)
        rate = rate_for(await self.get_scheme(wallet.scheme_id), asset, currency)
        lots = await self.open_lots(wallet.id, asset)
        available = eligible_available([lot.view() for lot in lots], ctx)
        return quote(rate, available, amount), available, rate

    # -- lots and balances ---------------------------------------------------------------

    async def open_lots(self, wallet_id: str, asset: str | None = None) -> list[LotRecord]:
        """Lots with remaining or held value, in spend order."""
        if asset is None:
            rows = await self.conn.execute(_OPEN_LOTS, {"b_wallet_id": wallet_id})
        else:
            rows = await self.conn.execute(
                _OPEN_LOTS_OF_ASSET, {"b_wallet_id": wallet_id, "b_asset": asset}
            )
        return [LotRecord.from_row(r) for r in rows]

    async def lots_by_id(self, lot_ids: list[str]) -> dict[str, LotRecord]:
        if not lot_ids:
            return {}
        rows = await self.conn.execute(select(t.lots).where(t.lots.c.id.in_(lot_ids)))
        return {r.id: LotRecord.from_row(r) for r in rows}

    async def list_lots(
        self,
        wallet_id: str,
        *,
        asset: str,
        state: LotState | None,
        expire_before_us: int | None,
        size: int,
        token: str,
    ) -> Page[LotRecord]:
        await self.get_wallet(wallet_id)
        key_cols = _lot_order_columns()
        query = select(t.lots).where(t.lots.c.wallet_id == wallet_id).order_by(*key_cols)
        if asset:
            query = query.where(t.lots.c.asset == asset)
        if state is not None:
            query = query.where(t.lots.c.state == state.value)
        if expire_before_us is not None:
            query = query.where(t.lots.c.expires_at_us < expire_before_us)
        after = decode_token("lots", token, 4)
        if after is not None:
            query = query.where(after_key(key_cols, after))
        rows = list(await self.conn.execute(query.limit(size + 1)))

        def key(r: Any) -> list[Any]:
            expires = _NEVER if r.expires_at_us is None else r.expires_at_us
            return [expires, 1 if r.funding == "CASH" else 0, r.created_at_us, r.id]

        return Page(
            [LotRecord.from_row(r) for r in rows[:size]], self._next(rows, size, "lots", key)
        )

    async def active_holds(self, wallet_id: str) -> list[HoldRecord]:
        rows = list(
            await self.conn.execute(
                select(t.holds)
                .where(t.holds.c.wallet_id == wallet_id, t.holds.c.status == "ACTIVE")
                .order_by(t.holds.c.created_at_us, t.holds.c.id)
            )
        )
        allocations = await self._hold_allocations([r.id for r in rows])
        return [HoldRecord.from_row(r, allocations.get(r.id, {})) for r in rows]

    async def _hold_allocations(self, hold_ids: list[str]) -> dict[str, dict[str, int]]:
        if not hold_ids:
            return {}
        rows = await self.conn.execute(
            select(t.hold_allocations).where(t.hold_allocations.c.hold_id.in_(hold_ids))
        )
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for r in rows:
            out[r.hold_id][r.lot_id] = r.amount
        return out

    async def get_hold(self, hold_id: str) -> HoldRecord:
        row = (await self.conn.execute(select(t.holds).where(t.holds.c.id == hold_id))).first()
        if row is None:
            raise NotFound("hold", hold_id)
        allocations = await self._hold_allocations([hold_id])
        return HoldRecord.from_row(row, allocations.get(hold_id, {}))

    async def get_balance(self, wallet_id: str, asset: str = "") -> list[AssetBalance]:
        """Available, pending and held per asset of the scheme (rule 2 of DESIGN.md).

        Holds past their TTL reserve nothing, even before they are formally released.
        """
        wallet = await self.get_wallet(wallet_id)
        scheme = await self.get_scheme(wallet.scheme_id)
        codes = [asset] if asset else list(scheme.assets)
        balances = {code: AssetBalance(code) for code in codes}
        lots = {lot.id: lot for lot in await self.open_lots(wallet_id) if lot.asset in balances}
        lapsed_release: dict[str, int] = defaultdict(int)
        for hold in await self.active_holds(wallet_id):
            if hold.asset not in balances:
                continue
            if hold.is_lapsed_at(self.now_us):
                for lot_id, amount in hold.allocations.items():
                    lapsed_release[lot_id] += amount
            else:
                balances[hold.asset].held += sum(hold.allocations.values())
        expiring: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for lot in lots.values():
            value = lot.remaining + lapsed_release.get(lot.id, 0)
            if value == 0 or lot.is_expired_at(self.now_us):
                continue
            if lot.available_at_us <= self.now_us:
                balances[lot.asset].available += value
            else:
                balances[lot.asset].pending += value
            if lot.expires_at_us is not None:
                expiring[lot.asset][lot.expires_at_us] += value
        for code, by_time in expiring.items():
            soonest = sorted(by_time.items())[:NEXT_EXPIRATIONS_MAX]
            balances[code].next_expirations = [ExpiringAmount(a, at) for at, a in soonest]
        return [balances[code] for code in sorted(balances)]

    # -- transactions ------------------------------------------------------------------

    async def _fill_transactions(self, rows: list[Any]) -> list[TransactionRecord]:
        ids = [r.id for r in rows]
        postings: dict[str, list[PostingRecord]] = defaultdict(list)
        allocations: dict[str, list[AllocationRecord]] = defaultdict(list)
        if ids:
            for p in await self.conn.execute(
                select(t.postings)
                .where(t.postings.c.transaction_id.in_(ids))
                .order_by(t.postings.c.id)
            ):
                postings[p.transaction_id].append(PostingRecord(p.account, p.asset, p.amount))
            for a in await self.conn.execute(
                select(t.allocations)
                .where(t.allocations.c.transaction_id.in_(ids))
                .order_by(t.allocations.c.id)
            ):
                allocations[a.transaction_id].append(
                    AllocationRecord(a.lot_id, a.wallet_id, a.asset, a.amount)
                )
        return [
            TransactionRecord(
                id=r.id,
                type=TxType(r.type),
                scheme_id=r.scheme_id,
                wallet_id=r.wallet_id,
                counterpart_wallet_id=r.counterpart_wallet_id,
                merchant_id=r.merchant_id,
                hold_id=r.hold_id,
                related_transaction_id=r.related_transaction_id,
                reference=r.reference,
                metadata=json.loads(r.metadata),
                postings=postings[r.id],
                allocations=allocations[r.id],
                created_at_us=r.created_at_us,
            )
            for r in rows
        ]

    async def get_transaction(self, transaction_id: str) -> TransactionRecord:
        row = (
            await self.conn.execute(
                select(t.transactions).where(t.transactions.c.id == transaction_id)
            )
        ).first()
        if row is None:
            raise NotFound("transaction", transaction_id)
        return (await self._fill_transactions([row]))[0]

    async def list_transactions(
        self,
        wallet_id: str,
        *,
        types: list[TxType],
        start_us: int | None,
        end_us: int | None,
        size: int,
        token: str,
    ) -> Page[TransactionRecord]:
        await self.get_wallet(wallet_id)
        tx = t.transactions
        key_cols = [tx.c.created_at_us, tx.c.id]
        query = (
            select(tx)
            .where(or_(tx.c.wallet_id == wallet_id, tx.c.counterpart_wallet_id == wallet_id))
            .order_by(tx.c.created_at_us.desc(), tx.c.id.desc())
        )
        if types:
            query = query.where(tx.c.type.in_([ty.value for ty in types]))
        if start_us is not None:
            query = query.where(tx.c.created_at_us >= start_us)
        if end_us is not None:
            query = query.where(tx.c.created_at_us < end_us)
        after = decode_token("transactions", token, 2)
        if after is not None:
            query = query.where(after_key(key_cols, after, descending=True))
        rows = list(await self.conn.execute(query.limit(size + 1)))
        items = await self._fill_transactions(rows[:size])
        return Page(
            items, self._next(rows, size, "transactions", lambda r: [r.created_at_us, r.id])
        )

    async def list_tier_changes(self, wallet_id: str, size: int, token: str) -> Page[Any]:
        """A wallet's tier changes (rows of `tier_changes`), newest first."""
        await self.get_wallet(wallet_id)
        tc = t.tier_changes
        query = (
            select(tc)
            .where(tc.c.wallet_id == wallet_id)
            .order_by(tc.c.created_at_us.desc(), tc.c.id.desc())
        )
        after = decode_token("tier_changes", token, 2)
        if after is not None:
            query = query.where(after_key([tc.c.created_at_us, tc.c.id], after, descending=True))
        rows = list(await self.conn.execute(query.limit(size + 1)))
        return Page(
            rows[:size], self._next(rows, size, "tier_changes", lambda r: [r.created_at_us, r.id])
        )

    # -- runs and upcoming expirations ---------------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord:
        row = (await self.conn.execute(select(t.runs).where(t.runs.c.id == run_id))).first()
        if row is None:
            raise NotFound("run", run_id)
        return RunRecord.from_row(row)

    async def list_runs(self, kind: RunKind | None, size: int, token: str) -> Page[RunRecord]:
        key_cols = [t.runs.c.started_at_us, t.runs.c.id]
        query = select(t.runs).order_by(t.runs.c.started_at_us.desc(), t.runs.c.id.desc())
        if kind is not None:
            query = query.where(t.runs.c.kind == kind.value)
        after = decode_token("runs", token, 2)
        if after is not None:
            query = query.where(after_key(key_cols, after, descending=True))
        rows = list(await self.conn.execute(query.limit(size + 1)))
        items = [RunRecord.from_row(r) for r in rows[:size]]
        return Page(items, self._next(rows, size, "runs", lambda r: [r.started_at_us, r.id]))

    async def list_upcoming_expirations(
        self,
        *,
        scheme_id: str,
        wallet_id: str,
        start_us: int,
        end_us: int,
        size: int,
        token: str,
    ) -> Page[UpcomingExpiration]:
        """Open lots with remaining value expiring in [start, end), soonest first (then by
        wallet and lot: the expiry order, `tables.EXPIRY_ORDER`)."""
        if wallet_id:
            await self.get_wallet(wallet_id)
        else:
            await self.get_scheme(scheme_id)
        key_cols = list(t.EXPIRY_ORDER)
        query = (
            select(t.lots, t.wallets.c.customer_ref)
            .join(t.wallets, t.wallets.c.id == t.lots.c.wallet_id)
            .where(
                t.LOT_IS_OPEN,
                t.lots.c.remaining > 0,
                t.lots.c.expires_at_us >= start_us,
                t.lots.c.expires_at_us < end_us,
            )
            .order_by(*key_cols)
        )
        if wallet_id:
            query = query.where(t.lots.c.wallet_id == wallet_id)
        else:
            query = query.where(t.lots.c.scheme_id == scheme_id)
        after = decode_token("upcoming", token, len(key_cols))
        if after is not None:
            query = query.where(after_key(key_cols, after))
        rows = list(await self.conn.execute(query.limit(size + 1)))
        items = [UpcomingExpiration(LotRecord.from_row(r), r.customer_ref) for r in rows[:size]]
        return Page(
            items,
            self._next(rows, size, "upcoming", lambda r: [r.expires_at_us, r.wallet_id, r.id]),
        )
