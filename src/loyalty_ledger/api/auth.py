"""Authentication and authorization of every call: API keys and their roles.

Every method of every service needs `authorization: Bearer <secret>` metadata, streams
included; only health and reflection are open. The interceptor finds the key (a short cache
in front of the database), refuses a missing, unknown or revoked key with UNAUTHENTICATED,
checks what the role may do with PERMISSION_DENIED (before the handler runs, so a refused
call changes nothing), and runs the call with the key as its idempotency scope. A call that
comes while the server is still starting (database not yet migrated, admin key not yet set
up) waits for it, briefly, and otherwise ends UNAVAILABLE `SERVER_STARTING`: an honest,
retryable answer instead of UNAUTHENTICATED for a key that merely does not exist yet.

Roles: ADMIN may do everything. READER may call every read (Get*, List*, Quote*, Evaluate*,
Watch*, Export*). SUBSCRIBER may only watch, limited to its schemes when it has any. MERCHANT
acts as one merchant of one scheme: the rules below say which methods it may call and which
objects it may touch.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy import select

from loyalty_ledger.api.context import caller_scope
from loyalty_ledger.api.errors import abort_for
from loyalty_ledger.domain.errors import (
    DeadlineExceeded,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from loyalty_ledger.ledger import api_keys
from loyalty_ledger.ledger import settlement as statements
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.api_keys import ApiKeyRecord, Role
from loyalty_ledger.ledger.offers import find_offer
from loyalty_ledger.ledger.reads import Reader
from loyalty_ledger.ledger.service import Ledger

OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
ADMIN_ONLY_SERVICES = frozenset({"loyalty.v1.AdminService", "loyalty.v1.TestClockService"})
READ_PREFIXES = ("Get", "List", "Quote", "Evaluate", "Watch", "Export")
CACHE_ENTRIES_MAX = 10_000
# How long a call that comes before the server is ready waits for it (never past its own
# deadline) before it ends UNAVAILABLE SERVER_STARTING.
READY_WAIT_SECONDS_MAX = 10.0
# Give up this much before the caller's deadline, so it gets the reason, not DEADLINE_EXCEEDED.
READY_WAIT_DEADLINE_MARGIN_SECONDS = 0.05


class KeyCache:
    """Keys by secret for `ttl_s` seconds; unknown secrets are not cached (a flood of forged
    keys cannot crowd out real ones). A revocation here clears it at once; other replicas see
    it within the TTL."""

    def __init__(self, ledger: Ledger, ttl_s: float) -> None:
        self.ledger = ledger
        self.ttl_s = ttl_s
        self._keys: dict[str, tuple[ApiKeyRecord, float]] = {}

    async def find(self, secret: str) -> ApiKeyRecord | None:
        digest = api_keys.digest(secret)
        cached = self._keys.get(digest)
        if cached is not None and time.monotonic() - cached[1] < self.ttl_s:
            return cached[0]
        key = await self.ledger.read(lambda r: api_keys.find_by_secret(r.conn, secret))
        if key is not None:
            if len(self._keys) >= CACHE_ENTRIES_MAX:
                self._keys.clear()
            self._keys[digest] = (key, time.monotonic())
        return key

    def clear(self) -> None:
        self._keys.clear()


def _secret(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, secret = value.partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return secret.strip()
    return ""


# -- what a merchant may touch --------------------------------------------------------------


@dataclass
class MerchantScope:
    """The objects a MERCHANT key may touch: its scheme's wallets, its own holds, spends,
    events and statements. Unknown objects pass (the handler answers NOT_FOUND)."""

    key: ApiKeyRecord
    reader: Reader

    @property
    def scheme_id(self) -> str:
        return self.key.scheme_ids[0] if self.key.scheme_ids else ""

    def deny(self, what: str) -> PermissionDenied:
        return PermissionDenied(
            f"key {self.key.id} acts for merchant {self.key.merchant_id} of scheme "
            f"{self.scheme_id}: {what}",
            key_id=self.key.id,
        )

    def scheme(self, scheme_id: str) -> None:
        if scheme_id != self.scheme_id:
            raise self.deny(f"scheme {scheme_id!r} is not its scheme")

    def merchant(self, merchant_id: str) -> None:
        if merchant_id != self.key.merchant_id:
            raise self.deny(f"it cannot act as merchant {merchant_id!r}")

    async def wallet(self, wallet_id: str) -> None:
        try:
            wallet = await self.reader.get_wallet(wallet_id)
        except NotFound:
            return
        if wallet.scheme_id != self.scheme_id:
            raise self.deny(f"wallet {wallet_id} is in another scheme")

    async def owned(self, table: Any, row_id: str, what: str, *, by_merchant: bool = True) -> None:
        """The row (a hold, spend or event) is of its scheme and, with `by_merchant`, its
        merchant's."""
        row = await self._row(table, row_id)
        if row is None:
            return
        if row.scheme_id != self.scheme_id or (
            by_merchant and row.merchant_id != self.key.merchant_id
        ):
            raise self.deny(f"{what} {row_id} is another merchant's")

    async def offer(self, offer_id: str) -> None:
        try:
            offer = await find_offer(self.reader.conn, offer_id)
        except NotFound:
            return
        self.scheme(offer.scheme_id)

    async def statement(self, statement_id: str) -> None:
        try:
            found = await statements.get_statement(self.reader.conn, statement_id)
        except NotFound:
            return
        if (found.scheme_id, found.party_id) != (self.scheme_id, self.key.merchant_id):
            raise self.deny(f"statement {statement_id} is another party's")

    async def _row(self, table: Any, row_id: str) -> Any:
        return (await self.reader.conn.execute(select(table).where(table.c.id == row_id))).first()


