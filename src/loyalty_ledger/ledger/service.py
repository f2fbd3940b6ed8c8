"""The ledger's front door: reads on snapshots, writes on the one write path, idempotently."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty_ledger.clock import Clock
from loyalty_ledger.ledger import idempotency, tiers
from loyalty_ledger.ledger.db import Database
from loyalty_ledger.ledger.engine import Tx
from loyalty_ledger.ledger.reads import Reader

NOTIFY_CHANNEL = "loyalty_outbox"  # events/hub.py listens on it
_NOTIFY = text(f"NOTIFY {NOTIFY_CHANNEL}")

T = TypeVar("T")


class Ledger:
    """Runs reads and writes with the injected clock; every mutation goes through `write`."""

    def __init__(self, db: Database, clock: Clock, *, idempotency_retention_us: int) -> None:
        self.db = db
        self.clock = clock
        self.idempotency_retention_us = idempotency_retention_us
        self._commit_listeners: list[Callable[[], None]] = []

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every committed write (e.g. to wake the event stream)."""
        self._commit_listeners.append(listener)

    async def read(self, fn: Callable[[Reader], Awaitable[T]]) -> T:
        async def job(conn: AsyncConnection) -> T:
            return await fn(Reader(conn, self.clock.now_us()))

        return await self.db.read(job)

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        async def job(conn: AsyncConnection) -> T:
            # Time is read when the transaction starts, so it never runs backwards in the log.
            tx = Tx(conn, self.clock.now_us())
            result = await fn(tx)
            await tiers.refresh_activity(tx)
            if not self.db.is_sqlite:
                # Delivered at commit (never for a rollback): other replicas' streams wake.
                await conn.execute(_NOTIFY)
            return result

        result = await self.db.write(job)
        for listener in self._commit_listeners:
            listener()
        return result

    async def write_idempotent(
        self,
        *,
        scope: str,
        method: str,
        request_id: str,
        request_bytes: bytes,
        fn: Callable[[Tx], Awaitable[bytes]],
    ) -> bytes:
        """Run `fn` once per (scope, request_id); replays get the first response's bytes."""
        digest = idempotency.fingerprint(method, request_bytes)

        async def job(tx: Tx) -> bytes:
            stored = await idempotency.claim(
                tx.conn,
                scope=scope,
                request_id=request_id,
                method=method,
                digest=digest,
                now_us=tx.now_us,
                retention_us=self.idempotency_retention_us,
            )
            if stored is not None:
                return stored
            response = await fn(tx)
            await idempotency.complete(
                tx.conn, scope=scope, request_id=request_id, response=response
            )
            return response

        return await self.write(job)
