"""The idempotent path every mutating RPC takes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message

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

    async def run(tx: Tx) -> bytes:
        return (await fn(tx)).SerializeToString(deterministic=True)

    data = await ledger.write_idempotent(
        scope=caller_scope.get(),
        method=method,
        request_id=request.request_id,  # type: ignore[attr-defined]
        request_bytes=request.SerializeToString(deterministic=True),
        fn=run,
    )
    return response_type.FromString(data)
