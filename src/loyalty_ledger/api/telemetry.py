"""The outermost interceptor: request id and method for the logs, and gRPC call metrics.

Each call gets a request id (the request's `request_id` field when it has a non-empty one,
else a generated `req_<hex>`) and its full method name in context variables that every log
line during the call carries (`logs.py`). When the call ends it is counted in
`grpc_server_handled_total` with its status code and timed in `grpc_server_handling_seconds`,
with go-grpc-prometheus labels. The code is the one the call really ended with: the code of
`context.abort` (how `api/errors.py` ends calls), a code set with `context.set_code`, OK,
CANCELLED when the client went away, or UNKNOWN for an exception grpc reports as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from loyalty_ledger.logs import method_var, request_id_var
from loyalty_ledger.metrics import Metrics

log = logging.getLogger(__name__)

# A request_id longer than this is cut in logs (the API refuses it anyway; see limits.py).
LOG_REQUEST_ID_CHARS_MAX = 128
UNARY, CLIENT_STREAM, SERVER_STREAM, BIDI_STREAM = (
    "unary",
    "client_stream",
    "server_stream",
    "bidi_stream",
)


def _request_id(request: Any) -> str:
    value = getattr(request, "request_id", "")
    if isinstance(value, str) and value:
        return value[:LOG_REQUEST_ID_CHARS_MAX]
    return f"req_{uuid.uuid4().hex[:16]}"


def _code_name(context: Any, default: grpc.StatusCode) -> str:
    code = context.code()
    return (code if isinstance(code, grpc.StatusCode) else default).name


class CallTelemetry(grpc.aio.ServerInterceptor):
    """Sets the log context and records call metrics for every RPC (all four call types)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc refuses it itself (not counted, as in Go)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, UNARY, single_request=True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method, CLIENT_STREAM, single_request=False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method, SERVER_STREAM, single_request=True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream(handler.stream_stream, method, BIDI_STREAM, single_request=False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _begin(self, method: str, grpc_type: str, request: Any, single_request: bool) -> float:
        request_id_var.set(_request_id(request) if single_request else _request_id(None))
        method_var.set(method)
        self.metrics.call_started(grpc_type, method)
        return time.perf_counter()

    def _end(self, method: str, grpc_type: str, code: str, started: float) -> None:
        seconds = time.perf_counter() - started
        self.metrics.observe_call(grpc_type, method, code, seconds)
        # Every call ends with one line: DEBUG when it went well, INFO otherwise.
        level = logging.DEBUG if code == "OK" else logging.INFO
        log.log(
            level,
            "call ended",
            extra={"grpc_code": code, "duration_ms": round(seconds * 1000, 3)},
        )

    def _unary(
        self, behavior: Any, method: str, grpc_type: str, *, single_request: bool
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        # grpc runs each call in its own task, so setting the context variables here stays
        # within this call.
        async def call(request: Any, context: Any) -> Any:
            started = self._begin(method, grpc_type, request, single_request)
            code = "UNKNOWN"
            try:
                response = await behavior(request, context)
                code = _code_name(context, grpc.StatusCode.OK)
                return response
            except grpc.aio.AbortError:
                code = _code_name(context, grpc.StatusCode.UNKNOWN)
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            finally:
                self._end(method, grpc_type, code, started)

        return call

    def _stream(
        self, behavior: Any, method: str, grpc_type: str, *, single_request: bool
    ) -> Callable[[Any, Any], Any]:
        if not inspect.isasyncgenfunction(behavior):
            # A handler that writes with `context.write` (e.g. Health.Watch) is a coroutine.
            return self._unary(behavior, method, grpc_type, single_request=single_request)

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            started = self._begin(method, grpc_type, request, single_request)
            code = "UNKNOWN"
            try:
                # aclosing: a stream ended early closes the servicer's generator at once.
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
                code = _code_name(context, grpc.StatusCode.OK)
            except grpc.aio.AbortError:
                code = _code_name(context, grpc.StatusCode.UNKNOWN)
                raise
            except (asyncio.CancelledError, GeneratorExit):
                code = "CANCELLED"
                raise
            finally:
                self._end(method, grpc_type, code, started)

        return stream
