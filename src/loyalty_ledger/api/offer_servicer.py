"""OfferService: schemes, offers and customer events. Validate, translate, call the ledger."""

from __future__ import annotations

import asyncio
import re
from typing import TypeAlias

import grpc
from google.protobuf.message import Message
from loyalty.v1 import offer_pb2, offer_pb2_grpc, rewards_pb2

from loyalty_ledger.api import convert, limits, offer_codec, offer_rules
from loyalty_ledger.api.errors import rpc_errors, status_for
from loyalty_ledger.api.mutate import mutate
from loyalty_ledger.api.offer_codec import (
    STATUS_FROM_PROTO,
    change_to_proto,
    definition_json,
    offer_to_proto,
)
from loyalty_ledger.api.validation import Checks
from loyalty_ledger.domain import rewards
from loyalty_ledger.domain.errors import FailedPrecondition, InvalidArgument, LedgerError
from loyalty_ledger.domain.expiry import Never
from loyalty_ledger.domain.redemption import RedemptionRate
from loyalty_ledger.domain.tiers import Tier, TierProgram
from loyalty_ledger.domain.timeutil import to_us
from loyalty_ledger.ledger import merchants, promotions, rewarding
from loyalty_ledger.ledger import offers as offer_store
from loyalty_ledger.ledger.engine import SchemeSpec, Tx
from loyalty_ledger.ledger.ids import new_id
from loyalty_ledger.ledger.paging import page_size
from loyalty_ledger.ledger.reads import Reader
from loyalty_ledger.ledger.records import RefundHandling, SchemeRecord
from loyalty_ledger.ledger.service import Ledger

Ctx: TypeAlias = grpc.aio.ServicerContext  # type: ignore[type-arg]

OFFER_UPDATABLE_PATHS = frozenset(
    {
        "name",
        "rule",
        "conditions",
        "asset",
        "spend_method",
        "exclusive",
        "wallet_caps",
        "budget",
        "expiry_policy",
        "activation_delay",
        "sponsor_id",
        "spend_conditions",
    }
)

UPDATABLE_PATHS = frozenset(
    {
        "name",
        "assets",
        "timezone",
        "default_expiry_policy",
        "refund_policy",
        "cash_expiry_allowed",
        "warning_lead_times",
        "redemption_rates",
        "tier_program",
        "contributions",
    }
)


