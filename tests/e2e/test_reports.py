"""The report RPCs of SettlementService through the real server (both backends): liability,
breakage, offer performance, participation and the upcoming-expirations export.

Expected values are worked out here from each scenario (or recorded from other RPCs at the
time), not copied from the reports' output.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from loyalty.v1 import (
    clock_pb2,
    clock_pb2_grpc,
    common_pb2,
    offer_pb2,
    rewards_pb2,
    settlement_pb2,
    wallet_pb2,
)

from loyalty_ledger.api import report_rpcs
from loyalty_ledger.clock import TestClock
from tests.helpers import (
    credit,
    field_violations,
    make_scheme,
    make_wallet,
    rid,
    rpc_error,
    spend,
    ts,
)

AMS = ZoneInfo("Europe/Amsterdam")
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PROMO, CASH = common_pb2.FUNDING_PROMOTIONAL, common_pb2.FUNDING_CASH


def local(
    year: int, month: int, day: int = 1, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    """A wall-clock time in the scheme's timezone (Europe/Amsterdam), as an aware datetime."""
    return datetime(year, month, day, hour, minute, second, tzinfo=AMS)


class Clock:
    """The server's test clock, moved through TestClockService so every run happens at once."""

    def __init__(self, channel: grpc.aio.Channel, clock: TestClock) -> None:
        self.stub = clock_pb2_grpc.TestClockServiceStub(channel)
        self.clock = clock

    def now(self) -> datetime:
        return self.clock.now()

    async def advance(self, by: timedelta) -> None:
        await self.stub.AdvanceTime(
            clock_pb2.AdvanceTimeRequest(by=Duration(seconds=int(by.total_seconds())))
        )

    async def advance_to(self, moment: datetime) -> None:
        await self.advance(moment - self.now())


async def all_lots(wallets: Any, wallet_ids: list[str]) -> list[wallet_pb2.Lot]:
    lots = []
    for wallet_id in wallet_ids:
        token = ""
        while True:
            page = await wallets.ListLots(
                wallet_pb2.ListLotsRequest(wallet_id=wallet_id, page_size=1000, page_token=token)
            )
            lots += page.lots
            token = page.next_page_token
            if not token:
                break
    return lots


FUNDING_NAME = {PROMO: "PROMOTIONAL", CASH: "CASH"}


async def lot_snapshot(wallets: Any, wallet_ids: list[str]) -> dict[tuple[str, str, str], int]:
    """remaining + held of every lot, by (asset, funding, sponsor): what is owed right now."""
    owed: dict[tuple[str, str, str], int] = defaultdict(int)
    for lot in await all_lots(wallets, wallet_ids):
        key = (lot.asset, FUNDING_NAME[lot.funding], lot.sponsor_id)
        owed[key] += lot.remaining + lot.held
    return {k: v for k, v in owed.items() if v}


async def balance_sums(wallets: Any, wallet_ids: list[str]) -> dict[str, int]:
    """GetBalance's available + pending + held summed over the wallets, per asset."""
    sums: dict[str, int] = defaultdict(int)
    for wallet_id in wallet_ids:
        response = await wallets.GetBalance(wallet_pb2.GetBalanceRequest(wallet_id=wallet_id))
        for b in response.balances:
            sums[b.asset] += b.available + b.pending + b.held
    return {k: v for k, v in sums.items() if v}


async def liability(settlement: Any, scheme_id: str, as_of: datetime | None = None) -> Any:
    request = settlement_pb2.GetLiabilityReportRequest(scheme_id=scheme_id)
    if as_of is not None:
        request.as_of_time.CopyFrom(ts(as_of))
    return await settlement.GetLiabilityReport(request)


def by_group(report: Any) -> dict[tuple[str, str, str], int]:
    return {(r.asset, r.funding, r.sponsor_id): r.amount for r in report.rows}


