"""The report RPCs of SettlementService: liability, breakage, offer performance,
participation, and the upcoming-expirations export."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from loyalty.v1 import settlement_pb2

from loyalty_ledger.api import convert
from loyalty_ledger.api.errors import abort_for, rpc_errors
from loyalty_ledger.api.offer_codec import definition_proto
from loyalty_ledger.api.validation import Checks
from loyalty_ledger.ledger import reports
from loyalty_ledger.ledger.reads import Reader
from loyalty_ledger.ledger.records import Page, UpcomingExpiration, WalletStatus

if TYPE_CHECKING:
    from loyalty_ledger.ledger.service import Ledger

Ctx: TypeAlias = grpc.aio.ServicerContext  # type: ignore[type-arg]

TOP_DEFAULT = 10
TOP_MAX = 100
# Rows per message of ExportUpcomingExpirations; each batch is its own read (keyset paging),
# so the server holds one batch at a time whatever the export's size.
EXPORT_BATCH_ROWS = 500


def _window(checks: Checks, request: Any) -> tuple[int, int] | None:
    """The request's required, ordered [start_time, end_time) in epoch microseconds."""
    bounds: list[int | None] = []
    for name in ("start_time", "end_time"):
        if not request.HasField(name):
            checks.fail(name, "is required")
            bounds.append(None)
        else:
            bounds.append(checks.timestamp(name, getattr(request, name)))
    start_us, end_us = bounds
    if start_us is None or end_us is None:
        return None
    if end_us <= start_us:
        checks.fail("end_time", "must be after start_time")
        return None
    return start_us, end_us


@dataclass
class _OfferReport:
    rows: list[reports.OfferMonthRow]
    top: list[tuple[str, str, list[int]]]  # offer, asset, [awarded, redeemed, expired]
    outstanding: dict[tuple[str, str], int]
    definitions: dict[str, str]


