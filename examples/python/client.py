"""A Python client of the loyalty ledger, with the generated stubs of `generated/loyalty/v1`.

It creates a scheme and a wallet (fresh ids on every run), credits points, spends some (and
retries that spend to show idempotency), reads the reason of a refused spend from the
google.rpc.Status details, credits a lot that expires two seconds later and waits on the
WatchExpirations stream until that lot's EXPIRED event arrives. It asks the server to run
expiry (RunExpiry) instead of waiting for the schedule.

Usage: python examples/python/client.py [HOST:PORT]  (default: $LOYALTY_ADDRESS or
127.0.0.1:50051). The stubs come with the project: `make venv`, then use .venv/bin/python.
Exit code 0 when every step checked out, 1 otherwise.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from loyalty.v1 import (
    common_pb2,
    expiry_pb2,
    offer_pb2,
    offer_pb2_grpc,
    wallet_pb2,
    wallet_pb2_grpc,
)

CALL_TIMEOUT_S = 10.0
EVENT_TIMEOUT_S = 30.0
RUN = f"{int(time.time()):x}-{uuid.uuid4().hex[:8]}"


def request_id(step: str) -> str:
    """A request id new on every run: the server replays (or refuses) ids it has seen."""
    return f"py-{RUN}-{step}"


class _Details(
    collections.namedtuple(
        "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready")
    ),
    grpc.ClientCallDetails,
):
    pass


def bearer(key: str) -> list[Any]:
    """Client interceptors that add `authorization: Bearer <key>` to every call."""

    def with_key(details: Any) -> _Details:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {key}")]
        return _Details(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    class Unary(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(with_key(details), request)

    class Stream(grpc.UnaryStreamClientInterceptor):
        def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(with_key(details), request)

    return [Unary(), Stream()]


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"check failed: {what}")
    print(f"ok: {what}")


def error_reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call (google.rpc.Status in the trailers)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def watch_for_expiry(
    wallets: wallet_pb2_grpc.WalletServiceStub, wallet_id: str, lot_id: str
) -> tuple[queue.Queue[expiry_pb2.ExpirationEvent | Exception], grpc.Future]:
    """Read the wallet's EXPIRED events on a thread; the one of `lot_id` lands in the queue."""
    stream = wallets.WatchExpirations(
        expiry_pb2.WatchExpirationsRequest(
            wallet_ids=[wallet_id],
            event_types=[expiry_pb2.EXPIRATION_EVENT_TYPE_EXPIRED],
            after_sequence=0,  # replay from the start: nothing is missed if it expired already
        )
    )
    found: queue.Queue[expiry_pb2.ExpirationEvent | Exception] = queue.Queue()

    def read() -> None:
        seen: set[str] = set()  # delivery is at least once: deduplicate on event_id
        try:
            for message in stream:
                if message.WhichOneof("message") != "event" or message.event.event_id in seen:
                    continue
                event = message.event
                seen.add(event.event_id)
                print(
                    f"event {event.sequence}: {expiry_pb2.ExpirationEventType.Name(event.type)}"
                    f" lot {event.lot_id} {event.amount} {event.asset}"
                )
                if event.lot_id == lot_id:
                    found.put(event)
                    return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                found.put(error)

    threading.Thread(target=read, daemon=True).start()
    return found, stream


