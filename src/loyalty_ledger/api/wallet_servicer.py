"""WalletService: validate, translate, call the ledger. No rules live here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message
from loyalty.v1 import common_pb2, expiry_pb2, wallet_pb2, wallet_pb2_grpc

from loyalty_ledger.api import convert, limits
from loyalty_ledger.api.errors import rpc_errors
from loyalty_ledger.api.expiry_rpcs import ExpiryRpcs
from loyalty_ledger.api.mutate import mutate
from loyalty_ledger.api.validation import Checks
from loyalty_ledger.api.watch import watch_expirations
from loyalty_ledger.domain.spend_order import SpendContext
from loyalty_ledger.events.hub import ExpirationHub
from loyalty_ledger.jobs.runner import Runner
from loyalty_ledger.ledger.engine import CreditCommand, DebitCommand, Tx
from loyalty_ledger.ledger.paging import page_size
from loyalty_ledger.ledger.reads import Reader
from loyalty_ledger.ledger.records import LotState, TxType, WalletStatus
from loyalty_ledger.ledger.service import Ledger

M = TypeVar("M", bound=Message)
Ctx: TypeAlias = grpc.aio.ServicerContext  # type: ignore[type-arg]

_CREDIT_KINDS = {
    wallet_pb2.CREDIT_KIND_AWARD: TxType.AWARD,
    wallet_pb2.CREDIT_KIND_TOP_UP: TxType.TOP_UP,
}
_TX_TYPES = {wallet_pb2.TransactionType.Value(f"TRANSACTION_TYPE_{t.value}"): t for t in TxType}
_LOT_STATES = {
    wallet_pb2.LOT_STATE_OPEN: LotState.OPEN,
    wallet_pb2.LOT_STATE_EXHAUSTED: LotState.EXHAUSTED,
    wallet_pb2.LOT_STATE_EXPIRED: LotState.EXPIRED,
    wallet_pb2.LOT_STATE_REVERSED: LotState.REVERSED,
}


class WalletServicer(ExpiryRpcs, wallet_pb2_grpc.WalletServiceServicer):
    def __init__(self, ledger: Ledger, hub: ExpirationHub, runner: Runner) -> None:
        self.ledger = ledger
        self.hub = hub
        self.runner = runner

    async def WatchExpirations(
        self, request: expiry_pb2.WatchExpirationsRequest, context: Ctx
    ) -> AsyncIterator[expiry_pb2.WatchExpirationsResponse]:
        async for message in watch_expirations(self.hub, request, context):
            yield message

    # -- wallets -----------------------------------------------------------------------

    @rpc_errors
    async def CreateWallet(
        self, request: wallet_pb2.CreateWalletRequest, context: Ctx
    ) -> wallet_pb2.CreateWalletResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("scheme_id", request.scheme_id)
        checks.text(
            "customer_ref",
            request.customer_ref,
            max_chars=limits.CUSTOMER_REF_CHARS_MAX,
            required=True,
        )
        checks.metadata("metadata", request.metadata)
        checks.tags("tags", request.tags)
        if request.referred_by_wallet_id:
            checks.resource_id("referred_by_wallet_id", request.referred_by_wallet_id)
        birthday = None
        if request.HasField("birthday"):
            birthday = checks.month_day("birthday", request.birthday.month, request.birthday.day)
        checks.done()

        async def op(tx: Tx) -> wallet_pb2.CreateWalletResponse:
            wallet = await tx.create_wallet(
                request.scheme_id,
                request.customer_ref,
                dict(request.metadata),
                request.tags,
                request.referred_by_wallet_id or None,
                birthday,
            )
            return wallet_pb2.CreateWalletResponse(wallet=convert.wallet_to_proto(wallet))

        return await mutate(
            self.ledger, "CreateWallet", request, wallet_pb2.CreateWalletResponse, op
        )

    @rpc_errors
    async def GetWallet(
        self, request: wallet_pb2.GetWalletRequest, context: Ctx
    ) -> wallet_pb2.GetWalletResponse:
        checks = Checks()
        checks.resource_id("wallet_id", request.wallet_id)
        checks.done()
        wallet = await self.ledger.read(lambda r: r.get_wallet(request.wallet_id))
        return wallet_pb2.GetWalletResponse(wallet=convert.wallet_to_proto(wallet))

    @rpc_errors
    async def ListTierChanges(
        self, request: wallet_pb2.ListTierChangesRequest, context: Ctx
    ) -> wallet_pb2.ListTierChangesResponse:
        checks = Checks()
        checks.resource_id("wallet_id", request.wallet_id)
        checks.done()
        size = page_size(request.page_size)
        page = await self.ledger.read(
            lambda r: r.list_tier_changes(request.wallet_id, size, request.page_token)
        )
        return wallet_pb2.ListTierChangesResponse(
            tier_changes=[convert.tier_change_to_proto(row) for row in page.items],
            next_page_token=page.next_token,
        )

    @rpc_errors
    async def ListWallets(
        self, request: wallet_pb2.ListWalletsRequest, context: Ctx
    ) -> wallet_pb2.ListWalletsResponse:
        checks = Checks()
        checks.resource_id("scheme_id", request.scheme_id, required=False)
        checks.text("customer_ref", request.customer_ref, max_chars=limits.CUSTOMER_REF_CHARS_MAX)
        checks.done()
        size = page_size(request.page_size)
        page = await self.ledger.read(
            lambda r: r.list_wallets(
                request.scheme_id, request.customer_ref, size, request.page_token
            )
        )
        return wallet_pb2.ListWalletsResponse(
            wallets=[convert.wallet_to_proto(w) for w in page.items],
            next_page_token=page.next_token,
        )

    async def _change_status(
        self,
        method: str,
        request: wallet_pb2.FreezeWalletRequest
        | wallet_pb2.UnfreezeWalletRequest
        | wallet_pb2.CloseWalletRequest,
        response_type: type[M],
        target: WalletStatus,
    ) -> M:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("wallet_id", request.wallet_id)
        checks.text("reason", request.reason, max_chars=limits.REASON_CHARS_MAX)
        checks.done()

        async def op(tx: Tx) -> M:
            wallet = await tx.change_wallet_status(request.wallet_id, target, request.reason)
            return response_type(wallet=convert.wallet_to_proto(wallet))

        return await mutate(self.ledger, method, request, response_type, op)

    @rpc_errors
    async def FreezeWallet(
        self, request: wallet_pb2.FreezeWalletRequest, context: Ctx
    ) -> wallet_pb2.FreezeWalletResponse:
        return await self._change_status(
            "FreezeWallet", request, wallet_pb2.FreezeWalletResponse, WalletStatus.FROZEN
        )

    @rpc_errors
    async def UnfreezeWallet(
        self, request: wallet_pb2.UnfreezeWalletRequest, context: Ctx
    ) -> wallet_pb2.UnfreezeWalletResponse:
        return await self._change_status(
            "UnfreezeWallet", request, wallet_pb2.UnfreezeWalletResponse, WalletStatus.ACTIVE
        )

    @rpc_errors
    async def CloseWallet(
        self, request: wallet_pb2.CloseWalletRequest, context: Ctx
    ) -> wallet_pb2.CloseWalletResponse:
        return await self._change_status(
            "CloseWallet", request, wallet_pb2.CloseWalletResponse, WalletStatus.CLOSED
        )

    # -- reads -------------------------------------------------------------------------

    @rpc_errors
    async def GetBalance(
        self, request: wallet_pb2.GetBalanceRequest, context: Ctx
    ) -> wallet_pb2.GetBalanceResponse:
        checks = Checks()
        checks.resource_id("wallet_id", request.wallet_id)
        checks.asset("asset", request.asset, required=False)
        checks.done()

        async def read(r: Reader) -> wallet_pb2.GetBalanceResponse:
            balances = await r.get_balance(request.wallet_id, request.asset)
            return wallet_pb2.GetBalanceResponse(
                wallet_id=request.wallet_id,
                balances=[convert.balance_to_proto(b) for b in balances],
                as_of_time=convert.timestamp(r.now_us),
            )

        return await self.ledger.read(read)

    @rpc_errors
    async def ListLots(
        self, request: wallet_pb2.ListLotsRequest, context: Ctx
    ) -> wallet_pb2.ListLotsResponse:
        checks = Checks()
        checks.resource_id("wallet_id", request.wallet_id)
        checks.asset("asset", request.asset, required=False)
        state = _LOT_STATES.get(request.state)
        if state is None and request.state != wallet_pb2.LOT_STATE_UNSPECIFIED:
            checks.fail("state", "unknown lot state")
        before = None
        if request.HasField("expire_before_time"):
            before = checks.timestamp("expire_before_time", request.expire_before_time)
        checks.done()
        size = page_size(request.page_size)
        page = await self.ledger.read(
            lambda r: r.list_lots(
                request.wallet_id,
                asset=request.asset,
                state=state,
                expire_before_us=before,
                size=size,
                token=request.page_token,
            )
        )
        return wallet_pb2.ListLotsResponse(
            lots=[convert.lot_to_proto(lot) for lot in page.items],
            next_page_token=page.next_token,
        )

    @rpc_errors
    async def ListTransactions(
        self, request: wallet_pb2.ListTransactionsRequest, context: Ctx
    ) -> wallet_pb2.ListTransactionsResponse:
        checks = Checks()
        checks.resource_id("wallet_id", request.wallet_id)
        types = []
        for i, value in enumerate(request.types):
            if value in _TX_TYPES:
                types.append(_TX_TYPES[value])
            else:
                checks.fail(f"types[{i}]", "unknown transaction type")
        start = end = None
        if request.HasField("start_time"):
            start = checks.timestamp("start_time", request.start_time)
        if request.HasField("end_time"):
            end = checks.timestamp("end_time", request.end_time)
        checks.done()
        size = page_size(request.page_size)
        page = await self.ledger.read(
            lambda r: r.list_transactions(
                request.wallet_id,
                types=types,
                start_us=start,
                end_us=end,
                size=size,
                token=request.page_token,
            )
        )
        return wallet_pb2.ListTransactionsResponse(
            transactions=[convert.transaction_to_proto(t) for t in page.items],
            next_page_token=page.next_token,
        )

    @rpc_errors
    async def GetTransaction(
        self, request: wallet_pb2.GetTransactionRequest, context: Ctx
    ) -> wallet_pb2.GetTransactionResponse:
        checks = Checks()
        checks.resource_id("transaction_id", request.transaction_id)
        checks.done()
        txn = await self.ledger.read(lambda r: r.get_transaction(request.transaction_id))
        return wallet_pb2.GetTransactionResponse(transaction=convert.transaction_to_proto(txn))

    @rpc_errors
    async def GetHold(
        self, request: wallet_pb2.GetHoldRequest, context: Ctx
    ) -> wallet_pb2.GetHoldResponse:
        checks = Checks()
        checks.resource_id("hold_id", request.hold_id)
        checks.done()
        hold = await self.ledger.read(lambda r: r.get_hold(request.hold_id))
        return wallet_pb2.GetHoldResponse(hold=convert.hold_to_proto(hold))

    # -- value movements ---------------------------------------------------------------

    @rpc_errors
    async def Credit(
        self, request: wallet_pb2.CreditRequest, context: Ctx
    ) -> wallet_pb2.CreditResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("wallet_id", request.wallet_id)
        kind = _CREDIT_KINDS.get(request.kind)
        if kind is None:
            checks.fail("kind", "must be CREDIT_KIND_AWARD or CREDIT_KIND_TOP_UP")
        checks.asset("asset", request.asset)
        checks.amount("amount", request.amount)
        funding = convert.FUNDING_FROM_PROTO.get(request.funding)
        if funding is None:
            checks.fail("funding", "must be FUNDING_PROMOTIONAL or FUNDING_CASH")
        elif kind is TxType.TOP_UP and request.funding != common_pb2.FUNDING_CASH:
            checks.fail("funding", "a top-up is cash value: use FUNDING_CASH")
        if request.sponsor_id and request.funding == common_pb2.FUNDING_CASH:
            checks.fail("sponsor_id", "only promotional value has a sponsor")
        checks.resource_id("sponsor_id", request.sponsor_id, required=False)
        expire_at = policy = available_at = None
        if request.HasField("expire_time"):
            expire_at = checks.timestamp("expire_time", request.expire_time)
            if request.expiry_policy.WhichOneof("rule"):
                checks.fail("expiry_policy", "set expire_time or expiry_policy, not both")
        elif request.expiry_policy.WhichOneof("rule"):  # an empty policy: the scheme default
            policy = convert.policy_from_proto(checks, "expiry_policy", request.expiry_policy)
        if request.HasField("available_time"):
            available_at = checks.timestamp("available_time", request.available_time)
        checks.ids("spend_conditions.merchant_ids", request.spend_conditions.merchant_ids)
        checks.ids("spend_conditions.product_ids", request.spend_conditions.product_ids)
        checks.text("reference", request.reference, max_chars=limits.REFERENCE_CHARS_MAX)
        checks.metadata("metadata", request.metadata)
        checks.done()
        assert kind is not None and funding is not None
        command = CreditCommand(
            wallet_id=request.wallet_id,
            kind=kind,
            asset=request.asset,
            amount=request.amount,
            funding=funding,
            sponsor_id=request.sponsor_id,
            expire_at_us=expire_at,
            expiry_policy=policy,
            available_at_us=available_at,
            merchant_ids=tuple(request.spend_conditions.merchant_ids),
            product_ids=tuple(request.spend_conditions.product_ids),
            reference=request.reference,
            metadata=dict(request.metadata),
        )

        async def op(tx: Tx) -> wallet_pb2.CreditResponse:
            txn, lot = await tx.credit(command)
            return wallet_pb2.CreditResponse(
                transaction=convert.transaction_to_proto(txn), lot=convert.lot_to_proto(lot)
            )

        return await mutate(self.ledger, "Credit", request, wallet_pb2.CreditResponse, op)

    def _debit_command(
        self,
        checks: Checks,
        request: wallet_pb2.SpendRequest | wallet_pb2.AuthorizeHoldRequest,
    ) -> DebitCommand:
        checks.request_id(request.request_id)
        checks.resource_id("wallet_id", request.wallet_id)
        checks.asset("asset", request.asset)
        checks.amount("amount", request.amount)
        checks.resource_id("merchant_id", request.merchant_id)
        checks.ids("product_ids", request.product_ids)
        checks.text("reference", request.reference, max_chars=limits.REFERENCE_CHARS_MAX)
        metadata = dict(getattr(request, "metadata", {}))
        checks.metadata("metadata", metadata)
        return DebitCommand(
            wallet_id=request.wallet_id,
            asset=request.asset,
            amount=request.amount,
            merchant_id=request.merchant_id,
            product_ids=tuple(request.product_ids),
            allow_partial=request.allow_partial,
            reference=request.reference,
            metadata=metadata,
        )

    @rpc_errors
    async def Spend(
        self, request: wallet_pb2.SpendRequest, context: Ctx
    ) -> wallet_pb2.SpendResponse:
        checks = Checks()
        command = self._debit_command(checks, request)
        checks.done()

        async def op(tx: Tx) -> wallet_pb2.SpendResponse:
            txn, spent = await tx.spend(command)
            return wallet_pb2.SpendResponse(
                transaction=convert.transaction_to_proto(txn), amount_spent=spent
            )

        return await mutate(self.ledger, "Spend", request, wallet_pb2.SpendResponse, op)

    @rpc_errors
    async def SetWalletTags(
        self, request: wallet_pb2.SetWalletTagsRequest, context: Ctx
    ) -> wallet_pb2.SetWalletTagsResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("wallet_id", request.wallet_id)
        checks.tags("tags", request.tags)
        checks.done()

        async def op(tx: Tx) -> wallet_pb2.SetWalletTagsResponse:
            wallet = await tx.set_wallet_tags(request.wallet_id, request.tags)
            return wallet_pb2.SetWalletTagsResponse(wallet=convert.wallet_to_proto(wallet))

        return await mutate(
            self.ledger, "SetWalletTags", request, wallet_pb2.SetWalletTagsResponse, op
        )

    @rpc_errors
    async def SetWalletBirthday(
        self, request: wallet_pb2.SetWalletBirthdayRequest, context: Ctx
    ) -> wallet_pb2.SetWalletBirthdayResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("wallet_id", request.wallet_id)
        birthday = None
        if request.HasField("birthday"):
            birthday = checks.month_day("birthday", request.birthday.month, request.birthday.day)
        checks.done()

        async def op(tx: Tx) -> wallet_pb2.SetWalletBirthdayResponse:
            wallet = await tx.set_wallet_birthday(request.wallet_id, birthday)
            return wallet_pb2.SetWalletBirthdayResponse(wallet=convert.wallet_to_proto(wallet))

        return await mutate(
            self.ledger, "SetWalletBirthday", request, wallet_pb2.SetWalletBirthdayResponse, op
        )

    @rpc_errors
    async def QuoteRedemption(
        self, request: wallet_pb2.QuoteRedemptionRequest, context: Ctx
    ) -> wallet_pb2.QuoteRedemptionResponse:
        checks = Checks()
        checks.resource_id("wallet_id", request.wallet_id)
        checks.asset("asset", request.asset)
        checks.asset("currency", request.currency)
        checks.amount("amount", request.amount, allow_zero=True)
        checks.resource_id("merchant_id", request.merchant_id)
        checks.ids("product_ids", request.product_ids)
        checks.done()

        async def read(r: Reader) -> wallet_pb2.QuoteRedemptionResponse:
            ctx = SpendContext(request.merchant_id, frozenset(request.product_ids), r.now_us)
            found, available, rate = await r.quote_redemption(
                request.wallet_id, request.asset, request.currency, request.amount, ctx
            )
            return wallet_pb2.QuoteRedemptionResponse(
                points=found.points,
                value=found.value,
                available_points=available,
                rate_points=rate.points,
                rate_value=rate.value,
            )

        return await self.ledger.read(read)

    @rpc_errors
    async def RedeemPoints(
        self, request: wallet_pb2.RedeemPointsRequest, context: Ctx
    ) -> wallet_pb2.RedeemPointsResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("wallet_id", request.wallet_id)
        checks.asset("asset", request.asset)
        checks.asset("currency", request.currency)
        checks.amount("value", request.value)
        checks.resource_id("merchant_id", request.merchant_id)
        checks.ids("product_ids", request.product_ids)
        checks.text("reference", request.reference, max_chars=limits.REFERENCE_CHARS_MAX)
        checks.done()
        command = DebitCommand(
            wallet_id=request.wallet_id,
            asset=request.asset,
            amount=0,  # the points the value costs, worked out under the wallet lock
            merchant_id=request.merchant_id,
            product_ids=tuple(request.product_ids),
            reference=request.reference,
        )

        async def op(tx: Tx) -> wallet_pb2.RedeemPointsResponse:
            txn, points = await tx.redeem_points(command, request.currency, request.value)
            return wallet_pb2.RedeemPointsResponse(
                transaction=convert.transaction_to_proto(txn), points=points, value=request.value
            )

        return await mutate(
            self.ledger, "RedeemPoints", request, wallet_pb2.RedeemPointsResponse, op
        )

    @rpc_errors
    async def AuthorizeHold(
        self, request: wallet_pb2.AuthorizeHoldRequest, context: Ctx
    ) -> wallet_pb2.AuthorizeHoldResponse:
        checks = Checks()
        command = self._debit_command(checks, request)
        ttl_us: int | None = limits.HOLD_TTL_DEFAULT_SECONDS * 1_000_000
        if request.HasField("ttl"):
            ttl_us = checks.duration_us("ttl", request.ttl, low=1, high=limits.HOLD_TTL_SECONDS_MAX)
        checks.done()
        assert ttl_us is not None

        async def op(tx: Tx) -> wallet_pb2.AuthorizeHoldResponse:
            hold, txn = await tx.authorize_hold(command, ttl_us)
            return wallet_pb2.AuthorizeHoldResponse(
                hold=convert.hold_to_proto(hold), transaction=convert.transaction_to_proto(txn)
            )

        return await mutate(
            self.ledger, "AuthorizeHold", request, wallet_pb2.AuthorizeHoldResponse, op
        )

    @rpc_errors
    async def CaptureHold(
        self, request: wallet_pb2.CaptureHoldRequest, context: Ctx
    ) -> wallet_pb2.CaptureHoldResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("hold_id", request.hold_id)
        checks.amount("amount", request.amount, allow_zero=True)
        checks.done()

        async def op(tx: Tx) -> wallet_pb2.CaptureHoldResponse:
            hold, txn = await tx.capture_hold(request.hold_id, request.amount)
            return wallet_pb2.CaptureHoldResponse(
                hold=convert.hold_to_proto(hold), transaction=convert.transaction_to_proto(txn)
            )

        return await mutate(self.ledger, "CaptureHold", request, wallet_pb2.CaptureHoldResponse, op)

    @rpc_errors
    async def VoidHold(
        self, request: wallet_pb2.VoidHoldRequest, context: Ctx
    ) -> wallet_pb2.VoidHoldResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("hold_id", request.hold_id)
        checks.done()

        async def op(tx: Tx) -> wallet_pb2.VoidHoldResponse:
            hold, txn = await tx.void_hold(request.hold_id)
            response = wallet_pb2.VoidHoldResponse(hold=convert.hold_to_proto(hold))
            if txn is not None:
                response.transaction.CopyFrom(convert.transaction_to_proto(txn))
            return response

        return await mutate(self.ledger, "VoidHold", request, wallet_pb2.VoidHoldResponse, op)

    @rpc_errors
    async def RefundSpend(
        self, request: wallet_pb2.RefundSpendRequest, context: Ctx
    ) -> wallet_pb2.RefundSpendResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("transaction_id", request.transaction_id)
        checks.amount("amount", request.amount, allow_zero=True)
        checks.text("reference", request.reference, max_chars=limits.REFERENCE_CHARS_MAX)
        checks.done()

        async def op(tx: Tx) -> wallet_pb2.RefundSpendResponse:
            result = await tx.refund(request.transaction_id, request.amount, request.reference)
            response = wallet_pb2.RefundSpendResponse(
                transaction=convert.transaction_to_proto(result.refund),
                amount_refunded=result.amount,
            )
            if result.expire is not None:
                response.expire_transaction.CopyFrom(convert.transaction_to_proto(result.expire))
            return response

        return await mutate(self.ledger, "RefundSpend", request, wallet_pb2.RefundSpendResponse, op)

    @rpc_errors
    async def ReverseCredit(
        self, request: wallet_pb2.ReverseCreditRequest, context: Ctx
    ) -> wallet_pb2.ReverseCreditResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("transaction_id", request.transaction_id)
        checks.text("reason", request.reason, max_chars=limits.REASON_CHARS_MAX)
        checks.done()

        async def op(tx: Tx) -> wallet_pb2.ReverseCreditResponse:
            result = await tx.reverse_credit(request.transaction_id, request.reason)
            return wallet_pb2.ReverseCreditResponse(
                transaction=convert.transaction_to_proto(result.transaction),
                amount_reversed=result.reversed,
                amount_already_spent=result.already_spent,
                amount_held=result.held,
            )

        return await mutate(
            self.ledger, "ReverseCredit", request, wallet_pb2.ReverseCreditResponse, op
        )

    @rpc_errors
    async def Transfer(
        self, request: wallet_pb2.TransferRequest, context: Ctx
    ) -> wallet_pb2.TransferResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("from_wallet_id", request.from_wallet_id)
        checks.resource_id("to_wallet_id", request.to_wallet_id)
        checks.asset("asset", request.asset)
        checks.amount("amount", request.amount)
        checks.text("reference", request.reference, max_chars=limits.REFERENCE_CHARS_MAX)
        checks.done()

        async def op(tx: Tx) -> wallet_pb2.TransferResponse:
            txn, lots = await tx.transfer(
                request.from_wallet_id,
                request.to_wallet_id,
                request.asset,
                request.amount,
                request.reference,
            )
            return wallet_pb2.TransferResponse(
                transaction=convert.transaction_to_proto(txn),
                lots=[convert.lot_to_proto(lot) for lot in lots],
            )

        return await mutate(self.ledger, "Transfer", request, wallet_pb2.TransferResponse, op)

    @rpc_errors
    async def MergeWallets(
        self, request: wallet_pb2.MergeWalletsRequest, context: Ctx
    ) -> wallet_pb2.MergeWalletsResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("survivor_wallet_id", request.survivor_wallet_id)
        checks.resource_id("duplicate_wallet_id", request.duplicate_wallet_id)
        checks.done()

        async def op(tx: Tx) -> wallet_pb2.MergeWalletsResponse:
            survivor, duplicate, txn = await tx.merge_wallets(
                request.survivor_wallet_id, request.duplicate_wallet_id
            )
            return wallet_pb2.MergeWalletsResponse(
                survivor=convert.wallet_to_proto(survivor),
                duplicate=convert.wallet_to_proto(duplicate),
                transaction=convert.transaction_to_proto(txn),
            )

        return await mutate(
            self.ledger, "MergeWallets", request, wallet_pb2.MergeWalletsResponse, op
        )
