"""Merchants, merchant groups, contribution shares and settlement through the real server
(both backends).

The expected statements are worked out here from the scenario's list of value flows (who
sponsored what, where it was redeemed or refunded, what expired), not copied from output.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from loyalty.v1 import (
    clock_pb2,
    clock_pb2_grpc,
    expiry_pb2,
    offer_pb2,
    rewards_pb2,
    settlement_pb2,
    wallet_pb2,
)

from loyalty_ledger.clock import TestClock
from tests.e2e.test_offers import live_offer, purchase, submit
from tests.helpers import (
    credit,
    error_info,
    field_violations,
    make_scheme,
    make_wallet,
    rid,
    rpc_error,
    spend,
    ts,
)

A, B, C, OPERATOR = "shop-a", "shop-b", "shop-c", "operator"
# What points are worth: 3 POINTS = 0.01 EUR, so valuation rounds.
RATE_POINTS, RATE_VALUE = 3, 1


async def merchant(settlement: Any, merchant_id: str, *groups: str) -> settlement_pb2.Merchant:
    response = await settlement.CreateMerchant(
        settlement_pb2.CreateMerchantRequest(
            request_id=rid(),
            merchant=settlement_pb2.Merchant(
                scheme_id="acme",
                merchant_id=merchant_id,
                name=merchant_id.title(),
                group_ids=groups,
            ),
        )
    )
    return response.merchant


async def group(settlement: Any, group_id: str) -> None:
    await settlement.CreateMerchantGroup(
        settlement_pb2.CreateMerchantGroupRequest(
            request_id=rid(),
            group=settlement_pb2.MerchantGroup(scheme_id="acme", group_id=group_id, name=group_id),
        )
    )


async def settle(settlement: Any, start: Any, end: Any, *parties: str) -> list[Any]:
    response = await settlement.RunSettlement(
        settlement_pb2.RunSettlementRequest(
            request_id=rid("settle"),
            scheme_id="acme",
            period_start=ts(start),
            period_end=ts(end),
            party_ids=parties,
        )
    )
    return list(response.statements)


class Flows:
    """The scenario's value flows, and the statements they imply."""

    def __init__(self) -> None:
        self.issued: dict[str, int] = defaultdict(int)
        self.expired: dict[str, int] = defaultdict(int)
        self.redemptions: list[tuple[str, str, int]] = []  # sponsor, merchant, amount (< 0: refund)

    def expected(self, party: str) -> dict[str, int]:
        cross = [(s, m, x) for s, m, x in self.redemptions if s != m]
        owed = sum(x for s, _, x in cross if s == party)
        accepted = sum(x for _, m, x in cross if m == party)
        refunded = sum(-x for s, m, x in cross if x < 0 and party in (s, m))
        net = accepted - owed
        worth = (
            net * RATE_VALUE // RATE_POINTS
            if net >= 0
            else -((-net * RATE_VALUE + RATE_POINTS - 1) // RATE_POINTS)
        )
        return {
            "issued": self.issued[party],
            "reversed": 0,
            "expired": self.expired[party],
            "redeemed_elsewhere": owed,
            "accepted": accepted,
            "refunded": refunded,
            "net": net,
            "net_value": worth,
        }


def figures(line: settlement_pb2.StatementLine) -> dict[str, int]:
    return {
        name: getattr(line, name)
        for name in (
            "issued",
            "reversed",
            "expired",
            "redeemed_elsewhere",
            "accepted",
            "refunded",
            "net",
            "net_value",
        )
    }


async def test_three_merchants_settle_cross_redemptions_refunds_and_expiry(
    offers, wallets, settlement, clock: TestClock, channel
) -> None:
    await make_scheme(
        offers,
        redemption_rates=[
            offer_pb2.RedemptionRate(
                asset="POINTS", points=RATE_POINTS, currency="EUR", value=RATE_VALUE
            )
        ],
    )
    for merchant_id in (A, B, C):
        await merchant(settlement, merchant_id)
    start = clock.now()
    flows = Flows()
    w1, w2, w3, w4 = [(await make_wallet(wallets)).wallet_id for _ in range(4)]

    # Awards, each sponsored by a merchant; A's expires in ten days.
    await credit(wallets, w1, 1000, sponsor_id=A, expire_time=ts(start + timedelta(days=10)))
    await credit(wallets, w2, 500, sponsor_id=B)
    await credit(wallets, w3, 300, sponsor_id=C)
    flows.issued[A] += 1000
    flows.issued[B] += 500
    flows.issued[C] += 300

    # An offer funded 60 % by the event's merchant and 40 % by the operator.
    shares = [
        rewards_pb2.Contribution(
            kind=rewards_pb2.CONTRIBUTOR_KIND_EVENT_MERCHANT, basis_points=6000
        ),
        rewards_pb2.Contribution(kind=rewards_pb2.CONTRIBUTOR_KIND_OPERATOR, basis_points=4000),
    ]
    await live_offer(
        offers,
        asset="POINTS",
        rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=200)),
        contributions=shares,
    )
    event = await submit(offers, w4, purchase(clock, 5000, merchant_id=C))
    parts = {a.lot_id: a.amount for a in event.awards}
    assert sorted(parts.values()) == [80, 120] and len(event.awards) == 2
    flows.issued[C] += 200 * 6000 // 10_000
    flows.issued[OPERATOR] += 200 * 4000 // 10_000

    # Redemptions across merchants, one at the sponsor itself, and a refund.
    cross = await spend(wallets, w1, 400, merchant_id=B)
    flows.redemptions.append((A, B, 400))
    await spend(wallets, w1, 100, merchant_id=A)
    flows.redemptions.append((A, A, 100))
    await spend(wallets, w2, 200, merchant_id=C)
    flows.redemptions.append((B, C, 200))
    # A hold at A of 100 of B's value, of which 60 are captured (the rest is released).
    hold = await wallets.AuthorizeHold(
        wallet_pb2.AuthorizeHoldRequest(
            request_id=rid(), wallet_id=w2, asset="POINTS", amount=100, merchant_id=A
        )
    )
    await wallets.CaptureHold(
        wallet_pb2.CaptureHoldRequest(request_id=rid(), hold_id=hold.hold.hold_id, amount=60)
    )
    flows.redemptions.append((B, A, 60))
    await spend(wallets, w3, 300, merchant_id=A)
    flows.redemptions.append((C, A, 300))
    await spend(wallets, w4, 200, merchant_id=B)  # both award parts, whatever their order
    flows.redemptions += [(C, B, 120), (OPERATOR, B, 80)]
    await wallets.RefundSpend(
        wallet_pb2.RefundSpendRequest(
            request_id=rid(), transaction_id=cross.transaction.transaction_id, amount=150
        )
    )
    flows.redemptions.append((A, B, -150))

    # Eleven days on, A's lot has expired: 1000 - 400 - 100 + 150 back from the refund.
    await clock_pb2_grpc.TestClockServiceStub(channel).AdvanceTime(
        clock_pb2.AdvanceTimeRequest(by=Duration(seconds=11 * 86_400))
    )
    flows.expired[A] += 1000 - 400 - 100 + 150
    clock.advance(timedelta(hours=1))  # the expiry run's entry is inside the period
    end = clock.now() - timedelta(minutes=5)

    # Three callers at once, then a fourth: one statement per party, all identical.
    runs = await asyncio.gather(*(settle(settlement, start, end) for _ in range(3)))
    runs.append(await settle(settlement, start, end))
    assert all(run == runs[0] for run in runs)
    statements = {s.party_id: s for s in runs[0]}
    assert set(statements) == {A, B, C, OPERATOR}
    listed = await settlement.ListStatements(settlement_pb2.ListStatementsRequest(scheme_id="acme"))
    assert len(listed.statements) == 4

    for party, statement in statements.items():
        assert statement.sequence == 1
        (line,) = statement.lines
        assert line.asset == "POINTS" and line.value_currency == "EUR"
        assert figures(line) == flows.expected(party), party
        direction = (
            settlement_pb2.SETTLEMENT_DIRECTION_RECEIVE
            if line.net > 0
            else settlement_pb2.SETTLEMENT_DIRECTION_PAY
        )
        assert line.direction == direction
    assert sum(s.lines[0].net for s in statements.values()) == 0

    # Every line is traceable to ledger transactions.
    b_entries = await settlement.ListStatementEntries(
        settlement_pb2.ListStatementEntriesRequest(statement_id=statements[B].statement_id)
    )
    accepted = [
        e for e in b_entries.entries if e.kind == settlement_pb2.STATEMENT_ENTRY_KIND_ACCEPTED
    ]
    assert sum(e.amount for e in accepted) == flows.expected(B)["accepted"]
    for entry in accepted:
        txn = await wallets.GetTransaction(
            wallet_pb2.GetTransactionRequest(transaction_id=entry.transaction_id)
        )
        assert txn.transaction.merchant_id == B
    assert {e.counterparty_id for e in accepted} == {A, C, OPERATOR}


