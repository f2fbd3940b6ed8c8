"""The configured admin key, set up by several replicas starting at once."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from loyalty_ledger.ledger import api_keys
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.engine import Tx
from loyalty_ledger.ledger.service import Ledger


async def test_replicas_setting_up_the_configured_admin_key_at_once_all_succeed(
    ledger: Ledger,
) -> None:
    secret = "configured-admin-secret-0123456789"

    async def ensure(tx: Tx) -> None:
        await api_keys.ensure_configured_admin(tx.conn, secret, tx.now_us)

    # On PostgreSQL these run concurrently: each may miss the row in its UPDATE and INSERT it.
    await asyncio.gather(*(ledger.write(ensure) for _ in range(8)))

    async def rows(tx: Tx) -> list[tuple[str, str | None]]:
        k = t.api_keys
        return [tuple(r) for r in await tx.conn.execute(select(k.c.id, k.c.revoked_at_us))]

    assert await ledger.read(rows) == [(api_keys.CONFIGURED_ADMIN_KEY_ID, None)]
    found = await ledger.read(lambda tx: api_keys.find_by_secret(tx.conn, secret))
    assert found is not None and found.role is api_keys.Role.ADMIN
