"""Which lots a debit consumes, and how much of each (DESIGN rule 4).

Order: soonest `expires_at` first (never-expiring last), then promotional before cash, then
oldest, then lot id. Spending what expires first wastes the least of the customer's value;
promotional before cash keeps cash (which the customer paid for) for last; the lot id makes
the order total, so the same lots always give the same allocation whatever order the caller
loaded them in. Only lots whose spend conditions match the spend are eligible.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from loyalty_ledger.domain.errors import InsufficientFunds


class Funding(enum.Enum):
    """Who paid for a lot's value: a promotion's sponsor, or the customer (cash)."""

    PROMOTIONAL = "PROMOTIONAL"
    CASH = "CASH"


@dataclass(frozen=True)
class LotView:
    """What lot selection needs to know about one lot (instants in epoch microseconds).

    Empty `merchant_ids` / `product_ids` mean "no condition".
    """

    lot_id: str
    remaining: int
    available_at_us: int
    expires_at_us: int | None
    funding: Funding
    created_at_us: int
    merchant_ids: frozenset[str] = frozenset()
    product_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SpendContext:
    """Where, on what and when the spend happens."""

    merchant_id: str
    product_ids: frozenset[str]
    at_us: int


_FUNDING_RANK = {Funding.PROMOTIONAL: 0, Funding.CASH: 1}


def spend_order_key(lot: LotView) -> tuple[bool, int, int, int, str]:
    """Sort key for DESIGN rule 4: lots with smaller keys are consumed first.

    (never-expiring last, soonest expiry, promotional before cash, oldest, lot id).
    """
    never = lot.expires_at_us is None
    expires = 0 if lot.expires_at_us is None else lot.expires_at_us
    return (never, expires, _FUNDING_RANK[lot.funding], lot.created_at_us, lot.lot_id)


def is_eligible(lot: LotView, ctx: SpendContext) -> bool:
    """Whether the spend may draw on this lot at `ctx.at_us`.

    The lot must have value left, be available already, and not be expired: a lot expiring at
    or before T is never used at T (value is usable strictly before `expires_at`). A merchant
    condition needs the spend's merchant in the set; a product condition needs a non-empty
    basket whose products are all covered by the lot (a product-restricted promotion must not
    pay for other products).
    """
    if lot.remaining <= 0 or lot.available_at_us > ctx.at_us:
        return False
    if lot.expires_at_us is not None and lot.expires_at_us <= ctx.at_us:
        return False
    if lot.merchant_ids and ctx.merchant_id not in lot.merchant_ids:
        return False
    if lot.product_ids and not (ctx.product_ids and ctx.product_ids <= lot.product_ids):
        return False
    return True


def eligible_in_order(lots: Iterable[LotView], ctx: SpendContext) -> list[LotView]:
    """The lots this spend may use, in the order they are consumed."""
    return sorted((lot for lot in lots if is_eligible(lot, ctx)), key=spend_order_key)


def eligible_available(lots: Iterable[LotView], ctx: SpendContext) -> int:
    """Total remaining value this spend could use."""
    return sum(lot.remaining for lot in lots if is_eligible(lot, ctx))


def allocate(
    lots: Iterable[LotView],
    amount: int,
    ctx: SpendContext,
    *,
    asset: str,
    allow_partial: bool = False,
) -> list[tuple[str, int]]:
    """Choose which lots pay `amount`: [(lot_id, taken)] in spend order, each taken > 0.

    Greedy in `spend_order_key` order, so a lot is touched only when every eligible lot before
    it is exhausted, and at most the last lot is partly used. The total is `amount`; with
    `allow_partial` it may be less (everything eligible) when funds are short but not zero.
    Raises InsufficientFunds(asset, amount, available) when short without `allow_partial` or
    when nothing is available; ValueError for a non-positive amount or duplicate lot ids
    (programming errors: amounts are validated at the edge, lots come from storage).
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError(f"amount must be a positive int, got {amount!r}")
    all_lots = list(lots)
    if len({lot.lot_id for lot in all_lots}) != len(all_lots):
        raise ValueError("duplicate lot ids")
    ordered = eligible_in_order(all_lots, ctx)
    available = sum(lot.remaining for lot in ordered)
    if available == 0 or (available < amount and not allow_partial):
        raise InsufficientFunds(asset, requested=amount, available=available)
    left = min(amount, available)
    taken: list[tuple[str, int]] = []
    for lot in ordered:
        if left == 0:
            break
        take = min(lot.remaining, left)
        taken.append((lot.lot_id, take))
        left -= take
    return taken
