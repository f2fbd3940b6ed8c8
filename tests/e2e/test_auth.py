"""API keys and roles through the real server (both backends).

Every method of every service is enumerated from the service descriptors, so a method added
later is covered without editing this file.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loyalty.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    clock_pb2,
    expiry_pb2,
    offer_pb2,
    settlement_pb2,
    settlement_pb2_grpc,
    wallet_pb2,
    wallet_pb2_grpc,
)

from loyalty_ledger.clock import TestClock
from tests.e2e.test_offers import purchase, submit
from tests.helpers import (
    balance,
    credit,
    error_info,
    field_violations,
    make_scheme,
    make_wallet,
    open_channel,
    rid,
    rpc_error,
    spend,
)

SERVICES = [
    module.DESCRIPTOR.services_by_name[name]
    for module, name in (
        (wallet_pb2, "WalletService"),
        (offer_pb2, "OfferService"),
        (settlement_pb2, "SettlementService"),
        (admin_pb2, "AdminService"),
        (clock_pb2, "TestClockService"),
    )
]


def every_method() -> list[Any]:
    return [method for service in SERVICES for method in service.methods]


async def call(channel: grpc.aio.Channel, method: Any) -> grpc.StatusCode:
    """Call `method` with an empty request; the status it ends with."""
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.server_streaming:
            stream = channel.unary_stream(
                path,
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )(request_type())
            async for _ in stream:
                break
        else:
            await channel.unary_unary(
                path,
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )(request_type(), timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def create_key(admin: Any, role: int, **fields: Any) -> admin_pb2.CreateApiKeyResponse:
    return await admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(
            request_id=rid("key"), key=admin_pb2.ApiKey(name="a key", role=role, **fields)
        )
    )


async def test_every_method_needs_a_valid_key(app, channel) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    revoked = await create_key(admin, admin_pb2.API_KEY_ROLE_ADMIN)
    await admin.RevokeApiKey(
        admin_pb2.RevokeApiKeyRequest(request_id=rid(), key_id=revoked.key.key_id)
    )
    target = f"127.0.0.1:{app.port}"
    methods = every_method()
    assert len(methods) > 60
    for key in (None, "lk_forged-key-that-was-never-issued", revoked.secret):
        async with open_channel(target, key) as stranger:
            codes = {m.full_name: await call(stranger, m) for m in methods}
        wrong = {
            name: code for name, code in codes.items() if code != grpc.StatusCode.UNAUTHENTICATED
        }
        assert wrong == {}, key
    # Health and reflection stay open.
    async with open_channel(target, None) as stranger:
        health = await health_pb2_grpc.HealthStub(stranger).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_refusal_says_why(app) -> None:
    async with open_channel(f"127.0.0.1:{app.port}", None) as stranger:
        error = await rpc_error(
            wallet_pb2_grpc.WalletServiceStub(stranger).GetWallet(
                wallet_pb2.GetWalletRequest(wallet_id="wal_x")
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    assert error_info(error).reason == "UNAUTHENTICATED"
    assert "authorization" in error.details()


async def test_a_merchant_key_acts_only_as_its_merchant(
    app, channel, offers, wallets, clock
) -> None:
    await make_scheme(offers)
    await make_scheme(offers, "other")
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    key = await create_key(
        admin, admin_pb2.API_KEY_ROLE_MERCHANT, scheme_ids=["acme"], merchant_id="shop-a"
    )
    assert key.secret.startswith("lk_") and key.key.merchant_id == "shop-a"
    w = (await make_wallet(wallets)).wallet_id
    elsewhere = (await make_wallet(wallets, "other")).wallet_id
    await credit(wallets, w, 1000)
    await credit(wallets, elsewhere, 1000)
    # Another merchant's objects, made with the admin key.
    their_spend = await spend(wallets, w, 100, merchant_id="shop-b")
    their_hold = await wallets.AuthorizeHold(
        wallet_pb2.AuthorizeHoldRequest(
            request_id=rid(), wallet_id=w, asset="POINTS", amount=50, merchant_id="shop-b"
        )
    )
    their_event = await submit(offers, w, purchase(clock, 100, merchant_id="shop-b"))
    before = await balance(wallets, w)

    async with open_channel(f"127.0.0.1:{app.port}", key.secret) as pos:
        till = wallet_pb2_grpc.WalletServiceStub(pos)
        refused = [
            spend(till, w, 10, merchant_id="shop-b"),  # as another merchant
            spend(till, elsewhere, 10, merchant_id="shop-a"),  # a wallet of another scheme
            till.CaptureHold(
                wallet_pb2.CaptureHoldRequest(
                    request_id=rid(), hold_id=their_hold.hold.hold_id, amount=50
                )
            ),
            till.VoidHold(
                wallet_pb2.VoidHoldRequest(request_id=rid(), hold_id=their_hold.hold.hold_id)
            ),
            till.RefundSpend(
                wallet_pb2.RefundSpendRequest(
                    request_id=rid(), transaction_id=their_spend.transaction.transaction_id
                )
            ),
            till.GetBalance(wallet_pb2.GetBalanceRequest(wallet_id=elsewhere)),
            credit(till, w, 5),  # not a merchant's business
            submit(offer_stub(pos), w, purchase(clock, 100, merchant_id="shop-b")),
            offer_stub(pos).ReverseEvent(
                offer_pb2.ReverseEventRequest(request_id=rid(), event_id=their_event.event_id)
            ),
            offer_stub(pos).CreateScheme(offer_pb2.CreateSchemeRequest(request_id=rid())),
            admin_pb2_grpc.AdminServiceStub(pos).ListApiKeys(admin_pb2.ListApiKeysRequest()),
        ]
        for attempt in refused:
            error = await rpc_error(attempt, grpc.StatusCode.PERMISSION_DENIED)
            assert error_info(error).reason == "PERMISSION_DENIED"

        # Nothing changed.
        assert await balance(wallets, w) == before
        hold = await wallets.GetHold(wallet_pb2.GetHoldRequest(hold_id=their_hold.hold.hold_id))
        assert hold.hold.status == wallet_pb2.HOLD_STATUS_ACTIVE

        # As itself, in its scheme, it works.
        own = await spend(till, w, 30, merchant_id="shop-a")
        assert own.transaction.merchant_id == "shop-a"
        assert (await balance(till, w)).available == before.available - 30
        await till.RefundSpend(
            wallet_pb2.RefundSpendRequest(
                request_id=rid(), transaction_id=own.transaction.transaction_id
            )
        )
        assert (await balance(wallets, w)).available == before.available


def offer_stub(channel: grpc.aio.Channel) -> Any:
    from loyalty.v1 import offer_pb2_grpc

    return offer_pb2_grpc.OfferServiceStub(channel)


async def test_reader_and_subscriber_keys(app, channel, offers, wallets) -> None:
    await make_scheme(offers)
    await make_scheme(offers, "other")
    w = (await make_wallet(wallets)).wallet_id
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    reader = await create_key(admin, admin_pb2.API_KEY_ROLE_READER)
    subscriber = await create_key(admin, admin_pb2.API_KEY_ROLE_SUBSCRIBER, scheme_ids=["acme"])
    target = f"127.0.0.1:{app.port}"
    async with open_channel(target, reader.secret) as ch:
        stub = wallet_pb2_grpc.WalletServiceStub(ch)
        assert (await balance(stub, w)).available == 0
        await rpc_error(credit(stub, w, 5), grpc.StatusCode.PERMISSION_DENIED)
        statements = settlement_pb2_grpc.SettlementServiceStub(ch).ListStatements(
            settlement_pb2.ListStatementsRequest(scheme_id="acme")
        )
        assert list((await statements).statements) == []
    async with open_channel(target, subscriber.secret) as ch:
        stub = wallet_pb2_grpc.WalletServiceStub(ch)
        await rpc_error(balance(stub, w), grpc.StatusCode.PERMISSION_DENIED)
        other = stub.WatchExpirations(expiry_pb2.WatchExpirationsRequest(scheme_id="other"))
        await rpc_error(other.read(), grpc.StatusCode.PERMISSION_DENIED)
        own = stub.WatchExpirations(expiry_pb2.WatchExpirationsRequest(scheme_id="acme"))
        first = await own.read()  # a heartbeat: the stream is open
        assert first is not None
        own.cancel()
    assert (await wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id=w))).wallet.wallet_id


async def test_request_ids_are_scoped_per_key(app, channel, offers, wallets) -> None:
    await make_scheme(offers)
    w = (await make_wallet(wallets)).wallet_id
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    second = await create_key(admin, admin_pb2.API_KEY_ROLE_ADMIN)
    await credit(wallets, w, 10, request_id="same-id")
    async with open_channel(f"127.0.0.1:{app.port}", second.secret) as ch:
        await credit(wallet_pb2_grpc.WalletServiceStub(ch), w, 10, request_id="same-id")
    await credit(wallets, w, 10, request_id="same-id")  # a replay of the first
    assert (await balance(wallets, w)).available == 20


async def test_keys_are_created_listed_and_revoked(app, channel, offers) -> None:
    await make_scheme(offers)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    request = admin_pb2.CreateApiKeyRequest(
        request_id="one-key",
        key=admin_pb2.ApiKey(name="till 1", role=admin_pb2.API_KEY_ROLE_READER),
    )
    first = await admin.CreateApiKey(request)
    replay = await admin.CreateApiKey(request)
    assert first.secret and replay.secret == "" and replay.key == first.key
    listed = await admin.ListApiKeys(admin_pb2.ListApiKeysRequest())
    assert first.key in listed.keys
    bad = await rpc_error(
        admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(
                request_id=rid(),
                key=admin_pb2.ApiKey(
                    name="", role=admin_pb2.API_KEY_ROLE_MERCHANT, scheme_ids=["acme", "x"]
                ),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert {"key.name", "key.scheme_ids", "key.merchant_id"} <= set(field_violations(bad))
    revoked = await admin.RevokeApiKey(
        admin_pb2.RevokeApiKeyRequest(request_id=rid(), key_id=first.key.key_id)
    )
    assert revoked.key.HasField("revoke_time")
    async with open_channel(f"127.0.0.1:{app.port}", first.secret) as ch:
        await rpc_error(
            wallet_pb2_grpc.WalletServiceStub(ch).GetWallet(
                wallet_pb2.GetWalletRequest(wallet_id="wal_x")
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )


async def test_the_first_start_prints_an_admin_key_once(database_url, capsys) -> None:
    from loyalty_ledger.server import App
    from loyalty_ledger.settings import Settings

    settings = Settings(  # no configured key (the suite sets LOYALTY_ADMIN_KEY)
        host="127.0.0.1", port=0, database_url=database_url, metrics=False, admin_key=""
    )
    printed = []
    for _ in range(2):
        server = App(settings, clock=TestClock())
        await server.start()
        try:
            await server.serving.wait()
            printed.append(capsys.readouterr().out)
        finally:
            await server.stop(0)
    (secret,) = [
        line.rsplit(" ", 1)[1] for line in printed[0].splitlines() if "admin API key" in line
    ]
    assert "admin API key" not in printed[1]  # once
    server = App(settings, clock=TestClock())
    await server.start()
    try:
        await server.serving.wait()
        async with open_channel(f"127.0.0.1:{server.port}", secret) as ch:
            keys = await admin_pb2_grpc.AdminServiceStub(ch).ListApiKeys(
                admin_pb2.ListApiKeysRequest()
            )
            assert [k.role for k in keys.keys] == [admin_pb2.API_KEY_ROLE_ADMIN]
    finally:
        await server.stop(0)


async def test_loyalty_keys_creates_lists_and_revokes_on_the_database(
    app, database_url, offers
) -> None:
    from typer.testing import CliRunner

    from loyalty_ledger.cli import app as cli

    await make_scheme(offers)
    env = {"LOYALTY_DATABASE_URL": database_url}

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(cli, ["keys", *args], env=env)

    created = await asyncio.to_thread(
        invoke,
        "create",
        "--name",
        "till",
        "--role",
        "merchant",
        "--scheme",
        "acme",
        "--merchant",
        "shop-a",
    )
    assert created.exit_code == 0, created.output
    key_line, secret = created.output.strip().splitlines()
    key_id = key_line.split()[1]
    listed = await asyncio.to_thread(invoke, "list")
    assert f"{key_id}\tMERCHANT\tvalid\tacme/shop-a\ttill" in listed.output
    async with open_channel(f"127.0.0.1:{app.port}", secret) as ch:
        got = await offer_stub(ch).GetScheme(offer_pb2.GetSchemeRequest(scheme_id="acme"))
        assert got.scheme.scheme_id == "acme"
        revoked = await asyncio.to_thread(invoke, "revoke", key_id)
        assert revoked.exit_code == 0, revoked.output
        app.keys.clear()  # another process revoked it: this replica's cache would keep it 5 s
        await rpc_error(
            offer_stub(ch).GetScheme(offer_pb2.GetSchemeRequest(scheme_id="acme")),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    bad = await asyncio.to_thread(invoke, "create", "--name", "x", "--role", "merchant")
    assert bad.exit_code != 0 and "key.scheme_ids" in bad.output
