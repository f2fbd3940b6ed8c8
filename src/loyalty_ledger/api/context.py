"""Per-call context: who is calling (the idempotency scope) and the call's request id."""

from __future__ import annotations

import contextvars

# Until API keys arrive, every caller shares one scope; keys will scope request_ids per caller.
caller_scope: contextvars.ContextVar[str] = contextvars.ContextVar(
    "caller_scope", default="anonymous"
)
call_id: contextvars.ContextVar[str] = contextvars.ContextVar("call_id", default="-")
