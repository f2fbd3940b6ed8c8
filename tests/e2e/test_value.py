"""Movements of value through a real server: credit, spend, holds, refunds, reversals, transfers
and merges. Expected amounts are derived from each scenario."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from loyalty.v1 import common_pb2, offer_pb2, wallet_pb2

from tests.helpers import (
    balance,
    credit,
    error_info,
    field_violations,
    make_scheme,
    make_wallet,
    rid,
    rpc_error,
    spend,
    ts,
)

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
CASH = common_pb2.FUNDING_CASH
PROMO = common_pb2.FUNDING_PROMOTIONAL
TOP_UP = wallet_pb2.CREDIT_KIND_TOP_UP
TX = wallet_pb2.TransactionType
FAILED = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def at(stamp: Any) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def after(count: int, unit: int) -> common_pb2.ExpiryPolicy:
    return common_pb2.ExpiryPolicy(after=common_pb2.ExpireAfter(count=count, unit=unit))


def allocations(txn: wallet_pb2.Transaction) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for a in txn.allocations:
        out[a.lot_id] += a.amount
    return dict(out)


def legs(txn: wallet_pb2.Transaction) -> dict[str, int]:
    """Net posting per account."""
    out: dict[str, int] = defaultdict(int)
    for p in txn.postings:
        out[p.account] += p.amount
    return {k: v for k, v in out.items() if v}


async def lots_by_id(wallets: Any, wallet_id: str, **filters: Any) -> dict[str, wallet_pb2.Lot]:
    response = await wallets.ListLots(wallet_pb2.ListLotsRequest(wallet_id=wallet_id, **filters))
    return {lot.lot_id: lot for lot in response.lots}


async def txn_types(wallets: Any, wallet_id: str) -> list[int]:
    response = await wallets.ListTransactions(
        wallet_pb2.ListTransactionsRequest(wallet_id=wallet_id)
    )
    return [t.type for t in response.transactions]


async def hold(
    wallets: Any, wallet_id: str, amount: int, *, ttl: Duration | None = None, **fields: Any
) -> wallet_pb2.AuthorizeHoldResponse:
    request = wallet_pb2.AuthorizeHoldRequest(
        request_id=rid("hold"),
        wallet_id=wallet_id,
        asset=fields.pop("asset", "POINTS"),
        amount=amount,
        merchant_id=fields.pop("merchant_id", "m-1"),
        **fields,
    )
    if ttl is not None:
        request.ttl.CopyFrom(ttl)
    return await wallets.AuthorizeHold(request)


async def capture(wallets: Any, hold_id: str, amount: int = 0) -> wallet_pb2.CaptureHoldResponse:
    return await wallets.CaptureHold(
        wallet_pb2.CaptureHoldRequest(request_id=rid("capture"), hold_id=hold_id, amount=amount)
    )


async def void(wallets: Any, hold_id: str) -> wallet_pb2.VoidHoldResponse:
    return await wallets.VoidHold(wallet_pb2.VoidHoldRequest(request_id=rid(), hold_id=hold_id))


async def refund(
    wallets: Any, transaction_id: str, amount: int = 0
) -> wallet_pb2.RefundSpendResponse:
    return await wallets.RefundSpend(
        wallet_pb2.RefundSpendRequest(
            request_id=rid("refund"), transaction_id=transaction_id, amount=amount
        )
    )


async def reverse(wallets: Any, transaction_id: str) -> wallet_pb2.ReverseCreditResponse:
    return await wallets.ReverseCredit(
        wallet_pb2.ReverseCreditRequest(
            request_id=rid("reverse"), transaction_id=transaction_id, reason="fraud"
        )
    )


async def transfer(
    wallets: Any, source: str, target: str, amount: int, asset: str = "POINTS"
) -> wallet_pb2.TransferResponse:
    return await wallets.Transfer(
        wallet_pb2.TransferRequest(
            request_id=rid("transfer"),
            from_wallet_id=source,
            to_wallet_id=target,
            asset=asset,
            amount=amount,
        )
    )


async def merge(wallets: Any, survivor: str, duplicate: str) -> wallet_pb2.MergeWalletsResponse:
    return await wallets.MergeWallets(
        wallet_pb2.MergeWalletsRequest(
            request_id=rid("merge"), survivor_wallet_id=survivor, duplicate_wallet_id=duplicate
        )
    )


async def fresh_wallet(offers: Any, wallets: Any, **scheme_fields: Any) -> str:
    await make_scheme(offers, **scheme_fields)
    return (await make_wallet(wallets)).wallet_id


# -- credit ----------------------------------------------------------------------------------


async def test_credit_with_explicit_expire_time(offers, wallets, clock) -> None:
    wallet = await fresh_wallet(offers, wallets)
    expire = clock.now() + timedelta(days=10)
    response = await credit(wallets, wallet, 100, expire_time=ts(expire), reference="order-1")
    lot, txn = response.lot, response.transaction
    assert lot.lot_id.startswith("lot_")
    assert (lot.wallet_id, lot.asset, lot.amount, lot.remaining, lot.spent) == (
        wallet,
        "POINTS",
        100,
        100,
        0,
    )
    assert lot.state == wallet_pb2.LOT_STATE_OPEN
    assert (lot.funding, lot.sponsor_id) == (PROMO, "m-sponsor")
    assert at(lot.expire_time) == expire
    assert at(lot.available_time) == clock.now()
    assert lot.source_transaction_id == txn.transaction_id
    assert txn.type == TX.TRANSACTION_TYPE_AWARD
    assert legs(txn) == {"sponsor:acme:m-sponsor": -100, f"wallet:{wallet}": 100}

    # Promotional value without a sponsor is the operator's.
    operator = await credit(wallets, wallet, 5, sponsor_id="")
    assert operator.lot.sponsor_id == "operator"
    assert not operator.lot.HasField("expire_time")
    assert legs(operator.transaction) == {"sponsor:acme:operator": -5, f"wallet:{wallet}": 5}
    points = await balance(wallets, wallet)
    assert points.available == 105
    assert [(e.amount, at(e.expire_time)) for e in points.next_expirations] == [(100, expire)]


async def test_expiry_policies_follow_the_scheme_calendar(offers, wallets, clock) -> None:
    wallet = await fresh_wallet(
        offers, wallets, default_expiry_policy=after(1, common_pb2.DURATION_UNIT_MONTHS)
    )
    local = clock.now().astimezone(AMSTERDAM)  # 13:00 CET; CEST starts on 29 March 2026

    async def expiry(**fields: Any) -> datetime | None:
        lot = (await credit(wallets, wallet, 1, **fields)).lot
        return at(lot.expire_time) if lot.HasField("expire_time") else None

    # Calendar days keep the local wall time across the DST change; hours are exact.
    days = await expiry(expiry_policy=after(80, common_pb2.DURATION_UNIT_DAYS))
    assert days == (local + timedelta(days=80)).astimezone(UTC)
    hours = await expiry(expiry_policy=after(80 * 24, common_pb2.DURATION_UNIT_HOURS))
    assert hours == clock.now() + timedelta(hours=80 * 24)
    assert days - hours == timedelta(hours=-1)
    months = await expiry(expiry_policy=after(3, common_pb2.DURATION_UNIT_MONTHS))
    assert months == local.replace(month=4).astimezone(UTC)
    # Neither expire_time nor a policy: the scheme default (one month).
    assert await expiry() == local.replace(month=2).astimezone(UTC)
    # An explicit "never" overrides the default.
    assert (
        await expiry(expiry_policy=common_pb2.ExpiryPolicy(never=common_pb2.NeverExpires())) is None
    )

    # Months clamp to the end of the month: Jan 31 + 1 month = Feb 28 (2026 is no leap year).
    clock.advance(timedelta(days=16))
    local = clock.now().astimezone(AMSTERDAM)
    assert local.day == 31
    assert await expiry() == local.replace(month=2, day=28).astimezone(UTC)


async def test_empty_expiry_policy_on_a_credit_means_the_scheme_default(
    offers, wallets, clock
) -> None:
    """common.proto, ExpiryPolicy: 'an empty policy on a credit means "use the scheme's
    default"' (clients in other languages often send the empty message)."""
    wallet = await fresh_wallet(
        offers, wallets, default_expiry_policy=after(1, common_pb2.DURATION_UNIT_MONTHS)
    )
    response = await credit(wallets, wallet, 10, expiry_policy=common_pb2.ExpiryPolicy())
    local = clock.now().astimezone(AMSTERDAM)
    assert at(response.lot.expire_time) == local.replace(month=2).astimezone(UTC)


