"""Tiers through the real server (both backends): programmes on schemes, tiers recomputed on
activity and by the daily review, tier-restricted offers, and the tier change log.

Expected tiers are worked out here from each scenario's thresholds, not copied from output.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from loyalty.v1 import (
    clock_pb2,
    clock_pb2_grpc,
    common_pb2,
    expiry_pb2,
    offer_pb2,
    rewards_pb2,
    wallet_pb2,
)

from loyalty_ledger.clock import TestClock
from tests.e2e.test_offers import live_offer, purchase, submit
from tests.helpers import credit, field_violations, make_scheme, make_wallet, rid, rpc_error, spend

DAY = 86_400

# POINTS programme: 30-day window; member from 0, silver from 1000, gold from 5000 points.
POINTS_TIERS = [("member", 0), ("silver", 1000), ("gold", 5000)]
# SPEND programme: 365-day window; silver from 1000.00 EUR, gold from 5000.00 EUR; no base tier.
SPEND_TIERS = [("silver", 100_000), ("gold", 500_000)]


def program(basis: int, asset: str, window_days: int, tiers: list[tuple[str, int]]) -> Any:
    return offer_pb2.TierProgram(
        basis=basis,
        asset=asset,
        window_days=window_days,
        tiers=[offer_pb2.Tier(tier_id=i, name=i.title(), threshold=n) for i, n in tiers],
    )


def expected_tier(tiers: list[tuple[str, int]], qualifying: int) -> str:
    """The scenario's rule: the highest threshold at or below the qualifying amount."""
    reached = [tier_id for tier_id, threshold in tiers if threshold <= qualifying]
    return reached[-1] if reached else ""


async def tier_of(wallets: Any, wallet_id: str) -> str:
    got = await wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id=wallet_id))
    return got.wallet.tier_id


async def changes(wallets: Any, wallet_id: str) -> list[wallet_pb2.TierChange]:
    listed = await wallets.ListTierChanges(wallet_pb2.ListTierChangesRequest(wallet_id=wallet_id))
    return list(reversed(listed.tier_changes))  # oldest first


async def advance_days(channel: grpc.aio.Channel, days: int) -> None:
    await clock_pb2_grpc.TestClockServiceStub(channel).AdvanceTime(
        clock_pb2.AdvanceTimeRequest(by=Duration(seconds=days * DAY))
    )


async def test_points_tiers_follow_awards_reversals_and_the_rolling_window(
    offers, wallets, channel
) -> None:
    await make_scheme(
        offers, tier_program=program(offer_pb2.TIER_BASIS_POINTS, "POINTS", 30, POINTS_TIERS)
    )
    created = (
        await wallets.CreateWallet(
            wallet_pb2.CreateWalletRequest(request_id=rid(), scheme_id="acme", customer_ref="ann")
        )
    ).wallet
    assert created.tier_id == expected_tier(POINTS_TIERS, 0) == "member"
    wallet_id = created.wallet_id

    earned = 0
    for amount in (600, 500):
        await credit(wallets, wallet_id, amount)
        earned += amount
        assert await tier_of(wallets, wallet_id) == expected_tier(POINTS_TIERS, earned)
    assert earned == 1100 and await tier_of(wallets, wallet_id) == "silver"

    # Spending earned points does not un-earn them.
    await spend(wallets, wallet_id, 1100)
    assert await tier_of(wallets, wallet_id) == "silver"

    # Cash value bought (a top-up) is not earned: it does not count.
    await credit(
        wallets,
        wallet_id,
        10_000,
        kind=wallet_pb2.CREDIT_KIND_TOP_UP,
        asset="EUR",
        funding=common_pb2.FUNDING_CASH,
    )
    assert await tier_of(wallets, wallet_id) == "silver"

    big = await credit(wallets, wallet_id, 4000)
    earned += 4000
    assert await tier_of(wallets, wallet_id) == expected_tier(POINTS_TIERS, earned) == "gold"

    # A reversed award no longer counts (its lot is untouched, all 4000 come back).
    await wallets.ReverseCredit(
        wallet_pb2.ReverseCreditRequest(
            request_id=rid(), transaction_id=big.transaction.transaction_id, reason="fraud"
        )
    )
    earned -= 4000
    assert await tier_of(wallets, wallet_id) == expected_tier(POINTS_TIERS, earned) == "silver"

    # 31 days later every award has left the 30-day window: the daily review moves it down.
    await advance_days(channel, 31)
    assert await tier_of(wallets, wallet_id) == expected_tier(POINTS_TIERS, 0) == "member"

    log = await changes(wallets, wallet_id)
    moves = [(c.from_tier_id, c.to_tier_id) for c in log]
    assert moves == [
        ("", "member"),
        ("member", "silver"),
        ("silver", "gold"),
        ("gold", "silver"),
        ("silver", "member"),
    ]
    assert [c.qualifying_amount for c in log] == [0, 1100, 5100, 1100, 0]
    activity, review = wallet_pb2.TIER_CHANGE_CAUSE_ACTIVITY, wallet_pb2.TIER_CHANGE_CAUSE_REVIEW
    assert [c.cause for c in log] == [activity] * 4 + [review]
    runs = await wallets.ListRuns(expiry_pb2.ListRunsRequest(kind=expiry_pb2.RUN_KIND_TIER_REVIEW))
    assert log[-1].run_id in {run.run_id for run in runs.runs}
    got = await wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id=wallet_id))
    assert got.wallet.tier_since == log[-1].create_time