def by_asset(report: Any) -> dict[str, int]:
    sums: dict[str, int] = defaultdict(int)
    for row in report.rows:
        sums[row.asset] += row.amount
    return {k: v for k, v in sums.items() if v}


# -- liability -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "handling",
    [offer_pb2.EXPIRED_REFUND_HANDLING_EXPIRE, offer_pb2.EXPIRED_REFUND_HANDLING_RECREDIT],
    ids=["refund-expire", "refund-recredit"],
)
async def test_liability_as_of_past_times_equals_the_balances_then(
    offers, wallets, settlement, channel, clock, handling
) -> None:
    await make_scheme(
        offers,
        cash_expiry_allowed=True,
        refund_policy=offer_pb2.RefundPolicy(
            expired_lot_handling=handling, grace_period=Duration(seconds=7 * 86400)
        ),
    )
    await make_scheme(offers, "other")  # its value never shows in acme's report
    other = (await make_wallet(wallets, "other")).wallet_id
    await credit(wallets, other, 777)
    test_clock = Clock(channel, clock)
    start = test_clock.now()
    w1, w2, w3 = [(await make_wallet(wallets)).wallet_id for _ in range(3)]
    ids = [w1, w2, w3]
    checkpoints: list[tuple[datetime, dict[tuple[str, str, str], int], dict[str, int]]] = []

    async def checkpoint() -> None:
        """What is owed now (lots) and what the balances say now, then a minute passes so
        that the next writes are later than this instant."""
        snapshot = await lot_snapshot(wallets, ids)
        sums = await balance_sums(wallets, ids)
        checkpoints.append((test_clock.now(), snapshot, sums))
        await test_clock.advance(timedelta(minutes=1))

    await checkpoint()  # nothing yet
    # Day 0: promotional points of two sponsors, cash points, expiring cash euros.
    await credit(wallets, w1, 1000, sponsor_id="s-a", expire_time=ts(start + timedelta(days=10)))
    await credit(wallets, w1, 500, funding=CASH)
    await credit(wallets, w2, 300, sponsor_id="s-b", expire_time=ts(start + timedelta(days=40)))
    await credit(
        wallets, w1, 2000, asset="EUR", funding=CASH, expire_time=ts(start + timedelta(days=20))
    )
    spend1 = (await spend(wallets, w1, 200)).transaction  # from s-a's lot (expires first)
    hold1 = (
        await wallets.AuthorizeHold(
            wallet_pb2.AuthorizeHoldRequest(
                request_id=rid("hold"),
                wallet_id=w1,
                asset="POINTS",
                amount=150,
                merchant_id="m-1",
                ttl=Duration(seconds=86400 * 3),
            )
        )
    ).hold
    await checkpoint()

    # Day 1: capture part of the hold (the rest is voided), a hold that will lapse, a
    # transfer, and a euro spend.
    await test_clock.advance(timedelta(days=1))
    capture = (
        await wallets.CaptureHold(
            wallet_pb2.CaptureHoldRequest(request_id=rid("cap"), hold_id=hold1.hold_id, amount=100)
        )
    ).transaction
    await wallets.AuthorizeHold(
        wallet_pb2.AuthorizeHoldRequest(
            request_id=rid("hold"),
            wallet_id=w2,
            asset="POINTS",
            amount=50,
            merchant_id="m-2",
            ttl=Duration(seconds=3600),
        )
    )
    await wallets.Transfer(
        wallet_pb2.TransferRequest(
            request_id=rid("xfer"), from_wallet_id=w1, to_wallet_id=w2, asset="POINTS", amount=100
        )
    )
    await spend(wallets, w1, 400, asset="EUR")
    await checkpoint()

    # Day 3 (the second hold has lapsed and been released): a refund into a live lot, a
    # reversal of a credit with a hold on it, a merge of that wallet, then the hold voided.
    await test_clock.advance(timedelta(days=2))
    await wallets.RefundSpend(
        wallet_pb2.RefundSpendRequest(
            request_id=rid("refund"), transaction_id=spend1.transaction_id, amount=50
        )
    )
    award3 = (await credit(wallets, w3, 250, sponsor_id="s-c")).transaction
    hold3 = (
        await wallets.AuthorizeHold(
            wallet_pb2.AuthorizeHoldRequest(
                request_id=rid("hold"),
                wallet_id=w3,
                asset="POINTS",
                amount=40,
                merchant_id="m-3",
                ttl=Duration(seconds=86400),
            )
        )
    ).hold
    await wallets.ReverseCredit(
        wallet_pb2.ReverseCreditRequest(
            request_id=rid("rev"), transaction_id=award3.transaction_id, reason="fraud"
        )
    )
    await credit(wallets, w3, 90, sponsor_id="s-c")
    await checkpoint()
    await wallets.MergeWallets(
        wallet_pb2.MergeWalletsRequest(
            request_id=rid("merge"), survivor_wallet_id=w2, duplicate_wallet_id=w3
        )
    )
    await checkpoint()
    await wallets.VoidHold(
        wallet_pb2.VoidHoldRequest(request_id=rid("void"), hold_id=hold3.hold_id)
    )
    await checkpoint()

    # Day 11: s-a's lot and its transferred copy have expired; refunds of value from the
    # expired lot go by the scheme's policy (expired at once, or re-credited in a new lot).
    await test_clock.advance_to(start + timedelta(days=11))
    await wallets.RefundSpend(
        wallet_pb2.RefundSpendRequest(
            request_id=rid("refund"), transaction_id=spend1.transaction_id, amount=0
        )
    )
    await wallets.RefundSpend(
        wallet_pb2.RefundSpendRequest(
            request_id=rid("refund"), transaction_id=capture.transaction_id, amount=30
        )
    )
    await checkpoint()
    # Day 12: a spend (of re-credited value, if any), day 21: the cash euros expired.
    await test_clock.advance(timedelta(days=1))
    await spend(wallets, w1, 120)
    await checkpoint()
    await test_clock.advance_to(start + timedelta(days=21))
    await checkpoint()

    # The scenario went where it was meant to: something expired, something is held, and
    # the refund policy made its difference.
    lots = await all_lots(wallets, ids)
    assert any(lot.expired for lot in lots) and any(lot.reversed for lot in lots)
    recredited = [lot for lot in lots if lot.origin_lot_id and lot.wallet_id == w1]
    assert bool(recredited) == (handling == offer_pb2.EXPIRED_REFUND_HANDLING_RECREDIT)
    assert (
        len({snapshot.get(("POINTS", "PROMOTIONAL", "s-a"), 0) for _, snapshot, _ in checkpoints})
        > 3
    )

    for moment, snapshot, sums in checkpoints:
        report = await liability(settlement, "acme", moment)
        assert report.as_of_time.ToDatetime(tzinfo=UTC) == moment
        assert by_group(report) == snapshot, moment
        assert by_asset(report) == sums, moment
        assert all(r.amount for r in report.rows)
    # As of now (the default) it is what the lots hold now; rows come sorted.
    now = await liability(settlement, "acme")
    assert now.as_of_time.ToDatetime(tzinfo=UTC) == test_clock.now()
    assert by_group(now) == await lot_snapshot(wallets, ids)
    keys = [(r.asset, r.funding, r.sponsor_id) for r in now.rows]
    assert keys == sorted(keys)
    assert by_group(await liability(settlement, "other")) == {
        ("POINTS", "PROMOTIONAL", "m-sponsor"): 777
    }


