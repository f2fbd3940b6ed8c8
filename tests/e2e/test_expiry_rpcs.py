"""The expiry RPCs through a real server: RunExpiry, GetRun, ListRuns, upcoming expirations,
manual expiry and extension, and the test clock service."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from loyalty.v1 import clock_pb2, clock_pb2_grpc, expiry_pb2, wallet_pb2

from tests.helpers import (
    balance,
    credit,
    make_scheme,
    make_wallet,
    rid,
    rpc_error,
    spend,
    ts,
)

FAILED = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def test_run_expiry_expires_due_lots_and_is_listed(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    soon = clock.now() + timedelta(hours=1)
    await credit(wallets, wallet, 30, expire_time=ts(soon))
    await credit(wallets, wallet, 12)  # never expires
    clock.advance(timedelta(hours=2))
    request = expiry_pb2.RunExpiryRequest(request_id=rid("run"))
    first = await wallets.RunExpiry(request)
    assert first.run.status == expiry_pb2.RUN_STATUS_SUCCEEDED
    assert first.run.items_processed == 1
    assert first.run.kind == expiry_pb2.RUN_KIND_EXPIRY
    replay = await wallets.RunExpiry(request)
    assert replay.SerializeToString() == first.SerializeToString()
    got = await wallets.GetRun(expiry_pb2.GetRunRequest(run_id=first.run.run_id))
    assert got.run == first.run
    listed = await wallets.ListRuns(expiry_pb2.ListRunsRequest(kind=expiry_pb2.RUN_KIND_EXPIRY))
    assert [r.run_id for r in listed.runs] == [first.run.run_id]
    assert (await balance(wallets, wallet)).available == 12
    lots = await wallets.ListLots(
        wallet_pb2.ListLotsRequest(wallet_id=wallet, state=wallet_pb2.LOT_STATE_EXPIRED)
    )
    assert [(lot.amount, lot.expired) for lot in lots.lots] == [(30, 30)]


async def test_run_expiry_refuses_a_future_as_of_and_unknown_runs(wallets, clock) -> None:
    future = ts(clock.now() + timedelta(minutes=1))
    await rpc_error(
        wallets.RunExpiry(expiry_pb2.RunExpiryRequest(request_id=rid(), as_of_time=future)),
        INVALID,
    )
    await rpc_error(
        wallets.GetRun(expiry_pb2.GetRunRequest(run_id="run_missing")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_list_upcoming_expirations_by_wallet_and_scheme(offers, wallets, clock) -> None:
    await make_scheme(offers)
    a = (await make_wallet(wallets)).wallet_id
    b = (await make_wallet(wallets)).wallet_id
    now = clock.now()
    await credit(wallets, a, 5, expire_time=ts(now + timedelta(days=2)))
    await credit(wallets, a, 6, expire_time=ts(now + timedelta(days=40)))
    await credit(wallets, b, 7, expire_time=ts(now + timedelta(days=1)))
    window = ts(now + timedelta(days=30))
    by_scheme = await wallets.ListUpcomingExpirations(
        expiry_pb2.ListUpcomingExpirationsRequest(scheme_id="acme", end_time=window, page_size=1)
    )
    assert [e.amount for e in by_scheme.expirations] == [7]  # soonest first, one per page
    second = await wallets.ListUpcomingExpirations(
        expiry_pb2.ListUpcomingExpirationsRequest(
            scheme_id="acme", end_time=window, page_size=1, page_token=by_scheme.next_page_token
        )
    )
    assert [(e.amount, e.wallet_id) for e in second.expirations] == [(5, a)]
    by_wallet = await wallets.ListUpcomingExpirations(
        expiry_pb2.ListUpcomingExpirationsRequest(wallet_id=a, end_time=window)
    )
    assert [e.amount for e in by_wallet.expirations] == [5]
    await rpc_error(
        wallets.ListUpcomingExpirations(
            expiry_pb2.ListUpcomingExpirationsRequest(
                scheme_id="acme", wallet_id=a, end_time=window
            )
        ),
        INVALID,
    )


async def test_expire_lot_and_extend_lot(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    first = await credit(wallets, wallet, 20, expire_time=ts(clock.now() + timedelta(days=3)))
    second = await credit(wallets, wallet, 9, expire_time=ts(clock.now() + timedelta(days=3)))
    expired = await wallets.ExpireLot(
        wallet_pb2.ExpireLotRequest(request_id=rid(), lot_id=first.lot.lot_id, reason="fraud")
    )
    assert expired.lot.state == wallet_pb2.LOT_STATE_EXPIRED
    assert expired.transaction.type == wallet_pb2.TRANSACTION_TYPE_EXPIRE
    await rpc_error(
        wallets.ExpireLot(wallet_pb2.ExpireLotRequest(request_id=rid(), lot_id=first.lot.lot_id)),
        FAILED,
        "LOT_NOT_OPEN",
    )
    later = clock.now() + timedelta(days=10)
    extended = await wallets.ExtendLot(
        wallet_pb2.ExtendLotRequest(
            request_id=rid(), lot_id=second.lot.lot_id, expire_time=ts(later), reason="goodwill"
        )
    )
    assert extended.lot.expire_time == ts(later)
    assert extended.transaction.type == wallet_pb2.TRANSACTION_TYPE_ADJUST
    await rpc_error(
        wallets.ExtendLot(
            wallet_pb2.ExtendLotRequest(
                request_id=rid(),
                lot_id=second.lot.lot_id,
                expire_time=ts(clock.now() + timedelta(days=1)),
            )
        ),
        INVALID,
    )
    clock.advance(timedelta(days=5))
    assert (await balance(wallets, wallet)).available == 9


async def test_a_spend_never_uses_a_lot_expiring_at_that_instant(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    await credit(wallets, wallet, 10, expire_time=ts(clock.now() + timedelta(hours=1)))
    clock.advance(timedelta(hours=1))
    await rpc_error(spend(wallets, wallet, 1), FAILED, "INSUFFICIENT_FUNDS")


async def test_scheme_warning_lead_times_round_trip(offers) -> None:
    scheme = await make_scheme(
        offers,
        scheme_id="warned",
        warning_lead_times=[Duration(seconds=48 * 3600), Duration(seconds=7 * 86400)],
    )
    assert [d.seconds for d in scheme.warning_lead_times] == [7 * 86400, 48 * 3600]
    await rpc_error(
        make_scheme(offers, scheme_id="bad-lead", warning_lead_times=[Duration(seconds=60)]),
        INVALID,
    )


@pytest.fixture
def clock_stub(channel: grpc.aio.Channel) -> clock_pb2_grpc.TestClockServiceStub:
    return clock_pb2_grpc.TestClockServiceStub(channel)


async def test_test_clock_advance_fires_due_runs(offers, wallets, clock, clock_stub) -> None:
    await make_scheme(
        offers,
        warning_lead_times=[Duration(seconds=48 * 3600)],
        default_expiry_policy=None,
    )
    wallet = (await make_wallet(wallets)).wallet_id
    await credit(wallets, wallet, 15, expire_time=ts(clock.now() + timedelta(days=3)))
    before = await clock_stub.GetTime(clock_pb2.GetTimeRequest())
    after = await clock_stub.AdvanceTime(
        clock_pb2.AdvanceTimeRequest(by=Duration(seconds=2 * 86400))
    )
    assert after.now.seconds - before.now.seconds == 2 * 86400
    runs = await wallets.ListRuns(
        expiry_pb2.ListRunsRequest(kind=expiry_pb2.RUN_KIND_EXPIRY_WARNING)
    )
    assert runs.runs[0].items_processed == 1
    await clock_stub.AdvanceTime(clock_pb2.AdvanceTimeRequest(by=Duration(seconds=86400)))
    expiry_runs = await wallets.ListRuns(
        expiry_pb2.ListRunsRequest(kind=expiry_pb2.RUN_KIND_EXPIRY)
    )
    assert expiry_runs.runs[0].items_processed == 1
    assert (await balance(wallets, wallet)).available == 0
    await rpc_error(
        clock_stub.AdvanceTime(clock_pb2.AdvanceTimeRequest(by=Duration(seconds=0))), INVALID
    )
