"""Item 12: a full disk or a read-only database.

Faults, injected into the running server's database without touching src/:
- SQLite, disk full: `PRAGMA max_page_count` on the server's one write connection caps the
  file at its current size, and writes are made large enough to need new pages; SQLite then
  refuses them with SQLITE_FULL ("database or disk is full").
- SQLite, read-only: `PRAGMA query_only` on the write connection; SQLite refuses every write
  with SQLITE_READONLY, as for a read-only file. (The tests run as root, for whom chmod does
  not make a file read-only.)
- PostgreSQL, read-only: `ALTER DATABASE ... SET default_transaction_read_only = on`, and the
  server's connections are terminated so its pool reconnects into read-only sessions.
While the fault lasts, every write fails with UNAVAILABLE and a message that says storage is
refusing writes, reads go on, and the database is exactly as it was (every row of every table).
When the fault ends, the same requests retried with the same request_ids succeed once, and the
invariants hold.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import grpc
import pytest
from loyalty.v1 import wallet_pb2
from sqlalchemy.engine import make_url

from tests.conftest import BACKENDS, PG_ADMIN_DSN
from tests.helpers import balance, credit, make_scheme, make_wallet, rid
from tests.invariants import check_invariants
from tests.reliability.test_idempotent_replay import database_digest

BIG = {f"k{i:02d}": "x" * 256 for i in range(16)}  # ~4 KiB of metadata: needs new pages


def _writes(wallet: str, tag: str) -> list[tuple[str, Any]]:
    """Two credits and a spend, each with 4 KiB of metadata, with fixed request_ids."""
    return [
        (
            "Credit",
            wallet_pb2.CreditRequest(
                request_id=f"{tag}-credit",
                wallet_id=wallet,
                kind=wallet_pb2.CREDIT_KIND_AWARD,
                asset="POINTS",
                amount=10,
                funding=1,
                sponsor_id="m-1",
                metadata=BIG,
            ),
        ),
        (
            "Spend",
            wallet_pb2.SpendRequest(
                request_id=f"{tag}-spend",
                wallet_id=wallet,
                asset="POINTS",
                amount=5,
                merchant_id="m-1",
                metadata=BIG,
            ),
        ),
        (
            "Credit",
            wallet_pb2.CreditRequest(
                request_id=f"{tag}-credit-other",
                wallet_id=wallet + "-other",
                kind=wallet_pb2.CREDIT_KIND_AWARD,
                asset="POINTS",
                amount=1,
                funding=1,
                sponsor_id="m-1",
                metadata=BIG,
            ),
        ),
    ]


async def _refused(wallets: Any, method: str, request: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(wallets, method)(request)
    error = caught.value
    return f"{error.code().name}: {error.details()}"


async def _writer_pragma(app: Any, pragma: str) -> None:
    async def job(conn: Any) -> None:
        await conn.exec_driver_sql(f"PRAGMA {pragma}")

    await app.db.write(job)


async def _pg(statement: str, *args: Any) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


async def _fault_on(app: Any, kind: str) -> None:
    if kind == "full":

        async def cap(conn: Any) -> None:
            pages = (await conn.exec_driver_sql("PRAGMA page_count")).scalar()
            await conn.exec_driver_sql(f"PRAGMA max_page_count = {int(pages)}")

        await app.db.write(cap)
    elif kind == "sqlite-readonly":
        await _writer_pragma(app, "query_only = ON")
    else:
        name = make_url(app.settings.database_url).database
        await _pg(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
        await _pg(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )


async def _fault_off(app: Any, kind: str) -> None:
    if kind == "full":
        await _writer_pragma(app, "max_page_count = 1073741823")
    elif kind == "sqlite-readonly":
        # BEGIN IMMEDIATE itself is refused now: reset the pragma outside a transaction.
        await app.db.sqlite_writer_statement("PRAGMA query_only = OFF")
    else:
        name = make_url(app.settings.database_url).database
        await _pg(f"ALTER DATABASE {name} RESET default_transaction_read_only")
        await _pg(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )


async def _check(app: Any, offers: Any, wallets: Any, kind: str) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    other = (await make_wallet(wallets)).wallet_id
    await credit(wallets, wallet, 100)
    writes = _writes(wallet, kind)
    writes[2][1].wallet_id = other
    await _fault_on(app, kind)
    if kind == "full":  # fill what is left of the capped file's pages
        for _ in range(300):
            try:
                await credit(wallets, wallet, 1, metadata=BIG)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
                break
        else:
            raise AssertionError("the capped database never filled up")
    before = await database_digest(app)
    start = (await balance(wallets, wallet)).available
    for method, request in writes:
        outcome = await _refused(wallets, method, request)
        assert outcome.startswith("UNAVAILABLE: storage is not accepting writes"), outcome
    # Reads go on.
    assert (await balance(wallets, wallet)).available == start
    listed = await wallets.ListLots(wallet_pb2.ListLotsRequest(wallet_id=wallet))
    assert sum(lot.remaining for lot in listed.lots) == start
    assert await database_digest(app) == before, "a refused write left something behind"

    await _fault_off(app, kind)
    for method, request in writes:
        first = await getattr(wallets, method)(request)
        again = await getattr(wallets, method)(request)
        assert first.SerializeToString() == again.SerializeToString()
    assert (await balance(wallets, wallet)).available == start + 10 - 5
    assert (await balance(wallets, other)).available == 1
    # A fresh write works too.
    await credit(wallets, wallet, 1, request_id=rid("after"))
    await app.db.read(check_invariants)


@pytest.mark.parametrize("database_url", [BACKENDS[0]], indirect=True)
async def test_sqlite_disk_full_refuses_writes_and_recovers(app, offers, wallets) -> None:
    await _check(app, offers, wallets, "full")


@pytest.mark.parametrize(
    "database_url",
    [
        BACKENDS[0],
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ],
    indirect=True,
)
async def test_read_only_database_refuses_writes_and_recovers(
    app, offers, wallets, database_url: str
) -> None:
    kind = "sqlite-readonly" if database_url.startswith("sqlite") else "pg-readonly"
    try:
        await _check(app, offers, wallets, kind)
    finally:
        if kind == "pg-readonly":  # leave the database writable for its teardown
            await _fault_off(app, kind)