def scheme_spec(checks: Checks, scheme: offer_pb2.Scheme, path: str = "scheme") -> SchemeSpec:
    """Validate a Scheme message and return its writable fields."""
    checks.text(f"{path}.name", scheme.name, max_chars=limits.NAME_CHARS_MAX, required=True)
    assets: dict[str, int] = {}
    if not scheme.assets:
        checks.fail(f"{path}.assets", "at least one asset is required")
    if len(scheme.assets) > limits.ASSETS_MAX:
        checks.fail(f"{path}.assets", f"at most {limits.ASSETS_MAX} assets")
    for i, asset in enumerate(scheme.assets[: limits.ASSETS_MAX]):
        checks.asset(f"{path}.assets[{i}].code", asset.code)
        if not 0 <= asset.scale <= limits.ASSET_SCALE_MAX:
            checks.fail(f"{path}.assets[{i}].scale", f"must be 0 to {limits.ASSET_SCALE_MAX}")
        if asset.code in assets:
            checks.fail(f"{path}.assets[{i}].code", f"{asset.code} is listed twice")
        assets[asset.code] = asset.scale
    checks.timezone(f"{path}.timezone", scheme.timezone)
    policy = None
    if scheme.HasField("default_expiry_policy") and scheme.default_expiry_policy.WhichOneof("rule"):
        policy = convert.policy_from_proto(
            checks, f"{path}.default_expiry_policy", scheme.default_expiry_policy
        )
    handling = RefundHandling.EXPIRE
    grace_seconds = limits.REFUND_GRACE_SECONDS_DEFAULT
    refund = scheme.refund_policy
    if refund.expired_lot_handling:
        found = convert.REFUND_FROM_PROTO.get(refund.expired_lot_handling)
        if found is None:
            checks.fail(f"{path}.refund_policy.expired_lot_handling", "unknown value")
        else:
            handling = found
    if refund.HasField("grace_period"):
        grace_us = checks.duration_us(
            f"{path}.refund_policy.grace_period",
            refund.grace_period,
            low=limits.REFUND_GRACE_SECONDS_MIN,
            high=limits.REFUND_GRACE_SECONDS_MAX,
        )
        grace_seconds = (grace_us or 0) // 1_000_000
    leads: list[int] = []
    if len(scheme.warning_lead_times) > limits.WARNING_LEAD_TIMES_MAX:
        checks.fail(f"{path}.warning_lead_times", f"at most {limits.WARNING_LEAD_TIMES_MAX}")
    for i, lead in enumerate(scheme.warning_lead_times[: limits.WARNING_LEAD_TIMES_MAX]):
        lead_us = checks.duration_us(
            f"{path}.warning_lead_times[{i}]",
            lead,
            low=limits.WARNING_LEAD_SECONDS_MIN,
            high=limits.WARNING_LEAD_SECONDS_MAX,
        )
        if lead_us is not None:
            if lead_us % 1_000_000 or lead_us // 1_000_000 in leads:
                checks.fail(f"{path}.warning_lead_times[{i}]", "whole seconds, each listed once")
            leads.append(lead_us // 1_000_000)
    rates: list[RedemptionRate] = []
    if len(scheme.redemption_rates) > limits.REDEMPTION_RATES_MAX:
        checks.fail(f"{path}.redemption_rates", f"at most {limits.REDEMPTION_RATES_MAX}")
    for i, rate in enumerate(scheme.redemption_rates[: limits.REDEMPTION_RATES_MAX]):
        rate_path = f"{path}.redemption_rates[{i}]"
        for name in ("asset", "currency"):
            code = getattr(rate, name)
            checks.asset(f"{rate_path}.{name}", code)
            if code and code not in assets:
                checks.fail(f"{rate_path}.{name}", f"{code} is not one of the scheme's assets")
        checks.amount(f"{rate_path}.points", rate.points)
        checks.amount(f"{rate_path}.value", rate.value)
        if rate.asset == rate.currency:
            checks.fail(f"{rate_path}.currency", "must differ from asset")
        if any((r.asset, r.currency) == (rate.asset, rate.currency) for r in rates):
            checks.fail(rate_path, f"{rate.asset} in {rate.currency} is listed twice")
        if rate.points > 0 and rate.value > 0:
            rates.append(RedemptionRate(rate.asset, rate.points, rate.currency, rate.value))
    tier_program = None
    if scheme.HasField("tier_program"):
        tier_program = _tier_program(checks, scheme.tier_program, assets, f"{path}.tier_program")
    shares = offer_rules.contributions_from_proto(
        checks, scheme.contributions, f"{path}.contributions"
    )
    return SchemeSpec(
        name=scheme.name,
        assets=assets,
        timezone=scheme.timezone,
        default_expiry_policy=policy or Never(),
        refund_handling=handling,
        refund_grace_seconds=grace_seconds,
        cash_expiry_allowed=scheme.cash_expiry_allowed,
        warning_lead_seconds=tuple(sorted(leads)),
        redemption_rates=tuple(rates),
        tier_program=tier_program,
        contributions=shares,
    )


def _tier_program(
    checks: Checks, program: offer_pb2.TierProgram, assets: dict[str, int], path: str
) -> TierProgram | None:
    """Validate a tier programme; None when it has a violation (recorded in `checks`)."""
    outer, checks = checks, Checks()  # its own count: the outer one may be full already
    basis = convert.TIER_BASIS_FROM_PROTO.get(program.basis)
    if basis is None:
        checks.fail(f"{path}.basis", "POINTS or SPEND is required")
    checks.asset(f"{path}.asset", program.asset)
    if program.asset and program.asset not in assets:
        checks.fail(f"{path}.asset", f"{program.asset} is not one of the scheme's assets")
    if not 1 <= program.window_days <= limits.TIER_WINDOW_DAYS_MAX:
        checks.fail(f"{path}.window_days", f"must be 1 to {limits.TIER_WINDOW_DAYS_MAX}")
    if not 1 <= len(program.tiers) <= limits.TIERS_MAX:
        checks.fail(f"{path}.tiers", f"1 to {limits.TIERS_MAX} tiers are required")
    seen: set[str] = set()
    for i, tier in enumerate(program.tiers[: limits.TIERS_MAX]):
        tier_path = f"{path}.tiers[{i}]"
        checks.tag(f"{tier_path}.tier_id", tier.tier_id)
        if tier.tier_id in seen:
            checks.fail(f"{tier_path}.tier_id", f"{tier.tier_id!r} is listed twice")
        seen.add(tier.tier_id)
        checks.text(f"{tier_path}.name", tier.name, max_chars=limits.NAME_CHARS_MAX, required=True)
        checks.amount(f"{tier_path}.threshold", tier.threshold, allow_zero=True)
        if i and tier.threshold <= program.tiers[i - 1].threshold:
            checks.fail(f"{tier_path}.threshold", "thresholds must increase strictly, in order")
    for violation in checks.violations:
        outer.fail(violation.field, violation.description)
    if checks.violations or basis is None:
        return None
    return TierProgram(
        basis=basis,
        asset=program.asset,
        window_days=program.window_days,
        tiers=tuple(Tier(t.tier_id, t.name, t.threshold) for t in program.tiers),
    )


def merged_scheme(
    current: SchemeRecord, update: offer_pb2.Scheme, paths: set[str]
) -> offer_pb2.Scheme:
    """The current scheme with the fields named by the mask taken from `update`."""
    merged = convert.scheme_to_proto(current)
    for path in paths:
        merged.ClearField(path)  # type: ignore[arg-type]
        if path in ("assets", "warning_lead_times", "redemption_rates", "contributions"):
            getattr(merged, path).extend(getattr(update, path))
        elif path in ("default_expiry_policy", "refund_policy", "tier_program"):
            getattr(merged, path).CopyFrom(getattr(update, path))
        else:
            setattr(merged, path, getattr(update, path))
    return merged


# An event may be stamped a little ahead of the server's clock (the till's clock drifts).
EVENT_CLOCK_SKEW_US = 5 * 60 * 1_000_000


class OfferServicer(offer_pb2_grpc.OfferServiceServicer):
    def __init__(self, ledger: Ledger, *, event_age_max_us: int = 30 * 86_400_000_000) -> None:
        self.ledger = ledger
        self.event_age_max_us = event_age_max_us

    @rpc_errors
    async def CreateScheme(
        self, request: offer_pb2.CreateSchemeRequest, context: Ctx
    ) -> offer_pb2.CreateSchemeResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        if request.scheme.scheme_id:
            checks.scheme_id("scheme.scheme_id", request.scheme.scheme_id)
        spec = scheme_spec(checks, request.scheme)
        checks.done()

        async def op(tx: Tx) -> offer_pb2.CreateSchemeResponse:
            scheme_id = request.scheme.scheme_id or new_id("sch")
            scheme = await tx.create_scheme(scheme_id, spec)
            return offer_pb2.CreateSchemeResponse(scheme=convert.scheme_to_proto(scheme))

        return await mutate(
            self.ledger, "CreateScheme", request, offer_pb2.CreateSchemeResponse, op
        )

    @rpc_errors
    async def GetScheme(
        self, request: offer_pb2.GetSchemeRequest, context: Ctx
    ) -> offer_pb2.GetSchemeResponse:
        checks = Checks()
        checks.resource_id("scheme_id", request.scheme_id)
        checks.done()
        scheme = await self.ledger.read(lambda r: r.get_scheme(request.scheme_id))
        return offer_pb2.GetSchemeResponse(scheme=convert.scheme_to_proto(scheme))

    @rpc_errors
    async def ListSchemes(
        self, request: offer_pb2.ListSchemesRequest, context: Ctx
    ) -> offer_pb2.ListSchemesResponse:
        size = page_size(request.page_size)
        page = await self.ledger.read(lambda r: r.list_schemes(size, request.page_token))
        return offer_pb2.ListSchemesResponse(
            schemes=[convert.scheme_to_proto(s) for s in page.items],
            next_page_token=page.next_token,
        )

    @rpc_errors
    async def UpdateScheme(
        self, request: offer_pb2.UpdateSchemeRequest, context: Ctx
    ) -> offer_pb2.UpdateSchemeResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("scheme.scheme_id", request.scheme.scheme_id)
        paths = set(request.update_mask.paths)
        if not paths:
            checks.fail("update_mask", "name the fields to update")
        for path in sorted(paths - UPDATABLE_PATHS):
            checks.fail("update_mask", f"{path!r} cannot be updated")
        checks.done()

        async def op(tx: Tx) -> offer_pb2.UpdateSchemeResponse:
            current = await tx.get_scheme(request.scheme.scheme_id)
            merged = merged_scheme(current, request.scheme, paths)
            spec_checks = Checks()
            spec = scheme_spec(spec_checks, merged)
            spec_checks.done()
            scheme = await tx.update_scheme(current.id, spec)
            return offer_pb2.UpdateSchemeResponse(scheme=convert.scheme_to_proto(scheme))

        return await mutate(
            self.ledger, "UpdateScheme", request, offer_pb2.UpdateSchemeResponse, op
        )

    # -- offers ------------------------------------------------------------------------------

    async def _valid_offer(self, tx: Tx, offer: rewards_pb2.Offer) -> tuple[str, int | None]:
        """Validate an offer against its scheme; return its stored definition and budget."""
        scheme = await tx.get_scheme(offer.scheme_id)
        checks = Checks()
        offer_rules.validated(checks, offer, scheme, "offer")
        checks.done()  # the group ids are well-formed before they reach the database
        wanted = offer.conditions.merchant_group_ids
        known = await merchants.known_groups(tx.conn, scheme.id, wanted)
        for i, group_id in enumerate(wanted):
            if group_id not in known:
                checks.fail(
                    f"offer.conditions.merchant_group_ids[{i}]",
                    f"no merchant group {group_id!r} in scheme {scheme.id}",
                )
        checks.done()
        return definition_json(offer), offer.budget if offer.HasField("budget") else None

    @rpc_errors
    async def CreateOffer(
        self, request: offer_pb2.CreateOfferRequest, context: Ctx
    ) -> offer_pb2.CreateOfferResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("offer.scheme_id", request.offer.scheme_id)
        checks.done()

        async def op(tx: Tx) -> offer_pb2.CreateOfferResponse:
            definition, budget = await self._valid_offer(tx, request.offer)
            record = await offer_store.create_offer(
                tx.conn, request.offer.scheme_id, definition, budget, tx.now_us
            )
            return offer_pb2.CreateOfferResponse(offer=offer_to_proto(record))

        return await mutate(self.ledger, "CreateOffer", request, offer_pb2.CreateOfferResponse, op)

    @rpc_errors
    async def GetOffer(
        self, request: offer_pb2.GetOfferRequest, context: Ctx
    ) -> offer_pb2.GetOfferResponse:
        checks = Checks()
        checks.resource_id("offer_id", request.offer_id)
        checks.done()
        record = await self.ledger.read(lambda r: offer_store.find_offer(r.conn, request.offer_id))
        return offer_pb2.GetOfferResponse(offer=offer_to_proto(record))

    @rpc_errors
    async def ListOffers(
        self, request: offer_pb2.ListOffersRequest, context: Ctx
    ) -> offer_pb2.ListOffersResponse:
        checks = Checks()
        checks.resource_id("scheme_id", request.scheme_id)
        status = None
        if request.status:
            status = STATUS_FROM_PROTO.get(request.status)
            if status is None:
                checks.fail("status", "unknown value")
        checks.done()
        size = page_size(request.page_size)

        async def read(r: Reader) -> offer_pb2.ListOffersResponse:
            await r.get_scheme(request.scheme_id)
            page = await offer_store.list_offers(
                r.conn, request.scheme_id, status, size, request.page_token
            )
            return offer_pb2.ListOffersResponse(
                offers=[offer_to_proto(o) for o in page.items], next_page_token=page.next_token
            )

        return await self.ledger.read(read)

    @rpc_errors
    async def UpdateOffer(
        self, request: offer_pb2.UpdateOfferRequest, context: Ctx
    ) -> offer_pb2.UpdateOfferResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("offer.offer_id", request.offer.offer_id)
        checks.text("reason", request.reason, max_chars=limits.REASON_CHARS_MAX)
        paths = set(request.update_mask.paths)
        if not paths:
            checks.fail("update_mask", "name the fields to update")
        for path in sorted(paths - OFFER_UPDATABLE_PATHS):
            checks.fail("update_mask", f"{path!r} cannot be updated")
        checks.done()

        async def op(tx: Tx) -> offer_pb2.UpdateOfferResponse:
            current = await offer_store.find_offer(tx.conn, request.offer.offer_id, lock=True)
            merged = offer_to_proto(current)
            _take_fields(merged, request.offer, paths)
            definition, budget = await self._valid_offer(tx, merged)
            record = await offer_store.update_offer(
                tx.conn, current.id, definition, budget, request.reason, tx.now_us
            )
            return offer_pb2.UpdateOfferResponse(offer=offer_to_proto(record))

        return await mutate(self.ledger, "UpdateOffer", request, offer_pb2.UpdateOfferResponse, op)

    @rpc_errors
    async def CopyOffer(
        self, request: offer_pb2.CopyOfferRequest, context: Ctx
    ) -> offer_pb2.CopyOfferResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("offer_id", request.offer_id)
        checks.text("name", request.name, max_chars=limits.NAME_CHARS_MAX)
        checks.done()

        async def op(tx: Tx) -> offer_pb2.CopyOfferResponse:
            source = await offer_store.find_offer(tx.conn, request.offer_id)
            copy = offer_to_proto(source)
            if request.name:
                copy.name = request.name
            definition, budget = await self._valid_offer(tx, copy)
            record = await offer_store.create_offer(
                tx.conn,
                source.scheme_id,
                definition,
                budget,
                tx.now_us,
                copied_from_offer_id=source.id,
            )
            return offer_pb2.CopyOfferResponse(offer=offer_to_proto(record))

        return await mutate(self.ledger, "CopyOffer", request, offer_pb2.CopyOfferResponse, op)

    @rpc_errors
    async def SetOfferStatus(
        self, request: offer_pb2.SetOfferStatusRequest, context: Ctx
    ) -> offer_pb2.SetOfferStatusResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("offer_id", request.offer_id)
        checks.text("reason", request.reason, max_chars=limits.REASON_CHARS_MAX)
        target = STATUS_FROM_PROTO.get(request.status)
        if target is None:
            checks.fail("status", "must be ACTIVE, PAUSED or ENDED")
        checks.done()
        assert target is not None

        async def op(tx: Tx) -> offer_pb2.SetOfferStatusResponse:
            record = await offer_store.set_status(
                tx.conn, request.offer_id, target, request.reason, tx.now_us
            )
            return offer_pb2.SetOfferStatusResponse(offer=offer_to_proto(record))

        return await mutate(
            self.ledger, "SetOfferStatus", request, offer_pb2.SetOfferStatusResponse, op
        )

    @rpc_errors
    async def ListOfferChanges(
        self, request: offer_pb2.ListOfferChangesRequest, context: Ctx
    ) -> offer_pb2.ListOfferChangesResponse:
        checks = Checks()
        checks.resource_id("offer_id", request.offer_id)
        checks.done()
        size = page_size(request.page_size)

        async def read(r: Reader) -> offer_pb2.ListOfferChangesResponse:
            offer = await offer_store.find_offer(r.conn, request.offer_id)
            page = await offer_store.list_changes(r.conn, offer.id, size, request.page_token)
            return offer_pb2.ListOfferChangesResponse(
                changes=[change_to_proto(c, offer.scheme_id) for c in page.items],
                next_page_token=page.next_token,
            )

        return await self.ledger.read(read)

    # -- customer events --------------------------------------------------------------------

    def _event(
        self, request_id: str | None, wallet_id: str, event: rewards_pb2.CustomerEvent
    ) -> rewards.CustomerEvent:
        checks = Checks()
        if request_id is not None:
            checks.request_id(request_id)
        checks.resource_id("wallet_id", wallet_id)
        found = offer_rules.customer_event(checks, event, "event")
        checks.done()
        assert found is not None
        now_us = self.ledger.clock.now_us()
        occurred_us = to_us(found.occurred_at)
        if occurred_us > now_us + EVENT_CLOCK_SKEW_US:
            raise InvalidArgument.single("event.occur_time", "is in the future")
        if occurred_us < now_us - self.event_age_max_us:
            raise FailedPrecondition(
                f"the event is older than {self.event_age_max_us // 3_600_000_000} hours",
                reason="EVENT_TOO_OLD",
                max_age_hours=str(self.event_age_max_us // 3_600_000_000),
            )
        return found

    @rpc_errors
    async def SubmitEvent(
        self, request: offer_pb2.SubmitEventRequest, context: Ctx
    ) -> offer_pb2.SubmitEventResponse:
        return await self._submit(request)

    @rpc_errors
    async def SubmitEvents(
        self, request: offer_pb2.SubmitEventsRequest, context: Ctx
    ) -> offer_pb2.SubmitEventsResponse:
        if not 1 <= len(request.events) <= limits.EVENT_BATCH_MAX:
            raise InvalidArgument.single("events", f"send 1 to {limits.EVENT_BATCH_MAX} events")
        # Up to EVENT_BATCH_IN_FLIGHT_MAX events are in the writer at once, so they share
        # group commits instead of paying one commit each. Each still runs in its own
        # transaction (savepoint). An event waits for the batch's earlier events of the same
        # wallet, so per-wallet caps and balances see them in the order given.
        window = asyncio.Semaphore(limits.EVENT_BATCH_IN_FLIGHT_MAX)
        last_of_wallet: dict[str, asyncio.Future[offer_pb2.SubmitEventResult]] = {}
        tasks = []
        for i, item in enumerate(request.events):
            before = last_of_wallet.get(item.wallet_id)
            task = asyncio.ensure_future(self._submit_one(i, item, before, window))
            last_of_wallet[item.wallet_id] = task
            tasks.append(task)
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        return offer_pb2.SubmitEventsResponse(results=results)

    async def _submit_one(
        self,
        i: int,
        item: offer_pb2.SubmitEventRequest,
        before: asyncio.Future[offer_pb2.SubmitEventResult] | None,
        window: asyncio.Semaphore,
    ) -> offer_pb2.SubmitEventResult:
        """One event of a SubmitEvents batch, after `before` (whatever its outcome)."""
        if before is not None:
            await asyncio.wait([before])
        async with window:
            try:
                return offer_pb2.SubmitEventResult(response=await self._submit(item))
            except LedgerError as error:
                if isinstance(error, InvalidArgument):
                    error = error.under(f"events[{i}]")
                code, status = status_for(error)
                return offer_pb2.SubmitEventResult(
                    error=offer_pb2.EventError(
                        code=code.value[0],
                        reason=error.reason,
                        message=status.message,
                        status=status.SerializeToString(),
                    )
                )

    async def _submit(self, request: offer_pb2.SubmitEventRequest) -> offer_pb2.SubmitEventResponse:
        event = self._event(request.request_id, request.wallet_id, request.event)

        async def op(tx: Tx) -> offer_pb2.SubmitEventResponse:
            event_id, posted = await rewarding.submit_event(
                tx, request.wallet_id, event, request.event.reference, offer_codec.decode_offer
            )
            return offer_pb2.SubmitEventResponse(
                awards=[_award_to_proto(p) for p in posted],
                instant_discount=_instant_discount(posted, request.wallet_id),
                event_id=event_id,
            )

        return await mutate(self.ledger, "SubmitEvent", request, offer_pb2.SubmitEventResponse, op)

    @rpc_errors
    async def ReverseEvent(
        self, request: offer_pb2.ReverseEventRequest, context: Ctx
    ) -> offer_pb2.ReverseEventResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("event_id", request.event_id)
        checks.text("reason", request.reason, max_chars=limits.REASON_CHARS_MAX)
        returned: int | dict[str, int] | None = None
        kind = request.WhichOneof("returned")
        if kind == "amount":
            checks.amount("amount", request.amount)
            returned = request.amount
        elif kind == "items":
            items = request.items.items
            if not 1 <= len(items) <= offer_rules.EVENT_ITEMS_MAX:
                checks.fail("items.items", f"name 1 to {offer_rules.EVENT_ITEMS_MAX} items")
            returned = {}
            for i, item in enumerate(items[: offer_rules.EVENT_ITEMS_MAX]):
                checks.resource_id(f"items.items[{i}].product_id", item.product_id)
                if not 1 <= item.quantity <= offer_rules.ITEM_QUANTITY_MAX:
                    checks.fail(f"items.items[{i}].quantity", "must be 1 or more")
                returned[item.product_id] = returned.get(item.product_id, 0) + item.quantity
        checks.done()

        async def op(tx: Tx) -> offer_pb2.ReverseEventResponse:
            result = await rewarding.reverse_event(tx, request.event_id, returned, request.reason)
            return offer_pb2.ReverseEventResponse(
                event_id=result.event_id,
                returned_amount=result.returned_amount,
                total_returned_amount=result.total_returned_amount,
                reversals=[
                    offer_pb2.AwardReversal(
                        offer_id=r.offer_id,
                        award_transaction_id=r.award_transaction_id,
                        reversed=r.reversed,
                        already_spent=r.already_spent,
                        transaction_id=r.transaction_id,
                    )
                    for r in result.reversals
                ],
            )

        return await mutate(
            self.ledger, "ReverseEvent", request, offer_pb2.ReverseEventResponse, op
        )

    @rpc_errors
    async def EvaluateEvent(
        self, request: offer_pb2.EvaluateEventRequest, context: Ctx
    ) -> offer_pb2.EvaluateEventResponse:
        event = self._event(None, request.wallet_id, request.event)
        posted = await self.ledger.read(
            lambda r: rewarding.evaluate_event(
                r, request.wallet_id, event, offer_codec.decode_offer
            )
        )
        return offer_pb2.EvaluateEventResponse(
            awards=[_award_to_proto(p) for p in posted],
            instant_discount=_instant_discount(posted, request.wallet_id),
        )

    # -- promotion codes -------------------------------------------------------------------

    @rpc_errors
    async def CreatePromotionCodes(
        self, request: offer_pb2.CreatePromotionCodesRequest, context: Ctx
    ) -> offer_pb2.CreatePromotionCodesResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        batch = request.batch
        checks.resource_id("batch.scheme_id", batch.scheme_id)
        checks.text("batch.name", batch.name, max_chars=limits.NAME_CHARS_MAX, required=True)
        checks.asset("batch.asset", batch.asset)
        checks.amount("batch.amount", batch.amount)
        if batch.sponsor_id:
            checks.resource_id("batch.sponsor_id", batch.sponsor_id)
        policy = None
        if batch.HasField("expiry_policy") and batch.expiry_policy.WhichOneof("rule"):
            policy = convert.policy_from_proto(checks, "batch.expiry_policy", batch.expiry_policy)
        for name in ("max_redemptions_per_code", "max_redemptions_per_wallet"):
            if getattr(batch, name) < 0:
                checks.fail(f"batch.{name}", "must be 1 or more (0: the default, 1)")
        start = (
            checks.timestamp("batch.valid_from", batch.valid_from)
            if batch.HasField("valid_from")
            else None
        )
        end = (
            checks.timestamp("batch.valid_until", batch.valid_until)
            if batch.HasField("valid_until")
            else None
        )
        if start is not None and end is not None and end <= start:
            checks.fail("batch.valid_until", "must be after valid_from")
        codes = [promotions.normalize(c) for c in request.codes]
        if bool(codes) == bool(request.count):
            checks.fail("codes", "give codes or a count, not both")
        if len(codes) > limits.PROMOTION_CODES_MAX:
            checks.fail("codes", f"at most {limits.PROMOTION_CODES_MAX} codes a batch")
        if not 0 <= request.count <= limits.PROMOTION_CODES_MAX:
            checks.fail("count", f"0 to {limits.PROMOTION_CODES_MAX} codes a batch")
        for i, code in enumerate(codes[: limits.PROMOTION_CODES_MAX]):
            if not _CODE.match(code):
                checks.fail(f"codes[{i}]", "4-32 characters of A-Z and 0-9")
        if len(set(codes)) != len(codes):
            checks.fail("codes", "each code once")
        checks.done()
        spec = promotions.BatchSpec(
            name=batch.name,
            asset=batch.asset,
            amount=batch.amount,
            sponsor_id=batch.sponsor_id,
            expiry_policy=policy,
            max_per_code=batch.max_redemptions_per_code or 1,
            max_per_wallet=batch.max_redemptions_per_wallet or 1,
            valid_from_us=start,
            valid_until_us=end,
        )

        async def op(tx: Tx) -> offer_pb2.CreatePromotionCodesResponse:
            record, created = await promotions.create_batch(
                tx, batch.scheme_id, spec, codes or promotions.generate_codes(request.count)
            )
            return offer_pb2.CreatePromotionCodesResponse(
                batch=_batch_to_proto(record), codes=created
            )

        return await mutate(
            self.ledger,
            "CreatePromotionCodes",
            request,
            offer_pb2.CreatePromotionCodesResponse,
            op,
        )

    @rpc_errors
    async def RedeemPromotionCode(
        self, request: offer_pb2.RedeemPromotionCodeRequest, context: Ctx
    ) -> offer_pb2.RedeemPromotionCodeResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("wallet_id", request.wallet_id)
        if not _CODE.match(promotions.normalize(request.code)):
            checks.fail("code", "4-32 characters of A-Z and 0-9")
        checks.done()

        async def op(tx: Tx) -> offer_pb2.RedeemPromotionCodeResponse:
            batch, txn, lot = await promotions.redeem(tx, request.wallet_id, request.code)
            response = offer_pb2.RedeemPromotionCodeResponse(
                batch_id=batch.id, transaction_id=txn.id, lot_id=lot.id, amount=lot.amount
            )
            if lot.expires_at_us is not None:
                response.expire_time.CopyFrom(convert.timestamp(lot.expires_at_us))
            return response

        return await mutate(
            self.ledger,
            "RedeemPromotionCode",
            request,
            offer_pb2.RedeemPromotionCodeResponse,
            op,
        )


_CODE = re.compile(r"^[A-Z0-9]{4,32}$")


def _batch_to_proto(record: promotions.BatchRecord) -> offer_pb2.PromotionCodeBatch:
    spec = record.spec
    out = offer_pb2.PromotionCodeBatch(
        batch_id=record.id,
        scheme_id=record.scheme_id,
        name=spec.name,
        asset=spec.asset,
        amount=spec.amount,
        sponsor_id=spec.sponsor_id,
        max_redemptions_per_code=spec.max_per_code,
        max_redemptions_per_wallet=spec.max_per_wallet,
        create_time=convert.timestamp(record.created_at_us),
    )
    if spec.expiry_policy is not None:
        out.expiry_policy.CopyFrom(convert.policy_to_proto(spec.expiry_policy))
    if spec.valid_from_us is not None:
        out.valid_from.CopyFrom(convert.timestamp(spec.valid_from_us))
    if spec.valid_until_us is not None:
        out.valid_until.CopyFrom(convert.timestamp(spec.valid_until_us))
    return out


def _award_to_proto(posted: rewarding.PostedAward) -> rewards_pb2.OfferAward:
    award = posted.award
    return rewards_pb2.OfferAward(
        offer_id=award.offer_id,
        asset=award.asset,
        amount=award.amount,
        spend_method=rewards_pb2.SPEND_METHOD_INSTANT
        if award.instant
        else rewards_pb2.SPEND_METHOD_ON_ACCOUNT,
        explanation=award.explanation,
        transaction_id=posted.transaction_id,
        lot_id=posted.lot_id,
        wallet_id=posted.wallet_id,
    )


def _instant_discount(posted: list[rewarding.PostedAward], wallet_id: str) -> int:
    """The discount at this wallet's till: INSTANT awards of the event's own wallet."""
    return sum(p.award.amount for p in posted if p.award.instant and p.wallet_id == wallet_id)


def _take_fields(target: Message, source: Message, paths: set[str]) -> None:
    """Copy the top-level fields named by an update mask from `source` to `target`; a field with
    presence that `source` leaves unset is cleared (e.g. removing a budget)."""
    for path in paths:
        field = source.DESCRIPTOR.fields_by_name[path]
        target.ClearField(path)  # type: ignore[arg-type]
        if field.is_repeated:
            getattr(target, path).extend(getattr(source, path))
        elif field.message_type is not None:
            if source.HasField(path):
                getattr(target, path).CopyFrom(getattr(source, path))
        elif not field.has_presence or source.HasField(path):
            setattr(target, path, getattr(source, path))
