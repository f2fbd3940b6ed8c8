"""Engines and the one write path.

SQLite: readers use their own connections (WAL lets them run beside the writer); every write
goes through `SingleWriter`, one task that owns the only write connection and runs each job in
its own `BEGIN IMMEDIATE` transaction, so writers never fight for the database lock.
PostgreSQL: writes run concurrently on a pool; the ledger takes per-wallet row locks in a fixed
order, and serialization failures and deadlocks are retried a bounded number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from loyalty_ledger.domain.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[AsyncConnection], Awaitable[T]]

# PostgreSQL SQLSTATEs that mean "try the whole transaction again".
_RETRYABLE_SQLSTATES = {"40001", "40P01"}


# SQLite read connections: a pool of 5 plus 5 overflow (the writer has its own one).
SQLITE_READ_POOL_SIZE = 5
SQLITE_READ_MAX_OVERFLOW = 5
# SQLite page cache of the write connection (readers keep 8 MiB each).
SQLITE_WRITER_CACHE_KIB = 262_144
# WAL pages before an automatic checkpoint (SQLite's default is 1,000: 4 MiB).
SQLITE_WAL_AUTOCHECKPOINT_PAGES = 32_768


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def ensure_sqlite_folder(url: str) -> None:
    """Create the folder of a SQLite database file, so a fresh clone just works."""
    parsed = make_url(url)
    if is_sqlite(url) and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_engine(url: str, *, write: bool, busy_timeout_ms: int) -> AsyncEngine:
    ensure_sqlite_folder(url)
    engine = create_async_engine(
        url,
        pool_size=1 if write else SQLITE_READ_POOL_SIZE,
        max_overflow=0 if write else SQLITE_READ_MAX_OVERFLOW,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves; pysqlite's implicit transactions defer the lock.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged commit survives power loss, not just a process crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # A larger page cache for the writer: runs update indexes all over a large file.
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_WRITER_CACHE_KIB if write else 8192}")
        cursor.execute("PRAGMA temp_store=MEMORY")
        if write:
            # Checkpoint less often, so index pages that many chunks touch are copied back
            # into the database file once, not after every commit (each commit still fsyncs).
            cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # The writer takes the write lock up front, so a transaction never fails halfway
        # on a lock upgrade; readers take a plain deferred snapshot.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class SingleWriter:
    """Runs write jobs one at a time on one connection, in arrival order."""

    def __init__(self, engine: AsyncEngine, queue_max: int) -> None:
        self._engine = engine
        self._queue: asyncio.Queue[tuple[Job[Any], asyncio.Future[Any]]] = asyncio.Queue(
            maxsize=queue_max
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sqlite-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(Unavailable("the server is shutting down"))

    async def submit(self, job: Job[T]) -> T:
        if self._task is None:
            raise Unavailable("the writer is not running")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((job, future))
        except asyncio.QueueFull:
            raise ResourceExhausted(
                f"more than {self._queue.maxsize} writes in flight; retry shortly",
                reason="WRITE_QUEUE_FULL",
            ) from None
        return await future

    async def _run(self) -> None:
        while True:
            job, future = await self._queue.get()
            if future.cancelled():
                continue  # the caller gave up before we started: nothing was done
            try:
                async with self._engine.begin() as conn:
                    result = await job(conn)
            except Exception as exc:  # handed to the caller, never lost
                if not future.done():
                    future.set_exception(_storage_error(exc))
            else:
                if not future.done():
                    future.set_result(result)


# PostgreSQL: read_only_sql_transaction, and class 53 (insufficient resources: disk full,
# out of memory, too many connections).
_STORAGE_SQLSTATES = ("25006", "53")


def _storage_error(exc: Exception) -> Exception:
    """Turn storage trouble the caller cannot fix (read-only, disk full) into UNAVAILABLE."""
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if isinstance(exc, DBAPIError) and str(sqlstate or "").startswith(_STORAGE_SQLSTATES):
        log.error("storage refused a write (SQLSTATE %s): %s", sqlstate, exc.orig)
        return Unavailable(f"storage is not accepting writes (SQLSTATE {sqlstate})")
    if isinstance(exc, OperationalError):
        text = str(exc.orig) if exc.orig is not None else str(exc)
        lowered = text.lower()
        if (
            "readonly" in lowered
            or "read-only" in lowered
            or "disk" in lowered
            or "full" in lowered
        ):
            log.error("storage refused a write: %s", text)
            return Unavailable(f"storage is not accepting writes: {text}")
    return exc


class PoolGate:
    """Bounds the connections taken from one pool at once to what the pool can hand out.

    Callers beyond `slots` wait here, in arrival order and without a time limit (a gRPC call
    is still bounded by LOYALTY_UNARY_SECONDS_MAX), instead of in SQLAlchemy's pool, whose
    wait ends after `pool_timeout` with a TimeoutError. A task that already holds a slot
    takes a nested connection ungated (it would otherwise wait for itself). Should the pool
    time out all the same (connections taken outside the gate, such as the readiness check),
    the caller gets Unavailable `DB_POOL_EXHAUSTED`, which is retryable, never INTERNAL.
    """

    def __init__(self, slots: int) -> None:
        assert slots >= 1
        self.slots = slots
        self._free = asyncio.Semaphore(slots)
        self._held: contextvars.ContextVar[bool] = contextvars.ContextVar(
            f"pool_gate_{id(self)}", default=False
        )

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        try:
            if self._held.get():
                yield
                return
            async with self._free:
                token = self._held.set(True)
                try:
                    yield
                finally:
                    self._held.reset(token)
        except PoolTimeoutError as error:
            log.warning("database pool exhausted: %s", error)
            raise Unavailable(
                "no database connection came free in time; retry with the same request_id",
                reason="DB_POOL_EXHAUSTED",
            ) from error


class Database:
    """Owns the engines. `read` runs a job on a snapshot; `write` on the one write path."""

    def __init__(
        self,
        url: str,
        *,
        writer_queue_max: int = 10_000,
        sqlite_busy_timeout_ms: int = 5_000,
        pg_pool_size: int = 10,
        pg_max_overflow: int = 10,
        pg_pool_timeout_s: float = 30.0,
        write_retries_max: int = 8,
    ) -> None:
        self.url = url
        self.is_sqlite = is_sqlite(url)
        self._write_retries_max = write_retries_max
        self._writer: SingleWriter | None = None
        if self.is_sqlite:
            self.read_engine = _sqlite_engine(
                url, write=False, busy_timeout_ms=sqlite_busy_timeout_ms
            )
            self.write_engine = _sqlite_engine(
                url, write=True, busy_timeout_ms=sqlite_busy_timeout_ms
            )
            self._writer = SingleWriter(self.write_engine, writer_queue_max)
            self._gate = PoolGate(SQLITE_READ_POOL_SIZE + SQLITE_READ_MAX_OVERFLOW)  # reads
        else:
            self.write_engine = create_async_engine(
                url,
                pool_size=pg_pool_size,
                max_overflow=pg_max_overflow,
                pool_timeout=pg_pool_timeout_s,
                pool_pre_ping=True,
            )
            self.read_engine = self.write_engine
            self._gate = PoolGate(pg_pool_size + pg_max_overflow)  # reads and writes

    async def start(self) -> None:
        if self._writer is not None:
            self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.stop()
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()

    async def read(self, job: Job[T]) -> T:
        async with self._gate.slot(), self.read_engine.connect() as conn:
            if not self.is_sqlite:
                # One snapshot for every statement of the read (SQLite readers have one anyway).
                await conn.execution_options(isolation_level="REPEATABLE READ")
            result = await job(conn)
            await conn.rollback()
            return result

    async def write(self, job: Job[T]) -> T:
        if self._writer is not None:
            return await self._writer.submit(job)
        attempt = 0
        while True:
            try:
                async with self._gate.slot(), self.write_engine.begin() as conn:
                    return await job(conn)
            except DBAPIError as exc:
                sqlstate = getattr(exc.orig, "sqlstate", None)
                if sqlstate not in _RETRYABLE_SQLSTATES:
                    raise _storage_error(exc) from exc
                if attempt >= self._write_retries_max:
                    raise Unavailable(
                        f"write conflicted {attempt + 1} times with concurrent writes; retry",
                        reason="CONTENTION",
                    ) from exc
                attempt += 1
                # Jittered backoff so the losers of a conflict do not collide again.
                await asyncio.sleep(random.uniform(0, 0.002 * 2**attempt))
