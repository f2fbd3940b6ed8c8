"""WalletService wallets and reads through a real server: life cycle, balances, lots, journal."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from loyalty.v1 import common_pb2, wallet_pb2

from tests.helpers import (
    balance,
    credit,
    error_info,
    make_scheme,
    make_wallet,
    rid,
    rpc_error,
    spend,
    ts,
)

CASH = common_pb2.FUNDING_CASH
TX = wallet_pb2.TransactionType


def at(stamp: Any) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


async def list_wallet_ids(wallets: Any, **filters: Any) -> list[str]:
    response = await wallets.ListWallets(wallet_pb2.ListWalletsRequest(**filters))
    assert response.next_page_token == ""
    return [w.wallet_id for w in response.wallets]


async def list_lots(wallets: Any, wallet_id: str, **filters: Any) -> list[wallet_pb2.Lot]:
    response = await wallets.ListLots(wallet_pb2.ListLotsRequest(wallet_id=wallet_id, **filters))
    assert response.next_page_token == ""
    return list(response.lots)


async def list_txns(wallets: Any, wallet_id: str, **filters: Any) -> list[wallet_pb2.Transaction]:
    response = await wallets.ListTransactions(
        wallet_pb2.ListTransactionsRequest(wallet_id=wallet_id, **filters)
    )
    assert response.next_page_token == ""
    return list(response.transactions)


async def page_through(
    call: Callable[[str], Awaitable[Any]], items: str, id_field: str
) -> tuple[list[list[str]], list[Any]]:
    """Follow next_page_token to the end; returns the ids per page and all items."""
    pages: list[list[str]] = []
    everything: list[Any] = []
    token = ""
    while True:
        response = await call(token)
        found = list(getattr(response, items))
        everything += found
        pages.append([getattr(x, id_field) for x in found])
        token = response.next_page_token
        if not token:
            return pages, everything
        assert len(pages) < 20, "paging does not end"


async def hold(
    wallets: Any, wallet_id: str, amount: int, *, ttl_seconds: int = 600, **fields: Any
) -> wallet_pb2.AuthorizeHoldResponse:
    return await wallets.AuthorizeHold(
        wallet_pb2.AuthorizeHoldRequest(
            request_id=rid("hold"),
            wallet_id=wallet_id,
            asset=fields.pop("asset", "POINTS"),
            amount=amount,
            merchant_id=fields.pop("merchant_id", "m-1"),
            ttl=Duration(seconds=ttl_seconds),
            **fields,
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


async def set_status(wallets: Any, method: str, wallet_id: str, reason: str = "") -> Any:
    request_type = getattr(wallet_pb2, f"{method}Request")
    return await getattr(wallets, method)(
        request_type(request_id=rid(method), wallet_id=wallet_id, reason=reason)
    )


# -- create, get, list -----------------------------------------------------------------------


async def test_create_and_get_wallet(offers, wallets, clock) -> None:
    await make_scheme(offers)
    response = await wallets.CreateWallet(
        wallet_pb2.CreateWalletRequest(
            request_id=rid(), scheme_id="acme", customer_ref="cust-42", metadata={"tier": "gold"}
        )
    )
    wallet = response.wallet
    assert wallet.wallet_id.startswith("wal_")
    assert wallet.scheme_id == "acme"
    assert wallet.customer_ref == "cust-42"
    assert wallet.status == wallet_pb2.WALLET_STATUS_ACTIVE
    assert dict(wallet.metadata) == {"tier": "gold"}
    assert wallet.merged_into_wallet_id == ""
    assert at(wallet.create_time) == clock.now()
    fetched = await wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id=wallet.wallet_id))
    assert fetched.wallet == wallet


async def test_unknown_scheme_or_wallet_is_not_found(offers, wallets) -> None:
    await make_scheme(offers)
    await rpc_error(make_wallet(wallets, scheme_id="nope"), grpc.StatusCode.NOT_FOUND)
    await rpc_error(
        wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="wal_missing")),
        grpc.StatusCode.NOT_FOUND,
    )
    await rpc_error(
        wallets.GetBalance(wallet_pb2.GetBalanceRequest(wallet_id="wal_missing")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert await list_wallet_ids(wallets) == []


async def test_duplicate_customer_ref_is_refused_only_within_a_scheme(offers, wallets) -> None:
    await make_scheme(offers, "acme")
    await make_scheme(offers, "beta")
    first = await make_wallet(wallets, "acme", "cust-1")
    error = await rpc_error(
        make_wallet(wallets, "acme", "cust-1"), grpc.StatusCode.ALREADY_EXISTS, "WALLET_EXISTS"
    )
    assert error_info(error).domain == "loyalty.v1"
    other = await make_wallet(wallets, "beta", "cust-1")
    assert other.wallet_id != first.wallet_id
    assert await list_wallet_ids(wallets, scheme_id="acme", customer_ref="cust-1") == [
        first.wallet_id
    ]


async def test_list_wallets_filters_by_scheme_and_customer(offers, wallets) -> None:
    await make_scheme(offers, "acme")
    await make_scheme(offers, "beta")
    a1 = (await make_wallet(wallets, "acme", "c1")).wallet_id
    b1 = (await make_wallet(wallets, "beta", "c1")).wallet_id
    a2 = (await make_wallet(wallets, "acme", "c2")).wallet_id
    assert await list_wallet_ids(wallets) == [a1, b1, a2]
    assert await list_wallet_ids(wallets, scheme_id="acme") == [a1, a2]
    assert await list_wallet_ids(wallets, scheme_id="beta") == [b1]
    assert await list_wallet_ids(wallets, customer_ref="c1") == [a1, b1]
    assert await list_wallet_ids(wallets, scheme_id="beta", customer_ref="c2") == []


async def test_list_wallets_pages(offers, wallets) -> None:
    await make_scheme(offers)
    created = [(await make_wallet(wallets)).wallet_id for _ in range(5)]

    async def call(token: str) -> Any:
        return await wallets.ListWallets(
            wallet_pb2.ListWalletsRequest(scheme_id="acme", page_size=2, page_token=token)
        )

    pages, _ = await page_through(call, "wallets", "wallet_id")
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [w for p in pages for w in p] == created


# -- freeze, unfreeze, close -----------------------------------------------------------------


async def test_frozen_wallet_refuses_outflows_but_takes_credits(offers, wallets) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    other = (await make_wallet(wallets)).wallet_id
    await credit(wallets, wallet, 100)
    placed = await hold(wallets, wallet, 20)
    spent = await spend(wallets, wallet, 7)

    frozen = await set_status(wallets, "FreezeWallet", wallet, "fraud check")
    assert frozen.wallet.status == wallet_pb2.WALLET_STATUS_FROZEN
    assert frozen.wallet.status_reason == "fraud check"

    await rpc_error(
        spend(wallets, wallet, 10), grpc.StatusCode.FAILED_PRECONDITION, "WALLET_FROZEN"
    )
    await rpc_error(hold(wallets, wallet, 10), grpc.StatusCode.FAILED_PRECONDITION, "WALLET_FROZEN")
    await rpc_error(
        transfer(wallets, wallet, other, 10), grpc.StatusCode.FAILED_PRECONDITION, "WALLET_FROZEN"
    )
    await rpc_error(
        wallets.CaptureHold(
            wallet_pb2.CaptureHoldRequest(request_id=rid(), hold_id=placed.hold.hold_id)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "WALLET_FROZEN",
    )
    # Credits and refunds still come in.
    await credit(wallets, wallet, 5)
    await wallets.RefundSpend(
        wallet_pb2.RefundSpendRequest(
            request_id=rid(), transaction_id=spent.transaction.transaction_id
        )
    )
    assert (await balance(wallets, wallet)).available == 100 - 20 + 5
    assert (await balance(wallets, other)).available == 0

    thawed = await set_status(wallets, "UnfreezeWallet", wallet, "cleared")
    assert thawed.wallet.status == wallet_pb2.WALLET_STATUS_ACTIVE
    assert (await spend(wallets, wallet, 10)).amount_spent == 10
    assert (await balance(wallets, wallet)).available == 100 - 20 + 5 - 10


async def test_close_refused_while_value_remains(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    await credit(wallets, wallet, 10)
    await rpc_error(
        set_status(wallets, "CloseWallet", wallet),
        grpc.StatusCode.FAILED_PRECONDITION,
        "WALLET_NOT_EMPTY",
    )
    # Everything reserved by a hold still counts.
    placed = await hold(wallets, wallet, 10)
    await rpc_error(
        set_status(wallets, "CloseWallet", wallet),
        grpc.StatusCode.FAILED_PRECONDITION,
        "WALLET_NOT_EMPTY",
    )
    await wallets.CaptureHold(
        wallet_pb2.CaptureHoldRequest(request_id=rid(), hold_id=placed.hold.hold_id)
    )
    # Pending value (not yet available) is value too.
    await credit(wallets, wallet, 3, available_time=ts(clock.now() + timedelta(days=1)))
    await rpc_error(
        set_status(wallets, "CloseWallet", wallet),
        grpc.StatusCode.FAILED_PRECONDITION,
        "WALLET_NOT_EMPTY",
    )
    got = await wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id=wallet))
    assert got.wallet.status == wallet_pb2.WALLET_STATUS_ACTIVE


async def test_closed_wallet_refuses_every_mutation(offers, wallets) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    other = (await make_wallet(wallets)).wallet_id
    award = await credit(wallets, wallet, 10)
    spent = await spend(wallets, wallet, 10)
    await credit(wallets, other, 10)
    closed = await set_status(wallets, "CloseWallet", wallet, "customer left")
    assert closed.wallet.status == wallet_pb2.WALLET_STATUS_CLOSED
    assert closed.wallet.status_reason == "customer left"

    attempts: dict[str, Callable[[], Awaitable[Any]]] = {
        "Credit": lambda: credit(wallets, wallet, 1),
        "Spend": lambda: spend(wallets, wallet, 1),
        "AuthorizeHold": lambda: hold(wallets, wallet, 1),
        "FreezeWallet": lambda: set_status(wallets, "FreezeWallet", wallet),
        "UnfreezeWallet": lambda: set_status(wallets, "UnfreezeWallet", wallet),
        "CloseWallet": lambda: set_status(wallets, "CloseWallet", wallet),
        "Transfer out": lambda: transfer(wallets, wallet, other, 1),
        "Transfer in": lambda: transfer(wallets, other, wallet, 1),
        "RefundSpend": lambda: wallets.RefundSpend(
            wallet_pb2.RefundSpendRequest(
                request_id=rid(), transaction_id=spent.transaction.transaction_id
            )
        ),
        "ReverseCredit": lambda: wallets.ReverseCredit(
            wallet_pb2.ReverseCreditRequest(
                request_id=rid(), transaction_id=award.transaction.transaction_id
            )
        ),
        "MergeWallets as survivor": lambda: wallets.MergeWallets(
            wallet_pb2.MergeWalletsRequest(
                request_id=rid(), survivor_wallet_id=wallet, duplicate_wallet_id=other
            )
        ),
        "MergeWallets as duplicate": lambda: wallets.MergeWallets(
            wallet_pb2.MergeWalletsRequest(
                request_id=rid(), survivor_wallet_id=other, duplicate_wallet_id=wallet
            )
        ),
    }
    wrong = {}
    for name, attempt in attempts.items():
        try:
            await attempt()
        except grpc.aio.AioRpcError as error:
            outcome = (error.code(), error_info(error).reason)
            if outcome != (grpc.StatusCode.FAILED_PRECONDITION, "WALLET_CLOSED"):
                wrong[name] = outcome
        else:
            wrong[name] = "succeeded"
    assert wrong == {}
    got = await wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id=wallet))
    assert got.wallet.status == wallet_pb2.WALLET_STATUS_CLOSED
    assert (await balance(wallets, other)).available == 10


# -- balances --------------------------------------------------------------------------------


async def test_balance_reports_available_pending_and_held(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    await credit(wallets, wallet, 100)
    await credit(wallets, wallet, 40, available_time=ts(clock.now() + timedelta(days=2)))
    await hold(wallets, wallet, 30)
    points = await balance(wallets, wallet)
    assert (points.asset, points.available, points.pending, points.held) == ("POINTS", 70, 40, 30)

    everything = await wallets.GetBalance(wallet_pb2.GetBalanceRequest(wallet_id=wallet))
    assert everything.wallet_id == wallet
    assert at(everything.as_of_time) == clock.now()
    # One entry per asset of the scheme, zero balances included, in code order.
    assert [b.asset for b in everything.balances] == ["EUR", "POINTS"]
    assert everything.balances[0] == wallet_pb2.AssetBalance(asset="EUR")
    assert everything.balances[1] == points

    clock.advance(timedelta(days=2))
    points = await balance(wallets, wallet)
    # The hold's 10-minute TTL has passed and the pending lot became available.
    assert (points.available, points.pending, points.held) == (140, 0, 0)


async def test_next_expirations_soonest_first_at_most_five(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    now = clock.now()
    # amount == day of expiry, credited out of order; one never-expiring lot.
    for days in (6, 2, 7, 4, 5, 3):
        await credit(wallets, wallet, days, expire_time=ts(now + timedelta(days=days)))
    await credit(wallets, wallet, 1000)
    # Pending value counts in the expirations too.
    await credit(
        wallets,
        wallet,
        1,
        available_time=ts(now + timedelta(hours=12)),
        expire_time=ts(now + timedelta(days=1)),
    )
    points = await balance(wallets, wallet)
    assert points.available == sum((6, 2, 7, 4, 5, 3)) + 1000
    assert points.pending == 1
    got = [(e.amount, at(e.expire_time)) for e in points.next_expirations]
    assert got == [(d, now + timedelta(days=d)) for d in (1, 2, 3, 4, 5)]


# -- lots ------------------------------------------------------------------------------------


async def test_list_lots_filters_by_state(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    soon = await credit(wallets, wallet, 10, expire_time=ts(clock.now() + timedelta(days=1)))
    reversed_ = await credit(wallets, wallet, 20)
    kept = await credit(wallets, wallet, 30)
    await spend(wallets, wallet, 10)  # exhausts the soonest-expiring lot
    await wallets.ReverseCredit(
        wallet_pb2.ReverseCreditRequest(
            request_id=rid(), transaction_id=reversed_.transaction.transaction_id
        )
    )

    def ids(lots: list[wallet_pb2.Lot]) -> list[str]:
        return [lot.lot_id for lot in lots]

    assert ids(await list_lots(wallets, wallet, state=wallet_pb2.LOT_STATE_OPEN)) == [
        kept.lot.lot_id
    ]
    exhausted = await list_lots(wallets, wallet, state=wallet_pb2.LOT_STATE_EXHAUSTED)
    assert ids(exhausted) == [soon.lot.lot_id]
    assert (exhausted[0].remaining, exhausted[0].spent) == (0, 10)
    reversed_lots = await list_lots(wallets, wallet, state=wallet_pb2.LOT_STATE_REVERSED)
    assert ids(reversed_lots) == [reversed_.lot.lot_id]
    assert (reversed_lots[0].remaining, reversed_lots[0].reversed) == (0, 20)
    assert await list_lots(wallets, wallet, state=wallet_pb2.LOT_STATE_EXPIRED) == []
    assert len(await list_lots(wallets, wallet)) == 3


async def test_list_lots_filters_by_asset_and_expiry(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    now = clock.now()
    p1 = await credit(wallets, wallet, 1, expire_time=ts(now + timedelta(days=1)))
    await credit(wallets, wallet, 2, expire_time=ts(now + timedelta(days=10)))
    await credit(wallets, wallet, 3)
    e1 = await credit(wallets, wallet, 4, asset="EUR", expire_time=ts(now + timedelta(days=1)))

    def amounts(lots: list[wallet_pb2.Lot]) -> list[int]:
        return [lot.amount for lot in lots]

    assert [lot.lot_id for lot in await list_lots(wallets, wallet, asset="EUR")] == [e1.lot.lot_id]
    assert sorted(amounts(await list_lots(wallets, wallet, asset="POINTS"))) == [1, 2, 3]
    five_days = ts(now + timedelta(days=5))
    assert sorted(amounts(await list_lots(wallets, wallet, expire_before_time=five_days))) == [
        1,
        4,
    ]
    assert [
        lot.lot_id
        for lot in await list_lots(wallets, wallet, asset="POINTS", expire_before_time=five_days)
    ] == [p1.lot.lot_id]
    # "Before" is strict: a lot expiring exactly at the bound is not listed.
    exactly = ts(now + timedelta(days=1))
    assert await list_lots(wallets, wallet, expire_before_time=exactly) == []


async def test_list_lots_in_spend_order_across_pages(offers, wallets, clock) -> None:
    await make_scheme(offers, cash_expiry_allowed=True)
    wallet = (await make_wallet(wallets)).wallet_id
    now = clock.now()
    in_2_days, in_5_days = ts(now + timedelta(days=2)), ts(now + timedelta(days=5))
    made = {}
    for name, fields in [
        ("cash-never", {"funding": CASH}),
        ("promo-never", {}),
        ("cash-5d", {"funding": CASH, "expire_time": in_5_days}),
        ("promo-5d", {"expire_time": in_5_days}),
        ("promo-2d-older", {"expire_time": in_2_days}),
        ("promo-2d-newer", {"expire_time": in_2_days}),
    ]:
        made[(await credit(wallets, wallet, 10, **fields)).lot.lot_id] = name
        clock.advance(timedelta(minutes=1))

    async def call(token: str) -> Any:
        return await wallets.ListLots(
            wallet_pb2.ListLotsRequest(wallet_id=wallet, page_size=4, page_token=token)
        )

    pages, _ = await page_through(call, "lots", "lot_id")
    assert [len(p) for p in pages] == [4, 2]
    assert [made[lot_id] for page in pages for lot_id in page] == [
        "promo-2d-older",
        "promo-2d-newer",
        "promo-5d",
        "cash-5d",
        "promo-never",
        "cash-never",
    ]


# -- transactions ----------------------------------------------------------------------------


async def test_list_transactions_newest_first_across_pages(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    made = []
    for step in range(5):
        if step % 2 == 0:
            made.append((await credit(wallets, wallet, 10)).transaction.transaction_id)
        else:
            made.append((await spend(wallets, wallet, 3)).transaction.transaction_id)
        clock.advance(timedelta(minutes=1))

    async def call(token: str) -> Any:
        return await wallets.ListTransactions(
            wallet_pb2.ListTransactionsRequest(wallet_id=wallet, page_size=2, page_token=token)
        )

    pages, listed = await page_through(call, "transactions", "transaction_id")
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [t.transaction_id for t in listed] == list(reversed(made))
    times = [at(t.create_time) for t in listed]
    assert times == sorted(times, reverse=True)


async def test_list_transactions_filters_by_type(offers, wallets) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    award = await credit(wallets, wallet, 100)
    top_up = await credit(
        wallets, wallet, 500, asset="EUR", funding=CASH, kind=wallet_pb2.CREDIT_KIND_TOP_UP
    )
    spent = await spend(wallets, wallet, 10)
    placed = await hold(wallets, wallet, 5)
    await wallets.VoidHold(
        wallet_pb2.VoidHoldRequest(request_id=rid(), hold_id=placed.hold.hold_id)
    )

    def ids(txns: list[wallet_pb2.Transaction]) -> set[str]:
        return {t.transaction_id for t in txns}

    assert ids(await list_txns(wallets, wallet, types=[TX.TRANSACTION_TYPE_SPEND])) == {
        spent.transaction.transaction_id
    }
    credits = await list_txns(
        wallets, wallet, types=[TX.TRANSACTION_TYPE_AWARD, TX.TRANSACTION_TYPE_TOP_UP]
    )
    assert ids(credits) == {award.transaction.transaction_id, top_up.transaction.transaction_id}
    holds = await list_txns(
        wallets, wallet, types=[TX.TRANSACTION_TYPE_HOLD, TX.TRANSACTION_TYPE_VOID]
    )
    assert sorted(t.type for t in holds) == [TX.TRANSACTION_TYPE_HOLD, TX.TRANSACTION_TYPE_VOID]
    assert all(t.hold_id == placed.hold.hold_id for t in holds)
    assert len(await list_txns(wallets, wallet)) == 5


async def test_list_transactions_time_range(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    t0 = clock.now()
    first = await credit(wallets, wallet, 10)
    clock.advance(timedelta(hours=1))
    t1 = clock.now()
    second = await credit(wallets, wallet, 20)
    clock.advance(timedelta(hours=1))
    t2 = clock.now()
    third = await spend(wallets, wallet, 5)

    async def ids(**window: Any) -> list[str]:
        return [t.transaction_id for t in await list_txns(wallets, wallet, **window)]

    first_id, second_id, third_id = (
        first.transaction.transaction_id,
        second.transaction.transaction_id,
        third.transaction.transaction_id,
    )
    # start is inclusive, end exclusive.
    assert await ids(start_time=ts(t1), end_time=ts(t2)) == [second_id]
    assert await ids(start_time=ts(t1)) == [third_id, second_id]
    assert await ids(end_time=ts(t1)) == [first_id]
    assert await ids(start_time=ts(t0), end_time=ts(t2 + timedelta(seconds=1))) == [
        third_id,
        second_id,
        first_id,
    ]
    assert await ids(start_time=ts(t2 + timedelta(seconds=1))) == []


async def test_transactions_balance_per_asset_and_carry_allocations(offers, wallets) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    other = (await make_wallet(wallets)).wallet_id
    await credit(wallets, wallet, 30)
    await credit(wallets, wallet, 50)
    await credit(wallets, wallet, 900, asset="EUR", funding=CASH)
    spent = await spend(wallets, wallet, 40)
    await spend(wallets, wallet, 250, asset="EUR")
    placed = await hold(wallets, wallet, 20)
    await wallets.CaptureHold(
        wallet_pb2.CaptureHoldRequest(request_id=rid(), hold_id=placed.hold.hold_id, amount=15)
    )
    await wallets.RefundSpend(
        wallet_pb2.RefundSpendRequest(
            request_id=rid(), transaction_id=spent.transaction.transaction_id, amount=10
        )
    )
    await transfer(wallets, wallet, other, 5)

    listed = await list_txns(wallets, wallet)
    assert len(listed) >= 8
    for txn in listed:
        assert txn.postings, txn
        totals: dict[str, int] = defaultdict(int)
        for posting in txn.postings:
            totals[posting.asset] += posting.amount
        assert all(v == 0 for v in totals.values()), (
            wallet_pb2.TransactionType.Name(txn.type),
            totals,
        )

    spend_txn = spent.transaction
    assert spend_txn.type == TX.TRANSACTION_TYPE_SPEND
    assert spend_txn.merchant_id == "m-1"
    assert sum(a.amount for a in spend_txn.allocations) == 40
    assert {a.wallet_id for a in spend_txn.allocations} == {wallet}
    wallet_leg = sum(p.amount for p in spend_txn.postings if p.account == f"wallet:{wallet}")
    merchant_leg = sum(p.amount for p in spend_txn.postings if p.account == "merchant:acme:m-1")
    assert (wallet_leg, merchant_leg) == (-40, 40)

    fetched = await wallets.GetTransaction(
        wallet_pb2.GetTransactionRequest(transaction_id=spend_txn.transaction_id)
    )
    assert fetched.transaction == spend_txn
    assert next(t for t in listed if t.transaction_id == spend_txn.transaction_id) == spend_txn
    # The counterpart sees the transfer too.
    assert [t.type for t in await list_txns(wallets, other)] == [TX.TRANSACTION_TYPE_TRANSFER]


async def test_get_transaction_of_a_credit_and_unknown_id(offers, wallets) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    award = await credit(wallets, wallet, 25, reference="order-7", metadata={"k": "v"})
    fetched = await wallets.GetTransaction(
        wallet_pb2.GetTransactionRequest(transaction_id=award.transaction.transaction_id)
    )
    txn = fetched.transaction
    assert txn == award.transaction
    assert txn.transaction_id.startswith("txn_")
    assert txn.type == TX.TRANSACTION_TYPE_AWARD
    assert (txn.wallet_id, txn.scheme_id, txn.reference) == (wallet, "acme", "order-7")
    assert dict(txn.metadata) == {"k": "v"}
    assert {(p.account, p.amount) for p in txn.postings} == {
        ("sponsor:acme:m-sponsor", -25),
        (f"wallet:{wallet}", 25),
    }
    await rpc_error(
        wallets.GetTransaction(wallet_pb2.GetTransactionRequest(transaction_id="txn_missing")),
        grpc.StatusCode.NOT_FOUND,
    )
