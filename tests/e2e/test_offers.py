"""Offers and customer events through the real server (both backends).

Expected values are worked out here from each scenario's description, not copied from output.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

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
from tests.helpers import (
    balance,
    field_violations,
    make_scheme,
    make_wallet,
    rid,
    rpc_error,
    spend,
    ts,
)

ACCESSORY = "Accessory"


def purchase(clock: TestClock, amount: int, **fields: Any) -> rewards_pb2.CustomerEvent:
    return rewards_pb2.CustomerEvent(
        type=rewards_pb2.CUSTOMER_EVENT_TYPE_PURCHASE,
        occur_time=ts(clock.now()),
        merchant_id=fields.pop("merchant_id", "shop-1"),
        amount=amount,
        currency=fields.pop("currency", "EUR"),
        **fields,
    )


async def make_offer(offers: Any, **fields: Any) -> rewards_pb2.Offer:
    offer = rewards_pb2.Offer(
        scheme_id=fields.pop("scheme_id", "acme"),
        name=fields.pop("name", "An offer"),
        asset=fields.pop("asset", "EUR"),
        **fields,
    )
    created = await offers.CreateOffer(
        offer_pb2.CreateOfferRequest(request_id=rid("offer"), offer=offer)
    )
    return created.offer


async def activate(offers: Any, offer_id: str) -> rewards_pb2.Offer:
    response = await offers.SetOfferStatus(
        offer_pb2.SetOfferStatusRequest(
            request_id=rid("status"), offer_id=offer_id, status=rewards_pb2.OFFER_STATUS_ACTIVE
        )
    )
    return response.offer


async def live_offer(offers: Any, **fields: Any) -> rewards_pb2.Offer:
    offer = await make_offer(offers, **fields)
    return await activate(offers, offer.offer_id)


async def submit(
    offers: Any, wallet_id: str, event: rewards_pb2.CustomerEvent, request_id: str | None = None
) -> offer_pb2.SubmitEventResponse:
    return await offers.SubmitEvent(
        offer_pb2.SubmitEventRequest(
            request_id=request_id or rid("event"), wallet_id=wallet_id, event=event
        )
    )


def down(amount: int, basis_points: int) -> int:
    """Round-down percentage, the scenario's stated rounding."""
    return amount * basis_points // 10_000


# -- life cycle and audit trail ---------------------------------------------------------------