async def test_spend_tiers_gate_offers_and_returns_count_against_them(
    offers, wallets, clock: TestClock
) -> None:
    await make_scheme(
        offers, tier_program=program(offer_pb2.TIER_BASIS_SPEND, "EUR", 365, SPEND_TIERS)
    )
    wallet = await make_wallet(wallets)
    assert wallet.tier_id == "" and not wallet.HasField("tier_since")  # below every threshold
    gold_gift = 500
    gold_offer = await live_offer(
        offers,
        name="Gold members' thank-you",
        asset="POINTS",
        rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=gold_gift)),
        conditions=rewards_pb2.OfferConditions(tiers=["gold"]),
    )

    spent = 0
    first = await submit(offers, wallet.wallet_id, purchase(clock, 400_000))
    spent += 400_000
    # The event is judged in the tier the wallet had when it arrived (none): no gift.
    assert list(first.awards) == []
    assert await tier_of(wallets, wallet.wallet_id) == expected_tier(SPEND_TIERS, spent)

    second = await submit(offers, wallet.wallet_id, purchase(clock, 200_000))
    spent += 200_000
    assert list(second.awards) == []  # silver when it arrived
    assert await tier_of(wallets, wallet.wallet_id) == expected_tier(SPEND_TIERS, spent) == "gold"

    third = await submit(offers, wallet.wallet_id, purchase(clock, 1_000))
    spent += 1_000
    assert [(a.offer_id, a.amount) for a in third.awards] == [(gold_offer.offer_id, gold_gift)]

    # Returning the first purchase in full takes its spend out of the window's total.
    await offers.ReverseEvent(
        offer_pb2.ReverseEventRequest(request_id=rid(), event_id=first.event_id, reason="return")
    )
    spent -= 400_000
    assert await tier_of(wallets, wallet.wallet_id) == expected_tier(SPEND_TIERS, spent)
    assert spent == 201_000 and await tier_of(wallets, wallet.wallet_id) == "silver"
    fourth = await submit(offers, wallet.wallet_id, purchase(clock, 1_000))
    assert list(fourth.awards) == []  # silver again: the gold offer no longer applies