async def _wallet_as_merchant(s: MerchantScope, request: Any) -> None:
    await s.wallet(request.wallet_id)
    s.merchant(request.merchant_id)


async def _event(s: MerchantScope, request: Any) -> None:
    await s.wallet(request.wallet_id)
    s.merchant(request.event.merchant_id)


async def _events(s: MerchantScope, request: Any) -> None:
    for item in request.events:
        await _event(s, item)


async def _statements(s: MerchantScope, request: Any) -> None:
    s.scheme(request.scheme_id)
    s.merchant(request.party_id)


async def _merchant_record(s: MerchantScope, request: Any) -> None:
    s.scheme(request.scheme_id)
    s.merchant(request.merchant_id)


async def _scheme_of_request(s: MerchantScope, request: Any) -> None:
    s.scheme(request.scheme_id)


async def _wallet(s: MerchantScope, request: Any) -> None:
    await s.wallet(request.wallet_id)


async def _upcoming(s: MerchantScope, request: Any) -> None:
    if not request.wallet_id:
        raise s.deny("it lists upcoming expirations of one wallet at a time")
    await s.wallet(request.wallet_id)


async def _quote(s: MerchantScope, request: Any) -> None:
    await s.wallet(request.wallet_id)
    if request.merchant_id:
        s.merchant(request.merchant_id)


async def _hold(s: MerchantScope, request: Any) -> None:
    await s.owned(t.holds, request.hold_id, "hold")


async def _refund(s: MerchantScope, request: Any) -> None:
    await s.owned(t.transactions, request.transaction_id, "transaction")


async def _read_transaction(s: MerchantScope, request: Any) -> None:
    await s.owned(t.transactions, request.transaction_id, "transaction", by_merchant=False)


async def _reverse_event(s: MerchantScope, request: Any) -> None:
    await s.owned(t.customer_events, request.event_id, "event")


async def _offer(s: MerchantScope, request: Any) -> None:
    await s.offer(request.offer_id)


async def _statement(s: MerchantScope, request: Any) -> None:
    await s.statement(request.statement_id)


