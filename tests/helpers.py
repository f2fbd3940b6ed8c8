"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from loyalty.v1 import common_pb2, offer_pb2, wallet_pb2

from loyalty_ledger.settings import Settings

_ids = itertools.count(1)

# The ADMIN key every test server accepts (LOYALTY_ADMIN_KEY); clients send it by default.
TEST_ADMIN_KEY = "test-admin-key-for-the-suite"


def server_settings(database_url: str) -> Settings:
    """A test server's settings: loopback on a free port, the suite's admin key, no metrics."""
    return Settings(
        host="127.0.0.1",
        port=0,
        database_url=database_url,
        watch_heartbeat_seconds=1.0,
        admin_key=TEST_ADMIN_KEY,
        metrics=False,
    )


def _with_key(details: Any, key: str) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add("authorization", f"Bearer {key}")
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio files an interceptor under its first matching kind only: one class per kind.
class _BearerUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_key(details, self.key), request)


class _BearerStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_key(details, self.key), request)


def open_channel(target: str, key: str | None = TEST_ADMIN_KEY, **options: Any) -> grpc.aio.Channel:
    """An insecure channel to `target` whose calls carry `key` (none when None)."""
    interceptors: list[Any] = [] if key is None else [_BearerUnary(key), _BearerStream(key)]
    return grpc.aio.insecure_channel(target, interceptors=interceptors or None, **options)


def rid(prefix: str = "req") -> str:
    """A fresh request_id."""
    return f"{prefix}-{next(_ids)}"


def ts(moment: Any) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(moment)
    return out


def status_details(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status a server attached to an error (empty if none)."""
    status = status_pb2.Status()
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status.ParseFromString(value)
    return status


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for detail in status_details(error).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo on {error.code()}: {error.details()}")


async def rpc_error(
    call: Awaitable[Any], code: grpc.StatusCode, reason: str | None = None
) -> grpc.aio.AioRpcError:
    """Await a call that must fail with `code` (and ErrorInfo `reason`); return the error."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == code, error.details()
    if reason is not None:
        assert error_info(error).reason == reason, error.details()
    return error


def quota_failure(error: grpc.aio.AioRpcError) -> error_details_pb2.QuotaFailure.Violation:
    """The one QuotaFailure violation of a RESOURCE_EXHAUSTED error."""
    for detail in status_details(error).details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            (only,) = failure.violations
            return only
    raise AssertionError(f"no QuotaFailure on {error.code()}: {error.details()}")


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    for detail in status_details(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    return {}


async def make_scheme(offers: Any, scheme_id: str = "acme", **fields: Any) -> offer_pb2.Scheme:
    scheme = offer_pb2.Scheme(
        scheme_id=scheme_id,
        name=fields.pop("name", "Acme Rewards"),
        assets=fields.pop(
            "assets",
            [
                offer_pb2.AssetDefinition(code="POINTS", scale=0),
                offer_pb2.AssetDefinition(code="EUR", scale=2),
            ],
        ),
        timezone=fields.pop("timezone", "Europe/Amsterdam"),
        **fields,
    )
    response = await offers.CreateScheme(
        offer_pb2.CreateSchemeRequest(request_id=rid("scheme"), scheme=scheme)
    )
    return response.scheme


async def make_wallet(
    wallets: Any, scheme_id: str = "acme", customer_ref: str | None = None
) -> wallet_pb2.Wallet:
    response = await wallets.CreateWallet(
        wallet_pb2.CreateWalletRequest(
            request_id=rid("wallet"),
            scheme_id=scheme_id,
            customer_ref=customer_ref or rid("customer"),
        )
    )
    return response.wallet


async def credit(
    wallets: Any,
    wallet_id: str,
    amount: int,
    *,
    asset: str = "POINTS",
    sponsor_id: str = "m-sponsor",
    funding: int = common_pb2.FUNDING_PROMOTIONAL,
    **fields: Any,
) -> wallet_pb2.CreditResponse:
    kind = fields.pop("kind", wallet_pb2.CREDIT_KIND_AWARD)
    if funding == common_pb2.FUNDING_CASH:
        sponsor_id = ""
    return await wallets.Credit(
        wallet_pb2.CreditRequest(
            request_id=fields.pop("request_id", rid("credit")),
            wallet_id=wallet_id,
            kind=kind,
            asset=asset,
            amount=amount,
            funding=funding,
            sponsor_id=sponsor_id,
            **fields,
        )
    )


async def spend(
    wallets: Any,
    wallet_id: str,
    amount: int,
    *,
    asset: str = "POINTS",
    merchant_id: str = "m-1",
    **fields: Any,
) -> wallet_pb2.SpendResponse:
    return await wallets.Spend(
        wallet_pb2.SpendRequest(
            request_id=fields.pop("request_id", rid("spend")),
            wallet_id=wallet_id,
            asset=asset,
            amount=amount,
            merchant_id=merchant_id,
            **fields,
        )
    )


async def balance(wallets: Any, wallet_id: str, asset: str = "POINTS") -> wallet_pb2.AssetBalance:
    response = await wallets.GetBalance(
        wallet_pb2.GetBalanceRequest(wallet_id=wallet_id, asset=asset)
    )
    (only,) = response.balances
    return only