async def test_periods_neither_overlap_nor_leave_gaps(settlement, offers, wallets, clock) -> None:
    await make_scheme(offers)
    await merchant(settlement, A)
    w = (await make_wallet(wallets)).wallet_id
    await credit(wallets, w, 100, sponsor_id=B)
    await spend(wallets, w, 60, merchant_id=A)
    t0 = clock.now()
    clock.advance(timedelta(days=2))
    t1, t2 = t0 + timedelta(days=1), t0 + timedelta(days=1, hours=12)
    first = await settle(settlement, t0 - timedelta(hours=1), t1)
    assert {s.party_id for s in first} == {A, B, OPERATOR}

    overlap = await rpc_error(settle(settlement, t0, t2, A), grpc.StatusCode.FAILED_PRECONDITION)
    assert error_info(overlap).reason == "PERIOD_OVERLAP"
    gap = await rpc_error(
        settle(settlement, t1 + timedelta(hours=1), t2, A), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert error_info(gap).reason == "PERIOD_GAP"
    (second,) = await settle(settlement, t1, t2, A)
    assert second.sequence == 2 and list(second.lines) == []  # a quiet period
    future = await rpc_error(
        settle(settlement, t2, clock.now(), A), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "period_end" in field_violations(future)
    backwards = await rpc_error(settle(settlement, t2, t1, A), grpc.StatusCode.INVALID_ARGUMENT)
    assert "period_end" in field_violations(backwards)
    statements = await settlement.ListStatements(
        settlement_pb2.ListStatementsRequest(scheme_id="acme", party_id=A)
    )
    assert [s.sequence for s in statements.statements] == [2, 1]  # newest period first


async def test_merchants_and_groups(settlement, offers) -> None:
    await make_scheme(offers)
    await group(settlement, "north")
    await group(settlement, "fuel")
    created = await merchant(settlement, A, "north")
    assert created.group_ids == ["north"] and created.name == "Shop-A"
    await merchant(settlement, B)
    got = await settlement.GetMerchant(
        settlement_pb2.GetMerchantRequest(scheme_id="acme", merchant_id=A)
    )
    assert got.merchant == created
    duplicate = await rpc_error(merchant(settlement, A), grpc.StatusCode.ALREADY_EXISTS)
    assert error_info(duplicate).reason == "MERCHANT_EXISTS"
    reserved = await rpc_error(merchant(settlement, "operator"), grpc.StatusCode.INVALID_ARGUMENT)
    assert "merchant.merchant_id" in field_violations(reserved)
    unknown = await rpc_error(merchant(settlement, C, "south"), grpc.StatusCode.INVALID_ARGUMENT)
    assert "merchant.group_ids[0]" in field_violations(unknown)

    updated = await settlement.UpdateMerchant(
        settlement_pb2.UpdateMerchantRequest(
            request_id=rid(),
            merchant=settlement_pb2.Merchant(
                scheme_id="acme", merchant_id=B, name="ignored", group_ids=["fuel", "north"]
            ),
            update_mask=FieldMask(paths=["group_ids"]),
        )
    )
    assert updated.merchant.group_ids == ["fuel", "north"] and updated.merchant.name == "Shop-B"
    north = await settlement.ListMerchants(
        settlement_pb2.ListMerchantsRequest(scheme_id="acme", group_id="north")
    )
    assert [m.merchant_id for m in north.merchants] == [A, B]
    fuel = await settlement.ListMerchants(
        settlement_pb2.ListMerchantsRequest(scheme_id="acme", group_id="fuel")
    )
    assert [m.merchant_id for m in fuel.merchants] == [B]
    groups = await settlement.ListMerchantGroups(
        settlement_pb2.ListMerchantGroupsRequest(scheme_id="acme")
    )
    assert [g.group_id for g in groups.groups] == ["fuel", "north"]
    await rpc_error(
        settlement.GetMerchant(settlement_pb2.GetMerchantRequest(scheme_id="acme", merchant_id=C)),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_offers_target_merchant_groups_and_name_their_funding(
    settlement, offers, wallets, clock
) -> None:
    await make_scheme(offers)
    await group(settlement, "north")
    await merchant(settlement, A, "north")
    await merchant(settlement, C)
    north_only = await live_offer(
        offers,
        asset="POINTS",
        rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=10)),
        conditions=rewards_pb2.OfferConditions(merchant_group_ids=["north"]),
        sponsor_id="brand-x",
    )
    w = (await make_wallet(wallets)).wallet_id
    at_a = await submit(offers, w, purchase(clock, 100, merchant_id=A))
    assert [(a.offer_id, a.amount) for a in at_a.awards] == [(north_only.offer_id, 10)]
    lot = await wallets.ListLots(wallet_pb2.ListLotsRequest(wallet_id=w))
    assert [x.sponsor_id for x in lot.lots] == ["brand-x"]  # the offer's sponsor pays
    at_c = await submit(offers, w, purchase(clock, 100, merchant_id=C))
    assert list(at_c.awards) == []

    async def refused(**fields: Any) -> dict[str, str]:
        offer = rewards_pb2.Offer(
            scheme_id="acme",
            name="Bad",
            asset="POINTS",
            rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=1)),
            **fields,
        )
        error = await rpc_error(
            offers.CreateOffer(offer_pb2.CreateOfferRequest(request_id=rid(), offer=offer)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        return field_violations(error)

    unknown_group = await refused(
        conditions=rewards_pb2.OfferConditions(merchant_group_ids=["south"])
    )
    assert set(unknown_group) == {"offer.conditions.merchant_group_ids[0]"}
    bad_shares = await refused(
        contributions=[
            rewards_pb2.Contribution(kind=rewards_pb2.CONTRIBUTOR_KIND_SPONSOR, basis_points=5000),
            rewards_pb2.Contribution(
                kind=rewards_pb2.CONTRIBUTOR_KIND_OPERATOR, sponsor_id="x", basis_points=4000
            ),
        ]
    )
    assert set(bad_shares) == {
        "offer.contributions[0].sponsor_id",  # a SPONSOR share names its sponsor
        "offer.contributions[1].sponsor_id",  # only a SPONSOR share does
        "offer.contributions",  # 9000 is not 100 %
    }


async def test_scheme_contributions_split_instant_discounts(
    settlement, offers, wallets, clock
) -> None:
    """Scheme-wide shares apply to offers without their own: an INSTANT discount is paid by
    each party in its share, and settlement sees each part."""
    await make_scheme(
        offers,
        contributions=[
            rewards_pb2.Contribution(
                kind=rewards_pb2.CONTRIBUTOR_KIND_SPONSOR, sponsor_id="brand-x", basis_points=2500
            ),
            rewards_pb2.Contribution(
                kind=rewards_pb2.CONTRIBUTOR_KIND_EVENT_MERCHANT, basis_points=7500
            ),
        ],
    )
    await live_offer(
        offers,
        asset="EUR",
        spend_method=rewards_pb2.SPEND_METHOD_INSTANT,
        rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=1001)),
        conditions=rewards_pb2.OfferConditions(currency="EUR"),
    )
    start = clock.now()
    w = (await make_wallet(wallets)).wallet_id
    response = await submit(offers, w, purchase(clock, 20_000, merchant_id=A))
    assert response.instant_discount == 1001
    brand_part = 1001 * 2500 // 10_000  # rounded down; the rest goes to the first share
    first_share = brand_part + (1001 - brand_part - 1001 * 7500 // 10_000)
    assert sorted(a.amount for a in response.awards) == sorted([first_share, 1001 - first_share])
    clock.advance(timedelta(hours=1))
    statements = {
        s.party_id: s for s in await settle(settlement, start, clock.now() - timedelta(minutes=2))
    }
    brand = statements["brand-x"].lines[0]
    shop = statements[A].lines[0]
    assert (brand.asset, brand.issued, brand.redeemed_elsewhere) == (
        "EUR",
        first_share,
        first_share,
    )
    assert (shop.issued, shop.accepted, shop.redeemed_elsewhere) == (
        1001 - first_share,
        first_share,
        0,
    )
    assert brand.net + shop.net == 0


async def test_the_scheduled_run_settles_each_party_up_to_local_midnight(
    settlement, offers, wallets, clock, channel
) -> None:
    scheme = await make_scheme(offers)  # Europe/Amsterdam
    created = scheme.create_time.ToDatetime(tzinfo=UTC)
    w = (await make_wallet(wallets)).wallet_id
    await credit(wallets, w, 100, sponsor_id=B)
    await spend(wallets, w, 40, merchant_id=A)

    async def scheduled_run() -> Any:
        response = await wallets.RunExpiry(
            expiry_pb2.RunExpiryRequest(request_id=rid(), kind=expiry_pb2.RUN_KIND_SETTLEMENT)
        )
        return response.run

    async def next_day() -> None:
        await clock_pb2_grpc.TestClockServiceStub(channel).AdvanceTime(
            clock_pb2.AdvanceTimeRequest(by=Duration(seconds=86_400))
        )

    await next_day()
    run = await scheduled_run()
    assert run.items_processed == 3  # A, B and the operator
    local_midnight = (
        clock.now()
        .astimezone(ZoneInfo("Europe/Amsterdam"))
        .replace(hour=0, minute=0, second=0, microsecond=0)
    )
    listed = await settlement.ListStatements(settlement_pb2.ListStatementsRequest(scheme_id="acme"))
    by_party = {s.party_id: s for s in listed.statements}
    assert set(by_party) == {A, B, OPERATOR}
    for statement in by_party.values():
        assert statement.period_start.ToDatetime(tzinfo=UTC) == created
        assert statement.period_end.ToDatetime(tzinfo=UTC) == local_midnight
    assert by_party[A].lines[0].accepted == 40 and by_party[B].lines[0].redeemed_elsewhere == 40
    assert (await scheduled_run()).items_processed == 0  # nothing is behind any more

    await next_day()
    assert (await scheduled_run()).items_processed == 3
    (second,) = [
        s
        for s in (
            await settlement.ListStatements(
                settlement_pb2.ListStatementsRequest(scheme_id="acme", party_id=A)
            )
        ).statements
        if s.sequence == 2
    ]
    assert second.period_start.ToDatetime(tzinfo=UTC) == local_midnight
    assert second.period_end.ToDatetime(tzinfo=UTC) == local_midnight + timedelta(days=1)
    assert list(second.lines) == []
