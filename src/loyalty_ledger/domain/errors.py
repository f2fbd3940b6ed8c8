"""Domain errors: plain exceptions with a stable reason, mapped to gRPC status at the edge."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad input field: its path in the request and what is wrong with it."""

    field: str
    description: str


class LedgerError(Exception):
    """Base of every expected operating error. `reason` is a stable UPPER_SNAKE code."""

    reason: str = "LEDGER_ERROR"

    def __init__(self, message: str, *, reason: str | None = None, **metadata: object) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        # ErrorInfo metadata travels as strings.
        self.metadata: dict[str, str] = {k: str(v) for k, v in metadata.items()}


class InvalidArgument(LedgerError):
    """The request is malformed. Carries field violations."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], *, reason: str | None = None) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one violation")
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:3])
        super().__init__(f"invalid request: {summary}", reason=reason)
        self.violations = violations

    @classmethod
    def single(cls, field_path: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field_path, description)])

    def under(self, prefix: str) -> InvalidArgument:
        """The same violations with field paths inside `prefix` (an item of a batch)."""
        return InvalidArgument(
            [FieldViolation(f"{prefix}.{v.field}", v.description) for v in self.violations],
            reason=self.reason,
        )


class NotFound(LedgerError):
    """The named resource does not exist."""

    reason = "NOT_FOUND"

    def __init__(self, kind: str, resource_id: str) -> None:
        reason = f"{kind.upper().replace(' ', '_')}_NOT_FOUND"
        super().__init__(f"{kind} {resource_id!r} not found", reason=reason)
        self.metadata = {"resource_type": kind, "resource_id": resource_id}


class AlreadyExists(LedgerError):
    """The resource (or idempotency key) exists already."""

    reason = "ALREADY_EXISTS"


class FailedPrecondition(LedgerError):
    """The system is not in a state that allows the operation (funds, status, TTL...)."""

    reason = "FAILED_PRECONDITION"


class InsufficientFunds(FailedPrecondition):
    """The eligible available balance is short of the requested amount."""

    reason = "INSUFFICIENT_FUNDS"

    def __init__(self, asset: str, requested: int, available: int) -> None:
        super().__init__(
            f"insufficient funds: requested {requested} {asset}, available {available}",
            asset=asset,
            requested=requested,
            available=available,
        )
        self.requested = requested
        self.available = available


class ResourceExhausted(LedgerError):
    """A bounded resource (queue, buffer, subscriber slots, message size) is full.

    `limit` names the setting or constant that bounds it and `limit_value` its value (both
    also go into the ErrorInfo metadata); `subject` is what hit it ("api_key:<id>",
    "server", "request", ...). The gRPC edge adds a google.rpc.QuotaFailure from them.
    """

    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        limit: str = "",
        limit_value: int | None = None,
        subject: str = "",
        **metadata: object,
    ) -> None:
        if limit:
            metadata["limit"] = limit
        if limit_value is not None:
            metadata["limit_value"] = limit_value
        super().__init__(message, reason=reason, **metadata)
        self.limit = limit
        self.limit_value = limit_value
        self.subject = subject


class DeadlineExceeded(LedgerError):
    """The call ran longer than the server allows; a write it started may still commit."""

    reason = "DEADLINE_EXCEEDED"


class Unavailable(LedgerError):
    """The service cannot do this right now (storage read-only, full, or overloaded)."""

    reason = "UNAVAILABLE"


class Unauthenticated(LedgerError):
    """No valid API key came with the call."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(LedgerError):
    """The caller's key may not do this."""

    reason = "PERMISSION_DENIED"
