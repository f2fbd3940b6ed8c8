"""The expiry RPCs of WalletService: runs, upcoming expirations, manual expiry and extension."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeAlias

import grpc
from loyalty.v1 import expiry_pb2, wallet_pb2

from loyalty_ledger.api import convert, limits
from loyalty_ledger.api.context import caller_scope
from loyalty_ledger.api.errors import rpc_errors
from loyalty_ledger.api.mutate import mutate
from loyalty_ledger.api.validation import Checks
from loyalty_ledger.domain.errors import InvalidArgument
from loyalty_ledger.ledger import idempotency
from loyalty_ledger.ledger.engine import Tx
from loyalty_ledger.ledger.paging import page_size
from loyalty_ledger.ledger.records import RunKind, RunRecord

if TYPE_CHECKING:
    from loyalty_ledger.jobs.runner import Runner
    from loyalty_ledger.ledger.service import Ledger

Ctx: TypeAlias = grpc.aio.ServicerContext  # type: ignore[type-arg]


class ExpiryRpcs:
    """Mixed into WalletServicer, which provides `ledger` and `runner`."""

    ledger: Ledger
    runner: Runner

    @rpc_errors
    async def RunExpiry(
        self, request: expiry_pb2.RunExpiryRequest, context: Ctx
    ) -> expiry_pb2.RunExpiryResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        kind = RunKind.EXPIRY
        if request.kind:
            if request.kind not in convert.RUN_KINDS:
                checks.fail("kind", "unknown run kind")
            else:
                kind = convert.RUN_KINDS[request.kind]
        now = self.ledger.clock.now_us()
        as_of = now
        if request.HasField("as_of_time"):
            as_of = checks.timestamp("as_of_time", request.as_of_time) or now
            if as_of > now:
                checks.fail("as_of_time", "must not be in the future")
        checks.done()
        started: list[RunRecord] = []

        async def op(tx: Tx) -> expiry_pb2.RunExpiryResponse:
            run = await tx.start_run(kind, as_of, "rpc")
            started.append(run)
            return expiry_pb2.RunExpiryResponse(run=convert.run_to_proto(run))

        response = await mutate(self.ledger, "RunExpiry", request, expiry_pb2.RunExpiryResponse, op)
        if not started:
            return response  # a replay: the stored run (finished, or still running)
        # The run goes on if the caller goes away; its idempotency record then gets the end.
        finishing = asyncio.create_task(self._finish_run(started[0], request.request_id))
        return await asyncio.shield(finishing)

    async def _finish_run(self, run: RunRecord, request_id: str) -> expiry_pb2.RunExpiryResponse:
        finished = await self.runner.complete(run)
        data = expiry_pb2.RunExpiryResponse(run=convert.run_to_proto(finished)).SerializeToString(
            deterministic=True
        )
        scope = caller_scope.get()
        await self.ledger.write(
            lambda tx: idempotency.complete(
                tx.conn, scope=scope, request_id=request_id, response=data
            )
        )
        return expiry_pb2.RunExpiryResponse.FromString(data)

    @rpc_errors
    async def GetRun(
        self, request: expiry_pb2.GetRunRequest, context: Ctx
    ) -> expiry_pb2.GetRunResponse:
        checks = Checks()
        checks.resource_id("run_id", request.run_id)
        checks.done()
        run = await self.ledger.read(lambda r: r.get_run(request.run_id))
        return expiry_pb2.GetRunResponse(run=convert.run_to_proto(run))

    @rpc_errors
    async def ListRuns(
        self, request: expiry_pb2.ListRunsRequest, context: Ctx
    ) -> expiry_pb2.ListRunsResponse:
        kind = None
        if request.kind:
            if request.kind not in convert.RUN_KINDS:
                raise InvalidArgument.single("kind", "unknown run kind")
            kind = convert.RUN_KINDS[request.kind]
        size = page_size(request.page_size)
        page = await self.ledger.read(lambda r: r.list_runs(kind, size, request.page_token))
        return expiry_pb2.ListRunsResponse(
            runs=[convert.run_to_proto(run) for run in page.items],
            next_page_token=page.next_token,
        )

    @rpc_errors
    async def ListUpcomingExpirations(
        self, request: expiry_pb2.ListUpcomingExpirationsRequest, context: Ctx
    ) -> expiry_pb2.ListUpcomingExpirationsResponse:
        checks = Checks()
        if bool(request.scheme_id) == bool(request.wallet_id):
            checks.fail("scheme_id", "set exactly one of scheme_id and wallet_id")
        checks.resource_id("scheme_id", request.scheme_id, required=False)
        checks.resource_id("wallet_id", request.wallet_id, required=False)
        start = self.ledger.clock.now_us()
        if request.HasField("start_time"):
            start = checks.timestamp("start_time", request.start_time) or start
        end = None
        if not request.HasField("end_time"):
            checks.fail("end_time", "is required")
        else:
            end = checks.timestamp("end_time", request.end_time)
            if end is not None and end <= start:
                checks.fail("end_time", "must be after start_time")
        checks.done()
        assert end is not None
        size = page_size(request.page_size)
        page = await self.ledger.read(
            lambda r: r.list_upcoming_expirations(
                scheme_id=request.scheme_id,
                wallet_id=request.wallet_id,
                start_us=start,
                end_us=end,
                size=size,
                token=request.page_token,
            )
        )
        return expiry_pb2.ListUpcomingExpirationsResponse(
            expirations=[convert.upcoming_to_proto(item) for item in page.items],
            next_page_token=page.next_token,
        )

    @rpc_errors
    async def ExpireLot(
        self, request: wallet_pb2.ExpireLotRequest, context: Ctx
    ) -> wallet_pb2.ExpireLotResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("lot_id", request.lot_id)
        checks.text("reason", request.reason, max_chars=limits.REASON_CHARS_MAX)
        checks.done()

        async def op(tx: Tx) -> wallet_pb2.ExpireLotResponse:
            txn, lot = await tx.expire_lot(request.lot_id, request.reason)
            return wallet_pb2.ExpireLotResponse(
                transaction=convert.transaction_to_proto(txn), lot=convert.lot_to_proto(lot)
            )

        return await mutate(self.ledger, "ExpireLot", request, wallet_pb2.ExpireLotResponse, op)

    @rpc_errors
    async def ExtendLot(
        self, request: wallet_pb2.ExtendLotRequest, context: Ctx
    ) -> wallet_pb2.ExtendLotResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("lot_id", request.lot_id)
        checks.text("reason", request.reason, max_chars=limits.REASON_CHARS_MAX)
        expires = None
        if not request.HasField("expire_time"):
            checks.fail("expire_time", "is required")
        else:
            expires = checks.timestamp("expire_time", request.expire_time)
        checks.done()
        assert expires is not None

        async def op(tx: Tx) -> wallet_pb2.ExtendLotResponse:
            txn, lot = await tx.extend_lot(request.lot_id, expires, request.reason)
            return wallet_pb2.ExtendLotResponse(
                transaction=convert.transaction_to_proto(txn), lot=convert.lot_to_proto(lot)
            )

        return await mutate(self.ledger, "ExtendLot", request, wallet_pb2.ExtendLotResponse, op)
