"""The server as an operator runs it: a real `loyalty serve` process, health, reflection,
graceful stop, readiness before migration, and no internals in INTERNAL errors."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from loyalty.v1 import wallet_pb2

from loyalty_ledger.ledger import migrate
from loyalty_ledger.ledger.reads import Reader
from loyalty_ledger.server import App, serve
from loyalty_ledger.settings import Settings
from tests.helpers import open_channel

LOYALTY = str(Path(sys.executable).parent / "loyalty")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _health(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return response.status


async def _services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request])):
        return {s.name for s in response.list_services_response.service}
    return set()


async def test_loyalty_serve_process_reports_serving_lists_services_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "LOYALTY_PORT": str(port),
        "LOYALTY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/data/ledger.db",
    }
    migrating = await asyncio.create_subprocess_exec(
        LOYALTY, "migrate", env=env, stdout=subprocess.DEVNULL
    )
    assert await asyncio.wait_for(migrating.wait(), 60) == 0
    process = await asyncio.create_subprocess_exec(
        LOYALTY, "serve", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        async with open_channel(f"127.0.0.1:{port}") as channel:
            status = None
            for _ in range(100):
                try:
                    status = await _health(channel)
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
            assert status == health_pb2.HealthCheckResponse.SERVING
            services = await _services(channel)
            assert {
                "loyalty.v1.WalletService",
                "loyalty.v1.OfferService",
                "grpc.health.v1.Health",
            } <= services
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_not_serving_until_the_database_is_migrated(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/fresh.db"
    app = App(Settings(host="127.0.0.1", port=0, database_url=url))
    await app.start()
    try:
        async with open_channel(f"127.0.0.1:{app.port}") as channel:
            assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await _health(channel, "loyalty.v1.WalletService") == (
                health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await migrate.upgrade_async(url)
            for _ in range(50):
                if await _health(channel) == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.1)
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await app.stop(0)


async def test_serve_freezes_the_heap_startup_built(tmp_path: Path) -> None:
    # A full garbage collection walks every tracked object that is not frozen; what startup
    # built, walked again and again, stopped the server for 50-80 ms every few seconds.
    url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    await migrate.upgrade_async(url)
    gc.unfreeze()
    serving = asyncio.create_task(serve(Settings(host="127.0.0.1", port=0, database_url=url)))
    try:
        for _ in range(100):
            if gc.get_freeze_count() or serving.done():
                break
            await asyncio.sleep(0.05)
        assert not serving.done()
        assert gc.get_freeze_count() > 0
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        gc.unfreeze()


async def test_unexpected_error_is_internal_without_internals_and_logged(
    wallets, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def explode(self: Reader, wallet_id: str) -> None:
        raise RuntimeError("secret connection string postgres://admin:hunter2@db")

    monkeypatch.setattr(Reader, "get_wallet", explode)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="wal_x"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (caught.value.details() or "")
    assert "incident" in (caught.value.details() or "")
    assert any(
        "hunter2" in (r.exc_text or "") or "hunter2" in str(r.exc_info) for r in caplog.records
    )


async def test_loyalty_run_cli_runs_a_job_and_refuses_unknown_kinds(tmp_path: Path) -> None:
    env = {**os.environ, "LOYALTY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    migrating = await asyncio.create_subprocess_exec(
        LOYALTY, "migrate", env=env, stdout=subprocess.DEVNULL
    )
    assert await asyncio.wait_for(migrating.wait(), 60) == 0
    ok = await asyncio.create_subprocess_exec(
        LOYALTY, "run", "expiry", env=env, stdout=subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(ok.communicate(), 60)
    assert ok.returncode == 0
    assert b"(EXPIRY) SUCCEEDED: 0 items" in out
    bad = await asyncio.create_subprocess_exec(
        LOYALTY,
        "run",
        "nonsense",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(bad.wait(), 60) != 0