# -- breakage ------------------------------------------------------------------------------


async def test_breakage_by_local_month_and_sponsor(
    offers, wallets, settlement, channel, clock
) -> None:
    await make_scheme(offers, cash_expiry_allowed=True)
    test_clock = Clock(channel, clock)
    w1, w2 = (await make_wallet(wallets)).wallet_id, (await make_wallet(wallets)).wallet_id
    # Amsterdam is UTC+1 in winter: local February starts at 2026-01-31 23:00 UTC.
    jan_late = datetime(2026, 1, 31, 22, 30, tzinfo=UTC)  # local 23:30 on 31 January
    feb_early = datetime(2026, 1, 31, 23, 30, tzinfo=UTC)  # local 00:30 on 1 February
    await credit(wallets, w1, 100, sponsor_id="s-a", expire_time=ts(jan_late))
    await credit(wallets, w1, 500, asset="EUR", funding=CASH, expire_time=ts(jan_late))
    await credit(wallets, w2, 70, sponsor_id="s-b", expire_time=ts(feb_early))
    await credit(wallets, w2, 40, sponsor_id="s-a", expire_time=ts(feb_early))
    await credit(wallets, w2, 1000, sponsor_id="s-a")  # never expires
    await spend(wallets, w1, 30)  # 70 of s-a's January lot is left to expire
    await spend(wallets, w1, 120, asset="EUR")
    await test_clock.advance_to(jan_late + timedelta(minutes=10))  # local January
    await test_clock.advance_to(feb_early + timedelta(minutes=10))  # local February

    async def report(start: datetime, end: datetime) -> list[tuple[str, str, str, str, int]]:
        response = await settlement.GetBreakageReport(
            settlement_pb2.GetBreakageReportRequest(
                scheme_id="acme", start_time=ts(start), end_time=ts(end)
            )
        )
        return [(r.month, r.asset, r.funding, r.sponsor_id, r.amount) for r in response.rows]

    january = [
        ("2026-01", "EUR", "CASH", "", 500 - 120),
        ("2026-01", "POINTS", "PROMOTIONAL", "s-a", 100 - 30),
    ]
    february = [
        ("2026-02", "POINTS", "PROMOTIONAL", "s-a", 40),
        ("2026-02", "POINTS", "PROMOTIONAL", "s-b", 70),
    ]
    assert await report(local(2026, 1, 1), local(2026, 3, 1)) == january + february
    assert await report(local(2026, 2, 1), local(2026, 3, 1)) == february
    assert await report(local(2025, 12, 1), local(2026, 2, 1)) == january
    # A window inside the month counts only what expired inside it.
    assert await report(local(2026, 1, 31, 23, 55), local(2026, 2, 1, 0, 5)) == january[:0]
    assert await report(local(2026, 3, 1), local(2026, 4, 1)) == []


