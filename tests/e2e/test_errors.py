"""Error contract through a real server: codes, ErrorInfo on every error, BadRequest details."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.rpc import error_details_pb2
from loyalty.v1 import offer_pb2, wallet_pb2

from tests.helpers import credit, make_scheme, make_wallet, rid, spend, status_details

DOMAIN = "loyalty.v1"
REASON = re.compile(r"^[A-Z][A-Z0-9_]*$")
VIOLATIONS_MAX = 20
# Every field of these requests is optional: an empty request lists everything.
OPTIONAL_ONLY = {"ListSchemes", "ListWallets", "ListRuns", "WatchExpirations"}


def error_infos(error: grpc.aio.AioRpcError) -> list[error_details_pb2.ErrorInfo]:
    found = []
    for detail in status_details(error).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            found.append(info)
    return found


def raw_violations(
    error: grpc.aio.AioRpcError,
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """All field violations, duplicates kept (helpers.field_violations folds them by field)."""
    found = []
    for detail in status_details(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += list(bad.field_violations)
    return found


def contract_problems(error: grpc.aio.AioRpcError) -> list[str]:
    """What is wrong with an error's details, by the API conventions of DESIGN.md."""
    problems = []
    status = status_details(error)
    if status.code != error.code().value[0]:
        problems.append(f"google.rpc.Status code {status.code} != {error.code()}")
    infos = error_infos(error)
    if len(infos) != 1:
        problems.append(f"{len(infos)} ErrorInfo details")
    for info in infos:
        if info.domain != DOMAIN:
            problems.append(f"domain {info.domain!r}")
        if not REASON.match(info.reason):
            problems.append(f"reason {info.reason!r}")
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT and not raw_violations(error):
        problems.append("INVALID_ARGUMENT without BadRequest field violations")
    return problems


async def test_every_rpc_refuses_an_empty_request_cleanly(offers, wallets) -> None:
    services = [
        (wallets, wallet_pb2.DESCRIPTOR.services_by_name["WalletService"]),
        (offers, offer_pb2.DESCRIPTOR.services_by_name["OfferService"]),
    ]
    await make_scheme(offers)  # so that lookups have something not to find
    outcomes: dict[str, Any] = {}
    wrong: dict[str, Any] = {}
    for stub, service in services:
        for method in service.methods:
            request = message_factory.GetMessageClass(method.input_type)()
            try:
                call = getattr(stub, method.name)(request)
                if method.server_streaming:
                    # An empty watch filter is valid: the first message (a replayed event or
                    # a heartbeat) must come without an error.
                    await asyncio.wait_for(call.read(), 30)
                    call.cancel()
                else:
                    await call
            except grpc.aio.AioRpcError as error:
                outcomes[method.name] = error.code()
                allowed = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
                if error.code() not in allowed:
                    wrong[method.name] = (error.code(), error.details())
                elif problems := contract_problems(error):
                    wrong[method.name] = problems
            else:
                outcomes[method.name] = grpc.StatusCode.OK
                if method.name not in OPTIONAL_ONLY:
                    wrong[method.name] = "accepted an empty request"
    assert wrong == {}
    # Both services were really walked.
    assert {"CreateScheme", "UpdateScheme", "Credit", "MergeWallets"} <= set(outcomes)
    assert len(outcomes) == sum(len(service.methods) for _, service in services)


async def test_every_kind_of_error_carries_error_info(offers, wallets) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets, customer_ref="cust-1")).wallet_id
    await credit(wallets, wallet, 10)
    await spend(wallets, wallet, 1, request_id="spend-1")
    attempts = {
        "unknown hold": wallets.GetHold(wallet_pb2.GetHoldRequest(hold_id="hld_missing")),
        "unknown scheme": offers.GetScheme(offer_pb2.GetSchemeRequest(scheme_id="nope")),
        "unknown wallet": spend(wallets, "wal_missing", 1),
        "wallet exists": make_wallet(wallets, customer_ref="cust-1"),
        "key reused": spend(wallets, wallet, 2, request_id="spend-1"),
        "insufficient": spend(wallets, wallet, 100),
        "bad asset": spend(wallets, wallet, 1, asset="nope"),
        "asset of no scheme": spend(wallets, wallet, 1, asset="GOLD"),
        "bad page token": wallets.ListWallets(wallet_pb2.ListWalletsRequest(page_token="%%")),
    }
    codes = {}
    wrong = {}
    for label, call in attempts.items():
        try:
            await call
        except grpc.aio.AioRpcError as error:
            codes[label] = error.code()
            if problems := contract_problems(error):
                wrong[label] = problems
        else:
            wrong[label] = "succeeded"
    assert wrong == {}
    assert set(codes.values()) == {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
    }


async def test_field_violations_are_capped(offers, wallets) -> None:
    await make_scheme(offers)
    # 16 entries (the most allowed), each with a key and a value too long: 32 problems.
    metadata = {f"{i:02d}" + "k" * 70: "v" * 300 for i in range(16)}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await wallets.CreateWallet(
            wallet_pb2.CreateWalletRequest(
                request_id=rid(), scheme_id="acme", customer_ref="cust-1", metadata=metadata
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = raw_violations(caught.value)
    assert 0 < len(violations) <= VIOLATIONS_MAX
    assert all(v.field.startswith("metadata") for v in violations)

    wallet = (await make_wallet(wallets)).wallet_id
    # 100 product ids (the most allowed), each malformed.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await spend(wallets, wallet, 1, product_ids=[f" p-{i} " for i in range(100)])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 0 < len(raw_violations(caught.value)) <= VIOLATIONS_MAX


async def test_one_error_names_every_bad_field(offers, wallets) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await wallets.Credit(
            wallet_pb2.CreditRequest(request_id="", wallet_id=wallet, asset="gold", amount=0)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in raw_violations(caught.value)}
    assert {"request_id", "kind", "asset", "amount", "funding"} <= fields
