"""The one place where ledger errors become gRPC statuses with google.rpc details (AIP-193)."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from loyalty_ledger.domain.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    LedgerError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

ERROR_DOMAIN = "loyalty.v1"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

_CODES: list[tuple[type[LedgerError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
]


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_for(error: LedgerError) -> tuple[grpc.StatusCode, status_pb2.Status]:
    """A google.rpc.Status with one ErrorInfo and, for bad input, BadRequest violations; a
    PreconditionFailure for FAILED_PRECONDITION and a QuotaFailure for RESOURCE_EXHAUSTED."""
    code = next((c for kind, c in _CODES if isinstance(error, kind)), grpc.StatusCode.INTERNAL)
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
            )
        )
    ]
    if isinstance(error, InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    if isinstance(error, FailedPrecondition):
        subject = next((v for k, v in sorted(error.metadata.items()) if k.endswith("_id")), "")
        details.append(
            _pack(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=error.reason, subject=subject, description=error.message
                        )
                    ]
                )
            )
        )
    if isinstance(error, ResourceExhausted):
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=error.subject,
                            description=error.message,
                            quota_id=error.limit,
                            quota_value=error.limit_value or 0,
                        )
                    ]
                )
            )
        )
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=error.message, details=details
    )
    return code, status


async def abort_for(context: grpc.aio.ServicerContext, error: Exception, where: str) -> None:
    """End the call for `error`: expected ones with details, the rest as INTERNAL."""
    if isinstance(error, LedgerError):
        code, status = status_for(error)
        await context.abort(
            code,
            status.message,
            trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),),
        )
    incident = uuid.uuid4().hex[:12]
    log.error("unexpected error in %s (incident %s)", where, incident, exc_info=error)
    # Nothing about the internals leaves the server: only an incident id to quote.
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident})")


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def rpc_errors(handler: F) -> F:
    """Translate errors of a unary handler: expected ones with details, the rest as INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort_for(context, error, handler.__name__)

    return wrapper  # type: ignore[return-value]
