"""Issue 6, section 4: the named limits at their boundary, through gRPC, on both backends.

For each limit: a request exactly at it is accepted, one just past it is refused with
INVALID_ARGUMENT and a BadRequest field violation naming the field, or with
RESOURCE_EXHAUSTED, an ErrorInfo naming the limit (`limit`, `limit_value`) and a
google.rpc.QuotaFailure; and a refused write leaves every row of every table as it was.
Where the default is too big to reach quickly, the server runs with a smaller setting.

Limits already tested exactly at the boundary elsewhere (request_id length, amount range,
streams per key, subscribers per server, unary call time, the SQLite writer queue, the
PostgreSQL pool) are listed with their tests in docs/api.md ("Limits") and not repeated here.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.v1 import (
    expiry_pb2,
    offer_pb2,
    offer_pb2_grpc,
    rewards_pb2,
    wallet_pb2,
    wallet_pb2_grpc,
)
from sqlalchemy import select

from loyalty_ledger.api import limits
from loyalty_ledger.api.message_limits import TRANSPORT_FACTOR
from loyalty_ledger.clock import TestClock
from loyalty_ledger.domain.errors import ResourceExhausted
from loyalty_ledger.events.hub import Heartbeat, WatchFilter
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.paging import PAGE_SIZE_MAX
from loyalty_ledger.server import App
from loyalty_ledger.settings import Settings
from tests.e2e.test_watch import publish, rows
from tests.e2e.test_watch import stored as stored_events
from tests.helpers import (
    balance,
    credit,
    error_info,
    field_violations,
    make_scheme,
    make_wallet,
    open_channel,
    quota_failure,
    rid,
    rpc_error,
    status_details,
    ts,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
SMALL_MESSAGE_BYTES = 64 * 1024  # the smallest LOYALTY_MESSAGE_BYTES_MAX allowed


# -- helpers ------------------------------------------------------------------------------


@dataclass
class Api:
    app: App
    wallets: wallet_pb2_grpc.WalletServiceStub
    offers: offer_pb2_grpc.OfferServiceStub
    wallet: str = ""  # a funded wallet of scheme "acme", where a test makes one


@asynccontextmanager
async def serving(database_url: str, clock: TestClock, **settings: Any) -> AsyncIterator[Api]:
    """A server with `settings` (small limits), always stopped."""
    app = App(
        Settings(
            host="127.0.0.1",
            port=0,
            database_url=database_url,
            metrics=False,
            watch_heartbeat_seconds=0.2,
            **settings,
        ),
        clock=clock,
    )
    await app.start()
    try:
        await asyncio.wait_for(app.serving.wait(), timeout=10)
        async with open_channel(f"127.0.0.1:{app.port}") as channel:
            yield Api(
                app,
                wallet_pb2_grpc.WalletServiceStub(channel),
                offer_pb2_grpc.OfferServiceStub(channel),
            )
    finally:
        await app.stop(0)


async def database_digest(app: App) -> dict[str, str]:
    """A digest of every row of every table, per table."""

    async def job(conn: Any) -> dict[str, str]:
        out = {}
        for table in t.metadata.sorted_tables:
            found = sorted(repr(tuple(r)) for r in await conn.execute(select(table)))
            out[table.name] = hashlib.sha256("\n".join(found).encode()).hexdigest()
        return out

    return await app.db.read(job)


async def refused_and_unchanged(
    app: App, call: Callable[[], Awaitable[Any]], code: grpc.StatusCode
) -> grpc.aio.AioRpcError:
    """Make `call`, which must fail with `code`, and check that it changed nothing."""
    before = await database_digest(app)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call()
    assert caught.value.code() == code, caught.value.details()
    assert await database_digest(app) == before
    return caught.value


def assert_names_limit(
    error: grpc.aio.AioRpcError, reason: str, limit: str, value: int
) -> dict[str, str]:
    """RESOURCE_EXHAUSTED details: ErrorInfo and QuotaFailure naming the limit and its value."""
    info = error_info(error)
    assert info.reason == reason
    assert (info.metadata["limit"], info.metadata["limit_value"]) == (limit, str(value))
    violation = quota_failure(error)
    assert (violation.quota_id, violation.quota_value) == (limit, value)
    return dict(info.metadata)


# -- string lengths and list sizes: one table -------------------------------------------------


@dataclass(frozen=True)
class Boundary:
    """`call(api, value)` sends `value` in `field`; `at` is exactly at the limit, `over` one
    past it. The call raises when the server refuses it."""

    limit: str
    field: str
    at: Any
    over: Any
    call: Callable[[Api, Any], Awaitable[Any]]


def _scheme(scheme_id: str, name: str = "Acme Rewards", **fields: Any) -> Any:
    return offer_pb2.CreateSchemeRequest(
        request_id=rid("scheme"),
        scheme=offer_pb2.Scheme(
            scheme_id=scheme_id,
            name=name,
            assets=fields.pop("assets", [offer_pb2.AssetDefinition(code="POINTS", scale=0)]),
            timezone="UTC",
            **fields,
        ),
    )


def _scheme_with(api: Api, **fields: Any) -> Any:
    """CreateScheme of a new scheme with `fields` set."""
    return api.offers.CreateScheme(_scheme(_fresh("f", 12), **fields))


def _assets(count: int, scale: int = 0) -> list[offer_pb2.AssetDefinition]:
    return [offer_pb2.AssetDefinition(code=f"A{i:02d}", scale=scale) for i in range(count)]


def _rates(count: int) -> dict[str, Any]:
    """`count` redemption rates between ten assets, each pair once."""
    rates = [
        offer_pb2.RedemptionRate(asset="A00", points=100, currency=f"A{i:02d}", value=1)
        for i in range(1, count + 1)
    ]
    return {"assets": _assets(count + 1), "redemption_rates": rates}


def _tiers(count: int, window_days: int = 30) -> dict[str, Any]:
    tiers = [offer_pb2.Tier(tier_id=f"t{i:02d}", name=f"T{i}", threshold=i) for i in range(count)]
    program = offer_pb2.TierProgram(
        basis=offer_pb2.TIER_BASIS_POINTS, asset="POINTS", window_days=window_days, tiers=tiers
    )
    return {"tier_program": program}


def _hours(*hours: int) -> list[Duration]:
    return [Duration(seconds=h * 3600) for h in hours]


YEAR_MAX_SECONDS = int(datetime(limits.TIMESTAMP_YEAR_MAX, 12, 31, tzinfo=UTC).timestamp())


_names = iter(range(10**6))


def _fresh(prefix: str, length: int) -> str:
    """A new value of exactly `length` characters (unique within the test run)."""
    head = f"{prefix}{next(_names)}-"
    return (head + "x" * length)[:length]


async def _wallet_with(api: Api, **fields: Any) -> Any:
    return await api.wallets.CreateWallet(
        wallet_pb2.CreateWalletRequest(
            request_id=rid("wallet"),
            scheme_id="acme",
            customer_ref=fields.pop("customer_ref", rid("cust")),
            **fields,
        )
    )


async def _credit(api: Api, **fields: Any) -> Any:
    return await credit(api.wallets, api.wallet, 5, **fields)


async def _watch(api: Api, wallet_ids: list[str]) -> Any:
    call = api.wallets.WatchExpirations(
        expiry_pb2.WatchExpirationsRequest(wallet_ids=wallet_ids, from_now=True)
    )
    try:
        message = await asyncio.wait_for(call.read(), 10)
        assert message.HasField("heartbeat")  # accepted: the stream is open
    finally:
        call.cancel()


def _metadata(entries: int, key_chars: int = 8, value_chars: int = 8) -> dict[str, str]:
    return {f"{i:02d}".ljust(key_chars, "k"): "v" * value_chars for i in range(entries)}


BOUNDARIES = [
    Boundary(
        "ID_CHARS_MAX (scheme_id)",
        "scheme.scheme_id",
        64,
        65,
        lambda api, n: api.offers.CreateScheme(_scheme(_fresh("s", n))),
    ),
    Boundary(
        "SCHEME_ID_CHARS_MIN (one below)",
        "scheme.scheme_id",
        limits.SCHEME_ID_CHARS_MIN,
        limits.SCHEME_ID_CHARS_MIN - 1,
        lambda api, n: api.offers.CreateScheme(_scheme(f"{next(_names):09d}"[-n:])),
    ),
    Boundary(
        "NAME_CHARS_MAX",
        "scheme.name",
        limits.NAME_CHARS_MAX,
        limits.NAME_CHARS_MAX + 1,
        lambda api, n: api.offers.CreateScheme(_scheme(_fresh("n", 10), name="N" * n)),
    ),
    Boundary(
        "CUSTOMER_REF_CHARS_MAX",
        "customer_ref",
        limits.CUSTOMER_REF_CHARS_MAX,
        limits.CUSTOMER_REF_CHARS_MAX + 1,
        lambda api, n: _wallet_with(api, customer_ref=_fresh("c", n)),
    ),
    Boundary(
        "REFERENCE_CHARS_MAX",
        "reference",
        limits.REFERENCE_CHARS_MAX,
        limits.REFERENCE_CHARS_MAX + 1,
        lambda api, n: _credit(api, reference="r" * n),
    ),
    Boundary(
        "ID_CHARS_MAX (sponsor_id)",
        "sponsor_id",
        limits.ID_CHARS_MAX,
        limits.ID_CHARS_MAX + 1,
        lambda api, n: _credit(api, sponsor_id="m" * n),
    ),
    Boundary(
        "REASON_CHARS_MAX",
        "reason",
        limits.REASON_CHARS_MAX,
        limits.REASON_CHARS_MAX + 1,
        lambda api, n: api.wallets.FreezeWallet(
            wallet_pb2.FreezeWalletRequest(
                request_id=rid("freeze"),
                wallet_id=api.wallet,
                reason="z" * n,
            )
        ),
    ),
    Boundary(
        "METADATA_ENTRIES_MAX",
        "metadata",
        limits.METADATA_ENTRIES_MAX,
        limits.METADATA_ENTRIES_MAX + 1,
        lambda api, n: _wallet_with(api, metadata=_metadata(n)),
    ),
    Boundary(
        "METADATA_KEY_CHARS_MAX",
        "metadata",
        limits.METADATA_KEY_CHARS_MAX,
        limits.METADATA_KEY_CHARS_MAX + 1,
        lambda api, n: _wallet_with(api, metadata=_metadata(1, key_chars=n)),
    ),
    Boundary(
        "METADATA_VALUE_CHARS_MAX",
        "metadata[00kkkkkk]",
        limits.METADATA_VALUE_CHARS_MAX,
        limits.METADATA_VALUE_CHARS_MAX + 1,
        lambda api, n: _credit(api, metadata=_metadata(1, value_chars=n)),
    ),
    Boundary(
        "WALLET_TAGS_MAX",
        "tags",
        limits.WALLET_TAGS_MAX,
        limits.WALLET_TAGS_MAX + 1,
        lambda api, n: _wallet_with(api, tags=[f"tag-{i}" for i in range(n)]),
    ),
    Boundary(
        "CONDITION_IDS_MAX",
        "product_ids",
        limits.CONDITION_IDS_MAX,
        limits.CONDITION_IDS_MAX + 1,
        lambda api, n: api.wallets.Spend(
            wallet_pb2.SpendRequest(
                request_id=rid("spend"),
                wallet_id=api.wallet,
                asset="POINTS",
                amount=1,
                merchant_id="m-1",
                product_ids=[f"p-{i}" for i in range(n)],
            )
        ),
    ),
    Boundary(
        "ASSETS_MAX",
        "scheme.assets",
        limits.ASSETS_MAX,
        limits.ASSETS_MAX + 1,
        lambda api, n: _scheme_with(api, assets=_assets(n)),
    ),
    Boundary(
        "ASSET_SCALE_MAX",
        "scheme.assets[0].scale",
        limits.ASSET_SCALE_MAX,
        limits.ASSET_SCALE_MAX + 1,
        lambda api, n: _scheme_with(api, assets=_assets(1, scale=n)),
    ),
    Boundary(
        "REDEMPTION_RATES_MAX",
        "scheme.redemption_rates",
        limits.REDEMPTION_RATES_MAX,
        limits.REDEMPTION_RATES_MAX + 1,
        lambda api, n: _scheme_with(api, **_rates(n)),
    ),
    Boundary(
        "TIERS_MAX",
        "scheme.tier_program.tiers",
        limits.TIERS_MAX,
        limits.TIERS_MAX + 1,
        lambda api, n: _scheme_with(api, **_tiers(n)),
    ),
    Boundary(
        "TIER_WINDOW_DAYS_MAX",
        "scheme.tier_program.window_days",
        limits.TIER_WINDOW_DAYS_MAX,
        limits.TIER_WINDOW_DAYS_MAX + 1,
        lambda api, n: _scheme_with(api, **_tiers(2, window_days=n)),
    ),
    Boundary(
        "REFUND_GRACE_SECONDS_MAX",
        "scheme.refund_policy.grace_period",
        limits.REFUND_GRACE_SECONDS_MAX,
        limits.REFUND_GRACE_SECONDS_MAX + 1,
        lambda api, n: _scheme_with(
            api, refund_policy=offer_pb2.RefundPolicy(grace_period=Duration(seconds=n))
        ),
    ),
    Boundary(
        "REFUND_GRACE_SECONDS_MIN (one below)",
        "scheme.refund_policy.grace_period",
        limits.REFUND_GRACE_SECONDS_MIN,
        limits.REFUND_GRACE_SECONDS_MIN - 1,
        lambda api, n: _scheme_with(
            api, refund_policy=offer_pb2.RefundPolicy(grace_period=Duration(seconds=n))
        ),
    ),
    Boundary(
        "WARNING_LEAD_TIMES_MAX",
        "scheme.warning_lead_times",
        limits.WARNING_LEAD_TIMES_MAX,
        limits.WARNING_LEAD_TIMES_MAX + 1,
        lambda api, n: _scheme_with(api, warning_lead_times=_hours(*range(1, n + 1))),
    ),
    Boundary(
        "WARNING_LEAD_SECONDS_MAX",
        "scheme.warning_lead_times[0]",
        limits.WARNING_LEAD_SECONDS_MAX,
        limits.WARNING_LEAD_SECONDS_MAX + 1,
        lambda api, n: _scheme_with(api, warning_lead_times=[Duration(seconds=n)]),
    ),
    Boundary(
        "WARNING_LEAD_SECONDS_MIN (one below)",
        "scheme.warning_lead_times[0]",
        limits.WARNING_LEAD_SECONDS_MIN,
        limits.WARNING_LEAD_SECONDS_MIN - 1,
        lambda api, n: _scheme_with(api, warning_lead_times=[Duration(seconds=n)]),
    ),
    Boundary(
        "HOLD_TTL_SECONDS_MAX",
        "ttl",
        limits.HOLD_TTL_SECONDS_MAX,
        limits.HOLD_TTL_SECONDS_MAX + 1,
        lambda api, n: api.wallets.AuthorizeHold(
            wallet_pb2.AuthorizeHoldRequest(
                request_id=rid("hold"),
                wallet_id=api.wallet,
                asset="POINTS",
                amount=1,
                merchant_id="m-1",
                ttl=Duration(seconds=n),
            )
        ),
    ),
    Boundary(
        "TIMESTAMP_YEAR_MAX (seconds since 1970)",
        "expire_time",
        YEAR_MAX_SECONDS,
        YEAR_MAX_SECONDS + 1,
        lambda api, n: _credit(api, expire_time=Timestamp(seconds=n)),
    ),
    Boundary(
        "WATCH_WALLET_IDS_MAX",
        "wallet_ids",
        limits.WATCH_WALLET_IDS_MAX,
        limits.WATCH_WALLET_IDS_MAX + 1,
        lambda api, n: _watch(api, [f"wal_{i}" for i in range(n)]),
    ),
]


async def test_strings_and_lists_at_and_past_their_limits(
    database_url: str, clock: TestClock
) -> None:
    async with serving(database_url, clock) as api:
        await make_scheme(api.offers)
        wallet = api.wallet = (await make_wallet(api.wallets)).wallet_id
        await credit(api.wallets, wallet, 1_000)
        wrong: dict[str, Any] = {}
        for case in BOUNDARIES:
            error = await refused_and_unchanged(
                api.app, lambda case=case: case.call(api, case.over), INVALID
            )
            if case.field not in field_violations(error):
                wrong[case.limit] = ("over", field_violations(error))
            try:
                await case.call(api, case.at)
            except grpc.aio.AioRpcError as refused:
                wrong[case.limit] = ("at", refused.code(), refused.details())
            if case.limit == "REASON_CHARS_MAX":
                await api.wallets.UnfreezeWallet(
                    wallet_pb2.UnfreezeWalletRequest(request_id=rid(), wallet_id=wallet)
                )
        assert wrong == {}


# -- batch sizes ------------------------------------------------------------------------------


async def test_submit_events_takes_exactly_its_batch_limit(
    database_url: str, clock: TestClock
) -> None:
    async with serving(database_url, clock) as api:
        await make_scheme(api.offers)
        wallet = (await make_wallet(api.wallets)).wallet_id
        offer = await api.offers.CreateOffer(
            offer_pb2.CreateOfferRequest(
                request_id=rid("offer"),
                offer=rewards_pb2.Offer(
                    scheme_id="acme",
                    name="A euro an event",
                    asset="EUR",
                    rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=100)),
                ),
            )
        )
        await api.offers.SetOfferStatus(
            offer_pb2.SetOfferStatusRequest(
                request_id=rid("status"),
                offer_id=offer.offer.offer_id,
                status=rewards_pb2.OFFER_STATUS_ACTIVE,
            )
        )

        def batch(size: int) -> offer_pb2.SubmitEventsRequest:
            return offer_pb2.SubmitEventsRequest(
                events=[
                    offer_pb2.SubmitEventRequest(
                        request_id=rid("event"),
                        wallet_id=wallet,
                        event=rewards_pb2.CustomerEvent(
                            type=rewards_pb2.CUSTOMER_EVENT_TYPE_PURCHASE,
                            occur_time=ts(clock.now()),
                            merchant_id="shop-1",
                            amount=1_000,
                            currency="EUR",
                        ),
                    )
                    for _ in range(size)
                ]
            )

        over = batch(limits.EVENT_BATCH_MAX + 1)
        error = await refused_and_unchanged(api.app, lambda: api.offers.SubmitEvents(over), INVALID)
        assert "events" in field_violations(error)
        done = await api.offers.SubmitEvents(batch(limits.EVENT_BATCH_MAX))
        assert [r.WhichOneof("result") for r in done.results] == ["response"] * 500
        assert (await balance(api.wallets, wallet, "EUR")).available == 500 * 100


async def test_create_promotion_codes_takes_exactly_its_batch_limit(
    database_url: str, clock: TestClock
) -> None:
    async with serving(database_url, clock) as api:
        await make_scheme(api.offers)

        def request(*, count: int = 0, codes: list[str] | None = None) -> Any:
            return offer_pb2.CreatePromotionCodesRequest(
                request_id=rid("codes"),
                batch=offer_pb2.PromotionCodeBatch(
                    scheme_id="acme", name="Welcome", asset="POINTS", amount=25
                ),
                count=count,
                codes=codes or [],
            )

        most = limits.PROMOTION_CODES_MAX
        listed = [f"CODE{i:06d}" for i in range(most + 1)]
        for refused, field in (
            (request(count=most + 1), "count"),
            (request(codes=listed), "codes"),
        ):
            error = await refused_and_unchanged(
                api.app, lambda r=refused: api.offers.CreatePromotionCodes(r), INVALID
            )
            assert field in field_violations(error), field
        generated = await api.offers.CreatePromotionCodes(request(count=most))
        assert len(set(generated.codes)) == most
        given = await api.offers.CreatePromotionCodes(request(codes=listed[:most]))
        assert list(given.codes) == listed[:most]


# -- page size --------------------------------------------------------------------------------


async def test_page_size_is_coerced_to_its_maximum(database_url: str, clock: TestClock) -> None:
    async with serving(database_url, clock) as api:
        await make_scheme(api.offers)
        for start in range(0, PAGE_SIZE_MAX + 1, 50):  # one more wallet than a page holds
            await asyncio.gather(
                *(make_wallet(api.wallets) for _ in range(min(50, PAGE_SIZE_MAX + 1 - start)))
            )

        async def page(size: int) -> wallet_pb2.ListWalletsResponse:
            return await api.wallets.ListWallets(
                wallet_pb2.ListWalletsRequest(scheme_id="acme", page_size=size)
            )

        at, over = await page(PAGE_SIZE_MAX), await page(PAGE_SIZE_MAX + 1)
        assert len(at.wallets) == len(over.wallets) == PAGE_SIZE_MAX  # coerced, not refused
        assert at == over
        rest = await api.wallets.ListWallets(
            wallet_pb2.ListWalletsRequest(
                scheme_id="acme", page_size=PAGE_SIZE_MAX + 1, page_token=at.next_page_token
            )
        )
        assert (len(rest.wallets), rest.next_page_token) == (1, "")
        error = await rpc_error(page(-1), INVALID)
        assert "page_size" in field_violations(error)


# -- message size ----------------------------------------------------------------------------


def _codes_request(size: int) -> offer_pb2.CreatePromotionCodesRequest:
    """A valid CreatePromotionCodes request of exactly `size` serialized bytes."""
    request = offer_pb2.CreatePromotionCodesRequest(
        request_id=rid("sized"),
        batch=offer_pb2.PromotionCodeBatch(scheme_id="acme", name="N", asset="POINTS", amount=25),
    )
    full = (size - request.ByteSize()) // 34 - 2  # 32-character codes cost 34 bytes each
    request.codes.extend(f"C{i:031d}" for i in range(full))
    for name_chars in range(1, limits.NAME_CHARS_MAX + 1):  # the name takes up the rest
        request.batch.name = "N" * name_chars
        if request.ByteSize() == size:
            return request
    raise AssertionError(f"no request of {size} bytes")


async def test_a_request_of_exactly_the_message_limit_is_served(
    database_url: str, clock: TestClock
) -> None:
    async with serving(database_url, clock, message_bytes_max=SMALL_MESSAGE_BYTES) as api:
        await make_scheme(api.offers)
        over = _codes_request(SMALL_MESSAGE_BYTES + 1)
        error = await refused_and_unchanged(
            api.app, lambda: api.offers.CreatePromotionCodes(over), EXHAUSTED
        )
        found = assert_names_limit(
            error, "MESSAGE_TOO_LARGE", "LOYALTY_MESSAGE_BYTES_MAX", SMALL_MESSAGE_BYTES
        )
        assert found["size_bytes"] == str(SMALL_MESSAGE_BYTES + 1)
        assert quota_failure(error).subject == "request"
        at = _codes_request(SMALL_MESSAGE_BYTES)
        created = await api.offers.CreatePromotionCodes(at)
        assert list(created.codes) == list(at.codes)


async def test_the_default_message_limit_and_grpcs_own_cap_beyond_it(app: App) -> None:
    """4 MiB by default: a request of exactly that size is parsed and judged on its content;
    one byte more is refused unread, with details; past gRPC's own cap (twice the limit) gRPC
    refuses it before the server sees it, without details."""
    limit = app.settings.message_bytes_max
    assert limit == 4 * 1024 * 1024

    def get(size: int) -> Any:
        request = wallet_pb2.GetWalletRequest(wallet_id="w" * (size - 5))  # 1 tag + 4 length
        assert request.ByteSize() == size
        return request

    async with open_channel(f"127.0.0.1:{app.port}") as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        at = await rpc_error(stub.GetWallet(get(limit)), INVALID)
        assert "wallet_id" in field_violations(at)  # read, then judged on its content
        over = await rpc_error(stub.GetWallet(get(limit + 1)), EXHAUSTED)
        assert_names_limit(over, "MESSAGE_TOO_LARGE", "LOYALTY_MESSAGE_BYTES_MAX", limit)
        beyond = await rpc_error(stub.GetWallet(get(limit * TRANSPORT_FACTOR + 1)), EXHAUSTED)
        assert "larger than max" in (beyond.details() or "")
        assert not status_details(beyond).details  # gRPC's own refusal: no details


async def test_a_response_over_the_message_limit_is_refused_with_details(
    database_url: str, clock: TestClock
) -> None:
    big = {f"{i:02d}".ljust(limits.METADATA_KEY_CHARS_MAX, "k"): "v" * 256 for i in range(16)}
    async with serving(database_url, clock, message_bytes_max=SMALL_MESSAGE_BYTES) as api:
        await make_scheme(api.offers)
        for _ in range(16):  # about 5 KiB each: some 12 fit in 64 KiB
            await _wallet_with(api, metadata=big)
        fitted = 0
        for size in range(1, 17):
            try:
                page = await api.wallets.ListWallets(wallet_pb2.ListWalletsRequest(page_size=size))
            except grpc.aio.AioRpcError as error:
                assert error.code() == EXHAUSTED, error.details()
                found = assert_names_limit(
                    error, "RESPONSE_TOO_LARGE", "LOYALTY_MESSAGE_BYTES_MAX", SMALL_MESSAGE_BYTES
                )
                assert int(found["size_bytes"]) > SMALL_MESSAGE_BYTES
                assert "page_size" in (error.details() or "")
                break
            assert page.ByteSize() <= SMALL_MESSAGE_BYTES
            fitted = size
        else:
            pytest.fail("every page fitted")
        assert 8 <= fitted < 16


# -- per-subscriber buffer --------------------------------------------------------------------

BUFFER = 5


async def test_a_subscriber_may_fall_exactly_its_buffer_behind(
    database_url: str, clock: TestClock
) -> None:
    """Driven through the hub: gRPC's own flow-control buffers hide the exact boundary from a
    client (tests/e2e/test_watch.py has the stalled gRPC subscriber). BUFFER undelivered
    events are held; one more cuts the subscriber off once it has had the BUFFER."""
    async with serving(database_url, clock, watch_buffer_max=BUFFER) as api:
        hub = api.app.hub
        stalled = hub.subscribe(
            WatchFilter(wallet_ids=frozenset({"wal_a"})), after_sequence=0, from_now=True
        )
        marker = hub.subscribe(
            WatchFilter(wallet_ids=frozenset({"wal_b"})), after_sequence=0, from_now=True
        )
        for stream in (stalled, marker):  # a heartbeat: both are registered
            assert isinstance(await asyncio.wait_for(anext(stream), 5), Heartbeat)

        async def published(count: int) -> list[int]:
            """Publish `count` events for the stalled subscriber, then one for the marker:
            once the marker has its event, the hub has dispatched all of them."""
            now = clock.now_us()
            await publish(
                api.app,
                rows(count, now_us=now, wallet="wal_a") + rows(1, now_us=now, wallet="wal_b"),
            )
            while isinstance(item := await asyncio.wait_for(anext(marker), 5), Heartbeat):
                pass
            stored = [seq for seq, _ in await stored_events(api.app)]
            assert stored[-1] == item.seq
            return stored[-count - 1 : -1]

        async def drain(count: int) -> list[int]:
            return [(await asyncio.wait_for(anext(stalled), 5)).seq for _ in range(count)]

        first = await published(BUFFER)  # exactly the buffer: held, not cut off
        assert hub.subscriber_count == 2
        assert await drain(BUFFER) == first
        assert isinstance(await asyncio.wait_for(anext(stalled), 5), Heartbeat)  # still live

        second = await published(BUFFER + 1)  # one more than the buffer
        assert hub.subscriber_count == 1  # cut off at once, without waiting for it
        assert await drain(BUFFER) == second[:BUFFER]  # what was buffered still goes out
        with pytest.raises(ResourceExhausted) as caught:
            await asyncio.wait_for(anext(stalled), 5)
        error = caught.value
        assert (error.reason, error.limit, error.limit_value) == (
            "SUBSCRIBER_TOO_SLOW",
            "LOYALTY_WATCH_BUFFER_MAX",
            BUFFER,
        )
        assert error.metadata["last_sequence"] == str(second[BUFFER - 1])
        await marker.aclose()
