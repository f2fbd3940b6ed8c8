"""SettlementService: merchants and groups, settlement runs and statements (reports are in
report_rpcs). Validate, translate, call the ledger."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
from loyalty.v1 import settlement_pb2, settlement_pb2_grpc

from loyalty_ledger.api import limits
from loyalty_ledger.api.convert import timestamp
from loyalty_ledger.api.errors import rpc_errors
from loyalty_ledger.api.mutate import mutate
from loyalty_ledger.api.report_rpcs import ReportRpcs
from loyalty_ledger.api.validation import Checks
from loyalty_ledger.ledger import merchants, settlement
from loyalty_ledger.ledger.engine import Tx
from loyalty_ledger.ledger.merchants import GroupRecord, MerchantRecord
from loyalty_ledger.ledger.paging import page_size
from loyalty_ledger.ledger.service import Ledger
from loyalty_ledger.ledger.settlement import StatementRecord

Ctx: TypeAlias = grpc.aio.ServicerContext  # type: ignore[type-arg]

MERCHANT_UPDATABLE_PATHS = frozenset({"name", "group_ids"})
MERCHANT_GROUPS_MAX = 32
SETTLEMENT_PARTIES_MAX = 1000


def merchant_to_proto(m: MerchantRecord) -> settlement_pb2.Merchant:
    return settlement_pb2.Merchant(
        merchant_id=m.id,
        scheme_id=m.scheme_id,
        name=m.name,
        group_ids=m.group_ids,
        create_time=timestamp(m.created_at_us),
        update_time=timestamp(m.updated_at_us),
    )


def group_to_proto(g: GroupRecord) -> settlement_pb2.MerchantGroup:
    return settlement_pb2.MerchantGroup(
        group_id=g.id, scheme_id=g.scheme_id, name=g.name, create_time=timestamp(g.created_at_us)
    )


def statement_to_proto(s: StatementRecord) -> settlement_pb2.Statement:
    return settlement_pb2.Statement(
        statement_id=s.id,
        scheme_id=s.scheme_id,
        party_id=s.party_id,
        sequence=s.sequence,
        period_start=timestamp(s.period_start_us),
        period_end=timestamp(s.period_end_us),
        create_time=timestamp(s.created_at_us),
        lines=[
            settlement_pb2.StatementLine(
                asset=ln.asset,
                issued=ln.issued,
                reversed=ln.reversed,
                expired=ln.expired,
                redeemed_elsewhere=ln.redeemed_elsewhere,
                accepted=ln.accepted,
                refunded=ln.refunded,
                net=ln.net,
                direction=settlement_pb2.SettlementDirection.Value(
                    f"SETTLEMENT_DIRECTION_{ln.direction.value}"
                ),
                net_value=ln.net_value,
                value_currency=ln.value_currency,
            )
            for ln in s.lines
        ],
    )


def entry_to_proto(row: Any) -> settlement_pb2.StatementEntry:
    return settlement_pb2.StatementEntry(
        kind=settlement_pb2.StatementEntryKind.Value(f"STATEMENT_ENTRY_KIND_{row.kind}"),
        asset=row.asset,
        amount=row.amount,
        transaction_id=row.transaction_id,
        counterparty_id=row.counterparty_id,
    )


def _merchant_fields(checks: Checks, merchant: settlement_pb2.Merchant) -> None:
    checks.resource_id("merchant.scheme_id", merchant.scheme_id)
    checks.resource_id("merchant.merchant_id", merchant.merchant_id)


def _name(checks: Checks, path: str, name: str) -> None:
    checks.text(path, name, max_chars=limits.NAME_CHARS_MAX, required=True)


def _group_ids(checks: Checks, group_ids: Any) -> list[str]:
    ids = list(group_ids)
    if len(ids) > MERCHANT_GROUPS_MAX:
        checks.fail("merchant.group_ids", f"at most {MERCHANT_GROUPS_MAX} groups")
    checks.tags("merchant.group_ids", ids[:MERCHANT_GROUPS_MAX])
    if len(set(ids)) != len(ids):
        checks.fail("merchant.group_ids", "a group is listed twice")
    return sorted(set(ids))


class SettlementServicer(ReportRpcs, settlement_pb2_grpc.SettlementServiceServicer):
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    # -- merchants ---------------------------------------------------------------------------

    @rpc_errors
    async def CreateMerchant(
        self, request: settlement_pb2.CreateMerchantRequest, context: Ctx
    ) -> settlement_pb2.CreateMerchantResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        merchant = request.merchant
        _merchant_fields(checks, merchant)
        _name(checks, "merchant.name", merchant.name)
        group_ids = _group_ids(checks, merchant.group_ids)
        checks.done()

        async def op(tx: Tx) -> settlement_pb2.CreateMerchantResponse:
            await tx.get_scheme(merchant.scheme_id)
            created = await merchants.create_merchant(
                tx.conn,
                merchant.scheme_id,
                merchant.merchant_id,
                merchant.name,
                group_ids,
                tx.now_us,
            )
            return settlement_pb2.CreateMerchantResponse(merchant=merchant_to_proto(created))

        return await mutate(
            self.ledger, "CreateMerchant", request, settlement_pb2.CreateMerchantResponse, op
        )

    @rpc_errors
    async def GetMerchant(
        self, request: settlement_pb2.GetMerchantRequest, context: Ctx
    ) -> settlement_pb2.GetMerchantResponse:
        checks = Checks()
        checks.resource_id("scheme_id", request.scheme_id)
        checks.resource_id("merchant_id", request.merchant_id)
        checks.done()
        found = await self.ledger.read(
            lambda r: merchants.get_merchant(r.conn, request.scheme_id, request.merchant_id)
        )
        return settlement_pb2.GetMerchantResponse(merchant=merchant_to_proto(found))

    @rpc_errors
    async def ListMerchants(
        self, request: settlement_pb2.ListMerchantsRequest, context: Ctx
    ) -> settlement_pb2.ListMerchantsResponse:
        checks = Checks()
        checks.resource_id("scheme_id", request.scheme_id)
        if request.group_id:
            checks.tag("group_id", request.group_id)
        checks.done()
        size = page_size(request.page_size)

        async def read(r: Any) -> Any:
            await r.get_scheme(request.scheme_id)
            return await merchants.list_merchants(
                r.conn, request.scheme_id, request.group_id, size, request.page_token
            )

        page = await self.ledger.read(read)
        return settlement_pb2.ListMerchantsResponse(
            merchants=[merchant_to_proto(m) for m in page.items], next_page_token=page.next_token
        )

    @rpc_errors
    async def UpdateMerchant(
        self, request: settlement_pb2.UpdateMerchantRequest, context: Ctx
    ) -> settlement_pb2.UpdateMerchantResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        merchant = request.merchant
        _merchant_fields(checks, merchant)
        paths = set(request.update_mask.paths)
        if not paths:
            checks.fail("update_mask", "name the fields to update")
        for path in sorted(paths - MERCHANT_UPDATABLE_PATHS):
            checks.fail("update_mask", f"{path!r} cannot be updated")
        name = group_ids = None
        if "name" in paths:
            _name(checks, "merchant.name", merchant.name)
            name = merchant.name
        if "group_ids" in paths:
            group_ids = _group_ids(checks, merchant.group_ids)
        checks.done()

        async def op(tx: Tx) -> settlement_pb2.UpdateMerchantResponse:
            updated = await merchants.update_merchant(
                tx.conn, merchant.scheme_id, merchant.merchant_id, name, group_ids, tx.now_us
            )
            return settlement_pb2.UpdateMerchantResponse(merchant=merchant_to_proto(updated))

        return await mutate(
            self.ledger, "UpdateMerchant", request, settlement_pb2.UpdateMerchantResponse, op
        )

    @rpc_errors
    async def CreateMerchantGroup(
        self, request: settlement_pb2.CreateMerchantGroupRequest, context: Ctx
    ) -> settlement_pb2.CreateMerchantGroupResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        group = request.group
        checks.resource_id("group.scheme_id", group.scheme_id)
        checks.tag("group.group_id", group.group_id)
        _name(checks, "group.name", group.name)
        checks.done()

        async def op(tx: Tx) -> settlement_pb2.CreateMerchantGroupResponse:
            await tx.get_scheme(group.scheme_id)
            created = await merchants.create_group(
                tx.conn, group.scheme_id, group.group_id, group.name, tx.now_us
            )
            return settlement_pb2.CreateMerchantGroupResponse(group=group_to_proto(created))

        return await mutate(
            self.ledger,
            "CreateMerchantGroup",
            request,
            settlement_pb2.CreateMerchantGroupResponse,
            op,
        )

    @rpc_errors
    async def ListMerchantGroups(
        self, request: settlement_pb2.ListMerchantGroupsRequest, context: Ctx
    ) -> settlement_pb2.ListMerchantGroupsResponse:
        checks = Checks()
        checks.resource_id("scheme_id", request.scheme_id)
        checks.done()
        size = page_size(request.page_size)

        async def read(r: Any) -> Any:
            await r.get_scheme(request.scheme_id)
            return await merchants.list_groups(r.conn, request.scheme_id, size, request.page_token)

        page = await self.ledger.read(read)
        return settlement_pb2.ListMerchantGroupsResponse(
            groups=[group_to_proto(g) for g in page.items], next_page_token=page.next_token
        )

    # -- settlement --------------------------------------------------------------------------

    @rpc_errors
    async def RunSettlement(
        self, request: settlement_pb2.RunSettlementRequest, context: Ctx
    ) -> settlement_pb2.RunSettlementResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("scheme_id", request.scheme_id)
        start = end = None
        for name in ("period_start", "period_end"):
            if not request.HasField(name):
                checks.fail(name, "is required")
        if request.HasField("period_start"):
            start = checks.timestamp("period_start", request.period_start)
        if request.HasField("period_end"):
            end = checks.timestamp("period_end", request.period_end)
        if start is not None and end is not None and end <= start:
            checks.fail("period_end", "must be after period_start")
        # Every write stamped before the period end has committed by then.
        latest = self.ledger.clock.now_us() - settlement.CLOSE_DELAY_US
        if end is not None and end > latest:
            checks.fail("period_end", "must be at least one minute in the past")
        if len(request.party_ids) > SETTLEMENT_PARTIES_MAX:
            checks.fail("party_ids", f"at most {SETTLEMENT_PARTIES_MAX}")
        checks.ids("party_ids", request.party_ids[:SETTLEMENT_PARTIES_MAX])
        checks.done()
        assert start is not None and end is not None

        async def op(tx: Tx) -> settlement_pb2.RunSettlementResponse:
            scheme = await tx.get_scheme(request.scheme_id)
            parties = list(request.party_ids) or await settlement.parties(
                tx.conn, scheme.id, start, end
            )
            statements = await settlement.settle(tx.conn, scheme, parties, start, end, tx.now_us)
            return settlement_pb2.RunSettlementResponse(
                statements=[statement_to_proto(s) for s in statements]
            )

        return await mutate(
            self.ledger, "RunSettlement", request, settlement_pb2.RunSettlementResponse, op
        )

    @rpc_errors
    async def GetStatement(
        self, request: settlement_pb2.GetStatementRequest, context: Ctx
    ) -> settlement_pb2.GetStatementResponse:
        checks = Checks()
        checks.resource_id("statement_id", request.statement_id)
        checks.done()
        found = await self.ledger.read(
            lambda r: settlement.get_statement(r.conn, request.statement_id)
        )
        return settlement_pb2.GetStatementResponse(statement=statement_to_proto(found))

    @rpc_errors
    async def ListStatements(
        self, request: settlement_pb2.ListStatementsRequest, context: Ctx
    ) -> settlement_pb2.ListStatementsResponse:
        checks = Checks()
        checks.resource_id("scheme_id", request.scheme_id)
        checks.resource_id("party_id", request.party_id, required=False)
        checks.done()
        size = page_size(request.page_size)

        async def read(r: Any) -> Any:
            await r.get_scheme(request.scheme_id)
            return await settlement.list_statements(
                r.conn, request.scheme_id, request.party_id, size, request.page_token
            )

        page = await self.ledger.read(read)
        return settlement_pb2.ListStatementsResponse(
            statements=[statement_to_proto(s) for s in page.items],
            next_page_token=page.next_token,
        )

    @rpc_errors
    async def ListStatementEntries(
        self, request: settlement_pb2.ListStatementEntriesRequest, context: Ctx
    ) -> settlement_pb2.ListStatementEntriesResponse:
        checks = Checks()
        checks.resource_id("statement_id", request.statement_id)
        checks.done()
        size = page_size(request.page_size)
        page = await self.ledger.read(
            lambda r: settlement.list_entries(
                r.conn, request.statement_id, size, request.page_token
            )
        )
        return settlement_pb2.ListStatementEntriesResponse(
            entries=[entry_to_proto(row) for row in page.items], next_page_token=page.next_token
        )
