"""Promotion codes through the real server (both backends): batches, limits under concurrent
redemptions, validity windows, idempotency and refusals."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import grpc
from loyalty.v1 import common_pb2, offer_pb2, wallet_pb2

from tests.helpers import balance, error_info, make_scheme, make_wallet, rid, rpc_error, ts


async def create(offers: Any, *, codes: list[str] = (), count: int = 0, **batch: Any) -> Any:  # type: ignore[assignment]
    return await offers.CreatePromotionCodes(
        offer_pb2.CreatePromotionCodesRequest(
            request_id=rid("codes"),
            batch=offer_pb2.PromotionCodeBatch(
                scheme_id="acme",
                name=batch.pop("name", "Welcome"),
                asset=batch.pop("asset", "POINTS"),
                amount=batch.pop("amount", 250),
                **batch,
            ),
            codes=list(codes),
            count=count,
        )
    )


def redeem(offers: Any, wallet_id: str, code: str, request_id: str | None = None) -> Any:
    return offers.RedeemPromotionCode(
        offer_pb2.RedeemPromotionCodeRequest(
            request_id=request_id or rid("redeem"), wallet_id=wallet_id, code=code
        )
    )


async def test_a_code_credits_an_expiring_lot_once_per_wallet(offers, wallets, clock) -> None:
    await make_scheme(offers)
    created = await create(
        offers,
        codes=["welcome25 "],
        sponsor_id="shop-1",
        max_redemptions_per_code=10,
        expiry_policy=common_pb2.ExpiryPolicy(
            after=common_pb2.ExpireAfter(count=30, unit=common_pb2.DURATION_UNIT_DAYS)
        ),
    )
    assert list(created.codes) == ["WELCOME25"]
    wallet = await make_wallet(wallets)
    first = await redeem(offers, wallet.wallet_id, " Welcome25", request_id="redeem-1")
    assert (first.amount, first.batch_id) == (250, created.batch.batch_id)
    expected_expiry = clock.now() + timedelta(days=30)  # Amsterdam in January: no DST change
    assert first.expire_time.ToDatetime().replace(tzinfo=expected_expiry.tzinfo) == expected_expiry
    assert await redeem(offers, wallet.wallet_id, " Welcome25", request_id="redeem-1") == first
    await rpc_error(
        redeem(offers, wallet.wallet_id, "WELCOME25"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CODE_ALREADY_REDEEMED",
    )
    assert (await balance(wallets, wallet.wallet_id)).available == 250
    lot = (await wallets.ListLots(wallet_pb2.ListLotsRequest(wallet_id=wallet.wallet_id))).lots[0]
    assert lot.sponsor_id == "shop-1"


async def test_a_multi_use_code_allows_exactly_its_limit_under_concurrency(offers, wallets) -> None:
    await make_scheme(offers)
    limit = 3
    await create(offers, codes=["SPRING"], max_redemptions_per_code=limit)
    customers = [await make_wallet(wallets) for _ in range(8)]

    async def attempt(wallet_id: str) -> str:
        try:
            await redeem(offers, wallet_id, "SPRING")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
            return error_info(error).reason
        return "OK"

    outcomes = await asyncio.gather(*(attempt(w.wallet_id) for w in customers))
    assert sorted(outcomes) == ["CODE_USED_UP"] * (len(customers) - limit) + ["OK"] * limit
    credited = [(await balance(wallets, w.wallet_id)).available for w in customers]
    assert sorted(credited) == [0] * (len(customers) - limit) + [250] * limit


async def test_generated_codes_validity_and_refusals(offers, wallets, clock) -> None:
    await make_scheme(offers)
    window = await create(
        offers,
        count=5,
        valid_from=ts(clock.now() + timedelta(days=1)),
        valid_until=ts(clock.now() + timedelta(days=2)),
    )
    assert len(set(window.codes)) == 5 and all(len(c) == 12 for c in window.codes)
    wallet = await make_wallet(wallets)
    code = window.codes[0]
    await rpc_error(
        redeem(offers, wallet.wallet_id, code),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CODE_NOT_YET_VALID",
    )
    clock.advance(timedelta(days=1))
    assert (await redeem(offers, wallet.wallet_id, code)).amount == 250
    clock.advance(timedelta(days=1))
    await rpc_error(
        redeem(offers, wallet.wallet_id, window.codes[1]),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CODE_EXPIRED",
    )
    await rpc_error(
        redeem(offers, wallet.wallet_id, "NOSUCHCODE"),
        grpc.StatusCode.NOT_FOUND,
        "PROMOTION_CODE_NOT_FOUND",
    )
    await rpc_error(redeem(offers, wallet.wallet_id, "no!"), grpc.StatusCode.INVALID_ARGUMENT)
    await create(offers, codes=["TWICE"])
    await rpc_error(create(offers, codes=["twice"]), grpc.StatusCode.ALREADY_EXISTS, "CODE_EXISTS")
    await rpc_error(create(offers, codes=["ONE"], count=2), grpc.StatusCode.INVALID_ARGUMENT)
    await rpc_error(
        create(offers, codes=["GOLDEN"], asset="GOLD"), grpc.StatusCode.INVALID_ARGUMENT
    )
