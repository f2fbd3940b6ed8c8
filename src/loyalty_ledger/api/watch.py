"""WatchExpirations: validate the filter, then relay the hub's events and heartbeats."""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import TypeAlias

import grpc
from loyalty.v1 import expiry_pb2

from loyalty_ledger.api import convert, limits
from loyalty_ledger.api.errors import abort_for
from loyalty_ledger.api.validation import Checks
from loyalty_ledger.events.hub import ExpirationHub, Heartbeat, StoredEvent, WatchFilter
from loyalty_ledger.ledger.outbox import EXPIRATION_EVENT_TYPES

log = logging.getLogger(__name__)

Ctx: TypeAlias = grpc.aio.ServicerContext  # type: ignore[type-arg]
# Outbox type names <-> proto enum values (EXPIRED <-> EXPIRATION_EVENT_TYPE_EXPIRED).
_TYPE_VALUES = {
    name: expiry_pb2.ExpirationEventType.Value(f"EXPIRATION_EVENT_TYPE_{name}")
    for name in EXPIRATION_EVENT_TYPES
}
_TYPES = {value: name for name, value in _TYPE_VALUES.items()}


def watch_filter(request: expiry_pb2.WatchExpirationsRequest) -> WatchFilter:
    """The request's filter, or InvalidArgument listing every bad field."""
    checks = Checks()
    checks.resource_id("scheme_id", request.scheme_id, required=False)
    if len(request.wallet_ids) > limits.WATCH_WALLET_IDS_MAX:
        checks.fail("wallet_ids", f"at most {limits.WATCH_WALLET_IDS_MAX} wallets")
    else:
        for i, wallet_id in enumerate(request.wallet_ids):
            checks.resource_id(f"wallet_ids[{i}]", wallet_id)
    types = set()
    for i, value in enumerate(request.event_types):
        if value not in _TYPES:
            checks.fail(f"event_types[{i}]", "unknown or unspecified event type")
        else:
            types.add(_TYPES[value])
    if request.after_sequence < 0:
        checks.fail("after_sequence", "must not be negative")
    if not 0 <= request.max_events_per_message <= limits.WATCH_EVENTS_PER_MESSAGE_MAX:
        checks.fail("max_events_per_message", f"must be 0 to {limits.WATCH_EVENTS_PER_MESSAGE_MAX}")
    checks.done()
    return WatchFilter(request.scheme_id, frozenset(request.wallet_ids), frozenset(types))


# Responses built lately, by outbox sequence: an event that fans out to many streams is
# converted once, not once per subscriber (that was most of the server's CPU per delivery).
RESPONSES_SHARED_MAX = 4_096
_responses: OrderedDict[int, tuple[str, expiry_pb2.WatchExpirationsResponse]] = OrderedDict()
_alone_in_events: OrderedDict[int, tuple[str, expiry_pb2.WatchExpirationsResponse]] = OrderedDict()


def event_response(event: StoredEvent) -> expiry_pb2.WatchExpirationsResponse:
    """The stream message of `event` (in `event`), shared by every stream that delivers it
    (streams only serialize it, never change it)."""
    return _shared(
        _responses,
        event,
        lambda: expiry_pb2.WatchExpirationsResponse(event=event_to_proto(event)),
    )


def batch_response(events: list[StoredEvent]) -> expiry_pb2.WatchExpirationsResponse:
    """The stream message of `events` (in `events`, for max_events_per_message above 1). An
    event alone, the usual case for a stream that keeps up, gets a shared message too."""
    if len(events) == 1:
        (event,) = events
        return _shared(
            _alone_in_events,
            event,
            lambda: expiry_pb2.WatchExpirationsResponse(
                events=expiry_pb2.ExpirationEvents(events=[event_response(event).event])
            ),
        )
    return expiry_pb2.WatchExpirationsResponse(
        events=expiry_pb2.ExpirationEvents(events=[event_response(e).event for e in events])
    )


def _shared(
    cache: OrderedDict[int, tuple[str, expiry_pb2.WatchExpirationsResponse]],
    event: StoredEvent,
    build: Callable[[], expiry_pb2.WatchExpirationsResponse],
) -> expiry_pb2.WatchExpirationsResponse:
    cached = cache.get(event.seq)
    if cached is not None and cached[0] == event.event_id:
        return cached[1]
    response = build()
    cache[event.seq] = (event.event_id, response)
    if len(cache) > RESPONSES_SHARED_MAX:
        cache.popitem(last=False)
    return response


def event_to_proto(event: StoredEvent) -> expiry_pb2.ExpirationEvent:
    """An outbox row of the expiration stream (payload of `outbox.expiration_row`) as proto."""
    payload = event.payload
    out = expiry_pb2.ExpirationEvent(
        event_id=event.event_id,
        sequence=event.seq,
        type=_TYPE_VALUES[event.type],
        scheme_id=event.scheme_id,
        wallet_id=event.wallet_id or "",
        customer_ref=payload.get("customer_ref") or "",
        lot_id=payload.get("lot_id") or "",
        hold_id=payload.get("hold_id") or "",
        asset=payload.get("asset") or "",
        amount=int(payload.get("amount") or 0),
        sponsor_id=payload.get("sponsor_id") or "",
        lead_time_seconds=int(payload.get("lead_seconds") or 0),
        create_time=convert.timestamp(event.created_at_us),
    )
    if payload.get("expires_at_us") is not None:
        out.expire_time.CopyFrom(convert.timestamp(int(payload["expires_at_us"])))
    return out


async def watch_expirations(
    hub: ExpirationHub, request: expiry_pb2.WatchExpirationsRequest, context: Ctx
) -> AsyncIterator[expiry_pb2.WatchExpirationsResponse]:
    """The stream of WatchExpirations; errors end it with a google.rpc.Status like `rpc_errors`
    (an async generator cannot use that decorator)."""
    try:
        watch = watch_filter(request)
        batched = request.max_events_per_message > 1
        # aclosing: the subscription ends (and frees its slot) as soon as this stream does.
        async with contextlib.aclosing(
            hub.subscribe_batches(
                watch,
                after_sequence=request.after_sequence,
                from_now=request.from_now,
                batch_max=max(request.max_events_per_message, 1),
            )
        ) as stream:
            async for item in stream:
                if isinstance(item, Heartbeat):
                    yield expiry_pb2.WatchExpirationsResponse(
                        heartbeat=expiry_pb2.Heartbeat(
                            sequence=item.seq, time=convert.timestamp(item.at_us)
                        )
                    )
                elif batched:
                    yield batch_response(item)
                else:
                    yield event_response(item[0])
    except grpc.aio.AbortError:
        raise
    except Exception as error:
        await abort_for(context, error, "WatchExpirations")
