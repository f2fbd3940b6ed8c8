"""Concurrency through the real server: the acceptance race of the foundation issue."""

from __future__ import annotations

import asyncio

import grpc
from loyalty.v1 import wallet_pb2

from tests.helpers import balance, credit, error_info, make_scheme, make_wallet, rid, spend

SPENDS = 50
SPEND_AMOUNT = 7
START_BALANCE = 100


async def test_fifty_concurrent_spends_of_seven_on_one_hundred(offers, wallets) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    await credit(wallets, wallet.wallet_id, START_BALANCE)

    async def attempt() -> str:
        try:
            await spend(wallets, wallet.wallet_id, SPEND_AMOUNT)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
            return error_info(error).reason
        return "OK"

    outcomes = await asyncio.gather(*(attempt() for _ in range(SPENDS)))
    expected_ok = START_BALANCE // SPEND_AMOUNT
    assert outcomes.count("OK") == expected_ok
    assert outcomes.count("INSUFFICIENT_FUNDS") == SPENDS - expected_ok
    assert (await balance(wallets, wallet.wallet_id)).available == (
        START_BALANCE - expected_ok * SPEND_AMOUNT
    )


async def test_concurrent_transfers_both_ways_neither_deadlock_nor_overdraw(
    offers, wallets
) -> None:
    """Opposite transfers lock the two wallets in one fixed order, so none deadlocks."""
    await make_scheme(offers)
    a = await make_wallet(wallets)
    b = await make_wallet(wallets)
    await credit(wallets, a.wallet_id, 50)
    await credit(wallets, b.wallet_id, 50)

    async def move(source: str, target: str) -> bool:
        try:
            await wallets.Transfer(
                wallet_pb2.TransferRequest(
                    request_id=rid("transfer"),
                    from_wallet_id=source,
                    to_wallet_id=target,
                    asset="POINTS",
                    amount=5,
                )
            )
        except grpc.aio.AioRpcError as error:
            assert error_info(error).reason == "INSUFFICIENT_FUNDS", error.details()
            return False
        return True

    jobs = [move(a.wallet_id, b.wallet_id) for _ in range(15)]
    jobs += [move(b.wallet_id, a.wallet_id) for _ in range(15)]
    await asyncio.gather(*jobs)
    total = (await balance(wallets, a.wallet_id)).available + (
        await balance(wallets, b.wallet_id)
    ).available
    assert total == 100
