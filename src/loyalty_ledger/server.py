"""Wiring: settings -> database -> ledger -> servicers -> grpc.aio server. Nothing at import."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from loyalty.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    clock_pb2,
    clock_pb2_grpc,
    offer_pb2,
    offer_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
    wallet_pb2,
    wallet_pb2_grpc,
)

from loyalty_ledger.api.admin_servicer import AdminServicer
from loyalty_ledger.api.auth import AuthInterceptor, KeyCache
from loyalty_ledger.api.clock_servicer import TestClockServicer
from loyalty_ledger.api.message_limits import TRANSPORT_FACTOR, MessageLimits
from loyalty_ledger.api.offer_codec import decode_offer
from loyalty_ledger.api.offer_servicer import OfferServicer
from loyalty_ledger.api.settlement_servicer import SettlementServicer
from loyalty_ledger.api.telemetry import CallTelemetry
from loyalty_ledger.api.wallet_servicer import WalletServicer
from loyalty_ledger.clock import Clock, SystemClock, TestClock
from loyalty_ledger.domain.settlement import Period
from loyalty_ledger.events.hub import ExpirationHub
from loyalty_ledger.jobs.runner import Runner
from loyalty_ledger.jobs.scheduler import Scheduler
from loyalty_ledger.ledger import api_keys, idempotency
from loyalty_ledger.ledger.db import Database
from loyalty_ledger.ledger.engine import Tx
from loyalty_ledger.ledger.migrate import current_revision, head_revision
from loyalty_ledger.ledger.records import RunKind
from loyalty_ledger.ledger.service import Ledger
from loyalty_ledger.metrics import Metrics
from loyalty_ledger.settings import Settings
from loyalty_ledger.tracing import Tracing

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    wallet_pb2.DESCRIPTOR.services_by_name["WalletService"].full_name,
    offer_pb2.DESCRIPTOR.services_by_name["OfferService"].full_name,
    settlement_pb2.DESCRIPTOR.services_by_name["SettlementService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
TEST_CLOCK_SERVICE = clock_pb2.DESCRIPTOR.services_by_name["TestClockService"].full_name
READINESS_POLL_SECONDS = 1.0
PURGE_INTERVAL_SECONDS = 3600.0
TASK_STOP_WAIT_S = 2.0  # how long stop() waits for its cancelled background tasks


class App:
    """One server instance. `start()` binds and returns the port; `stop()` drains and closes."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or (TestClock() if settings.clock == "test" else SystemClock())
        self.db = Database(
            settings.database_url,
            writer_queue_max=settings.writer_queue_max,
            sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms,
            pg_pool_size=settings.pg_pool_size,
            pg_max_overflow=settings.pg_max_overflow,
            pg_pool_timeout_s=settings.pg_pool_timeout_seconds,
            write_retries_max=settings.write_retries_max,
        )
        self.ledger = Ledger(
            self.db,
            self.clock,
            idempotency_retention_us=settings.idempotency_retention_hours * 3600 * 1_000_000,
        )
        self.hub = ExpirationHub(
            self.db,
            self.clock,
            subscribers_max=settings.watch_subscribers_max,
            buffer_max=settings.watch_buffer_max,
            heartbeat_interval_s=settings.watch_heartbeat_seconds,
            poll_interval_s=settings.watch_poll_seconds,
        )
        self.ledger.add_commit_listener(self.hub.notify)
        self.metrics = Metrics()
        self.metrics.watch_subscribers_from(lambda: self.hub.subscriber_count)
        self.metrics_port = 0
        self.runner = Runner(
            self.ledger,
            chunk_max=settings.run_chunk_max,
            expiry_chunk_max=settings.expiry_chunk_max,
            decode=decode_offer,
            settlement_period=Period(settings.settlement_period),
            observe=self.metrics.run_ended,
        )
        self.scheduler: Scheduler | None = None
        if settings.scheduler and not isinstance(self.clock, TestClock):
            self.scheduler = Scheduler(
                self.runner,
                self.clock,
                intervals_s={
                    RunKind.HOLD_TIMEOUT: settings.hold_timeout_interval_seconds,
                    RunKind.EXPIRY: settings.expiry_interval_seconds,
                    RunKind.EXPIRY_WARNING: settings.warning_interval_seconds,
                    RunKind.INACTIVITY: settings.inactivity_interval_seconds,
                    RunKind.BIRTHDAY: settings.birthday_interval_seconds,
                    RunKind.TIER_REVIEW: settings.tier_review_interval_seconds,
                },
                lease_s=settings.lease_seconds,
                crontabs={RunKind.SETTLEMENT: settings.settlement_cron},
            )
        self.health = health_aio.HealthServicer()
        self.keys = KeyCache(self.ledger, settings.auth_cache_seconds)
        # Set once SERVING (tests wait for it); calls that come earlier wait for it in auth.
        self.serving = asyncio.Event()
        self.interceptors: list[grpc.aio.ServerInterceptor] = [
            # Before authentication: an oversized request is refused unparsed.
            MessageLimits(settings.message_bytes_max),
            AuthInterceptor(
                self.ledger,
                self.keys,
                unary_seconds_max=settings.unary_seconds_max,
                streams_per_key_max=settings.streams_per_key_max,
                ready=self.serving,
            ),
        ]
        # Outermost first: call metrics and the log context see every call, also the ones
        # an inner interceptor refuses; tracing spans come next.
        self.interceptors.insert(0, CallTelemetry(self.metrics))
        self.tracing: Tracing | None = None
        if settings.otel:
            from loyalty_ledger import tracing  # lazily: OpenTelemetry is an optional extra

            self.tracing = tracing.setup()
            self.interceptors.insert(1, self.tracing.interceptor)
        transport_bytes_max = settings.message_bytes_max * TRANSPORT_FACTOR
        self.server = grpc.aio.server(
            interceptors=self.interceptors,
            options=[
                # gRPC's own caps are a backstop; MessageLimits refuses with details first.
                ("grpc.max_receive_message_length", transport_bytes_max),
                ("grpc.max_send_message_length", transport_bytes_max),
            ],
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0

    async def start(self) -> int:
        await self.db.start()
        await self.hub.start()
        wallet_pb2_grpc.add_WalletServiceServicer_to_server(
            WalletServicer(self.ledger, self.hub, self.runner), self.server
        )
        if isinstance(self.clock, TestClock):
            clock_pb2_grpc.add_TestClockServiceServicer_to_server(
                TestClockServicer(self.clock, self.runner), self.server
            )
        offer_pb2_grpc.add_OfferServiceServicer_to_server(
            OfferServicer(
                self.ledger, event_age_max_us=self.settings.event_age_max_hours * 3600 * 1_000_000
            ),
            self.server,
        )
        settlement_pb2_grpc.add_SettlementServiceServicer_to_server(
            SettlementServicer(self.ledger), self.server
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.ledger, self.keys), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if self.settings.reflection:
            reflection.enable_server_reflection(
                (
                    *SERVICE_NAMES,
                    *([TEST_CLOCK_SERVICE] if isinstance(self.clock, TestClock) else []),
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ),
                self.server,
            )
        await self._set_serving(False)
        if self.settings.metrics:
            self._serve_metrics()
        self.port = self._bind(f"{self.settings.host}:{self.settings.port}")
        if self.port == 0:
            raise RuntimeError(f"cannot bind {self.settings.host}:{self.settings.port}")
        await self.server.start()
        self._tasks.append(asyncio.create_task(self._become_ready(), name="readiness"))
        self._tasks.append(asyncio.create_task(self._purge_idempotency(), name="idem-purge"))
        log.info("serving on %s:%d (%s)", self.settings.host, self.port, self._db_label())
        return self.port

    def _bind(self, address: str) -> int:
        """Listen in plain text, or with TLS (and client certificates: mutual TLS)."""
        s = self.settings
        if not s.tls_cert_file:
            return self.server.add_insecure_port(address)
        client_ca = Path(s.tls_client_ca_file).read_bytes() if s.tls_client_ca_file else None
        credentials = grpc.ssl_server_credentials(
            [(Path(s.tls_key_file).read_bytes(), Path(s.tls_cert_file).read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        return self.server.add_secure_port(address, credentials)

    def _db_label(self) -> str:
        return "SQLite" if self.db.is_sqlite else "PostgreSQL"

    async def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def is_ready(self) -> bool:
        """The database answers and carries the newest schema revision."""
        try:
            return await current_revision(self.db.read_engine) == head_revision()
        except Exception as error:  # any failure to reach the database means "not yet"
            log.warning("database not ready: %s", error)
            return False

    async def _become_ready(self) -> None:
        # Polling is the point: the database may be migrated by another process.
        while True:
            while not await self.is_ready():  # noqa: ASYNC110
                await asyncio.sleep(READINESS_POLL_SECONDS)
            try:
                await self._admin_key()
                break
            except Exception:  # the server must not stay NOT_SERVING for good without a word
                log.exception("cannot set up the admin API key yet; retrying")
                await asyncio.sleep(READINESS_POLL_SECONDS)
        await self._set_serving(True)
        self.serving.set()
        log.info("database reachable and migrated: SERVING")
        try:
            resumed = await self.runner.resume_interrupted()
            if resumed:
                log.info("resumed %d interrupted runs", len(resumed))
        except Exception:
            log.exception("resuming interrupted runs failed; the schedule picks up what is due")
        if self.scheduler is not None:
            self.scheduler.start()

    async def _admin_key(self) -> None:
        """Make the configured admin key valid; on the first start of a database without keys
        and without one configured, create an admin key and print it, once."""
        configured = self.settings.admin_key.get_secret_value()
        if configured:
            await self.ledger.write(
                lambda tx: api_keys.ensure_configured_admin(tx.conn, configured, tx.now_us)
            )
            return

        async def first_key(tx: Tx) -> str | None:
            if await api_keys.count_valid(tx.conn):
                return None
            _, secret = await api_keys.create_key(
                tx.conn, "first admin key", api_keys.Role.ADMIN, [], "", tx.now_us
            )
            return secret

        secret = await self.ledger.write(first_key)
        if secret is not None:
            log.warning("created the first admin API key; it is printed once, on stdout")
            print(f"admin API key (shown once, keep it safe): {secret}", flush=True)

    def _serve_metrics(self) -> None:
        host, port = self.settings.metrics_host, self.settings.metrics_port
        try:
            self.metrics_port = self.metrics.serve(host, port)
        except OSError as error:
            # Calls matter more than metrics: serve without them; the scrape target shows down.
            log.warning("metrics not served: cannot listen on %s:%d (%s)", host, port, error)
            return
        self._tasks.append(asyncio.create_task(self._refresh_metrics(), name="metrics"))

    async def _refresh_metrics(self) -> None:
        await self.serving.wait()
        await self.metrics.refresh_forever(self.db, self.settings.metrics_refresh_seconds)

    async def _purge_idempotency(self) -> None:
        while True:
            await asyncio.sleep(PURGE_INTERVAL_SECONDS)
            try:
                purged = await self.ledger.write(
                    lambda tx: idempotency.purge_expired(tx.conn, tx.now_us)
                )
                log.info("purged %d idempotency records past retention", purged)
            except Exception:
                log.exception("idempotency purge failed; will retry")

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        self.runner.stopping = True  # runs end after their current chunk; resumed at next start
        await self.hub.stop()  # ends open streams so their clients resume elsewhere
        # Stops accepting calls at once; calls under way get `grace`, then are cancelled.
        server_stopped = asyncio.create_task(self.server.stop(grace))
        if not await self.runner.stop(grace):
            log.warning("runs still working after %s s are cut short; next start resumes", grace)
        if self.scheduler is not None:
            self.scheduler.stop()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a task stuck in the database must not keep the server from stopping.
            _, pending = await asyncio.wait(self._tasks, timeout=TASK_STOP_WAIT_S)
            for task in pending:
                log.warning("background task %s did not stop in time", task.get_name())
        await server_stopped
        self.metrics.close()
        if self.tracing is not None:
            self.tracing.shutdown()
            self.tracing = None  # stop() may run twice
        await self.db.close()


def freeze_startup_heap() -> None:
    """Collect once, then take every object alive now out of the garbage collector's sight.

    What startup built (modules, protobuf descriptors, SQLAlchemy's tables, gRPC's
    handlers) lives as long as the process. Left in the oldest generation,
    the collector walks all of it in every full collection, which under load came every few
    seconds and stopped every thread for 50-80 ms: the tail of the latencies. Frozen, a full
    collection walks only what was allocated since. Garbage made later is still collected.
    """
    gc.collect()
    gc.freeze()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    app = App(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    freeze_startup_heap()
    if app.metrics_port:
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, app.metrics_port)
    print(f"loyalty ledger listening on {settings.host}:{app.port}", flush=True)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await app.stop()