async def test_credit_refuses_conflicting_or_past_expiry(offers, wallets, clock) -> None:
    wallet = await fresh_wallet(offers, wallets)
    now = clock.now()
    both = await rpc_error(
        credit(
            wallets,
            wallet,
            10,
            expire_time=ts(now + timedelta(days=1)),
            expiry_policy=after(2, common_pb2.DURATION_UNIT_DAYS),
        ),
        INVALID,
    )
    assert set(field_violations(both)) & {"expire_time", "expiry_policy"}
    for available, expire in [
        (now + timedelta(days=2), now + timedelta(days=1)),  # expires before it is available
        (now + timedelta(days=2), now + timedelta(days=2)),  # ... or as it becomes available
        (None, now - timedelta(hours=1)),  # already expired
    ]:
        fields: dict[str, Any] = {"expire_time": ts(expire)}
        if available is not None:
            fields["available_time"] = ts(available)
        error = await rpc_error(credit(wallets, wallet, 10, **fields), INVALID)
        assert "expire_time" in field_violations(error), (available, expire)
    assert await lots_by_id(wallets, wallet) == {}


async def test_cash_expiry_needs_the_scheme_to_allow_it(offers, wallets, clock) -> None:
    # The default policy (one month) applies to promotional value only.
    wallet = await fresh_wallet(
        offers, wallets, default_expiry_policy=after(1, common_pb2.DURATION_UNIT_MONTHS)
    )
    soon = ts(clock.now() + timedelta(days=30))
    for fields in (
        {"expire_time": soon},
        {"expiry_policy": after(1, common_pb2.DURATION_UNIT_MONTHS)},
    ):
        await rpc_error(
            credit(wallets, wallet, 500, asset="EUR", funding=CASH, kind=TOP_UP, **fields),
            FAILED,
            "CASH_EXPIRY_NOT_ALLOWED",
        )
    top_up = await credit(wallets, wallet, 500, asset="EUR", funding=CASH, kind=TOP_UP)
    assert not top_up.lot.HasField("expire_time")
    assert (top_up.lot.funding, top_up.lot.sponsor_id) == (CASH, "")
    assert top_up.transaction.type == TX.TRANSACTION_TYPE_TOP_UP
    assert legs(top_up.transaction) == {"cash:acme": -500, f"wallet:{wallet}": 500}

    await make_scheme(offers, "flex", cash_expiry_allowed=True)
    flexible = (await make_wallet(wallets, "flex")).wallet_id
    allowed = await credit(
        wallets, flexible, 500, asset="EUR", funding=CASH, kind=TOP_UP, expire_time=soon
    )
    assert allowed.lot.expire_time == soon


