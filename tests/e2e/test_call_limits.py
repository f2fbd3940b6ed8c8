"""Two server-side limits per call, each at its boundary: a unary call's time (a call within
it runs to its end; past it, DEADLINE_EXCEEDED UNARY_TIME_LIMIT) and the streams one key holds
(exactly the limit open, one more RESOURCE_EXHAUSTED STREAMS_PER_KEY with a QuotaFailure)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from loyalty.v1 import expiry_pb2, wallet_pb2, wallet_pb2_grpc

from loyalty_ledger.clock import TestClock
from loyalty_ledger.ledger.reads import Reader
from loyalty_ledger.settings import Settings
from tests.helpers import error_info, make_scheme, open_channel, quota_failure, rpc_error


@pytest.fixture
async def limited(database_url: str, clock: TestClock) -> AsyncIterator[object]:
    from loyalty_ledger.server import App

    settings = Settings(
        host="127.0.0.1",
        port=0,
        database_url=database_url,
        unary_seconds_max=0.5,
        streams_per_key_max=2,
        watch_heartbeat_seconds=0.2,
    )
    app = App(settings, clock=clock)
    await app.start()
    await asyncio.wait_for(app.serving.wait(), timeout=10)
    yield app
    await app.stop(0)


async def test_a_unary_call_past_the_limit_ends_deadline_exceeded(
    limited, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Reader.get_wallet
    delay_s = {"wal_slow": 2.0, "wal_within": 0.1}  # the limit is 0.5 s

    async def slow(self: Reader, wallet_id: str):  # type: ignore[no-untyped-def]
        await asyncio.sleep(delay_s[wallet_id])
        return await original(self, wallet_id)

    monkeypatch.setattr(Reader, "get_wallet", slow)
    async with open_channel(f"127.0.0.1:{limited.port}") as channel:  # type: ignore[attr-defined]
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        # Within the limit the call runs to its end (here: NOT_FOUND, after the delay).
        await rpc_error(
            stub.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="wal_within")),
            grpc.StatusCode.NOT_FOUND,
        )
        started = asyncio.get_running_loop().time()
        error = await rpc_error(
            stub.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="wal_slow")),
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        took = asyncio.get_running_loop().time() - started
    assert "LOYALTY_UNARY_SECONDS_MAX" in error.details()
    info = error_info(error)
    assert info.reason == "UNARY_TIME_LIMIT"
    assert dict(info.metadata) == {"limit": "LOYALTY_UNARY_SECONDS_MAX", "limit_seconds": "0.5"}
    assert took < 1.5, took  # cut at the limit, not after the slow read


async def test_one_key_holds_at_most_its_streams(limited) -> None:
    async with open_channel(f"127.0.0.1:{limited.port}") as channel:  # type: ignore[attr-defined]
        from loyalty.v1 import offer_pb2_grpc

        await make_scheme(offer_pb2_grpc.OfferServiceStub(channel))
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        request = expiry_pb2.WatchExpirationsRequest(scheme_id="acme", from_now=True)
        open_calls = [stub.WatchExpirations(request) for _ in range(2)]
        for call in open_calls:
            await call.read()  # a heartbeat: the stream is open
        third = stub.WatchExpirations(request)
        error = await rpc_error(third.read(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        info = error_info(error)
        assert info.reason == "STREAMS_PER_KEY"
        assert (info.metadata["limit"], info.metadata["limit_value"]) == (
            "LOYALTY_STREAMS_PER_KEY_MAX",
            "2",
        )
        quota = quota_failure(error)
        assert (quota.quota_id, quota.quota_value) == ("LOYALTY_STREAMS_PER_KEY_MAX", 2)
        assert quota.subject == f"api_key:{info.metadata['key_id']}"
        open_calls[0].cancel()
        await asyncio.sleep(0.3)  # the server notices the cancel
        again = stub.WatchExpirations(request)
        assert await again.read() is not None  # a slot came free
        for call in (open_calls[1], again):
            call.cancel()