# -- offer performance ---------------------------------------------------------------------


async def live_offer(offers: Any, **fields: Any) -> rewards_pb2.Offer:
    created = await offers.CreateOffer(
        offer_pb2.CreateOfferRequest(
            request_id=rid("offer"),
            offer=rewards_pb2.Offer(scheme_id="acme", asset="EUR", **fields),
        )
    )
    response = await offers.SetOfferStatus(
        offer_pb2.SetOfferStatusRequest(
            request_id=rid("status"),
            offer_id=created.offer.offer_id,
            status=rewards_pb2.OFFER_STATUS_ACTIVE,
        )
    )
    return response.offer


def days(count: int) -> common_pb2.ExpiryPolicy:
    return common_pb2.ExpiryPolicy(
        after=common_pb2.ExpireAfter(count=count, unit=common_pb2.DURATION_UNIT_DAYS)
    )


async def test_offer_performance_by_month_with_top_offers(
    offers, wallets, settlement, channel, clock
) -> None:
    await make_scheme(offers)
    test_clock = Clock(channel, clock)
    w1, w2 = (await make_wallet(wallets)).wallet_id, (await make_wallet(wallets)).wallet_id
    fixed = rewards_pb2.AwardRule
    big = await live_offer(
        offers,
        name="10 EUR back",
        rule=fixed(fixed_amount=rewards_pb2.FixedAmount(amount=1000)),
        expiry_policy=days(45),
    )
    instant = await live_offer(
        offers,
        name="5 EUR off now",
        rule=fixed(fixed_amount=rewards_pb2.FixedAmount(amount=500)),
        spend_method=rewards_pb2.SPEND_METHOD_INSTANT,
        conditions=rewards_pb2.OfferConditions(currency="EUR"),
    )
    small = await live_offer(
        offers,
        name="5 EUR back",
        rule=fixed(fixed_amount=rewards_pb2.FixedAmount(amount=500)),
        expiry_policy=days(20),
    )
    await credit(wallets, w1, 5000, asset="EUR", funding=CASH)  # not an award: never counted

    async def purchase(amount: int) -> offer_pb2.SubmitEventResponse:
        return await offers.SubmitEvent(
            offer_pb2.SubmitEventRequest(
                request_id=rid("event"),
                wallet_id=w1,
                event=rewards_pb2.CustomerEvent(
                    type=rewards_pb2.CUSTOMER_EVENT_TYPE_PURCHASE,
                    occur_time=ts(test_clock.now()),
                    merchant_id="shop-1",
                    amount=amount,
                    currency="EUR",
                ),
            )
        )

    # 15 January: each offer awards once. `small`'s lot expires first, so spends use it first.
    first = await purchase(20000)
    assert sorted(a.amount for a in first.awards) == [500, 500, 1000]
    await test_clock.advance(timedelta(days=5))
    spent = (await spend(wallets, w1, 300, asset="EUR")).transaction  # small: redeemed 300
    await test_clock.advance(timedelta(days=1))
    await wallets.RefundSpend(
        wallet_pb2.RefundSpendRequest(
            request_id=rid("refund"), transaction_id=spent.transaction_id, amount=100
        )
    )  # small: redeemed 300 - 100
    await test_clock.advance(timedelta(days=1))
    await wallets.Transfer(  # 100 of small's lot moves to w2 (a copy) and 60 is spent there
        wallet_pb2.TransferRequest(
            request_id=rid("xfer"), from_wallet_id=w1, to_wallet_id=w2, asset="EUR", amount=100
        )
    )
    await spend(wallets, w2, 60, asset="EUR")
    # 4 February (local): small's lot (200 left) and the copy (40 left) expire.
    await test_clock.advance_to(datetime(2026, 2, 5, tzinfo=UTC))
    # 10 February: awards again, then a spend of 1200: big's first lot (1000), then small's
    # second lot (200), the soonest expiring first.
    await test_clock.advance_to(datetime(2026, 2, 10, 12, tzinfo=UTC))
    await purchase(15000)
    await test_clock.advance(timedelta(hours=1))
    await spend(wallets, w1, 1200, asset="EUR")

    response = await settlement.GetOfferPerformanceReport(
        settlement_pb2.GetOfferPerformanceReportRequest(
            scheme_id="acme", start_time=ts(local(2026, 1, 1)), end_time=ts(local(2026, 3, 1))
        )
    )
    names = {o.offer_id: o.name for o in (big, instant, small)}
    expected_rows = {
        (big.offer_id, "2026-01"): (1000, 0, 0),
        (big.offer_id, "2026-02"): (1000, 1000, 0),
        (instant.offer_id, "2026-01"): (500, 500, 0),
        (instant.offer_id, "2026-02"): (500, 500, 0),
        (small.offer_id, "2026-01"): (500, 300 - 100 + 60, 0),
        (small.offer_id, "2026-02"): (500, 200, 200 + 40),
    }
    got = {(r.offer_id, r.month): (r.awarded, r.redeemed, r.expired) for r in response.rows}
    assert got == expected_rows
    assert all(r.asset == "EUR" and r.offer_name == names[r.offer_id] for r in response.rows)
    keys = [(r.offer_id, r.month) for r in response.rows]
    assert keys == sorted(keys)
    # Top: big (2000 awarded), then instant and small tie at 1000: by offer id.
    tied = sorted([instant.offer_id, small.offer_id])
    outstanding = {big.offer_id: 1000, instant.offer_id: 0, small.offer_id: 500 - 200}
    totals = {
        big.offer_id: (2000, 1000, 0),
        instant.offer_id: (1000, 1000, 0),
        small.offer_id: (1000, 460, 240),
    }
    top = [
        (t.offer_id, t.offer_name, t.asset, t.awarded, t.redeemed, t.expired, t.outstanding)
        for t in response.top_offers
    ]
    assert top == [(o, names[o], "EUR", *totals[o], outstanding[o]) for o in [big.offer_id, *tied]]
    two = await settlement.GetOfferPerformanceReport(
        settlement_pb2.GetOfferPerformanceReportRequest(
            scheme_id="acme",
            start_time=ts(local(2026, 1, 1)),
            end_time=ts(local(2026, 3, 1)),
            top=2,
        )
    )
    assert [t.offer_id for t in two.top_offers] == [big.offer_id, tied[0]]
    # February alone: the same ranking, February's figures.
    feb = await settlement.GetOfferPerformanceReport(
        settlement_pb2.GetOfferPerformanceReportRequest(
            scheme_id="acme", start_time=ts(local(2026, 2, 1)), end_time=ts(local(2026, 3, 1))
        )
    )
    assert {(r.offer_id, r.month) for r in feb.rows} == {
        k for k in expected_rows if k[1] == "2026-02"
    }
    assert [(t.offer_id, t.awarded, t.redeemed, t.expired) for t in feb.top_offers] == [
        (big.offer_id, 1000, 1000, 0),
        *[(o, 500, *expected_rows[(o, "2026-02")][1:]) for o in tied],
    ]
    # March: small's second lot expires with 300 left; a spend of big's value refunded in the
    # same month nets to nothing, so big has no March row.
    await test_clock.advance_to(datetime(2026, 3, 5, tzinfo=UTC))
    march_spend = (await spend(wallets, w1, 100, asset="EUR")).transaction
    await wallets.RefundSpend(
        wallet_pb2.RefundSpendRequest(
            request_id=rid("refund"), transaction_id=march_spend.transaction_id
        )
    )
    march = await settlement.GetOfferPerformanceReport(
        settlement_pb2.GetOfferPerformanceReportRequest(
            scheme_id="acme", start_time=ts(local(2026, 3, 1)), end_time=ts(local(2026, 4, 1))
        )
    )
    assert [(r.offer_id, r.month, r.awarded, r.redeemed, r.expired) for r in march.rows] == [
        (small.offer_id, "2026-03", 0, 0, 300)
    ]
    assert [(t.offer_id, t.outstanding) for t in march.top_offers] == [(small.offer_id, 0)]


