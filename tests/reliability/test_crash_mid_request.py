"""Item 4: the server is SIGKILLed in the middle of a request, then the client retries.

`loyalty serve` runs as a child process with the crash hook of src/loyalty_ledger/faults.py
enabled. Each run arms one crash for one request_id at one point:
- `before_commit`: the mutation has run inside its database transaction, not yet committed;
- `after_commit`: the transaction committed, the reply was not sent.
The client sees the call fail, the server is restarted, and the client retries with the same
request_id and request, as docs/api.md tells it to. The retry succeeds, a second replay
answers identically, and at the end every request_id had exactly one effect: balances, holds
and the number of transactions of each type match a model of the successful calls.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from loyalty.v1 import common_pb2, offer_pb2, offer_pb2_grpc, wallet_pb2, wallet_pb2_grpc
from sqlalchemy import func, select

from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.db import Database
from tests.reliability.support import ServerProcess, aio_channel, invariants_hold, size

RUNS = size(ci=2, soak=100)
POINTS = ("before_commit", "after_commit")
START = 1_000_000


def _request(kind: str, i: int, a: str, b: str) -> tuple[str, Any]:
    request_id = f"crash-{kind}-{i}"
    if kind == "credit":
        return request_id, wallet_pb2.CreditRequest(
            request_id=request_id,
            wallet_id=a,
            kind=wallet_pb2.CREDIT_KIND_AWARD,
            asset="POINTS",
            amount=5,
            funding=common_pb2.FUNDING_PROMOTIONAL,
            sponsor_id="m-1",
        )
    if kind == "spend":
        return request_id, wallet_pb2.SpendRequest(
            request_id=request_id, wallet_id=a, asset="POINTS", amount=3, merchant_id="m-1"
        )
    if kind == "transfer":
        return request_id, wallet_pb2.TransferRequest(
            request_id=request_id, from_wallet_id=a, to_wallet_id=b, asset="POINTS", amount=2
        )
    return request_id, wallet_pb2.AuthorizeHoldRequest(
        request_id=request_id, wallet_id=a, asset="POINTS", amount=4, merchant_id="m-1"
    )


METHOD = {
    "credit": "Credit",
    "spend": "Spend",
    "transfer": "Transfer",
    "hold": "AuthorizeHold",
}
TX_TYPE = {"credit": "AWARD", "spend": "SPEND", "transfer": "TRANSFER", "hold": "HOLD"}


async def _balance(stub: Any, wallet: str) -> tuple[int, int]:
    response = await stub.GetBalance(wallet_pb2.GetBalanceRequest(wallet_id=wallet, asset="POINTS"))
    (only,) = response.balances
    return only.available, only.held


async def _type_counts(url: str) -> Counter[str]:
    db = Database(url)
    try:

        async def job(conn: Any) -> Counter[str]:
            rows = await conn.execute(
                select(t.transactions.c.type, func.count()).group_by(t.transactions.c.type)
            )
            return Counter({str(kind): int(n) for kind, n in rows})

        return await db.read(job)
    finally:
        await db.close()


async def test_sigkill_before_and_after_commit_then_retry_has_one_effect(
    database_url: str, tmp_path: Path
) -> None:
    server = ServerProcess(database_url, tmp_path, LOYALTY_SCHEDULER="false")
    await server.start()
    rng = random.Random(4)
    expected = Counter({"AWARD": 1})
    a_expected, b_expected, held_expected = START, 0, 0
    try:
        async with aio_channel(server.target) as channel:
            offers = offer_pb2_grpc.OfferServiceStub(channel)
            await offers.CreateScheme(
                offer_pb2.CreateSchemeRequest(
                    request_id="scheme",
                    scheme=offer_pb2.Scheme(
                        scheme_id="acme",
                        name="Acme",
                        assets=[offer_pb2.AssetDefinition(code="POINTS", scale=0)],
                        timezone="UTC",
                    ),
                )
            )
        async with aio_channel(server.target) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            a, b = [
                (
                    await stub.CreateWallet(
                        wallet_pb2.CreateWalletRequest(
                            request_id=f"w-{ref}", scheme_id="acme", customer_ref=ref
                        )
                    )
                ).wallet.wallet_id
                for ref in ("a", "b")
            ]
            _, first_credit = _request("credit", -1, a, b)
            first_credit.amount = START
            await stub.Credit(first_credit)

        for i in range(RUNS):
            kind = rng.choice(sorted(METHOD))
            point = POINTS[i % 2]
            request_id, request = _request(kind, i, a, b)
            server.arm(point, request_id)
            async with aio_channel(server.target) as channel:
                stub = wallet_pb2_grpc.WalletServiceStub(channel)
                call = getattr(stub, METHOD[kind])
                try:
                    await call(request, timeout=30)
                    raise AssertionError(f"run {i}: {point} {kind} should have crashed the server")
                except grpc.aio.AioRpcError as error:
                    assert error.code() != grpc.StatusCode.DEADLINE_EXCEEDED, error
            assert await server.died() == -9, server.tail()
            assert not server.fault_file.exists()
            await server.start()
            async with aio_channel(server.target) as channel:
                stub = wallet_pb2_grpc.WalletServiceStub(channel)
                call = getattr(stub, METHOD[kind])
                # Before the retry: a crash before commit left nothing, one after commit all.
                landed = (await _type_counts(database_url))[TX_TYPE[kind]]
                assert landed == expected[TX_TYPE[kind]] + (point == "after_commit"), (i, point)
                retried = await call(request, timeout=30)
                replayed = await call(request, timeout=30)
                assert retried.SerializeToString() == replayed.SerializeToString()
                expected[TX_TYPE[kind]] += 1
                if kind == "credit":
                    a_expected += 5
                elif kind == "spend":
                    a_expected -= 3
                elif kind == "transfer":
                    a_expected, b_expected = a_expected - 2, b_expected + 2
                else:
                    a_expected, held_expected = a_expected - 4, held_expected + 4
                assert await _balance(stub, a) == (a_expected, held_expected), (i, point, kind)
                assert await _balance(stub, b) == (b_expected, 0), (i, point, kind)
        assert server.starts == RUNS + 1
    finally:
        await server.kill()
    assert await _type_counts(database_url) == expected
    await invariants_hold(database_url)