MerchantRule = Callable[[MerchantScope, Any], Awaitable[None]]
MERCHANT_RULES: dict[str, MerchantRule] = {
    # WalletService
    "GetWallet": _wallet,
    "GetBalance": _wallet,
    "ListLots": _wallet,
    "ListTransactions": _wallet,
    "ListTierChanges": _wallet,
    "ListWallets": _scheme_of_request,
    "ListUpcomingExpirations": _upcoming,
    "GetTransaction": _read_transaction,
    "Spend": _wallet_as_merchant,
    "AuthorizeHold": _wallet_as_merchant,
    "RedeemPoints": _wallet_as_merchant,
    "QuoteRedemption": _quote,
    "CaptureHold": _hold,
    "VoidHold": _hold,
    "GetHold": _hold,
    "RefundSpend": _refund,
    "RedeemPromotionCode": _wallet,
    # OfferService
    "GetScheme": _scheme_of_request,
    "ListOffers": _scheme_of_request,
    "GetOffer": _offer,
    "SubmitEvent": _event,
    "EvaluateEvent": _event,
    "SubmitEvents": _events,
    "ReverseEvent": _reverse_event,
    # SettlementService
    "GetMerchant": _merchant_record,
    "ListStatements": _statements,
    "GetStatement": _statement,
    "ListStatementEntries": _statement,
}


async def authorize(key: ApiKeyRecord, full_method: str, request: Any, ledger: Ledger) -> None:
    """Raise PermissionDenied when `key` may not make this call."""
    service, _, method = full_method.lstrip("/").partition("/")
    if key.role is Role.ADMIN:
        return
    denied = PermissionDenied(
        f"a {key.role.value} key may not call {service}/{method}", key_id=key.id
    )
    if service in ADMIN_ONLY_SERVICES:
        raise denied
    if key.role is Role.READER:
        if not method.startswith(READ_PREFIXES):
            raise denied
        return
    if key.role is Role.SUBSCRIBER:
        if method != "WatchExpirations":
            raise denied
        if key.scheme_ids and request.scheme_id not in key.scheme_ids:
            raise PermissionDenied(
                f"key {key.id} may watch schemes {', '.join(key.scheme_ids)} only: "
                "set scheme_id to one of them",
                key_id=key.id,
            )
        return
    rule = MERCHANT_RULES.get(method)
    if rule is None:
        raise denied

    async def check(reader: Reader) -> None:
        await rule(MerchantScope(key, reader), request)

    await ledger.read(check)