# -- participation -------------------------------------------------------------------------


async def test_participation_counts_statuses_and_local_month_sign_ups(
    offers, wallets, settlement, clock
) -> None:
    await make_scheme(offers)
    await make_scheme(offers, "other")
    await make_wallet(wallets, "other")  # another scheme's wallet counts nowhere here
    jan = [(await make_wallet(wallets)).wallet_id for _ in range(3)]  # 15 January
    clock.advance(datetime(2026, 3, 10, tzinfo=UTC) - clock.now())
    mar = (await make_wallet(wallets)).wallet_id
    # CEST (UTC+2): 2026-03-31T22:30Z is 00:30 on 1 April in Amsterdam.
    clock.advance(datetime(2026, 3, 31, 22, 30, tzinfo=UTC) - clock.now())
    apr = (await make_wallet(wallets)).wallet_id
    await wallets.FreezeWallet(wallet_pb2.FreezeWalletRequest(request_id=rid(), wallet_id=jan[0]))
    await wallets.CloseWallet(wallet_pb2.CloseWalletRequest(request_id=rid(), wallet_id=jan[1]))
    await wallets.MergeWallets(
        wallet_pb2.MergeWalletsRequest(
            request_id=rid(), survivor_wallet_id=apr, duplicate_wallet_id=mar
        )
    )

    async def report(
        start: datetime, end: datetime
    ) -> settlement_pb2.GetParticipationReportResponse:
        return await settlement.GetParticipationReport(
            settlement_pb2.GetParticipationReportRequest(
                scheme_id="acme", start_time=ts(start), end_time=ts(end)
            )
        )

    found = await report(local(2025, 12, 1), local(2026, 5, 1))
    # Active: jan[2] and apr; frozen: jan[0]; closed: jan[1] and the merged mar.
    assert (found.active_wallets, found.frozen_wallets, found.closed_wallets) == (2, 1, 2)
    assert [(m.month, m.sign_ups) for m in found.sign_ups] == [
        ("2025-12", 0),
        ("2026-01", 3),
        ("2026-02", 0),
        ("2026-03", 1),
        ("2026-04", 1),
    ]
    # Only the window's part of a month counts.
    part = await report(local(2026, 1, 20), local(2026, 4, 1))
    assert [(m.month, m.sign_ups) for m in part.sign_ups] == [
        ("2026-01", 0),
        ("2026-02", 0),
        ("2026-03", 1),
    ]