async def test_credit_refuses_bad_input(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("promotional top-up", {"amount": 10, "kind": TOP_UP, "funding": PROMO}, "funding"),
        ("unknown asset", {"amount": 10, "asset": "GOLD"}, "asset"),
        ("zero", {"amount": 0}, "amount"),
        ("negative", {"amount": -1}, "amount"),
        ("too much", {"amount": 10**15 + 1}, "amount"),
    ]
    wrong = {}
    for label, fields, field_path in cases:
        fields = dict(fields)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await credit(wallets, wallet, fields.pop("amount"), **fields)
        violations = field_violations(caught.value)
        if caught.value.code() != INVALID or field_path not in violations:
            wrong[label] = (caught.value.code(), violations)
    assert wrong == {}
    assert await lots_by_id(wallets, wallet) == {}
    await credit(wallets, wallet, 10**15)
    assert (await balance(wallets, wallet)).available == 10**15


# -- spend -----------------------------------------------------------------------------------


async def test_spend_order_soonest_expiry_then_promotional_then_oldest(
    offers, wallets, clock
) -> None:
    wallet = await fresh_wallet(offers, wallets, cash_expiry_allowed=True)
    now = clock.now()
    in_2_days, in_5_days = ts(now + timedelta(days=2)), ts(now + timedelta(days=5))
    names = {}
    # Credited in an order that is none of the orders under test.
    for name, fields in [
        ("cash-never", {"funding": CASH}),
        ("promo-never", {}),
        ("cash-5d", {"funding": CASH, "expire_time": in_5_days}),
        ("promo-5d", {"expire_time": in_5_days}),
        ("promo-2d-older", {"expire_time": in_2_days}),
        ("promo-2d-newer", {"expire_time": in_2_days}),
    ]:
        names[(await credit(wallets, wallet, 10, **fields)).lot.lot_id] = name
        clock.advance(timedelta(minutes=1))

    consumed = []
    for _ in range(6):
        taken = allocations((await spend(wallets, wallet, 10)).transaction)
        assert len(taken) == 1 and sum(taken.values()) == 10, taken
        consumed.append(names[next(iter(taken))])
    assert consumed == [
        "promo-2d-older",
        "promo-2d-newer",
        "promo-5d",
        "cash-5d",
        "promo-never",
        "cash-never",
    ]


async def test_spend_uses_only_lots_allowed_for_the_merchant_and_products(
    offers, wallets, clock
) -> None:
    wallet = await fresh_wallet(offers, wallets)
    now = clock.now()
    merchant_only = await credit(
        wallets,
        wallet,
        10,
        expire_time=ts(now + timedelta(days=1)),
        spend_conditions=common_pb2.SpendConditions(merchant_ids=["m-2"]),
    )
    products_only = await credit(
        wallets,
        wallet,
        10,
        expire_time=ts(now + timedelta(days=2)),
        spend_conditions=common_pb2.SpendConditions(product_ids=["p-1", "p-2"]),
    )
    anywhere = await credit(wallets, wallet, 100)
    m_lot, p_lot, any_lot = merchant_only.lot.lot_id, products_only.lot.lot_id, anywhere.lot.lot_id

    async def used(amount: int, merchant: str, products: list[str]) -> dict[str, int]:
        response = await spend(wallets, wallet, amount, merchant_id=merchant, product_ids=products)
        return allocations(response.transaction)

    # Another merchant, and a spend naming no products: only the unrestricted lot.
    assert await used(5, "m-1", []) == {any_lot: 5}
    # A product outside the lot's list: the product lot is not used.
    assert await used(5, "m-1", ["p-1", "p-3"]) == {any_lot: 5}
    assert await used(5, "m-1", ["p-1"]) == {p_lot: 5}
    assert await used(5, "m-2", ["p-2"]) == {m_lot: 5}
    error = await rpc_error(
        spend(wallets, wallet, 91, merchant_id="m-1"), FAILED, "INSUFFICIENT_FUNDS"
    )
    assert error_info(error).metadata["available"] == str(100 - 5 - 5)


async def test_lot_expiring_now_is_never_used(offers, wallets, clock) -> None:
    wallet = await fresh_wallet(offers, wallets)
    other = (await make_wallet(wallets)).wallet_id
    await credit(wallets, wallet, 50, expire_time=ts(clock.now() + timedelta(hours=1)))
    clock.advance(timedelta(minutes=59))
    assert (await spend(wallets, wallet, 10)).amount_spent == 10
    clock.advance(timedelta(minutes=1))  # exactly the expiry instant; no expiry run has happened
    error = await rpc_error(spend(wallets, wallet, 1), FAILED, "INSUFFICIENT_FUNDS")
    assert error_info(error).metadata["available"] == "0"
    await rpc_error(spend(wallets, wallet, 1, allow_partial=True), FAILED, "INSUFFICIENT_FUNDS")
    await rpc_error(hold(wallets, wallet, 1), FAILED, "INSUFFICIENT_FUNDS")
    await rpc_error(transfer(wallets, wallet, other, 1), FAILED, "INSUFFICIENT_FUNDS")
    points = await balance(wallets, wallet)
    assert (points.available, points.pending, list(points.next_expirations)) == (0, 0, [])


