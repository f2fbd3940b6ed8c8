"""Rule 6 through a real server: every mutating RPC is idempotent by request_id."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from loyalty.v1 import offer_pb2, wallet_pb2

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
)

TX = wallet_pb2.TransactionType


async def count_types(wallets: Any, wallet_id: str, kind: int) -> int:
    response = await wallets.ListTransactions(
        wallet_pb2.ListTransactionsRequest(wallet_id=wallet_id, types=[kind])
    )
    return len(response.transactions)


async def fresh_wallet(offers: Any, wallets: Any) -> str:
    await make_scheme(offers)
    return (await make_wallet(wallets)).wallet_id


async def test_replay_returns_the_first_response_and_has_no_second_effect(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    first_credit = await credit(wallets, wallet, 100, request_id="credit-1")
    again_credit = await credit(wallets, wallet, 100, request_id="credit-1")
    assert again_credit.SerializeToString() == first_credit.SerializeToString()
    assert (await balance(wallets, wallet)).available == 100
    assert await count_types(wallets, wallet, TX.TRANSACTION_TYPE_AWARD) == 1

    first_spend = await spend(wallets, wallet, 30, request_id="spend-1")
    # Something else happens in between; the replay still answers as the first call did.
    await credit(wallets, wallet, 50)
    again_spend = await spend(wallets, wallet, 30, request_id="spend-1")
    assert again_spend.SerializeToString() == first_spend.SerializeToString()
    assert (await balance(wallets, wallet)).available == 100 - 30 + 50
    assert await count_types(wallets, wallet, TX.TRANSACTION_TYPE_SPEND) == 1


async def test_same_key_for_a_different_request_is_refused(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    await credit(wallets, wallet, 100)
    await spend(wallets, wallet, 30, request_id="spend-1")
    error = await rpc_error(
        spend(wallets, wallet, 31, request_id="spend-1"),
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert error_info(error).domain == "loyalty.v1"
    # Another method with the same key is a different request too.
    await rpc_error(
        credit(wallets, wallet, 30, request_id="spend-1"),
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert (await balance(wallets, wallet)).available == 70
    assert await count_types(wallets, wallet, TX.TRANSACTION_TYPE_SPEND) == 1
    assert await count_types(wallets, wallet, TX.TRANSACTION_TYPE_AWARD) == 1


async def test_concurrent_identical_calls_have_one_effect(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    await credit(wallets, wallet, 100)
    responses = await asyncio.gather(
        *(spend(wallets, wallet, 30, request_id="spend-once") for _ in range(10))
    )
    assert len({r.SerializeToString() for r in responses}) == 1
    assert responses[0].amount_spent == 30
    assert (await balance(wallets, wallet)).available == 70
    assert await count_types(wallets, wallet, TX.TRANSACTION_TYPE_SPEND) == 1

    credits = await asyncio.gather(
        *(credit(wallets, wallet, 5, request_id="credit-once") for _ in range(10))
    )
    assert len({r.SerializeToString() for r in credits}) == 1
    assert (await balance(wallets, wallet)).available == 75
    assert await count_types(wallets, wallet, TX.TRANSACTION_TYPE_AWARD) == 2


async def test_a_failed_request_can_be_retried_with_the_same_key(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    await credit(wallets, wallet, 10)
    await rpc_error(
        spend(wallets, wallet, 30, request_id="spend-retry"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
    )
    await credit(wallets, wallet, 50)
    retried = await spend(wallets, wallet, 30, request_id="spend-retry")
    assert retried.amount_spent == 30
    assert (await balance(wallets, wallet)).available == 10 + 50 - 30
    replay = await spend(wallets, wallet, 30, request_id="spend-retry")
    assert replay.SerializeToString() == retried.SerializeToString()
    assert (await balance(wallets, wallet)).available == 30


async def test_request_id_length_limits(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    for bad in ("", "x" * 65):
        error = await rpc_error(
            credit(wallets, wallet, 10, request_id=bad), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert "request_id" in field_violations(error), len(bad)
    longest = "x" * 64
    first = await credit(wallets, wallet, 10, request_id=longest)
    again = await credit(wallets, wallet, 10, request_id=longest)
    assert again.SerializeToString() == first.SerializeToString()
    assert (await balance(wallets, wallet)).available == 10


async def test_create_scheme_and_wallet_replays(offers, wallets) -> None:
    scheme = offer_pb2.Scheme(
        scheme_id="acme",
        name="Acme",
        assets=[offer_pb2.AssetDefinition(code="POINTS", scale=0)],
        timezone="UTC",
    )
    request = offer_pb2.CreateSchemeRequest(request_id="scheme-1", scheme=scheme)
    first = await offers.CreateScheme(request)
    # A replay is not a duplicate scheme: it returns the first response.
    again = await offers.CreateScheme(request)
    assert again.SerializeToString() == first.SerializeToString()

    create = wallet_pb2.CreateWalletRequest(
        request_id="wallet-1", scheme_id="acme", customer_ref="cust-1"
    )
    made = await wallets.CreateWallet(create)
    remade = await wallets.CreateWallet(create)
    assert remade.SerializeToString() == made.SerializeToString()
    listed = await wallets.ListWallets(wallet_pb2.ListWalletsRequest(scheme_id="acme"))
    assert [w.wallet_id for w in listed.wallets] == [made.wallet.wallet_id]


async def test_capture_and_refund_replays_apply_once(offers, wallets) -> None:
    wallet = await fresh_wallet(offers, wallets)
    await credit(wallets, wallet, 100)
    placed = await wallets.AuthorizeHold(
        wallet_pb2.AuthorizeHoldRequest(
            request_id=rid(), wallet_id=wallet, asset="POINTS", amount=40, merchant_id="m-1"
        )
    )
    capture = wallet_pb2.CaptureHoldRequest(
        request_id="capture-1", hold_id=placed.hold.hold_id, amount=30
    )
    first = await wallets.CaptureHold(capture)
    again = await wallets.CaptureHold(capture)
    assert again.SerializeToString() == first.SerializeToString()
    assert (await balance(wallets, wallet)).available == 70

    refund = wallet_pb2.RefundSpendRequest(
        request_id="refund-1", transaction_id=first.transaction.transaction_id, amount=20
    )
    refunded = await wallets.RefundSpend(refund)
    re_refunded = await wallets.RefundSpend(refund)
    assert re_refunded.SerializeToString() == refunded.SerializeToString()
    assert (await balance(wallets, wallet)).available == 90
    assert await count_types(wallets, wallet, TX.TRANSACTION_TYPE_REFUND) == 1