def main(address: str) -> None:
    print(f"loyalty ledger at {address}, run {RUN}")
    # Every call carries the API key: `authorization: Bearer <key>` (env LOYALTY_API_KEY).
    key = os.environ.get("LOYALTY_API_KEY", "")
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT_S)
    channel = grpc.intercept_channel(channel, *bearer(key))
    offers = offer_pb2_grpc.OfferServiceStub(channel)
    wallets = wallet_pb2_grpc.WalletServiceStub(channel)
    t = CALL_TIMEOUT_S

    scheme_id = f"py-{RUN}"
    offers.CreateScheme(
        offer_pb2.CreateSchemeRequest(
            request_id=request_id("scheme"),
            scheme=offer_pb2.Scheme(
                scheme_id=scheme_id,
                name="Python example",
                timezone="Europe/Amsterdam",
                assets=[
                    offer_pb2.AssetDefinition(code="POINTS", scale=0),
                    offer_pb2.AssetDefinition(code="EUR", scale=2),
                ],
            ),
        ),
        timeout=t,
    )
    wallet = wallets.CreateWallet(
        wallet_pb2.CreateWalletRequest(
            request_id=request_id("wallet"), scheme_id=scheme_id, customer_ref=f"alice-{RUN}"
        ),
        timeout=t,
    ).wallet
    print(f"wallet {wallet.wallet_id} in scheme {scheme_id}")

    # 500 promotional points sponsored by shop-1, expiring 6 calendar months from now.
    credit = wallets.Credit(
        wallet_pb2.CreditRequest(
            request_id=request_id("credit"),
            wallet_id=wallet.wallet_id,
            kind=wallet_pb2.CREDIT_KIND_AWARD,
            asset="POINTS",
            amount=500,
            funding=common_pb2.FUNDING_PROMOTIONAL,
            sponsor_id="shop-1",
            expiry_policy=common_pb2.ExpiryPolicy(
                after=common_pb2.ExpireAfter(count=6, unit=common_pb2.DURATION_UNIT_MONTHS)
            ),
        ),
        timeout=t,
    )
    check(credit.lot.remaining == 500, "credit made a lot of 500 POINTS")

    spend_request = wallet_pb2.SpendRequest(
        request_id=request_id("spend"),
        wallet_id=wallet.wallet_id,
        asset="POINTS",
        amount=120,
        merchant_id="shop-1",
        reference="order-1",
    )
    spend = wallets.Spend(spend_request, timeout=t)
    check(spend.amount_spent == 120, "spent 120 POINTS")
    # A retry (say after a timeout) with the same request_id and request is a replay.
    replay = wallets.Spend(spend_request, timeout=t)
    check(
        replay.transaction.transaction_id == spend.transaction.transaction_id,
        "a retried spend returns the first transaction",
    )
    try:
        wallets.Spend(
            wallet_pb2.SpendRequest(
                request_id=request_id("spend-too-much"),
                wallet_id=wallet.wallet_id,
                asset="POINTS",
                amount=10_000,
                merchant_id="shop-1",
            ),
            timeout=t,
        )
        raise AssertionError("a spend above the balance succeeded")
    except grpc.RpcError as error:
        check(
            error.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
            and error_reason(error) == "INSUFFICIENT_FUNDS",
            "a spend above the balance fails with FAILED_PRECONDITION INSUFFICIENT_FUNDS",
        )

    # 30 points that expire two seconds from now.
    expire_time = Timestamp()
    expire_time.FromDatetime(datetime.now(UTC) + timedelta(seconds=2))
    short = wallets.Credit(
        wallet_pb2.CreditRequest(
            request_id=request_id("credit-short"),
            wallet_id=wallet.wallet_id,
            kind=wallet_pb2.CREDIT_KIND_AWARD,
            asset="POINTS",
            amount=30,
            funding=common_pb2.FUNDING_PROMOTIONAL,
            sponsor_id="shop-1",
            expire_time=expire_time,
        ),
        timeout=t,
    )

    found, stream = watch_for_expiry(wallets, wallet.wallet_id, short.lot.lot_id)
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    result: expiry_pb2.ExpirationEvent | Exception | None = None
    try:
        # Run expiry until the event arrives (the server's own schedule may get there first).
        for attempt in itertools.count(1):
            if time.monotonic() > deadline:
                raise AssertionError("no EXPIRED event within the time limit")
            time.sleep(1.0)
            run = wallets.RunExpiry(
                expiry_pb2.RunExpiryRequest(
                    request_id=request_id(f"run-{attempt}"), kind=expiry_pb2.RUN_KIND_EXPIRY
                ),
                timeout=t,
            ).run
            status = expiry_pb2.RunStatus.Name(run.status)
            print(f"run {run.run_id}: {status}, {run.items_processed} lots expired")
            try:
                result = found.get(timeout=0.5)
                break
            except queue.Empty:
                continue
    finally:
        stream.cancel()
    if isinstance(result, Exception):
        raise result
    assert result is not None
    check(
        result.type == expiry_pb2.EXPIRATION_EVENT_TYPE_EXPIRED and result.amount == 30,
        "EXPIRED event for the 30 points",
    )

    balance = wallets.GetBalance(
        wallet_pb2.GetBalanceRequest(wallet_id=wallet.wallet_id, asset="POINTS"), timeout=t
    )
    check(balance.balances[0].available == 380, "available balance is 500 - 120 = 380 POINTS")
    channel.close()


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("LOYALTY_ADDRESS", "")
    try:
        main(target or "127.0.0.1:50051")
    except (AssertionError, grpc.RpcError, grpc.FutureTimeoutError) as failure:
        if isinstance(failure, grpc.RpcError):
            code = failure.code().name  # type: ignore[attr-defined]
            failure = f"{code} {failure.details()}"  # type: ignore[attr-defined,assignment]
        print(f"python example: FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
    print("python example: OK")