# -- the interceptor ----------------------------------------------------------------------


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Also enforces two per-call limits: a unary call's time (`unary_seconds_max`: past it
    the call ends DEADLINE_EXCEEDED; a write it had handed to the writer may still commit, so
    the caller retries with the same request_id to learn the outcome) and the streams one key
    may hold open at once (`streams_per_key_max`: RESOURCE_EXHAUSTED beyond it).

    `ready` is set once the server can authenticate (database migrated, admin key in place);
    until then calls wait for it up to `ready_wait_seconds_max`. None: always ready."""

    def __init__(
        self,
        ledger: Ledger,
        keys: KeyCache,
        *,
        unary_seconds_max: float = 60.0,
        streams_per_key_max: int = 100,
        ready: asyncio.Event | None = None,
        ready_wait_seconds_max: float = READY_WAIT_SECONDS_MAX,
    ) -> None:
        self.ledger = ledger
        self.keys = keys
        self.ready = ready
        self.ready_wait_seconds_max = ready_wait_seconds_max
        self.unary_seconds_max = unary_seconds_max
        self.streams_per_key_max = streams_per_key_max
        self._streams: dict[str, int] = {}

    async def _until_ready(self, context: Any) -> None:
        """Wait for the server to be ready, bounded by the limit and the call's deadline."""
        assert self.ready is not None
        ready = self.ready
        wait_s = self.ready_wait_seconds_max
        remaining_s = context.time_remaining()
        if remaining_s is not None:
            wait_s = min(wait_s, max(remaining_s - READY_WAIT_DEADLINE_MARGIN_SECONDS, 0.0))
        try:
            async with asyncio.timeout(wait_s):
                await ready.wait()
        except TimeoutError:
            raise Unavailable(
                "the server is starting: its database is not migrated to the newest schema "
                "or its admin API key is not set up yet (health reports NOT_SERVING until "
                f"then); waited {wait_s:g} s, retry shortly",
                reason="SERVER_STARTING",
                waited_seconds=f"{wait_s:g}",
                limit="READY_WAIT_SECONDS_MAX",
                limit_seconds=f"{self.ready_wait_seconds_max:g}",
            ) from None

    async def _admit(self, method: str, request: Any, context: Any) -> ApiKeyRecord:
        secret = _secret(context)
        if not secret:
            raise Unauthenticated("send `authorization: Bearer <api key>` metadata")
        # Before the lookup: until the admin key is set up, a valid key looks unknown. Once
        # ready, checking the set event is all this costs.
        if self.ready is not None and not self.ready.is_set():
            await self._until_ready(context)
        key = await self.keys.find(secret)
        if key is None:
            raise Unauthenticated("unknown API key")
        if key.revoked_at_us is not None:
            raise Unauthenticated(f"API key {key.id} is revoked", key_id=key.id)
        await authorize(key, method, request, self.ledger)
        return key

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method  # type: ignore[attr-defined]
        service = method.lstrip("/").partition("/")[0]
        if handler is None or service in OPEN_SERVICES:
            return handler
        admit = self._admit
        limit_s = self.unary_seconds_max
        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                try:
                    key = await admit(method, request, context)
                except (Unauthenticated, PermissionDenied, Unavailable) as error:
                    await abort_for(context, error, method)
                    raise  # pragma: no cover - abort raises
                token = caller_scope.set(key.id)
                try:
                    async with asyncio.timeout(limit_s):
                        return await behavior(request, context)
                except TimeoutError:
                    too_long = DeadlineExceeded(
                        f"the call took longer than the server's limit of {limit_s:g} s "
                        "(LOYALTY_UNARY_SECONDS_MAX); a write may still have committed: "
                        "retry with the same request_id",
                        reason="UNARY_TIME_LIMIT",
                        limit="LOYALTY_UNARY_SECONDS_MAX",
                        limit_seconds=f"{limit_s:g}",
                    )
                    await abort_for(context, too_long, method)
                finally:
                    caller_scope.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream_behavior = handler.unary_stream

            async def stream(request: Any, context: Any) -> Any:
                try:
                    key = await admit(method, request, context)
                except (Unauthenticated, PermissionDenied, Unavailable) as error:
                    await abort_for(context, error, method)
                    raise  # pragma: no cover - abort raises
                caller_scope.set(key.id)  # the call's own task: nothing to restore
                if self._streams.get(key.id, 0) >= self.streams_per_key_max:
                    too_many = ResourceExhausted(
                        f"key {key.id} has {self.streams_per_key_max} streams open already "
                        "(LOYALTY_STREAMS_PER_KEY_MAX); close one or retry later",
                        reason="STREAMS_PER_KEY",
                        limit="LOYALTY_STREAMS_PER_KEY_MAX",
                        limit_value=self.streams_per_key_max,
                        subject=f"api_key:{key.id}",
                        key_id=key.id,
                    )
                    await abort_for(context, too_many, method)
                self._streams[key.id] = self._streams.get(key.id, 0) + 1
                try:
                    result = stream_behavior(request, context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            yield item
                    else:
                        await result
                finally:
                    self._streams[key.id] -= 1
                    if not self._streams[key.id]:
                        del self._streams[key.id]

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # pragma: no cover - the services have no client-streaming methods
