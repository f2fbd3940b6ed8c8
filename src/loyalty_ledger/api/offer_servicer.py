"""OfferService: schemes (offers come later). Validate, translate, call the ledger."""

from __future__ import annotations

from typing import TypeAlias

import grpc
from loyalty.v1 import offer_pb2, offer_pb2_grpc

from loyalty_ledger.api import convert, limits
from loyalty_ledger.api.errors import rpc_errors
from loyalty_ledger.api.mutate import mutate
from loyalty_ledger.api.validation import Checks
from loyalty_ledger.domain.expiry import Never
from loyalty_ledger.ledger.engine import SchemeSpec, Tx
from loyalty_ledger.ledger.ids import new_id
from loyalty_ledger.ledger.paging import page_size
from loyalty_ledger.ledger.records import RefundHandling, SchemeRecord
from loyalty_ledger.ledger.service import Ledger

Ctx: TypeAlias = grpc.aio.ServicerContext  # type: ignore[type-arg]

UPDATABLE_PATHS = frozenset(
    {
        "name",
        "assets",
        "timezone",
        "default_expiry_policy",
        "refund_policy",
        "cash_expiry_allowed",
        "warning_lead_times",
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
    return SchemeSpec(
        name=scheme.name,
        assets=assets,
        timezone=scheme.timezone,
        default_expiry_policy=policy or Never(),
        refund_handling=handling,
        refund_grace_seconds=grace_seconds,
        cash_expiry_allowed=scheme.cash_expiry_allowed,
        warning_lead_seconds=tuple(sorted(leads)),
    )


def merged_scheme(
    current: SchemeRecord, update: offer_pb2.Scheme, paths: set[str]
) -> offer_pb2.Scheme:
    """The current scheme with the fields named by the mask taken from `update`."""
    merged = convert.scheme_to_proto(current)
    for path in paths:
        merged.ClearField(path)  # type: ignore[arg-type]
        if path in ("assets", "warning_lead_times"):
            getattr(merged, path).extend(getattr(update, path))
        elif path in ("default_expiry_policy", "refund_policy"):
            getattr(merged, path).CopyFrom(getattr(update, path))
        else:
            setattr(merged, path, getattr(update, path))
    return merged


class OfferServicer(offer_pb2_grpc.OfferServiceServicer):
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

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
