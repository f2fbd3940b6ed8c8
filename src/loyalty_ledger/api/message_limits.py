"""The message size limit (`LOYALTY_MESSAGE_BYTES_MAX`), refused with details both ways.

gRPC's own size cap refuses an oversized message before any handler runs, with
RESOURCE_EXHAUSTED and a bare message but no google.rpc details. So the server sets gRPC's cap
to `TRANSPORT_FACTOR` times the limit and this interceptor enforces the limit itself:

- a request of more than `bytes_max` serialized bytes ends RESOURCE_EXHAUSTED with ErrorInfo
  `MESSAGE_TOO_LARGE` (metadata `size_bytes`, `limit`, `limit_value`) and a QuotaFailure,
  before authentication or the handler see it, so nothing is done;
- a page of a listing (a request with `page_size`) of more than `bytes_max` bytes, such as a
  thousand wallets with large metadata, ends RESOURCE_EXHAUSTED `RESPONSE_TOO_LARGE` instead
  of gRPC's bare "Sent message larger than max": ask for a smaller `page_size`.

Other responses are bounded by their requests (a write's response echoes what it created)
and are not checked: refusing a write's response would come after its commit, and every
replay would be refused the same way; up to gRPC's cap they go out, and a client whose own
receive limit is lower raises it and replays with the same request_id. A request beyond
gRPC's cap still gets gRPC's own RESOURCE_EXHAUSTED, without details: its bytes never reach
the server. Health checking and reflection are passed through.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from loyalty_ledger.api.errors import abort_for
from loyalty_ledger.domain.errors import ResourceExhausted

TRANSPORT_FACTOR = 2  # gRPC's own cap, as a multiple of the limit: a hard memory bound
SETTING = "LOYALTY_MESSAGE_BYTES_MAX"


class _Oversized:
    """What the deserializer hands on instead of a request over the limit."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class MessageLimits(grpc.aio.ServerInterceptor):
    """Refuses requests, and pages of listings, over `bytes_max` serialized bytes."""

    def __init__(self, bytes_max: int) -> None:
        self.bytes_max = bytes_max

    def _too_large(self, what: str, size: int) -> ResourceExhausted:
        if what == "request":
            message = f"the request has {size} bytes, more than the server's limit"
            reason = "MESSAGE_TOO_LARGE"
        else:
            message = (
                f"the response would have {size} bytes, more than the server's limit; "
                "ask for fewer items (a smaller page_size)"
            )
            reason = "RESPONSE_TOO_LARGE"
        return ResourceExhausted(
            f"{message} of {self.bytes_max} ({SETTING})",
            reason=reason,
            limit=SETTING,
            limit_value=self.bytes_max,
            subject=what,
            size_bytes=size,
        )

    def _parse(self, deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
        bytes_max = self.bytes_max

        def parse(data: bytes) -> Any:
            if len(data) > bytes_max:
                return _Oversized(len(data))  # not even parsed
            return deserialize(data) if deserialize is not None else data

        return parse

    async def _check_page(self, request: Any, response: Any, context: Any, method: str) -> None:
        if "page_size" not in request.DESCRIPTOR.fields_by_name:
            return  # not a listing (see the module docstring)
        size = response.ByteSize()
        if size > self.bytes_max:
            await abort_for(context, self._too_large("response", size), method)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method  # type: ignore[attr-defined]
        check_page = self._check_page
        too_large = self._too_large
        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                if isinstance(request, _Oversized):
                    await abort_for(context, too_large("request", request.size), method)
                response = await behavior(request, context)
                await check_page(request, response, context, method)
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=self._parse(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            stream_behavior = handler.unary_stream

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                if isinstance(request, _Oversized):
                    await abort_for(context, too_large("request", request.size), method)
                # aclosing: a stream ended early closes the inner one at once (its slots).
                async with contextlib.aclosing(stream_behavior(request, context)) as responses:
                    async for response in responses:
                        yield response

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=self._parse(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler  # streaming requests and context.write streams (Health.Watch)