async def test_offer_life_cycle_with_audit_trail(offers, wallets) -> None:
    await make_scheme(offers)
    created = await make_offer(
        offers, rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=500))
    )
    assert created.status == rewards_pb2.OFFER_STATUS_DRAFT
    assert created.offer_id.startswith("off_") and created.budget_used == 0
    got = await offers.GetOffer(offer_pb2.GetOfferRequest(offer_id=created.offer_id))
    assert got.offer == created

    async def status(target: int, reason: str = "") -> rewards_pb2.Offer:
        response = await offers.SetOfferStatus(
            offer_pb2.SetOfferStatusRequest(
                request_id=rid("st"), offer_id=created.offer_id, status=target, reason=reason
            )
        )
        return response.offer

    async def rename(name: str) -> Any:
        return offers.UpdateOffer(
            offer_pb2.UpdateOfferRequest(
                request_id=rid("upd"),
                offer=rewards_pb2.Offer(offer_id=created.offer_id, name=name),
                update_mask=FieldMask(paths=["name"]),
                reason=f"call it {name}",
            )
        )

    renamed = (await (await rename("Draft name"))).offer
    assert renamed.name == "Draft name" and renamed.rule == created.rule
    assert (await status(rewards_pb2.OFFER_STATUS_ACTIVE, "launch")).status == (
        rewards_pb2.OFFER_STATUS_ACTIVE
    )
    await rpc_error(
        await rename("Live edit"), grpc.StatusCode.FAILED_PRECONDITION, "OFFER_NOT_EDITABLE"
    )
    await status(rewards_pb2.OFFER_STATUS_PAUSED)
    assert (await (await rename("Paused edit"))).offer.name == "Paused edit"
    await status(rewards_pb2.OFFER_STATUS_ENDED, "season over")
    await rpc_error(
        status(rewards_pb2.OFFER_STATUS_ACTIVE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_OFFER_TRANSITION",
    )
    await rpc_error(
        await rename("After the end"), grpc.StatusCode.FAILED_PRECONDITION, "OFFER_NOT_EDITABLE"
    )
    changes = (
        await offers.ListOfferChanges(
            offer_pb2.ListOfferChangesRequest(offer_id=created.offer_id, page_size=2)
        )
    ).changes
    assert [(c.version, c.action) for c in changes] == [(1, "CREATE"), (2, "UPDATE")]
    rest = await offers.ListOfferChanges(
        offer_pb2.ListOfferChangesRequest(
            offer_id=created.offer_id,
            page_token=(
                await offers.ListOfferChanges(
                    offer_pb2.ListOfferChangesRequest(offer_id=created.offer_id, page_size=2)
                )
            ).next_page_token,
        )
    )
    trail = [(c.action, c.status, c.offer.name, c.reason) for c in rest.changes]
    assert trail == [
        ("STATUS", rewards_pb2.OFFER_STATUS_ACTIVE, "Draft name", "launch"),
        ("STATUS", rewards_pb2.OFFER_STATUS_PAUSED, "Draft name", ""),
        ("UPDATE", rewards_pb2.OFFER_STATUS_PAUSED, "Paused edit", "call it Paused edit"),
        ("STATUS", rewards_pb2.OFFER_STATUS_ENDED, "Paused edit", "season over"),
    ]
    copy = (
        await offers.CopyOffer(
            offer_pb2.CopyOfferRequest(request_id=rid("copy"), offer_id=created.offer_id)
        )
    ).offer
    assert copy.offer_id != created.offer_id and copy.status == rewards_pb2.OFFER_STATUS_DRAFT
    assert copy.copied_from_offer_id == created.offer_id and copy.name == "Paused edit"
    listed = await offers.ListOffers(
        offer_pb2.ListOffersRequest(scheme_id="acme", status=rewards_pb2.OFFER_STATUS_DRAFT)
    )
    assert [o.offer_id for o in listed.offers] == [copy.offer_id]


async def test_bad_offers_name_each_bad_field(offers) -> None:
    await make_scheme(offers)
    bad = rewards_pb2.Offer(
        scheme_id="acme",
        name="",
        asset="GOLD",
        rule=rewards_pb2.AwardRule(
            per_product=rewards_pb2.PerProduct(basis_points=1000, fixed_per_unit=5)
        ),
        wallet_caps=[rewards_pb2.WalletCap(window=rewards_pb2.CAP_WINDOW_DAY)],
        conditions=rewards_pb2.OfferConditions(
            days_of_week=[0],
            hours=rewards_pb2.HoursOfDay(start_hour=9, end_hour=9),
            seasons=[rewards_pb2.Season(start_month=2, start_day=30, end_month=3, end_day=1)],
            attributes=[
                rewards_pb2.AttributeCondition(
                    key="tier", operator=rewards_pb2.ATTRIBUTE_OPERATOR_GTE, value="gold"
                )
            ],
        ),
    )
    error = await rpc_error(
        offers.CreateOffer(offer_pb2.CreateOfferRequest(request_id=rid(), offer=bad)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    fields = field_violations(error)
    for path in (
        "offer.name",
        "offer.asset",
        "offer.rule.per_product.match",
        "offer.rule.per_product",
        "offer.wallet_caps[0]",
        "offer.conditions.days_of_week[0]",
        "offer.conditions.hours",
        "offer.conditions.seasons[0].start_day",
        "offer.conditions.currency",
        "offer.conditions.attributes[0].value",
    ):
        assert path in fields, (path, fields)
    instant_in_points = rewards_pb2.Offer(
        scheme_id="acme",
        name="Instant points",
        asset="POINTS",
        spend_method=rewards_pb2.SPEND_METHOD_INSTANT,
        rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=5)),
    )
    error = await rpc_error(
        offers.CreateOffer(offer_pb2.CreateOfferRequest(request_id=rid(), offer=instant_in_points)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "offer.asset" in field_violations(error)
    await rpc_error(
        offers.GetOffer(offer_pb2.GetOfferRequest(offer_id="off_missing")),
        grpc.StatusCode.NOT_FOUND,
    )


# -- the scenarios --------------------------------------------------------------------


async def test_ten_percent_instant_discount_on_each_accessory(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    offer = await live_offer(
        offers,
        name="10% off accessories",
        spend_method=rewards_pb2.SPEND_METHOD_INSTANT,
        rule=rewards_pb2.AwardRule(
            per_product=rewards_pb2.PerProduct(
                match=rewards_pb2.ProductMatch(product_types=[ACCESSORY]), basis_points=1000
            )
        ),
        conditions=rewards_pb2.OfferConditions(currency="EUR"),
    )
    basket = [
        ("case", ACCESSORY, 2, 1999),
        ("phone", "Phone", 1, 69900),
        ("cable", ACCESSORY, 3, 995),
    ]
    items = [
        rewards_pb2.EventItem(product_id=p, product_type=k, quantity=q, unit_price=u)
        for p, k, q, u in basket
    ]
    total = sum(q * u for _, _, q, u in basket)
    expected = sum(down(q * u, 1000) for _, k, q, u in basket if k == ACCESSORY)
    response = await submit(offers, wallet.wallet_id, purchase(clock, total, items=items))
    (award,) = response.awards
    assert (award.offer_id, award.amount, award.spend_method) == (
        offer.offer_id,
        expected,
        rewards_pb2.SPEND_METHOD_INSTANT,
    )
    assert response.instant_discount == expected
    assert (await balance(wallets, wallet.wallet_id, "EUR")).available == 0
    txn = (
        await wallets.GetTransaction(
            wallet_pb2.GetTransactionRequest(transaction_id=award.transaction_id)
        )
    ).transaction
    legs = {(p.account, p.amount) for p in txn.postings}
    assert ("sponsor:acme:shop-1", -expected) in legs
    assert ("merchant:acme:shop-1", expected) in legs
    assert sum(p.amount for p in txn.postings) == 0


async def test_ten_euro_off_a_hardware_purchase(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    minimum = 5000
    await live_offer(
        offers,
        name="10 EUR off hardware",
        spend_method=rewards_pb2.SPEND_METHOD_INSTANT,
        rule=rewards_pb2.AwardRule(
            fixed_amount=rewards_pb2.FixedAmount(amount=1000, min_spend=minimum)
        ),
        conditions=rewards_pb2.OfferConditions(currency="EUR", merchant_ids=["hardware-store"]),
    )
    at_store = await submit(
        offers, wallet.wallet_id, purchase(clock, 12900, merchant_id="hardware-store")
    )
    assert at_store.instant_discount == 1000
    too_small = await submit(
        offers, wallet.wallet_id, purchase(clock, minimum - 1, merchant_id="hardware-store")
    )
    elsewhere = await submit(offers, wallet.wallet_id, purchase(clock, 12900, merchant_id="deli"))
    assert not too_small.awards and not elsewhere.awards


async def test_five_euro_after_a_year_of_uninterrupted_subscription(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    await live_offer(
        offers,
        name="Loyal subscriber",
        rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=500)),
        conditions=rewards_pb2.OfferConditions(
            event_types=[rewards_pb2.CUSTOMER_EVENT_TYPE_CUSTOM],
            custom_event_name="subscription_renewed",
            attributes=[
                rewards_pb2.AttributeCondition(
                    key="uninterrupted_months",
                    operator=rewards_pb2.ATTRIBUTE_OPERATOR_GTE,
                    value="12",
                )
            ],
        ),
    )

    def renewal(**attributes: str) -> rewards_pb2.CustomerEvent:
        return rewards_pb2.CustomerEvent(
            type=rewards_pb2.CUSTOMER_EVENT_TYPE_CUSTOM,
            custom_name="subscription_renewed",
            occur_time=ts(clock.now()),
            attributes=attributes,
        )

    for attributes in ({"uninterrupted_months": "11"}, {}, {"uninterrupted_months": "a year"}):
        assert not (await submit(offers, wallet.wallet_id, renewal(**attributes))).awards
    (award,) = (await submit(offers, wallet.wallet_id, renewal(uninterrupted_months="14"))).awards
    assert award.amount == 500 and award.lot_id
    assert (await balance(wallets, wallet.wallet_id, "EUR")).available == 500


async def test_five_points_per_ten_euro_then_a_thousand_points_used_on_a_200_eur_basket(
    offers, wallets, clock
) -> None:
    rate_points, rate_value = 1000, 10_000  # 1000 points = 100.00 EUR
    await make_scheme(
        offers,
        redemption_rates=[
            offer_pb2.RedemptionRate(
                asset="POINTS", points=rate_points, currency="EUR", value=rate_value
            )
        ],
    )
    wallet = await make_wallet(wallets)
    await live_offer(
        offers,
        name="5 points per 10 EUR",
        asset="POINTS",
        rule=rewards_pb2.AwardRule(
            points_per_spend=rewards_pb2.PointsPerSpend(points=5, per_amount=1000)
        ),
        conditions=rewards_pb2.OfferConditions(currency="EUR"),
    )
    baskets = [19999, 125050, 80000, 9999, 100_000]
    earned = 0
    for amount in baskets:
        response = await submit(offers, wallet.wallet_id, purchase(clock, amount))
        expected = amount // 1000 * 5
        assert sum(a.amount for a in response.awards) == expected
        earned += expected
    assert (await balance(wallets, wallet.wallet_id)).available == earned >= 1000
    basket = 20_000  # 200.00 EUR
    quote = await wallets.QuoteRedemption(
        wallet_pb2.QuoteRedemptionRequest(
            wallet_id=wallet.wallet_id,
            asset="POINTS",
            currency="EUR",
            amount=basket,
            merchant_id="shop-1",
        )
    )
    worth = earned * rate_value // rate_points
    assert (quote.available_points, quote.value) == (earned, min(worth, basket))
    assert quote.points == -(-quote.value * rate_points // rate_value)
    value = 1000 * rate_value // rate_points  # what 1000 points pay for: 100.00 EUR
    redeemed = await wallets.RedeemPoints(
        wallet_pb2.RedeemPointsRequest(
            request_id=rid("redeem"),
            wallet_id=wallet.wallet_id,
            asset="POINTS",
            currency="EUR",
            value=value,
            merchant_id="shop-1",
        )
    )
    assert (redeemed.points, redeemed.value) == (1000, value)
    assert redeemed.transaction.metadata["redeemed_value"] == str(value)
    assert redeemed.transaction.metadata["redeemed_currency"] == "EUR"
    assert (await balance(wallets, wallet.wallet_id)).available == earned - 1000
    await rpc_error(
        wallets.QuoteRedemption(
            wallet_pb2.QuoteRedemptionRequest(
                wallet_id=wallet.wallet_id,
                asset="POINTS",
                currency="USD",
                amount=1,
                merchant_id="m",
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await rpc_error(
        wallets.RedeemPoints(
            wallet_pb2.RedeemPointsRequest(
                request_id=rid(),
                wallet_id=wallet.wallet_id,
                asset="EUR",
                currency="POINTS",
                value=1,
                merchant_id="shop-1",
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_REDEMPTION_RATE",
    )


async def test_two_percent_cash_back_valid_six_months_warned_and_expired_on_the_stream(
    offers, wallets, clock, channel
) -> None:
    lead = timedelta(hours=48)
    await make_scheme(offers, warning_lead_times=[Duration(seconds=int(lead.total_seconds()))])
    wallet = await make_wallet(wallets)
    await live_offer(
        offers,
        name="2% cash back",
        rule=rewards_pb2.AwardRule(
            percent_of_amount=rewards_pb2.PercentOfAmount(
                basis_points=200, rounding=rewards_pb2.ROUNDING_HALF_UP
            )
        ),
        conditions=rewards_pb2.OfferConditions(currency="EUR"),
        expiry_policy=common_pb2.ExpiryPolicy(
            after=common_pb2.ExpireAfter(count=6, unit=common_pb2.DURATION_UNIT_MONTHS)
        ),
    )
    stream = wallets.WatchExpirations(
        expiry_pb2.WatchExpirationsRequest(wallet_ids=[wallet.wallet_id], from_now=True)
    )
    amount = 12575  # 2 % is 251.5 cents: half up gives 252
    (award,) = (await submit(offers, wallet.wallet_id, purchase(clock, amount))).awards
    assert award.amount == (amount * 200 + 5_000) // 10_000 == 252
    (lot,) = (await wallets.ListLots(wallet_pb2.ListLotsRequest(wallet_id=wallet.wallet_id))).lots
    # 15 Jan 2026 13:00 Amsterdam + 6 calendar months = 15 Jul 2026 13:00 Amsterdam (summer time).
    expires = lot.expire_time.ToDatetime(tzinfo=UTC)
    assert expires == datetime(2026, 7, 15, 11, 0, tzinfo=UTC)
    assert lot.sponsor_id == "shop-1"

    test_clock = clock_pb2_grpc.TestClockServiceStub(channel)

    async def advance_to(moment: datetime) -> None:
        by = moment - clock.now()
        await test_clock.AdvanceTime(
            clock_pb2.AdvanceTimeRequest(by=Duration(seconds=int(by.total_seconds())))
        )

    async def next_event() -> expiry_pb2.ExpirationEvent:
        while True:
            message = await asyncio.wait_for(stream.read(), 10)
            assert message is not grpc.aio.EOF
            if message.HasField("event"):
                return message.event

    await advance_to(expires - lead - timedelta(minutes=1))
    await advance_to(expires - lead + timedelta(minutes=1))
    warning = await next_event()
    assert (warning.type, warning.lot_id, warning.amount, warning.lead_time_seconds) == (
        expiry_pb2.EXPIRATION_EVENT_TYPE_EXPIRING_SOON,
        lot.lot_id,
        252,
        int(lead.total_seconds()),
    )
    # Recorded by the run after the second step, not the first (still outside 48 h then).
    assert warning.create_time.ToDatetime(tzinfo=UTC) >= expires - lead
    await advance_to(expires)
    expired = await next_event()
    stream.cancel()
    assert (expired.type, expired.lot_id, expired.amount, expired.sponsor_id) == (
        expiry_pb2.EXPIRATION_EVENT_TYPE_EXPIRED,
        lot.lot_id,
        252,
        "shop-1",
    )
    assert (await balance(wallets, wallet.wallet_id, "EUR")).available == 0


async def test_a_budget_of_100_eur_is_never_overshot_by_50_concurrent_events(
    offers, wallets, clock
) -> None:
    await make_scheme(offers)
    budget, per_event = 10_000, 300
    offer = await live_offer(
        offers,
        name="3 EUR welcome, 100 EUR in all",
        rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=per_event)),
        budget=budget,
    )
    customers = [await make_wallet(wallets) for _ in range(10)]
    events = [submit(offers, customers[i % 10].wallet_id, purchase(clock, 5000)) for i in range(50)]
    responses = await asyncio.gather(*events)
    awarded = [a.amount for r in responses for a in r.awards]
    assert sum(awarded) == budget  # 50 x 3 EUR would be 150 EUR
    assert sorted(set(awarded)) == sorted({per_event, budget % per_event} - {0})
    assert len(awarded) == -(-budget // per_event)
    after = (await offers.GetOffer(offer_pb2.GetOfferRequest(offer_id=offer.offer_id))).offer
    assert after.budget_used == budget
    total = 0
    for customer in customers:
        total += (await balance(wallets, customer.wallet_id, "EUR")).available
    assert total == budget


# -- evaluation rules through the API ---------------------------------------------------------


async def test_evaluate_is_a_dry_run_and_submit_is_idempotent(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    offer = await live_offer(
        offers,
        rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=700)),
        budget=1000,
    )
    event = purchase(clock, 2000)
    dry = await offers.EvaluateEvent(
        offer_pb2.EvaluateEventRequest(wallet_id=wallet.wallet_id, event=event)
    )
    assert [(a.amount, a.transaction_id) for a in dry.awards] == [(700, "")]
    assert (await balance(wallets, wallet.wallet_id, "EUR")).available == 0
    first = await submit(offers, wallet.wallet_id, event, request_id="pos-order-1")
    again = await submit(offers, wallet.wallet_id, event, request_id="pos-order-1")
    assert again == first and first.awards[0].amount == 700
    assert (await balance(wallets, wallet.wallet_id, "EUR")).available == 700
    # The dry run now sees the budget that is left.
    dry = await offers.EvaluateEvent(
        offer_pb2.EvaluateEventRequest(wallet_id=wallet.wallet_id, event=event)
    )
    assert [a.amount for a in dry.awards] == [300]
    await rpc_error(
        submit(offers, wallet.wallet_id, purchase(clock, 2001), request_id="pos-order-1"),
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    used = (await offers.GetOffer(offer_pb2.GetOfferRequest(offer_id=offer.offer_id))).offer
    assert used.budget_used == 700


async def test_exclusive_offers_give_only_the_best_and_others_stack(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)

    async def fixed(amount: int, exclusive: bool) -> str:
        offer = await live_offer(
            offers,
            rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=amount)),
            exclusive=exclusive,
        )
        return offer.offer_id

    small, big, tied = await fixed(100, True), await fixed(400, True), await fixed(400, True)
    stacking = await fixed(50, False)
    response = await submit(offers, wallet.wallet_id, purchase(clock, 1000))
    assert small not in {a.offer_id for a in response.awards}
    assert sorted((a.offer_id, a.amount) for a in response.awards) == sorted(
        [(min(big, tied), 400), (stacking, 50)]
    )


async def test_a_daily_cap_resets_the_next_local_day(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    await live_offer(
        offers,
        rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=100)),
        wallet_caps=[rewards_pb2.WalletCap(window=rewards_pb2.CAP_WINDOW_DAY, max_count=2)],
    )

    async def awarded() -> int:
        response = await submit(offers, wallet.wallet_id, purchase(clock, 1000))
        return sum(a.amount for a in response.awards)

    assert [await awarded() for _ in range(3)] == [100, 100, 0]
    clock.advance(timedelta(days=1))
    assert await awarded() == 100


async def test_paused_offers_award_nothing_and_old_events_are_refused(
    offers, wallets, clock
) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    offer = await live_offer(
        offers, rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=100))
    )
    await offers.SetOfferStatus(
        offer_pb2.SetOfferStatusRequest(
            request_id=rid(), offer_id=offer.offer_id, status=rewards_pb2.OFFER_STATUS_PAUSED
        )
    )
    assert not (await submit(offers, wallet.wallet_id, purchase(clock, 1000))).awards
    old = purchase(clock, 1000)
    old.occur_time.CopyFrom(ts(clock.now() - timedelta(days=31)))
    await rpc_error(
        submit(offers, wallet.wallet_id, old), grpc.StatusCode.FAILED_PRECONDITION, "EVENT_TOO_OLD"
    )
    future = purchase(clock, 1000)
    future.occur_time.CopyFrom(ts(clock.now() + timedelta(hours=1)))
    error = await rpc_error(
        submit(offers, wallet.wallet_id, future), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "event.occur_time" in field_violations(error)
    await wallets.FreezeWallet(
        wallet_pb2.FreezeWalletRequest(request_id=rid(), wallet_id=wallet.wallet_id)
    )
    await rpc_error(
        submit(offers, wallet.wallet_id, purchase(clock, 1000)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "WALLET_FROZEN",
    )
    await rpc_error(
        offers.EvaluateEvent(
            offer_pb2.EvaluateEventRequest(wallet_id=wallet.wallet_id, event=purchase(clock, 1000))
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "WALLET_FROZEN",
    )


async def test_a_batch_gives_a_result_per_event_and_can_be_resent(offers, wallets, clock) -> None:
    from google.rpc import error_details_pb2, status_pb2

    await make_scheme(offers)
    active, frozen = await make_wallet(wallets), await make_wallet(wallets)
    await wallets.FreezeWallet(
        wallet_pb2.FreezeWalletRequest(request_id=rid(), wallet_id=frozen.wallet_id)
    )
    await live_offer(
        offers, rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=100))
    )
    bad_currency = purchase(clock, 1000, currency="eur")
    batch = offer_pb2.SubmitEventsRequest(
        events=[
            offer_pb2.SubmitEventRequest(
                request_id=f"backfill-{i}", wallet_id=wallet.wallet_id, event=event
            )
            for i, (wallet, event) in enumerate(
                [
                    (active, purchase(clock, 1000)),
                    (frozen, purchase(clock, 1000)),
                    (active, bad_currency),
                    (active, purchase(clock, 2000)),
                ]
            )
        ]
    )
    first = await offers.SubmitEvents(batch)
    kinds = [r.WhichOneof("result") for r in first.results]
    assert kinds == ["response", "error", "error", "response"]
    frozen_error, invalid = first.results[1].error, first.results[2].error
    assert (frozen_error.code, frozen_error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION.value[0],
        "WALLET_FROZEN",
    )
    assert invalid.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    status = status_pb2.Status.FromString(invalid.status)
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details)
    assert [v.field for v in bad.field_violations] == ["events[2].event.currency"]
    assert (await balance(wallets, active.wallet_id, "EUR")).available == 200
    again = await offers.SubmitEvents(batch)
    assert again.results[0] == first.results[0] and again.results[3] == first.results[3]
    assert (await balance(wallets, active.wallet_id, "EUR")).available == 200
    for size in (0, 501):
        one = batch.events[0]
        await rpc_error(
            offers.SubmitEvents(offer_pb2.SubmitEventsRequest(events=[one] * size)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )


async def test_a_batch_keeps_each_wallets_order_and_shares_commits(
    app, offers, wallets, clock
) -> None:
    """Events of a batch go to the writer together (fewer commits than events on SQLite),
    yet each wallet's events apply in the order given: a once-per-wallet offer pays 10 % of
    each wallet's first purchase, never of a later, larger one."""
    await make_scheme(offers)
    owners = [(await make_wallet(wallets)).wallet_id for _ in range(8)]
    await live_offer(
        offers,
        rule=rewards_pb2.AwardRule(
            percent_of_amount=rewards_pb2.PercentOfAmount(basis_points=1000)
        ),
        conditions=rewards_pb2.OfferConditions(currency="EUR"),
        wallet_caps=[rewards_pb2.WalletCap(window=rewards_pb2.CAP_WINDOW_LIFETIME, max_count=1)],
    )
    # Round after round, each wallet buys more than the round before.
    amounts = [(w, 1000 * (r + 1) + 10 * k) for r in range(5) for k, w in enumerate(owners)]
    writer = app.db._writer
    commits_before = writer.commits if writer is not None else 0
    response = await offers.SubmitEvents(
        offer_pb2.SubmitEventsRequest(
            events=[
                offer_pb2.SubmitEventRequest(
                    request_id=rid("event"), wallet_id=w, event=purchase(clock, amount)
                )
                for w, amount in amounts
            ]
        )
    )
    awarded = [sum(a.amount for a in r.response.awards) for r in response.results]
    first_round = len(owners)
    assert awarded == [amount // 10 for _, amount in amounts[:first_round]] + [0] * (
        len(amounts) - first_round
    )
    for k, w in enumerate(owners):
        assert (await balance(wallets, w, "EUR")).available == (1000 + 10 * k) // 10
    if writer is not None:  # SQLite: one writer, whose commits can be counted
        assert writer.commits - commits_before <= len(amounts) // 2


async def test_returns_reverse_awards_in_proportion(app, offers, wallets, clock) -> None:
    from tests.invariants import check_invariants

    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    cashback = await live_offer(
        offers,
        name="2% cash back",
        rule=rewards_pb2.AwardRule(percent_of_amount=rewards_pb2.PercentOfAmount(basis_points=200)),
        conditions=rewards_pb2.OfferConditions(currency="EUR"),
        budget=100_000,
    )
    discount = await live_offer(
        offers,
        name="10% off accessories",
        spend_method=rewards_pb2.SPEND_METHOD_INSTANT,
        rule=rewards_pb2.AwardRule(
            per_product=rewards_pb2.PerProduct(
                match=rewards_pb2.ProductMatch(product_types=[ACCESSORY]), basis_points=1000
            )
        ),
        conditions=rewards_pb2.OfferConditions(currency="EUR"),
    )
    basket = [("case", ACCESSORY, 2, 2000), ("phone", "Phone", 1, 6000)]
    total = sum(q * u for _, _, q, u in basket)
    submitted = await submit(
        offers,
        wallet.wallet_id,
        purchase(
            clock,
            total,
            items=[
                rewards_pb2.EventItem(product_id=p, product_type=k, quantity=q, unit_price=u)
                for p, k, q, u in basket
            ],
        ),
    )
    awarded = {a.offer_id: a.amount for a in submitted.awards}
    assert awarded == {cashback.offer_id: down(total, 200), discount.offer_id: 2 * 2000 // 10}

    async def reverse(**returned: Any) -> offer_pb2.ReverseEventResponse:
        return await offers.ReverseEvent(
            offer_pb2.ReverseEventRequest(
                request_id=rid("return"), event_id=submitted.event_id, reason="return", **returned
            )
        )

    one_case = offer_pb2.ReturnedItems(
        items=[offer_pb2.ReturnedItem(product_id="case", quantity=1)]
    )
    first = await reverse(items=one_case)
    returned = 2000
    assert (first.returned_amount, first.total_returned_amount) == (returned, returned)
    assert {r.offer_id: r.reversed for r in first.reversals} == {
        offer_id: amount * returned // total for offer_id, amount in awarded.items()
    }
    left = (await balance(wallets, wallet.wallet_id, "EUR")).available
    assert left == awarded[cashback.offer_id] - awarded[cashback.offer_id] * returned // total
    # The customer spends most of what is left; the last return cannot claw that back.
    spent = left - 10
    await spend(wallets, wallet.wallet_id, spent, asset="EUR")
    rest = await reverse()
    assert rest.total_returned_amount == total
    by_offer = {r.offer_id: r for r in rest.reversals}
    cash_rest = awarded[cashback.offer_id] - awarded[cashback.offer_id] * returned // total
    assert (by_offer[cashback.offer_id].reversed, by_offer[cashback.offer_id].already_spent) == (
        cash_rest,
        cash_rest - 10,
    )
    assert by_offer[discount.offer_id].reversed == (
        awarded[discount.offer_id] - awarded[discount.offer_id] * returned // total
    )
    assert (await balance(wallets, wallet.wallet_id, "EUR")).available == 0
    used = (await offers.GetOffer(offer_pb2.GetOfferRequest(offer_id=cashback.offer_id))).offer
    assert used.budget_used == spent  # what came back to the sponsor may be awarded again
    await rpc_error(reverse(), grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_REVERSED")
    await rpc_error(reverse(amount=1), grpc.StatusCode.FAILED_PRECONDITION, "RETURN_EXCEEDS_EVENT")
    await rpc_error(
        offers.ReverseEvent(
            offer_pb2.ReverseEventRequest(request_id=rid(), event_id="cev_missing")
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await app.ledger.read(lambda r: check_invariants(r.conn))


async def test_a_return_of_items_not_bought_is_refused(offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    await live_offer(
        offers, rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=100))
    )
    item = rewards_pb2.EventItem(product_id="mug", quantity=1, unit_price=1000)
    submitted = await submit(offers, wallet.wallet_id, purchase(clock, 1000, items=[item]))

    def ret(product: str, quantity: int) -> Any:
        return offers.ReverseEvent(
            offer_pb2.ReverseEventRequest(
                request_id=rid(),
                event_id=submitted.event_id,
                items=offer_pb2.ReturnedItems(
                    items=[offer_pb2.ReturnedItem(product_id=product, quantity=quantity)]
                ),
            )
        )

    await rpc_error(ret("plate", 1), grpc.StatusCode.INVALID_ARGUMENT)
    await rpc_error(ret("mug", 2), grpc.StatusCode.FAILED_PRECONDITION, "RETURN_EXCEEDS_EVENT")
    whole = await ret("mug", 1)
    assert [r.reversed for r in whole.reversals] == [100]
    assert (await balance(wallets, wallet.wallet_id, "EUR")).available == 0


async def test_redemption_rates_are_validated_and_updatable(offers) -> None:
    from tests.helpers import field_violations as violations

    def rate(asset: str, currency: str, points: int = 100, value: int = 100) -> Any:
        return offer_pb2.RedemptionRate(asset=asset, points=points, currency=currency, value=value)

    error = await rpc_error(
        make_scheme(
            offers,
            redemption_rates=[
                rate("POINTS", "USD"),
                rate("POINTS", "POINTS"),
                rate("POINTS", "EUR", points=0),
                rate("POINTS", "EUR"),
                rate("POINTS", "EUR"),
            ],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert {
        "scheme.redemption_rates[0].currency",
        "scheme.redemption_rates[1].currency",
        "scheme.redemption_rates[2].points",
        "scheme.redemption_rates[4]",
    } <= set(violations(error))
    scheme = await make_scheme(offers)
    assert not scheme.redemption_rates
    updated = await offers.UpdateScheme(
        offer_pb2.UpdateSchemeRequest(
            request_id=rid(),
            scheme=offer_pb2.Scheme(scheme_id="acme", redemption_rates=[rate("POINTS", "EUR")]),
            update_mask=FieldMask(paths=["redemption_rates"]),
        )
    )
    assert list(updated.scheme.redemption_rates) == [rate("POINTS", "EUR")]


async def test_offers_for_tagged_wallets(offers, wallets, clock) -> None:
    await make_scheme(offers)
    created = await wallets.CreateWallet(
        wallet_pb2.CreateWalletRequest(
            request_id=rid(), scheme_id="acme", customer_ref="vip-1", tags=["vip", "newsletter"]
        )
    )
    vip = created.wallet
    assert list(vip.tags) == ["newsletter", "vip"]
    plain = await make_wallet(wallets)
    await live_offer(
        offers,
        name="VIPs only, not staff",
        rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=500)),
        conditions=rewards_pb2.OfferConditions(include_tags=["vip"], exclude_tags=["staff"]),
    )

    async def earned(wallet_id: str) -> int:
        response = await submit(offers, wallet_id, purchase(clock, 1000))
        return sum(a.amount for a in response.awards)

    assert (await earned(vip.wallet_id), await earned(plain.wallet_id)) == (500, 0)
    tagged = await wallets.SetWalletTags(
        wallet_pb2.SetWalletTagsRequest(
            request_id=rid(), wallet_id=vip.wallet_id, tags=["vip", "staff"]
        )
    )
    assert list(tagged.wallet.tags) == ["staff", "vip"]
    assert await earned(vip.wallet_id) == 0
    error = await rpc_error(
        wallets.SetWalletTags(
            wallet_pb2.SetWalletTagsRequest(
                request_id=rid(), wallet_id=vip.wallet_id, tags=["Not A Tag"]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "tags[0]" in field_violations(error)


async def test_a_referral_rewards_the_referrer_once_on_the_first_qualifying_purchase(
    offers, wallets, clock
) -> None:
    await make_scheme(offers)
    referrer = await make_wallet(wallets)
    referee = (
        await wallets.CreateWallet(
            wallet_pb2.CreateWalletRequest(
                request_id=rid(),
                scheme_id="acme",
                customer_ref="friend",
                referred_by_wallet_id=referrer.wallet_id,
            )
        )
    ).wallet
    assert referee.referred_by_wallet_id == referrer.wallet_id
    bonus = 500
    offer = await live_offer(
        offers,
        name="Bring a friend",
        asset="POINTS",
        rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=bonus)),
        conditions=rewards_pb2.OfferConditions(
            event_types=[rewards_pb2.CUSTOMER_EVENT_TYPE_REFERRAL],
            currency="EUR",
            min_amount=2000,
        ),
    )
    small = await submit(offers, referee.wallet_id, purchase(clock, 1999))
    assert not small.awards
    first = await submit(offers, referee.wallet_id, purchase(clock, 2500))
    assert [(a.offer_id, a.wallet_id, a.amount) for a in first.awards] == [
        (offer.offer_id, referrer.wallet_id, bonus)
    ]
    assert first.instant_discount == 0
    again = await submit(offers, referee.wallet_id, purchase(clock, 5000))
    assert not again.awards
    assert (await balance(wallets, referrer.wallet_id)).available == bonus
    assert (await balance(wallets, referee.wallet_id)).available == 0
    got = (await wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id=referee.wallet_id))).wallet
    assert got.HasField("referral_reward_time")
    await rpc_error(
        wallets.CreateWallet(
            wallet_pb2.CreateWalletRequest(
                request_id=rid(),
                scheme_id="acme",
                customer_ref="nobody",
                referred_by_wallet_id="wal_missing",
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    error = await rpc_error(
        offers.CreateOffer(
            offer_pb2.CreateOfferRequest(
                request_id=rid(),
                offer=rewards_pb2.Offer(
                    scheme_id="acme",
                    name="Instant referral",
                    asset="EUR",
                    spend_method=rewards_pb2.SPEND_METHOD_INSTANT,
                    rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=5)),
                    conditions=rewards_pb2.OfferConditions(
                        currency="EUR", event_types=[rewards_pb2.CUSTOMER_EVENT_TYPE_REFERRAL]
                    ),
                ),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "offer.spend_method" in field_violations(error)


async def test_concurrent_returns_of_one_event_reverse_it_exactly_once(
    offers, wallets, clock
) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    await live_offer(
        offers,
        rule=rewards_pb2.AwardRule(
            percent_of_amount=rewards_pb2.PercentOfAmount(basis_points=1000)
        ),
        conditions=rewards_pb2.OfferConditions(currency="EUR"),
    )
    submitted = await submit(offers, wallet.wallet_id, purchase(clock, 10_000))
    (award,) = submitted.awards
    part = 1000

    async def ret() -> str:
        try:
            await offers.ReverseEvent(
                offer_pb2.ReverseEventRequest(
                    request_id=rid(), event_id=submitted.event_id, amount=part
                )
            )
        except grpc.aio.AioRpcError as error:
            return error_info_reason(error)
        return "OK"

    outcomes = await asyncio.gather(*(ret() for _ in range(12)))
    returned = outcomes.count("OK") * part
    assert outcomes.count("OK") == 10  # 10 x 10.00 EUR is the whole 100.00 EUR basket
    assert set(outcomes) - {"OK"} <= {"RETURN_EXCEEDS_EVENT", "ALREADY_REVERSED"}
    assert returned == 10_000
    assert (await balance(wallets, wallet.wallet_id, "EUR")).available == award.amount - (
        award.amount * returned // 10_000
    )


def error_info_reason(error: grpc.aio.AioRpcError) -> str:
    from tests.helpers import error_info

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    return error_info(error).reason


async def test_the_birthday_run_awards_once_a_year_in_the_scheme_timezone(
    offers, wallets, clock, channel
) -> None:
    await make_scheme(offers)  # Europe/Amsterdam
    # The test clock starts at 15 January 2026, 12:00 UTC (13:00 in Amsterdam).
    tomorrow = (clock.now() + timedelta(days=1)).astimezone(ZoneInfo("Europe/Amsterdam"))
    birthday = wallet_pb2.MonthDay(month=tomorrow.month, day=tomorrow.day)
    born = (
        await wallets.CreateWallet(
            wallet_pb2.CreateWalletRequest(
                request_id=rid(), scheme_id="acme", customer_ref="born", birthday=birthday
            )
        )
    ).wallet
    assert born.birthday == birthday
    other = await make_wallet(wallets)
    await wallets.SetWalletBirthday(
        wallet_pb2.SetWalletBirthdayRequest(
            request_id=rid(),
            wallet_id=other.wallet_id,
            birthday=wallet_pb2.MonthDay(month=tomorrow.month, day=tomorrow.day),
        )
    )
    await wallets.FreezeWallet(
        wallet_pb2.FreezeWalletRequest(request_id=rid(), wallet_id=other.wallet_id)
    )
    gift = 1000
    await live_offer(
        offers,
        name="Birthday gift",
        asset="POINTS",
        rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=gift)),
        conditions=rewards_pb2.OfferConditions(
            event_types=[rewards_pb2.CUSTOMER_EVENT_TYPE_BIRTHDAY]
        ),
    )
    test_clock = clock_pb2_grpc.TestClockServiceStub(channel)

    async def advance(hours: int) -> None:
        await test_clock.AdvanceTime(
            clock_pb2.AdvanceTimeRequest(by=Duration(seconds=hours * 3600))
        )

    await advance(10)  # 23:00 in Amsterdam: not yet
    assert (await balance(wallets, born.wallet_id)).available == 0
    await advance(2)  # 01:00 the next local day: the birthday
    assert (await balance(wallets, born.wallet_id)).available == gift
    await advance(5)  # the same birthday again: nothing more
    assert (await balance(wallets, born.wallet_id)).available == gift
    assert (await balance(wallets, other.wallet_id)).available == 0  # frozen: skipped
    runs = await wallets.ListRuns(expiry_pb2.ListRunsRequest(kind=expiry_pb2.RUN_KIND_BIRTHDAY))
    assert sum(run.items_processed for run in runs.runs) == 1
    await rpc_error(
        wallets.SetWalletBirthday(
            wallet_pb2.SetWalletBirthdayRequest(
                request_id=rid(),
                wallet_id=born.wallet_id,
                birthday=wallet_pb2.MonthDay(month=2, day=30),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
