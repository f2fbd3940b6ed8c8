"""Shared machinery of the reliability suite: sizes, server processes, a server on a thread.

Sizes: every test reads its figures through `size(ci, soak)`. `LOYALTY_SOAK=1` (what
`make soak` sets) picks the issue's figures; otherwise the bounded CI figures are used. A few
figures can also be set one by one (LOYALTY_FUZZ_MESSAGES, LOYALTY_MODEL_EXAMPLES).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loyalty_ledger.clock import TestClock
from loyalty_ledger.ledger.db import Database
from loyalty_ledger.settings import Settings
from tests.invariants import check_invariants

T = TypeVar("T")

SOAK = os.environ.get("LOYALTY_SOAK", "").lower() in ("1", "true", "yes")
LOYALTY = str(Path(sys.executable).parent / "loyalty")
REPO = Path(__file__).resolve().parents[2]


def size(ci: int, soak: int, env: str = "") -> int:
    """The CI figure, the soak figure under LOYALTY_SOAK=1, or the variable `env` if set."""
    if env and os.environ.get(env):
        return int(os.environ[env])
    return soak if SOAK else ci


def _auth() -> tuple[tuple[str, str], ...]:
    """`authorization` metadata when the test servers take an admin key (LOYALTY_ADMIN_KEY)."""
    key = os.environ.get("LOYALTY_ADMIN_KEY")
    return (("authorization", f"Bearer {key}"),) if key else ()


def _aio_details(details: Any) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), *_auth())
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _AioUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details), request)


class _AioStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details), request)


def aio_channel(target: str) -> grpc.aio.Channel:
    """An insecure grpc.aio channel whose calls carry the admin key, if there is one."""
    interceptors = [_AioUnary(), _AioStream()] if _auth() else None
    return grpc.aio.insecure_channel(target, interceptors=interceptors)


class _SyncDetails(grpc.ClientCallDetails):
    def __init__(self, details: Any) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = [*(details.metadata or ()), *_auth()]
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = getattr(details, "compression", None)


class _SyncUnary(grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_SyncDetails(details), request)


def sync_channel(target: str) -> grpc.Channel:
    """A blocking channel whose calls carry the admin key, if there is one."""
    channel = grpc.insecure_channel(target)
    return grpc.intercept_channel(channel, _SyncUnary()) if _auth() else channel


def server_settings(database_url: str) -> Settings:
    """Settings for an in-process server: the admin key and no metrics port, where they exist."""
    extra: dict[str, Any] = {}
    fields = Settings.model_fields
    if _auth() and "admin_key" in fields:
        extra["admin_key"] = os.environ["LOYALTY_ADMIN_KEY"]
    if "metrics" in fields:
        extra["metrics"] = False
    return Settings(host="127.0.0.1", port=0, database_url=database_url, **extra)


async def wait_ready(app: Any) -> None:
    """Until the server answers: its `serving` event where it has one, else is_ready()."""
    serving = getattr(app, "serving", None)
    if serving is not None:
        await asyncio.wait_for(serving.wait(), 20)
        return
    for _ in range(400):
        if await app.is_ready():
            return
        await asyncio.sleep(0.025)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def invariants_hold(url: str) -> None:
    """Rules 1-3 (tests/invariants.py) on the database behind `url`."""
    db = Database(url)
    try:
        await db.read(check_invariants)
    finally:
        await db.close()


async def scalar(url: str, statement: Any) -> Any:
    db = Database(url)
    try:

        async def job(conn: Any) -> Any:
            return await conn.scalar(statement)

        return await db.read(job)
    finally:
        await db.close()


class ServerProcess:
    """`loyalty serve` in a child process on a fixed port, so it can be SIGKILLed and restarted.

    `fault_file` enables the crash hook of src/loyalty_ledger/faults.py; `arm()` sets a crash.
    """

    def __init__(self, url: str, workdir: Path, **env: str) -> None:
        self.url = url
        self.port = free_port()
        self.fault_file = workdir / "fault"
        self.log = workdir / "server.log"
        self.env = {
            **os.environ,
            "LOYALTY_HOST": "127.0.0.1",
            "LOYALTY_PORT": str(self.port),
            "LOYALTY_DATABASE_URL": url,
            "LOYALTY_FAULT_FILE": str(self.fault_file),
            "LOYALTY_SHUTDOWN_GRACE_SECONDS": "0",
            **env,
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def arm(self, point: str, request_id: str) -> None:
        self.fault_file.write_text(f"{point} {request_id}")

    async def start(self, wait_s: float = 60) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                LOYALTY, "serve", env=self.env, stdout=log, stderr=log, cwd=REPO
            )
        self.starts += 1
        await self.wait_serving(wait_s)

    async def wait_serving(self, wait_s: float = 60) -> None:
        deadline = time.monotonic() + wait_s
        async with aio_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.proc is not None and self.proc.returncode is None, self.tail()
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                assert time.monotonic() < deadline, f"server not SERVING\n{self.tail()}"
                await asyncio.sleep(0.05)

    async def died(self, wait_s: float = 30) -> int:
        """Wait for the process to exit (e.g. after an armed crash); its return code."""
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), wait_s)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-3000:]
        return ""


class ThreadedServer:
    """An in-process server on its own event loop thread, for synchronous tests (hypothesis).

    The test talks to it with blocking gRPC stubs on `channel`; `call()` runs a coroutine on
    the server's loop (e.g. a database check).
    """

    def __init__(self, database_url: str, clock: TestClock) -> None:
        self.database_url = database_url
        self.clock = clock
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.app: Any = self.call(self._start())
        self.channel = sync_channel(f"127.0.0.1:{self.app.port}")

    async def _start(self) -> Any:
        from loyalty_ledger.server import App

        app = App(server_settings(self.database_url), self.clock)
        await app.start()
        await wait_ready(app)
        return app

    def call(self, coro: Awaitable[T], timeout: float = 120) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def invariants(self) -> None:
        self.call(self.app.db.read(check_invariants))

    def close(self) -> None:
        self.channel.close()
        with contextlib.suppress(Exception):
            self.call(self.app.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def threaded_server(database_url: str, clock: TestClock) -> Iterator[ThreadedServer]:
    server = ThreadedServer(database_url, clock)
    try:
        yield server
    finally:
        server.close()


def run_sync(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)
