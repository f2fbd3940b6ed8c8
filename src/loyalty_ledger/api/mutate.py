"""The idempotent path every mutating RPC takes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message

from loyalty_ledger import faults
from loyalty_ledger.api.context import caller_scope
from loyalty_ledger.ledger.engine import Tx
from loyalty_ledger.ledger.service import Ledger

M = TypeVar("M", bound=Message)


async def mutate(
    ledger: Ledger,
    method: str,
    request: Message,
    response_type: type[M],
    fn: Callable[[Tx], Awaitable[M]],
) -> M:
    """Run a mutation once per request_id and answer with the stored response bytes.

    First calls and replays both parse the stored bytes, so they serialize identically.
    """

    request_id: str = request.request_id  # type: ignore[attr-defined]

    async def run(tx: Tx) -> bytes:
        response = (await fn(tx)).SerializeToString(deterministic=True)
        faults.crash_point("before_commit", request_id)  # tests only; see faults.py
        return response

    data = await ledger.write_idempotent(
        scope=caller_scope.get(),
        method=method,
        request_id=request_id,
        request_bytes=request.SerializeToString(deterministic=True),
        fn=run,
    )
    faults.crash_point("after_commit", request_id)
    return response_type.FromString(data)