async def test_pending_lot_is_usable_from_its_available_time(offers, wallets, clock) -> None:
    wallet = await fresh_wallet(offers, wallets)
    available = clock.now() + timedelta(days=1)
    response = await credit(
        wallets,
        wallet,
        50,
        available_time=ts(available),
        expiry_policy=after(10, common_pb2.DURATION_UNIT_HOURS),
    )
    assert at(response.lot.available_time) == available
    # ExpireAfter counts from the available time when that is later than the credit.
    assert at(response.lot.expire_time) == available + timedelta(hours=10)
    await rpc_error(spend(wallets, wallet, 1), FAILED, "INSUFFICIENT_FUNDS")
    points = await balance(wallets, wallet)
    assert (points.available, points.pending) == (0, 50)

    clock.advance(timedelta(days=1) - timedelta(seconds=1))
    await rpc_error(spend(wallets, wallet, 1), FAILED, "INSUFFICIENT_FUNDS")
    clock.advance(timedelta(seconds=1))
    assert (await spend(wallets, wallet, 20)).amount_spent == 20
    points = await balance(wallets, wallet)
    assert (points.available, points.pending) == (30, 0)


async def test_insufficient_funds_reports_available_and_changes_nothing(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    await credit(wallets, wallet, 30)
    await credit(wallets, wallet, 4000, asset="EUR")  # another asset does not count
    error = await rpc_error(spend(wallets, wallet, 50), FAILED, "INSUFFICIENT_FUNDS")
    assert error_info(error).metadata["available"] == "30"
    assert (await balance(wallets, wallet)).available == 30
    assert TX.TRANSACTION_TYPE_SPEND not in await txn_types(wallets, wallet)


async def test_allow_partial_spends_what_is_there(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    await credit(wallets, wallet, 30)
    response = await spend(wallets, wallet, 50, allow_partial=True)
    assert response.amount_spent == 30
    assert sum(allocations(response.transaction).values()) == 30
    assert legs(response.transaction) == {f"wallet:{wallet}": -30, "merchant:acme:m-1": 30}
    assert (await balance(wallets, wallet)).available == 0
    # "At least 1": with nothing available it still fails.
    await rpc_error(spend(wallets, wallet, 5, allow_partial=True), FAILED, "INSUFFICIENT_FUNDS")


# -- holds -----------------------------------------------------------------------------------


async def test_authorize_hold_reserves_value(offers, wallets, clock) -> None:
    wallet = await fresh_wallet(offers, wallets)
    source = await credit(wallets, wallet, 100)
    response = await hold(wallets, wallet, 40, ttl=Duration(seconds=600), reference="basket-1")
    placed, txn = response.hold, response.transaction
    assert placed.hold_id.startswith("hld_")
    assert (placed.wallet_id, placed.asset, placed.amount, placed.captured_amount) == (
        wallet,
        "POINTS",
        40,
        0,
    )
    assert (placed.status, placed.merchant_id) == (wallet_pb2.HOLD_STATUS_ACTIVE, "m-1")
    assert at(placed.expire_time) == clock.now() + timedelta(seconds=600)
    assert {a.lot_id: a.amount for a in placed.allocations} == {source.lot.lot_id: 40}
    assert (txn.type, txn.hold_id) == (TX.TRANSACTION_TYPE_HOLD, placed.hold_id)
    assert legs(txn) == {f"wallet:{wallet}": -40, f"hold:{placed.hold_id}": 40}
    got = await wallets.GetHold(wallet_pb2.GetHoldRequest(hold_id=placed.hold_id))
    assert got.hold == placed

    points = await balance(wallets, wallet)
    assert (points.available, points.held) == (60, 40)
    lot = (await lots_by_id(wallets, wallet))[source.lot.lot_id]
    assert (lot.remaining, lot.held, lot.spent) == (60, 40, 0)
    error = await rpc_error(spend(wallets, wallet, 61), FAILED, "INSUFFICIENT_FUNDS")
    assert error_info(error).metadata["available"] == "60"

    default_ttl = await hold(wallets, wallet, 10)
    assert at(default_ttl.hold.expire_time) == clock.now() + timedelta(minutes=15)


async def test_hold_ttl_limits(offers, wallets, clock) -> None:
    wallet = await fresh_wallet(offers, wallets)
    await credit(wallets, wallet, 100)
    week = 7 * 24 * 3600
    for ttl in (Duration(seconds=0), Duration(seconds=week + 1), Duration(seconds=-5)):
        error = await rpc_error(hold(wallets, wallet, 10, ttl=ttl), INVALID)
        assert "ttl" in field_violations(error), ttl
    longest = await hold(wallets, wallet, 10, ttl=Duration(seconds=week))
    assert at(longest.hold.expire_time) == clock.now() + timedelta(days=7)
    assert (await balance(wallets, wallet)).held == 10


async def test_capture_whole_hold(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    source = await credit(wallets, wallet, 100)
    placed = (await hold(wallets, wallet, 40)).hold
    response = await capture(wallets, placed.hold_id)  # amount 0: the whole hold
    assert (response.hold.status, response.hold.captured_amount) == (
        wallet_pb2.HOLD_STATUS_CAPTURED,
        40,
    )
    txn = response.transaction
    assert (txn.type, txn.hold_id, txn.merchant_id) == (
        TX.TRANSACTION_TYPE_CAPTURE,
        placed.hold_id,
        "m-1",
    )
    assert legs(txn)["merchant:acme:m-1"] == 40
    points = await balance(wallets, wallet)
    assert (points.available, points.held) == (60, 0)
    lot = (await lots_by_id(wallets, wallet))[source.lot.lot_id]
    assert (lot.remaining, lot.held, lot.spent) == (60, 0, 40)


async def test_partial_capture_releases_the_rest(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    source = await credit(wallets, wallet, 100)
    placed = (await hold(wallets, wallet, 40)).hold
    error = await rpc_error(capture(wallets, placed.hold_id, 41), INVALID)
    assert "amount" in field_violations(error)
    response = await capture(wallets, placed.hold_id, 25)
    assert (response.hold.status, response.hold.captured_amount) == (
        wallet_pb2.HOLD_STATUS_CAPTURED,
        25,
    )
    assert legs(response.transaction)["merchant:acme:m-1"] == 25
    points = await balance(wallets, wallet)
    assert (points.available, points.held) == (100 - 25, 0)
    lot = (await lots_by_id(wallets, wallet))[source.lot.lot_id]
    assert (lot.remaining, lot.held, lot.spent) == (75, 0, 25)


async def test_partial_capture_releases_the_rest_in_a_void_entry(offers, wallets) -> None:
    """wallet.proto, TRANSACTION_TYPE_CAPTURE: 'an uncaptured rest is released by a VOID entry
    committed with it'."""
    wallet = await fresh_wallet(offers, wallets)
    await credit(wallets, wallet, 100)
    placed = (await hold(wallets, wallet, 40)).hold
    response = await capture(wallets, placed.hold_id, 25)
    assert legs(response.transaction) == {
        f"hold:{placed.hold_id}": -25,
        "merchant:acme:m-1": 25,
    }
    listed = await wallets.ListTransactions(
        wallet_pb2.ListTransactionsRequest(wallet_id=wallet, types=[TX.TRANSACTION_TYPE_VOID])
    )
    (release,) = listed.transactions
    assert release.hold_id == placed.hold_id
    assert release.related_transaction_id == response.transaction.transaction_id
    assert legs(release) == {f"hold:{placed.hold_id}": -15, f"wallet:{wallet}": 15}
    assert (await balance(wallets, wallet)).available == 75


async def test_void_hold_releases_everything(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    source = await credit(wallets, wallet, 100)
    placed = (await hold(wallets, wallet, 40)).hold
    response = await void(wallets, placed.hold_id)
    assert (response.hold.status, response.hold.captured_amount) == (
        wallet_pb2.HOLD_STATUS_VOIDED,
        0,
    )
    assert response.transaction.type == TX.TRANSACTION_TYPE_VOID
    assert legs(response.transaction) == {f"hold:{placed.hold_id}": -40, f"wallet:{wallet}": 40}
    points = await balance(wallets, wallet)
    assert (points.available, points.held) == (100, 0)
    lot = (await lots_by_id(wallets, wallet))[source.lot.lot_id]
    assert (lot.remaining, lot.held, lot.spent) == (100, 0, 0)


async def test_hold_past_its_ttl_reserves_nothing_and_cannot_be_captured(
    offers, wallets, clock
) -> None:
    wallet = await fresh_wallet(offers, wallets)
    await credit(wallets, wallet, 100)
    placed = (await hold(wallets, wallet, 40, ttl=Duration(seconds=60))).hold
    assert (await balance(wallets, wallet)).available == 60
    clock.advance(timedelta(seconds=61))
    points = await balance(wallets, wallet)
    assert (points.available, points.held) == (100, 0)
    await rpc_error(capture(wallets, placed.hold_id), FAILED, "HOLD_EXPIRED")
    assert (await spend(wallets, wallet, 100)).amount_spent == 100
    assert (await balance(wallets, wallet)).available == 0


async def test_capture_or_void_of_a_finished_hold_is_refused(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    await credit(wallets, wallet, 100)
    voided = (await hold(wallets, wallet, 10)).hold.hold_id
    await void(wallets, voided)
    await rpc_error(capture(wallets, voided), FAILED, "HOLD_NOT_ACTIVE")
    await rpc_error(void(wallets, voided), FAILED, "HOLD_NOT_ACTIVE")
    captured = (await hold(wallets, wallet, 10)).hold.hold_id
    await capture(wallets, captured)
    await rpc_error(void(wallets, captured), FAILED, "HOLD_NOT_ACTIVE")
    await rpc_error(capture(wallets, captured), FAILED, "HOLD_NOT_ACTIVE")
    points = await balance(wallets, wallet)
    assert (points.available, points.held) == (90, 0)


# -- refunds ---------------------------------------------------------------------------------


async def test_full_refund_returns_value_to_the_lots_it_came_from(offers, wallets, clock) -> None:
    wallet = await fresh_wallet(offers, wallets)
    soon = await credit(wallets, wallet, 30, expire_time=ts(clock.now() + timedelta(days=1)))
    later = await credit(wallets, wallet, 100)
    spent = await spend(wallets, wallet, 50)
    soon_id, later_id = soon.lot.lot_id, later.lot.lot_id
    assert allocations(spent.transaction) == {soon_id: 30, later_id: 20}

    response = await refund(wallets, spent.transaction.transaction_id)
    assert response.amount_refunded == 50
    txn = response.transaction
    assert txn.type == TX.TRANSACTION_TYPE_REFUND
    assert txn.related_transaction_id == spent.transaction.transaction_id
    assert allocations(txn) == {soon_id: -30, later_id: -20}
    assert legs(txn) == {"merchant:acme:m-1": -50, f"wallet:{wallet}": 50}
    assert not response.HasField("expire_transaction")
    lots = await lots_by_id(wallets, wallet)
    assert (lots[soon_id].remaining, lots[soon_id].spent) == (30, 0)
    assert (lots[later_id].remaining, lots[later_id].spent) == (100, 0)
    assert (await balance(wallets, wallet)).available == 130


async def test_partial_refunds_never_exceed_the_spend(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    await credit(wallets, wallet, 100)
    spent = (await spend(wallets, wallet, 60)).transaction.transaction_id
    assert (await refund(wallets, spent, 20)).amount_refunded == 20
    assert (await refund(wallets, spent, 30)).amount_refunded == 30
    await rpc_error(refund(wallets, spent, 11), FAILED, "REFUND_EXCEEDS_SPEND")
    assert (await balance(wallets, wallet)).available == 40 + 20 + 30
    assert (await refund(wallets, spent, 0)).amount_refunded == 10  # 0: the rest
    await rpc_error(refund(wallets, spent, 1), FAILED, "REFUND_EXCEEDS_SPEND")
    await rpc_error(refund(wallets, spent, 0), FAILED, "REFUND_EXCEEDS_SPEND")
    assert (await balance(wallets, wallet)).available == 100
    assert (await txn_types(wallets, wallet)).count(TX.TRANSACTION_TYPE_REFUND) == 3


async def test_refund_of_a_capture(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    source = await credit(wallets, wallet, 100)
    placed = await hold(wallets, wallet, 40)
    captured = await capture(wallets, placed.hold.hold_id, 30)
    response = await refund(wallets, captured.transaction.transaction_id)
    assert response.amount_refunded == 30
    assert response.transaction.related_transaction_id == captured.transaction.transaction_id
    assert (await balance(wallets, wallet)).available == 100
    lot = (await lots_by_id(wallets, wallet))[source.lot.lot_id]
    assert (lot.remaining, lot.spent, lot.held) == (100, 0, 0)
    # Only spends and captures are refundable.
    for other in (placed.transaction, source.transaction):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refund(wallets, other.transaction_id)
        assert caught.value.code() in (FAILED, INVALID), caught.value.details()
    assert (await balance(wallets, wallet)).available == 100


async def test_refund_into_an_expired_lot_with_expire_policy(offers, wallets, clock) -> None:
    wallet = await fresh_wallet(offers, wallets)  # refund policy EXPIRE by default
    source = await credit(wallets, wallet, 100, expire_time=ts(clock.now() + timedelta(days=1)))
    spent = await spend(wallets, wallet, 40)
    clock.advance(timedelta(days=2))
    assert (await balance(wallets, wallet)).available == 0
    response = await refund(wallets, spent.transaction.transaction_id)
    assert response.amount_refunded == 40
    assert response.HasField("expire_transaction")
    expired = response.expire_transaction
    assert expired.type == TX.TRANSACTION_TYPE_EXPIRE
    assert expired.related_transaction_id == response.transaction.transaction_id
    # Expired promotional value goes back to its sponsor.
    assert legs(expired) == {f"wallet:{wallet}": -40, "sponsor:acme:m-sponsor": 40}
    assert (await balance(wallets, wallet)).available == 0
    lot = (await lots_by_id(wallets, wallet))[source.lot.lot_id]
    assert (lot.spent, lot.expired) == (0, 40)


async def test_refund_into_an_expired_lot_with_recredit_policy(offers, wallets, clock) -> None:
    grace = timedelta(days=3)
    wallet = await fresh_wallet(
        offers,
        wallets,
        refund_policy=offer_pb2.RefundPolicy(
            expired_lot_handling=offer_pb2.EXPIRED_REFUND_HANDLING_RECREDIT,
            grace_period=Duration(seconds=int(grace.total_seconds())),
        ),
    )
    source = await credit(
        wallets, wallet, 100, sponsor_id="m-7", expire_time=ts(clock.now() + timedelta(days=1))
    )
    spent = await spend(wallets, wallet, 40)
    clock.advance(timedelta(days=2))
    response = await refund(wallets, spent.transaction.transaction_id)
    assert response.amount_refunded == 40
    assert not response.HasField("expire_transaction")
    assert (await balance(wallets, wallet)).available == 40
    new_lots = [lot for lot in (await lots_by_id(wallets, wallet)).values() if lot.origin_lot_id]
    assert len(new_lots) == 1
    lot = new_lots[0]
    assert lot.origin_lot_id == source.lot.lot_id
    assert (lot.amount, lot.remaining, lot.funding, lot.sponsor_id) == (40, 40, PROMO, "m-7")
    assert at(lot.expire_time) == clock.now() + grace
    assert (await spend(wallets, wallet, 40)).amount_spent == 40


# -- reversals -------------------------------------------------------------------------------


async def test_reverse_credit_reports_what_was_spent_and_never_goes_negative(
    offers, wallets, clock
) -> None:
    wallet = await fresh_wallet(offers, wallets)
    first = await credit(wallets, wallet, 100, expire_time=ts(clock.now() + timedelta(days=1)))
    await credit(wallets, wallet, 50)
    await spend(wallets, wallet, 30)  # from the sooner-expiring first credit
    response = await reverse(wallets, first.transaction.transaction_id)
    assert (response.amount_reversed, response.amount_already_spent, response.amount_held) == (
        70,
        30,
        0,
    )
    txn = response.transaction
    assert txn.type == TX.TRANSACTION_TYPE_REVERSAL
    assert txn.related_transaction_id == first.transaction.transaction_id
    assert legs(txn) == {f"wallet:{wallet}": -70, "sponsor:acme:m-sponsor": 70}
    assert (await balance(wallets, wallet)).available == 50
    lot = (await lots_by_id(wallets, wallet))[first.lot.lot_id]
    assert lot.state == wallet_pb2.LOT_STATE_REVERSED
    assert (lot.remaining, lot.spent, lot.reversed) == (0, 30, 70)

    # A credit spent in full: nothing to claw back, and the balance stays at zero.
    other = (await make_wallet(wallets)).wallet_id
    gone = await credit(wallets, other, 20)
    await spend(wallets, other, 20)
    response = await reverse(wallets, gone.transaction.transaction_id)
    assert (response.amount_reversed, response.amount_already_spent) == (0, 20)
    assert (await balance(wallets, other)).available == 0


async def test_reverse_credit_with_an_active_hold(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    source = await credit(wallets, wallet, 100)
    placed = await hold(wallets, wallet, 40)
    response = await reverse(wallets, source.transaction.transaction_id)
    assert (response.amount_reversed, response.amount_held, response.amount_already_spent) == (
        60,
        40,
        0,
    )
    points = await balance(wallets, wallet)
    assert (points.available, points.held) == (0, 40)
    # Released later, the held part is reversed then.
    await void(wallets, placed.hold.hold_id)
    points = await balance(wallets, wallet)
    assert (points.available, points.held) == (0, 0)
    lot = (await lots_by_id(wallets, wallet))[source.lot.lot_id]
    assert (lot.remaining, lot.held, lot.reversed) == (0, 0, 100)


async def test_reverse_credit_refusals(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    source = await credit(wallets, wallet, 100)
    spent = await spend(wallets, wallet, 10)
    await rpc_error(reverse(wallets, spent.transaction.transaction_id), FAILED, "NOT_REVERSIBLE")
    assert (await balance(wallets, wallet)).available == 90
    await reverse(wallets, source.transaction.transaction_id)
    await rpc_error(reverse(wallets, source.transaction.transaction_id), FAILED, "ALREADY_REVERSED")
    assert (await txn_types(wallets, wallet)).count(TX.TRANSACTION_TYPE_REVERSAL) == 1


# -- transfers and merges --------------------------------------------------------------------


async def test_transfer_keeps_the_terms_of_moved_value(offers, wallets, clock) -> None:
    source_wallet = await fresh_wallet(offers, wallets)
    target_wallet = (await make_wallet(wallets)).wallet_id
    conditions = common_pb2.SpendConditions(merchant_ids=["m-1"], product_ids=["p-1"])
    promo = await credit(
        wallets,
        source_wallet,
        30,
        sponsor_id="m-9",
        expire_time=ts(clock.now() + timedelta(days=3)),
        spend_conditions=conditions,
    )
    cash = await credit(wallets, source_wallet, 500, asset="EUR", funding=CASH, kind=TOP_UP)

    response = await transfer(wallets, source_wallet, target_wallet, 20)
    txn = response.transaction
    assert (txn.type, txn.wallet_id, txn.counterpart_wallet_id) == (
        TX.TRANSACTION_TYPE_TRANSFER,
        source_wallet,
        target_wallet,
    )
    assert legs(txn) == {f"wallet:{source_wallet}": -20, f"wallet:{target_wallet}": 20}
    assert allocations(txn) == {promo.lot.lot_id: 20}
    (moved,) = response.lots
    assert (moved.wallet_id, moved.amount, moved.remaining) == (target_wallet, 20, 20)
    assert moved.origin_lot_id == promo.lot.lot_id
    assert moved.expire_time == promo.lot.expire_time
    assert (moved.funding, moved.sponsor_id) == (PROMO, "m-9")
    assert moved.spend_conditions == conditions

    (moved_cash,) = (await transfer(wallets, source_wallet, target_wallet, 500, "EUR")).lots
    assert (moved_cash.funding, moved_cash.sponsor_id) == (CASH, "")
    assert not moved_cash.HasField("expire_time")
    assert moved_cash.origin_lot_id == cash.lot.lot_id

    assert set(await lots_by_id(wallets, target_wallet)) == {moved.lot_id, moved_cash.lot_id}
    assert (await balance(wallets, source_wallet)).available == 10
    assert (await balance(wallets, source_wallet, "EUR")).available == 0
    assert (await balance(wallets, target_wallet)).available == 20
    assert (await balance(wallets, target_wallet, "EUR")).available == 500


async def test_transfer_refusals(offers, wallets) -> None:
    source = await fresh_wallet(offers, wallets)
    target = (await make_wallet(wallets)).wallet_id
    await make_scheme(offers, "beta")
    foreign = (await make_wallet(wallets, "beta")).wallet_id
    await credit(wallets, source, 30)
    await rpc_error(transfer(wallets, source, foreign, 10), FAILED, "SCHEME_MISMATCH")
    error = await rpc_error(transfer(wallets, source, target, 31), FAILED, "INSUFFICIENT_FUNDS")
    assert error_info(error).metadata["available"] == "30"
    await rpc_error(transfer(wallets, source, source, 10), INVALID)
    assert (await balance(wallets, source)).available == 30
    assert (await balance(wallets, target)).available == 0
    assert (await balance(wallets, foreign)).available == 0


async def test_merge_moves_open_lots_and_active_holds(offers, wallets, clock) -> None:
    survivor = await fresh_wallet(offers, wallets)
    duplicate = (await make_wallet(wallets)).wallet_id
    await credit(wallets, survivor, 50)
    now = clock.now()
    used_up = await credit(wallets, duplicate, 5, expire_time=ts(now + timedelta(days=1)))
    await spend(wallets, duplicate, 5)
    expiring = await credit(
        wallets, duplicate, 30, sponsor_id="m-7", expire_time=ts(now + timedelta(days=5))
    )
    lasting = await credit(wallets, duplicate, 20)
    placed = (await hold(wallets, duplicate, 25, ttl=Duration(seconds=3600))).hold

    response = await merge(wallets, survivor, duplicate)
    assert response.survivor.status == wallet_pb2.WALLET_STATUS_ACTIVE
    assert response.duplicate.status == wallet_pb2.WALLET_STATUS_CLOSED
    assert response.duplicate.merged_into_wallet_id == survivor
    assert response.transaction.type == TX.TRANSACTION_TYPE_MERGE
    got = await wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id=duplicate))
    assert (got.wallet.status, got.wallet.merged_into_wallet_id) == (
        wallet_pb2.WALLET_STATUS_CLOSED,
        survivor,
    )

    points = await balance(wallets, survivor)
    assert (points.available, points.held) == (50 + 30 + 20 - 25, 25)
    gone = await balance(wallets, duplicate)
    assert (gone.available, gone.held, gone.pending) == (0, 0, 0)
    moved = {
        lot.origin_lot_id: lot
        for lot in (await lots_by_id(wallets, survivor)).values()
        if lot.origin_lot_id
    }
    assert set(moved) == {expiring.lot.lot_id, lasting.lot.lot_id}
    assert used_up.lot.lot_id not in moved
    copy = moved[expiring.lot.lot_id]
    assert (copy.remaining, copy.held, copy.sponsor_id) == (30 - 25, 25, "m-7")
    assert copy.expire_time == expiring.lot.expire_time

    # The hold now belongs to the survivor and can still be captured.
    got_hold = (await wallets.GetHold(wallet_pb2.GetHoldRequest(hold_id=placed.hold_id))).hold
    assert (got_hold.wallet_id, got_hold.status) == (survivor, wallet_pb2.HOLD_STATUS_ACTIVE)
    captured = await capture(wallets, placed.hold_id)
    assert captured.hold.captured_amount == 25
    assert captured.transaction.wallet_id == survivor
    points = await balance(wallets, survivor)
    assert (points.available, points.held) == (75, 0)


async def test_merge_moves_reversed_value_still_held_and_a_void_returns_it_to_the_sponsor(
    offers, wallets
) -> None:
    """A reversed lot whose value a hold still reserves moves with the hold: the duplicate is
    left empty, and voiding the hold sends the value to the lot's sponsor, not back into the
    closed duplicate."""
    survivor = await fresh_wallet(offers, wallets)
    duplicate = (await make_wallet(wallets)).wallet_id
    award = await credit(wallets, duplicate, 100, sponsor_id="m-9")
    placed = (await hold(wallets, duplicate, 40, ttl=Duration(seconds=3600))).hold
    reversal = await reverse(wallets, award.transaction.transaction_id)
    assert (reversal.amount_reversed, reversal.amount_held) == (60, 40)

    await merge(wallets, survivor, duplicate)
    left = await lots_by_id(wallets, duplicate)
    assert all(lot.remaining == 0 and lot.held == 0 for lot in left.values())
    (copy,) = [lot for lot in (await lots_by_id(wallets, survivor)).values() if lot.origin_lot_id]
    assert (copy.state, copy.held, copy.remaining) == (wallet_pb2.LOT_STATE_REVERSED, 40, 0)

    await void(wallets, placed.hold_id)
    points = await balance(wallets, survivor)
    assert (points.available, points.held) == (0, 0)  # the released value went to the sponsor
    again = (await lots_by_id(wallets, survivor))[copy.lot_id]
    assert (again.held, again.reversed) == (0, 40)
    assert (await balance(wallets, duplicate)).held == 0


async def test_merge_of_an_empty_duplicate_records_a_merge_without_postings(
    offers, wallets
) -> None:
    """wallet.proto, MergeWalletsResponse.transaction: 'recorded even when the duplicate held
    nothing (no postings then)'."""
    survivor = await fresh_wallet(offers, wallets)
    duplicate = (await make_wallet(wallets)).wallet_id
    await credit(wallets, survivor, 10)
    response = await merge(wallets, survivor, duplicate)
    assert response.duplicate.status == wallet_pb2.WALLET_STATUS_CLOSED
    assert response.duplicate.merged_into_wallet_id == survivor
    assert response.transaction.type == TX.TRANSACTION_TYPE_MERGE
    assert not response.transaction.postings
    assert (await balance(wallets, survivor)).available == 10


async def test_merge_refuses_a_frozen_duplicate(offers, wallets) -> None:
    """MergeWalletsRequest.duplicate_wallet_id: 'active (not frozen or closed)'."""
    survivor = await fresh_wallet(offers, wallets)
    duplicate = (await make_wallet(wallets)).wallet_id
    await credit(wallets, duplicate, 10)
    await wallets.FreezeWallet(
        wallet_pb2.FreezeWalletRequest(request_id=rid("freeze"), wallet_id=duplicate)
    )
    await rpc_error(merge(wallets, survivor, duplicate), FAILED, "WALLET_FROZEN")
    assert (await balance(wallets, duplicate)).available == 10