class ReportRpcs:
    """Mixed into SettlementServicer, which provides `ledger`."""

    ledger: Ledger

    async def _months(
        self, r: Reader, scheme_id: str, window: tuple[int, int]
    ) -> list[reports.Month]:
        """The scheme's local months of the window (NOT_FOUND for an unknown scheme)."""
        scheme = await r.get_scheme(scheme_id)
        if reports.month_count(scheme.timezone, *window) > reports.MONTHS_MAX:
            checks = Checks()
            checks.fail(
                "end_time",
                f"the window spans more than {reports.MONTHS_MAX} months of the scheme's timezone",
            )
            checks.done()
        return reports.months_between(scheme.timezone, *window)

    @rpc_errors
    async def GetLiabilityReport(
        self, request: settlement_pb2.GetLiabilityReportRequest, context: Ctx
    ) -> settlement_pb2.GetLiabilityReportResponse:
        checks = Checks()
        checks.resource_id("scheme_id", request.scheme_id)
        now = self.ledger.clock.now_us()
        as_of: int | None = now
        if request.HasField("as_of_time"):
            as_of = checks.timestamp("as_of_time", request.as_of_time)
            if as_of is not None and as_of > now:
                checks.fail("as_of_time", "must not be in the future")
        checks.done()
        assert as_of is not None

        async def job(r: Reader) -> list[reports.LiabilityRow]:
            await r.get_scheme(request.scheme_id)
            return await reports.liability(r.conn, request.scheme_id, as_of)

        rows = await self.ledger.read(job)
        return settlement_pb2.GetLiabilityReportResponse(
            rows=[
                settlement_pb2.LiabilityRow(
                    asset=row.asset,
                    funding=row.funding,
                    sponsor_id=row.sponsor_id,
                    amount=row.amount,
                )
                for row in rows
            ],
            as_of_time=convert.timestamp(as_of),
        )

    @rpc_errors
    async def GetBreakageReport(
        self, request: settlement_pb2.GetBreakageReportRequest, context: Ctx
    ) -> settlement_pb2.GetBreakageReportResponse:
        checks = Checks()
        checks.resource_id("scheme_id", request.scheme_id)
        window = _window(checks, request)
        checks.done()
        assert window is not None

        async def job(r: Reader) -> list[reports.BreakageRow]:
            months = await self._months(r, request.scheme_id, window)
            return await reports.breakage(r.conn, request.scheme_id, months)

        rows = await self.ledger.read(job)
        return settlement_pb2.GetBreakageReportResponse(
            rows=[
                settlement_pb2.BreakageRow(
                    month=row.month,
                    asset=row.asset,
                    funding=row.funding,
                    sponsor_id=row.sponsor_id,
                    amount=row.amount,
                )
                for row in rows
            ]
        )

    @rpc_errors
    async def GetOfferPerformanceReport(
        self, request: settlement_pb2.GetOfferPerformanceReportRequest, context: Ctx
    ) -> settlement_pb2.GetOfferPerformanceReportResponse:
        checks = Checks()
        checks.resource_id("scheme_id", request.scheme_id)
        window = _window(checks, request)
        top = request.top or TOP_DEFAULT
        if not 1 <= top <= TOP_MAX:
            checks.fail("top", f"must be between 1 and {TOP_MAX} (0: {TOP_DEFAULT})")
        checks.done()
        assert window is not None

        async def job(r: Reader) -> _OfferReport:
            months = await self._months(r, request.scheme_id, window)
            rows = await reports.offer_months(r.conn, request.scheme_id, months)
            totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
            for row in rows:
                sums = totals[(row.offer_id, row.asset)]
                sums[0] += row.awarded
                sums[1] += row.redeemed
                sums[2] += row.expired
            # Most awarded first, ties by offer id (then asset, for an offer whose asset
            # changed between awards).
            ranked = sorted(totals.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top]
            best_ids = sorted({offer_id for (offer_id, _), _ in ranked})
            outstanding = await reports.offer_outstanding(r.conn, request.scheme_id, best_ids)
            definitions = await reports.offer_definitions(
                r.conn, sorted({row.offer_id for row in rows})
            )
            return _OfferReport(
                rows,
                [(offer_id, asset, sums) for (offer_id, asset), sums in ranked],
                {(o.offer_id, o.asset): o.amount for o in outstanding},
                definitions,
            )

        found = await self.ledger.read(job)
        names = {offer_id: definition_proto(d).name for offer_id, d in found.definitions.items()}
        return settlement_pb2.GetOfferPerformanceReportResponse(
            rows=[
                settlement_pb2.OfferPerformanceRow(
                    offer_id=row.offer_id,
                    offer_name=names.get(row.offer_id, ""),
                    month=row.month,
                    asset=row.asset,
                    awarded=row.awarded,
                    redeemed=row.redeemed,
                    expired=row.expired,
                )
                for row in found.rows
            ],
            top_offers=[
                settlement_pb2.OfferTotals(
                    offer_id=offer_id,
                    offer_name=names.get(offer_id, ""),
                    asset=asset,
                    awarded=sums[0],
                    redeemed=sums[1],
                    expired=sums[2],
                    outstanding=found.outstanding.get((offer_id, asset), 0),
                )
                for offer_id, asset, sums in found.top
            ],
        )

    @rpc_errors
    async def GetParticipationReport(
        self, request: settlement_pb2.GetParticipationReportRequest, context: Ctx
    ) -> settlement_pb2.GetParticipationReportResponse:
        checks = Checks()
        checks.resource_id("scheme_id", request.scheme_id)
        window = _window(checks, request)
        checks.done()
        assert window is not None

        async def job(r: Reader) -> reports.Participation:
            months = await self._months(r, request.scheme_id, window)
            return await reports.participation(r.conn, request.scheme_id, months)

        found = await self.ledger.read(job)
        return settlement_pb2.GetParticipationReportResponse(
            active_wallets=found.by_status[WalletStatus.ACTIVE],
            frozen_wallets=found.by_status[WalletStatus.FROZEN],
            closed_wallets=found.by_status[WalletStatus.CLOSED],
            sign_ups=[
                settlement_pb2.SignUpMonth(month=month, sign_ups=count)
                for month, count in found.sign_ups
            ],
        )

    async def ExportUpcomingExpirations(
        self, request: settlement_pb2.ExportUpcomingExpirationsRequest, context: Ctx
    ) -> AsyncIterator[settlement_pb2.ExportUpcomingExpirationsResponse]:
        """Batches of ListUpcomingExpirations' rows, each batch its own read after the last
        row of the one before (keyset), so memory stays flat. Errors end the stream with a
        google.rpc.Status like `rpc_errors` (an async generator cannot use that decorator)."""
        try:
            checks = Checks()
            checks.resource_id("scheme_id", request.scheme_id)
            start = self.ledger.clock.now_us()
            if request.HasField("start_time"):
                start = checks.timestamp("start_time", request.start_time) or start
            end: int | None = None
            if not request.HasField("end_time"):
                checks.fail("end_time", "is required")
            else:
                end = checks.timestamp("end_time", request.end_time)
                if end is not None and end <= start:
                    checks.fail("end_time", "must be after start_time")
            checks.done()
            assert end is not None

            async def batch(r: Reader, after: str) -> Page[UpcomingExpiration]:
                return await r.list_upcoming_expirations(
                    scheme_id=request.scheme_id,
                    wallet_id="",
                    start_us=start,
                    end_us=end,
                    size=EXPORT_BATCH_ROWS,
                    token=after,
                )

            token = ""
            while True:
                page = await self.ledger.read(functools.partial(batch, after=token))
                if page.items:
                    yield settlement_pb2.ExportUpcomingExpirationsResponse(
                        rows=[convert.upcoming_to_proto(item) for item in page.items]
                    )
                if not page.next_token:
                    return
                token = page.next_token
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort_for(context, error, "ExportUpcomingExpirations")