# -- export --------------------------------------------------------------------------------


async def test_export_streams_every_expiring_lot_in_batches_soonest_first(
    offers, wallets, settlement, clock, monkeypatch
) -> None:
    monkeypatch.setattr(report_rpcs, "EXPORT_BATCH_ROWS", 7)
    await make_scheme(offers)
    await make_scheme(offers, "other")
    other = (await make_wallet(wallets, "other")).wallet_id
    start = clock.now()
    owners = [await make_wallet(wallets) for _ in range(4)]
    expected = []
    for i in range(24):
        wallet = owners[i % 4]
        # Pairs share an expiry instant: the lot id breaks the tie.
        expires = start + timedelta(days=1 + i // 2)
        lot = (await credit(wallets, wallet.wallet_id, 10 + i, expire_time=ts(expires))).lot
        expected.append((expires, lot.lot_id, wallet.wallet_id, wallet.customer_ref, 10 + i))
    # Not exported: an exhausted lot, one expiring after the window, one that never expires,
    # and another scheme's lot.
    gone = owners[0].wallet_id
    await credit(wallets, gone, 5, expire_time=ts(start + timedelta(hours=1)))
    await spend(wallets, gone, 5)
    await credit(wallets, owners[1].wallet_id, 9, expire_time=ts(start + timedelta(days=30)))
    await credit(wallets, owners[2].wallet_id, 9)
    await credit(wallets, other, 9, expire_time=ts(start + timedelta(days=2)))
    # A partly spent lot is exported with what is left: the hour lot is used up, so the
    # spend takes from owners[0]'s next soonest lot, the first of the list.
    await spend(wallets, gone, 4)
    first = expected[0]
    assert first[2] == gone
    expected[0] = (*first[:4], first[4] - 4)
    expected.sort()

    stream = settlement.ExportUpcomingExpirations(
        settlement_pb2.ExportUpcomingExpirationsRequest(
            scheme_id="acme", end_time=ts(start + timedelta(days=20))
        )
    )
    batches = []
    async for message in stream:
        batches.append(list(message.rows))
        assert len(batches) < 10, "the stream does not end"
    assert [len(b) for b in batches] == [7, 7, 7, 3]
    rows = [r for batch in batches for r in batch]
    assert [
        (r.expire_time.ToDatetime(tzinfo=UTC), r.lot_id, r.wallet_id, r.customer_ref, r.amount)
        for r in rows
    ] == expected
    assert all(r.scheme_id == "acme" and r.asset == "POINTS" for r in rows)
    assert {r.sponsor_id for r in rows} == {"m-sponsor"}
    # A window starting later skips the earlier lots; an empty window streams nothing.
    later = settlement.ExportUpcomingExpirations(
        settlement_pb2.ExportUpcomingExpirationsRequest(
            scheme_id="acme",
            start_time=ts(start + timedelta(days=12)),
            end_time=ts(start + timedelta(days=20)),
        )
    )
    assert [r.lot_id async for m in later for r in m.rows] == [
        e[1] for e in expected if e[0] >= start + timedelta(days=12)
    ]
    empty = settlement.ExportUpcomingExpirations(
        settlement_pb2.ExportUpcomingExpirationsRequest(
            scheme_id="acme", end_time=ts(start + timedelta(minutes=5))
        )
    )
    assert [m async for m in empty] == []


# -- validation ----------------------------------------------------------------------------


async def test_reports_validate_their_input(offers, settlement, clock) -> None:
    await make_scheme(offers)
    now = clock.now()
    jan, feb = ts(local(2026, 1, 1)), ts(local(2026, 2, 1))

    async def violations(call: Any) -> dict[str, str]:
        return field_violations(await rpc_error(call, INVALID))

    assert set(
        await violations(
            settlement.GetLiabilityReport(
                settlement_pb2.GetLiabilityReportRequest(as_of_time=ts(now + timedelta(seconds=1)))
            )
        )
    ) == {"scheme_id", "as_of_time"}
    for method, request_type in (
        (settlement.GetBreakageReport, settlement_pb2.GetBreakageReportRequest),
        (settlement.GetOfferPerformanceReport, settlement_pb2.GetOfferPerformanceReportRequest),
        (settlement.GetParticipationReport, settlement_pb2.GetParticipationReportRequest),
    ):
        assert set(await violations(method(request_type(scheme_id="acme")))) == {
            "start_time",
            "end_time",
        }
        assert set(
            await violations(method(request_type(scheme_id="acme", start_time=feb, end_time=jan)))
        ) == {"end_time"}
        assert set(
            await violations(method(request_type(scheme_id="acme", start_time=jan, end_time=jan)))
        ) == {"end_time"}
        ten_years = ts(local(2036, 1, 1, 0, 0, 1))  # 121 local months
        assert set(
            await violations(
                method(request_type(scheme_id="acme", start_time=jan, end_time=ten_years))
            )
        ) == {"end_time"}
        assert (
            await method(
                request_type(scheme_id="acme", start_time=jan, end_time=ts(local(2036, 1, 1)))
            )
        ) is not None
        await rpc_error(
            method(request_type(scheme_id="nope", start_time=jan, end_time=feb)),
            grpc.StatusCode.NOT_FOUND,
            "SCHEME_NOT_FOUND",
        )
    for top in (-1, 101):
        assert set(
            await violations(
                settlement.GetOfferPerformanceReport(
                    settlement_pb2.GetOfferPerformanceReportRequest(
                        scheme_id="acme", start_time=jan, end_time=feb, top=top
                    )
                )
            )
        ) == {"top"}
    await rpc_error(
        settlement.GetLiabilityReport(settlement_pb2.GetLiabilityReportRequest(scheme_id="nope")),
        grpc.StatusCode.NOT_FOUND,
        "SCHEME_NOT_FOUND",
    )
    # The stream refuses bad input and unknown schemes with the same statuses.
    for request, code in (
        (settlement_pb2.ExportUpcomingExpirationsRequest(scheme_id="acme"), INVALID),
        (
            settlement_pb2.ExportUpcomingExpirationsRequest(
                scheme_id="acme", start_time=feb, end_time=jan
            ),
            INVALID,
        ),
        (
            settlement_pb2.ExportUpcomingExpirationsRequest(scheme_id="nope", end_time=feb),
            grpc.StatusCode.NOT_FOUND,
        ),
    ):
        call = settlement.ExportUpcomingExpirations(request)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == code
