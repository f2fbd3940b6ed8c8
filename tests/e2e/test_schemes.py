"""OfferService schemes through a real server: create, get, list, update, validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
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
)

POINTS = offer_pb2.AssetDefinition(code="POINTS", scale=0)
EUR = offer_pb2.AssetDefinition(code="EUR", scale=2)


def at(stamp: Any) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def assets_of(scheme: offer_pb2.Scheme) -> dict[str, int]:
    return {a.code: a.scale for a in scheme.assets}


async def get_scheme(offers: Any, scheme_id: str) -> offer_pb2.Scheme:
    return (await offers.GetScheme(offer_pb2.GetSchemeRequest(scheme_id=scheme_id))).scheme


def update_request(scheme: offer_pb2.Scheme, *paths: str) -> offer_pb2.UpdateSchemeRequest:
    return offer_pb2.UpdateSchemeRequest(
        request_id=rid("update"), scheme=scheme, update_mask=FieldMask(paths=list(paths))
    )


async def list_all_schemes(offers: Any, page_size: int) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        response = await offers.ListSchemes(
            offer_pb2.ListSchemesRequest(page_size=page_size, page_token=token)
        )
        pages.append([s.scheme_id for s in response.schemes])
        token = response.next_page_token
        if not token:
            return pages
        assert len(pages) < 10, "paging does not end"


# -- create and get ------------------------------------------------------------------------


async def test_create_scheme_with_client_id_returns_what_was_asked(offers, clock) -> None:
    created = await make_scheme(
        offers,
        "acme-loyalty_1",
        name="Acme Rewards",
        cash_expiry_allowed=True,
    )
    assert created.scheme_id == "acme-loyalty_1"
    assert created.name == "Acme Rewards"
    assert assets_of(created) == {"POINTS": 0, "EUR": 2}
    assert created.timezone == "Europe/Amsterdam"
    assert created.cash_expiry_allowed is True
    # A scheme created without a refund policy uses EXPIRE.
    assert created.refund_policy.expired_lot_handling == offer_pb2.EXPIRED_REFUND_HANDLING_EXPIRE
    assert at(created.create_time) == clock.now()
    assert await get_scheme(offers, "acme-loyalty_1") == created


async def test_create_scheme_without_id_generates_a_usable_one(offers, wallets) -> None:
    first = await make_scheme(offers, "", name="First")
    second = await make_scheme(offers, "", name="Second")
    assert first.scheme_id and second.scheme_id
    assert first.scheme_id != second.scheme_id
    assert (await get_scheme(offers, first.scheme_id)).name == "First"
    wallet = await make_wallet(wallets, scheme_id=first.scheme_id)
    assert wallet.scheme_id == first.scheme_id


async def test_get_or_update_unknown_scheme_is_not_found(offers) -> None:
    await make_scheme(offers, "acme")
    await rpc_error(
        offers.GetScheme(offer_pb2.GetSchemeRequest(scheme_id="nope")),
        grpc.StatusCode.NOT_FOUND,
    )
    await rpc_error(
        offers.UpdateScheme(update_request(offer_pb2.Scheme(scheme_id="nope", name="X"), "name")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_duplicate_scheme_id_is_already_exists(offers) -> None:
    await make_scheme(offers, "acme", name="Original")
    error = await rpc_error(
        make_scheme(offers, "acme", name="Copy"),
        grpc.StatusCode.ALREADY_EXISTS,
        "SCHEME_EXISTS",
    )
    assert error_info(error).domain == "loyalty.v1"
    assert (await get_scheme(offers, "acme")).name == "Original"


# -- list ------------------------------------------------------------------------------------


async def test_list_schemes_pages_one_at_a_time_in_creation_order(offers, clock) -> None:
    # Created in an order that is not alphabetical, so creation order is visible.
    for scheme_id in ("s-c", "s-a", "s-b"):
        await make_scheme(offers, scheme_id)
        clock.advance(timedelta(seconds=1))
    assert await list_all_schemes(offers, page_size=1) == [["s-c"], ["s-a"], ["s-b"]]
    assert await list_all_schemes(offers, page_size=2) == [["s-c", "s-a"], ["s-b"]]
    # Larger than the maximum is coerced, not refused.
    assert await list_all_schemes(offers, page_size=5000) == [["s-c", "s-a", "s-b"]]


async def test_list_schemes_refuses_bad_token_and_negative_page_size(offers, wallets) -> None:
    await make_scheme(offers, "s-a")
    await make_scheme(offers, "s-b")
    error = await rpc_error(
        offers.ListSchemes(offer_pb2.ListSchemesRequest(page_token="not-a-token!")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_token" in field_violations(error)
    # A token of another listing is not a schemes token either.
    await make_wallet(wallets, scheme_id="s-a")
    await make_wallet(wallets, scheme_id="s-a")
    wallet_page = await wallets.ListWallets(wallet_pb2.ListWalletsRequest(page_size=1))
    assert wallet_page.next_page_token
    error = await rpc_error(
        offers.ListSchemes(offer_pb2.ListSchemesRequest(page_token=wallet_page.next_page_token)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_token" in field_violations(error)
    error = await rpc_error(
        offers.ListSchemes(offer_pb2.ListSchemesRequest(page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_size" in field_violations(error)


# -- update ----------------------------------------------------------------------------------


async def test_update_name_and_timezone_changes_only_masked_fields(offers, clock) -> None:
    created = await make_scheme(offers, "acme", name="Acme Rewards")
    clock.advance(timedelta(hours=1))
    # cash_expiry_allowed and assets are set in the message but not in the mask: ignored.
    change = offer_pb2.Scheme(
        scheme_id="acme",
        name="Acme Plus",
        timezone="America/New_York",
        cash_expiry_allowed=True,
        assets=[POINTS],
    )
    updated = (await offers.UpdateScheme(update_request(change, "name", "timezone"))).scheme
    assert updated.name == "Acme Plus"
    assert updated.timezone == "America/New_York"
    assert updated.cash_expiry_allowed is False
    assert assets_of(updated) == {"POINTS": 0, "EUR": 2}
    assert updated.create_time == created.create_time
    assert at(updated.update_time) == clock.now()
    assert await get_scheme(offers, "acme") == updated

    error = await rpc_error(
        offers.UpdateScheme(
            update_request(offer_pb2.Scheme(scheme_id="acme", timezone="Mars/Olympus"), "timezone")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "scheme.timezone" in field_violations(error)
    assert (await get_scheme(offers, "acme")).timezone == "America/New_York"


async def test_update_adds_an_asset_that_wallets_can_use(offers, wallets) -> None:
    await make_scheme(offers, "acme")
    miles = offer_pb2.AssetDefinition(code="MILES", scale=0)
    change = offer_pb2.Scheme(scheme_id="acme", assets=[POINTS, EUR, miles])
    updated = (await offers.UpdateScheme(update_request(change, "assets"))).scheme
    assert assets_of(updated) == {"POINTS": 0, "EUR": 2, "MILES": 0}
    wallet = await make_wallet(wallets)
    await credit(wallets, wallet.wallet_id, 7, asset="MILES")
    assert (await balance(wallets, wallet.wallet_id, "MILES")).available == 7


async def test_update_refund_policy(offers) -> None:
    await make_scheme(offers, "acme")
    policy = offer_pb2.RefundPolicy(
        expired_lot_handling=offer_pb2.EXPIRED_REFUND_HANDLING_RECREDIT,
        grace_period=Duration(seconds=2 * 86400),
    )
    change = offer_pb2.Scheme(scheme_id="acme", refund_policy=policy)
    updated = (await offers.UpdateScheme(update_request(change, "refund_policy"))).scheme
    assert updated.refund_policy.expired_lot_handling == (
        offer_pb2.EXPIRED_REFUND_HANDLING_RECREDIT
    )
    assert updated.refund_policy.grace_period.seconds == 2 * 86400
    assert (await get_scheme(offers, "acme")).refund_policy == updated.refund_policy


async def test_update_cannot_remove_or_rescale_an_asset(offers) -> None:
    before = await make_scheme(offers, "acme")
    removed = offer_pb2.Scheme(scheme_id="acme", assets=[POINTS])
    await rpc_error(
        offers.UpdateScheme(update_request(removed, "assets")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ASSET_IN_USE",
    )
    rescaled = offer_pb2.Scheme(
        scheme_id="acme", assets=[POINTS, offer_pb2.AssetDefinition(code="EUR", scale=3)]
    )
    await rpc_error(
        offers.UpdateScheme(update_request(rescaled, "assets")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ASSET_IN_USE",
    )
    assert assets_of(await get_scheme(offers, "acme")) == assets_of(before)


@pytest.mark.parametrize(
    "paths",
    [pytest.param([], id="empty"), pytest.param(["name", "bogus"], id="unknown-path")],
)
async def test_update_mask_must_name_known_fields(offers, paths: list[str]) -> None:
    await make_scheme(offers, "acme", name="Acme Rewards")
    change = offer_pb2.Scheme(scheme_id="acme", name="Renamed")
    error = await rpc_error(
        offers.UpdateScheme(update_request(change, *paths)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "update_mask" in field_violations(error)
    assert (await get_scheme(offers, "acme")).name == "Acme Rewards"


# -- validation ------------------------------------------------------------------------------

INVALID_SCHEMES: list[tuple[str, dict[str, Any], str]] = [
    ("bad timezone", {"timezone": "Mars/Olympus"}, "scheme.timezone"),
    ("duplicate asset", {"assets": [POINTS, POINTS]}, "scheme.assets[1].code"),
    (
        "lower-case code",
        {"assets": [offer_pb2.AssetDefinition(code="points", scale=0)]},
        "scheme.assets[0].code",
    ),
    (
        "scale 7",
        {"assets": [offer_pb2.AssetDefinition(code="EUR", scale=7)]},
        "scheme.assets[0].scale",
    ),
    ("missing name", {"name": ""}, "scheme.name"),
    ("bad scheme id", {"scheme_id": "Bad Id!"}, "scheme.scheme_id"),
    ("too short scheme id", {"scheme_id": "ab"}, "scheme.scheme_id"),
]


async def test_create_scheme_validation_names_the_bad_field(offers) -> None:
    mismatches = []
    for label, fields, field_path in INVALID_SCHEMES:
        fields = dict(fields)
        scheme_id = fields.pop("scheme_id", "valid-id")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await make_scheme(offers, scheme_id, **fields)
        error = caught.value
        violations = field_violations(error)
        if error.code() != grpc.StatusCode.INVALID_ARGUMENT or field_path not in violations:
            mismatches.append((label, error.code(), violations))
    assert mismatches == []
    # Nothing was created by the refused requests.
    listed = await offers.ListSchemes(offer_pb2.ListSchemesRequest())
    assert list(listed.schemes) == []


async def test_a_valid_scheme_needs_an_expiry_unit(offers) -> None:
    """A default expiry policy is validated like any input."""
    bad = common_pb2.ExpiryPolicy(after=common_pb2.ExpireAfter(count=3))
    error = await rpc_error(
        make_scheme(offers, "acme", default_expiry_policy=bad), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert any(f.startswith("scheme.default_expiry_policy") for f in field_violations(error))
