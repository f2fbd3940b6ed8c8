"""Shared fixtures: a migrated database per test on SQLite and PostgreSQL, and a real server.

PostgreSQL tests run when PostgreSQL answers at LOYALTY_TEST_PG_DSN (default: the local
server). Without it they are skipped with a clear message, except when CI=true: then they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import grpc
import pytest
from loyalty.v1 import offer_pb2_grpc, settlement_pb2_grpc, wallet_pb2_grpc

from loyalty_ledger.clock import TestClock
from loyalty_ledger.ledger import migrate
from tests.helpers import TEST_ADMIN_KEY, open_channel, server_settings

if TYPE_CHECKING:
    from loyalty_ledger.server import App

# Every server a test starts (in process, or `loyalty serve` children inheriting the
# environment) accepts this ADMIN key; clients send it (tests.helpers.open_channel).
os.environ["LOYALTY_ADMIN_KEY"] = TEST_ADMIN_KEY
# Servers started side by side must not all claim the default metrics port.
os.environ.setdefault("LOYALTY_METRICS_PORT", "0")

PG_ADMIN_DSN = os.environ.get("LOYALTY_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]
START_TIME = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def _pg_url(database: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


async def _pg_admin(*statements: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _pg_reachable() -> str | None:
    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        return f"{type(error).__name__}: {error}"
    return None


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database that per-test databases are cloned from."""
    problem = _pg_reachable()
    if problem is not None:
        message = f"PostgreSQL is not reachable at {PG_ADMIN_DSN} ({problem})"
        if IN_CI:
            pytest.fail(f"{message}; CI=true requires the PostgreSQL tests to run")
        pytest.skip(f"{message}; start it to run the PostgreSQL tests")
    name = f"loyalty_tpl_{os.getpid()}"
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"))
    migrate.upgrade(_pg_url(name))
    yield name
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "ledger.db"
    migrate.upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "ledger.db"
        shutil.copyfile(template, target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    template_name: str = request.getfixturevalue("pg_template")
    name = f"loyalty_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f"CREATE DATABASE {name} TEMPLATE {template_name}"))
    yield _pg_url(name)
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def clock() -> TestClock:
    return TestClock(START_TIME)


@pytest.fixture
async def app(database_url: str, clock: TestClock) -> AsyncIterator[App]:
    """A real server on a free loopback port, SERVING before the test starts."""
    from loyalty_ledger.server import App  # only the end-to-end tests need the server

    settings = server_settings(database_url)
    server = App(settings, clock=clock)
    await server.start()
    await asyncio.wait_for(server.serving.wait(), timeout=10)  # SERVING, admin key in place
    yield server
    await server.stop(0)


@pytest.fixture
async def channel(app: App) -> AsyncIterator[grpc.aio.Channel]:
    async with open_channel(f"127.0.0.1:{app.port}") as ch:
        yield ch


@pytest.fixture
def wallets(channel: grpc.aio.Channel) -> wallet_pb2_grpc.WalletServiceStub:
    return wallet_pb2_grpc.WalletServiceStub(channel)


@pytest.fixture
def offers(channel: grpc.aio.Channel) -> offer_pb2_grpc.OfferServiceStub:
    return offer_pb2_grpc.OfferServiceStub(channel)


@pytest.fixture
def settlement(channel: grpc.aio.Channel) -> settlement_pb2_grpc.SettlementServiceStub:
    return settlement_pb2_grpc.SettlementServiceStub(channel)