async def test_a_programme_added_later_reaches_existing_wallets_through_the_review(
    offers, wallets
) -> None:
    await make_scheme(offers)
    wallet_ids = []
    for amount in (0, 1200, 7000):
        wallet = await make_wallet(wallets)
        if amount:
            await credit(wallets, wallet.wallet_id, amount)
        wallet_ids.append((wallet.wallet_id, amount))
    await offers.UpdateScheme(
        offer_pb2.UpdateSchemeRequest(
            request_id=rid(),
            scheme=offer_pb2.Scheme(
                scheme_id="acme",
                tier_program=program(offer_pb2.TIER_BASIS_POINTS, "POINTS", 30, POINTS_TIERS),
            ),
            update_mask=FieldMask(paths=["tier_program"]),
        )
    )
    for wallet_id, _ in wallet_ids:
        assert await tier_of(wallets, wallet_id) == ""  # not evaluated yet

    async def review() -> expiry_pb2.Run:
        response = await wallets.RunExpiry(
            expiry_pb2.RunExpiryRequest(request_id=rid(), kind=expiry_pb2.RUN_KIND_TIER_REVIEW)
        )
        return response.run

    run = await review()
    assert run.status == expiry_pb2.RUN_STATUS_SUCCEEDED
    assert run.items_processed == len(wallet_ids)
    for wallet_id, amount in wallet_ids:
        assert await tier_of(wallets, wallet_id) == expected_tier(POINTS_TIERS, amount)
        (change,) = await changes(wallets, wallet_id)
        assert change.cause == wallet_pb2.TIER_CHANGE_CAUSE_REVIEW and change.run_id == run.run_id
    # The same as-of time again: every wallet has been evaluated for it; nothing changes.
    again = await review()
    assert again.items_processed == 0
    for wallet_id, _ in wallet_ids:
        assert len(await changes(wallets, wallet_id)) == 1


async def test_tier_programmes_and_tier_conditions_are_validated(offers, wallets) -> None:
    bad = offer_pb2.TierProgram(
        asset="MILES",
        window_days=0,
        tiers=[
            offer_pb2.Tier(tier_id="gold", name="Gold", threshold=500),
            offer_pb2.Tier(tier_id="gold", name="", threshold=100),
            offer_pb2.Tier(tier_id="Not Valid", name="x", threshold=-1),
        ],
    )
    error = await rpc_error(
        offers.CreateScheme(
            offer_pb2.CreateSchemeRequest(
                request_id=rid(),
                scheme=offer_pb2.Scheme(
                    scheme_id="acme",
                    name="Acme",
                    assets=[offer_pb2.AssetDefinition(code="POINTS")],
                    timezone="Europe/Amsterdam",
                    tier_program=bad,
                ),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    violations = field_violations(error)
    for path in (
        "scheme.tier_program.basis",
        "scheme.tier_program.asset",
        "scheme.tier_program.window_days",
        "scheme.tier_program.tiers[1].tier_id",  # listed twice
        "scheme.tier_program.tiers[1].name",
        "scheme.tier_program.tiers[1].threshold",  # not increasing
        "scheme.tier_program.tiers[2].tier_id",
        "scheme.tier_program.tiers[2].threshold",  # negative
    ):
        assert path in violations, (path, violations)
    missing = await rpc_error(
        offers.GetScheme(offer_pb2.GetSchemeRequest(scheme_id="acme")), grpc.StatusCode.NOT_FOUND
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND  # nothing was created

    scheme = await make_scheme(
        offers, tier_program=program(offer_pb2.TIER_BASIS_POINTS, "POINTS", 30, POINTS_TIERS)
    )
    assert [t.tier_id for t in scheme.tier_program.tiers] == [i for i, _ in POINTS_TIERS]
    error = await rpc_error(
        offers.CreateOffer(
            offer_pb2.CreateOfferRequest(
                request_id=rid(),
                offer=rewards_pb2.Offer(
                    scheme_id="acme",
                    name="Platinum only",
                    asset="POINTS",
                    rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=1)),
                    conditions=rewards_pb2.OfferConditions(tiers=["gold", "platinum"]),
                ),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(field_violations(error)) == {"offer.conditions.tiers[1]"}
    await rpc_error(
        wallets.ListTierChanges(wallet_pb2.ListTierChangesRequest(wallet_id="wal_missing")),
        grpc.StatusCode.NOT_FOUND,
    )
