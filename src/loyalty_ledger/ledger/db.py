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
import fcntl
import logging
import os
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from loyalty_ledger.domain.errors import ResourceExhausted, Unavailable
from loyalty_ledger.ledger.sqlite_inline import inline_creator
from loyalty_ledger.ledger.sqlite_sync import SyncBackedConnection, sync_creator

log = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E", AsyncEngine, Engine)
Job = Callable[[AsyncConnection], Awaitable[T]]

# PostgreSQL SQLSTATEs that mean "try the whole transaction again".
_RETRYABLE_SQLSTATES = {"40001", "40P01"}


# SQLite reads run on SQLITE_READ_THREADS threads with inline connections (ReaderPool), at
# most SQLITE_READ_POOL_SIZE + SQLITE_READ_MAX_OVERFLOW at once (PoolGate); the aiosqlite
# pool of that size only serves other uses (the readiness check).
SQLITE_READ_POOL_SIZE = 5
SQLITE_READ_MAX_OVERFLOW = 5
SQLITE_READ_THREADS = 4
SQLITE_READ_CONNECTIONS_PER_THREAD = 3
# At shutdown, how long reads under way may take before they are cancelled.
READ_STOP_GRACE_S = 0.5
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


def _sqlite_engine(
    url: str, *, write: bool, busy_timeout_ms: int, inline_pool: int = 0
) -> AsyncEngine:
    """A SQLite engine. With `inline_pool` connections, it calls sqlite3 in place
    (sqlite_inline.py) and must only be used on the thread that made it (`LoopThread`)."""
    ensure_sqlite_folder(url)
    if inline_pool:
        path = make_url(url).database or ":memory:"
        engine = create_async_engine(
            url, pool_size=inline_pool, max_overflow=0, async_creator=inline_creator(path)
        )
    else:
        engine = create_async_engine(
            url, pool_size=SQLITE_READ_POOL_SIZE, max_overflow=SQLITE_READ_MAX_OVERFLOW
        )
    _configure_sqlite(engine.sync_engine, write=write, busy_timeout_ms=busy_timeout_ms)
    return engine


def _sqlite_writer_engine(url: str, *, busy_timeout_ms: int) -> Engine:
    """The writer's synchronous engine (sqlite_sync.py), to be used on the writer's thread."""
    ensure_sqlite_folder(url)
    path = make_url(url).database or ":memory:"
    engine = create_engine(
        "sqlite://", creator=sync_creator(path), poolclass=QueuePool, pool_size=1, max_overflow=0
    )
    _configure_sqlite(engine, write=True, busy_timeout_ms=busy_timeout_ms)
    return engine


def _configure_sqlite(engine: Engine, *, write: bool, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
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

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # The writer takes the write lock up front, so a transaction never fails halfway
        # on a lock upgrade; readers take a plain deferred snapshot.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class LoopThread(Generic[E]):
    """A thread running an event loop of its own, with a SQLite engine made (and only used)
    there. Blocking on the database in it holds up nothing but that loop."""

    def __init__(self, name: str, make_engine: Callable[[], E]) -> None:
        self.name = name
        self._make_engine: Callable[[], E] = make_engine
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # None: not (or no longer) running
        self.engine: E | None = None
        self._failed: BaseException | None = None  # why the thread could not start

    async def start(self, on_start: Callable[[], None] | None = None) -> None:
        """Start the thread; `on_start` runs on it before its loop does."""
        if self._thread is not None:
            return
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(ready, on_start), name=self.name, daemon=True
        )
        self._thread.start()
        await asyncio.to_thread(ready.wait)
        if self._failed is not None:
            self._thread = None
            raise self._failed

    def _main(self, ready: threading.Event, on_start: Callable[[], None] | None) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self.engine = engine = self._make_engine()
            if on_start is not None:
                on_start()
        except BaseException as error:  # handed to `start`, which must not wait forever
            self._failed = error
            loop.close()
            ready.set()
            return
        self.loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            if isinstance(engine, AsyncEngine):
                loop.run_until_complete(engine.dispose())
            else:
                engine.dispose()
            loop.close()

    async def stop(self, last: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `last` on the thread's loop (it ends the work under way), then stop."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        self.loop = None  # new work is refused from here on
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(last(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        self._thread = None


class ReaderPool:
    """SQLite reads on threads of their own, each with inline connections (no thread hop
    per statement). A read goes to the thread with the fewest reads under way, runs in its
    caller's context, and is cancelled with its caller."""

    def __init__(self, make_engine: Callable[[], AsyncEngine], threads: int) -> None:
        self._threads = [
            LoopThread[AsyncEngine](f"sqlite-reader-{i}", make_engine) for i in range(threads)
        ]
        self._reading = [0] * threads  # reads under way per thread (callers' loop only)

    @property
    def running(self) -> bool:
        return all(thread.loop is not None for thread in self._threads)

    async def start(self) -> None:
        for thread in self._threads:
            await thread.start()

    async def stop(self) -> None:
        for thread in self._threads:
            await thread.stop(_stop_reads)

    async def read(self, job: Job[T]) -> T:
        index = min(range(len(self._threads)), key=self._reading.__getitem__)
        thread = self._threads[index]
        loop, engine = thread.loop, thread.engine
        if loop is None or engine is None:
            raise Unavailable("the server is shutting down")

        async def run() -> T:
            async with engine.connect() as conn:
                result = await job(conn)
                await conn.rollback()
                return result

        self._reading[index] += 1
        try:
            # The task is created in a copy of this context (request id, trace), and
            # cancelling this call cancels it.
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), loop))
        finally:
            self._reading[index] -= 1


async def _stop_reads() -> None:
    """(On a reader thread) Reads under way get a moment to end, then are cancelled."""
    await _finish_other_tasks(grace_s=READ_STOP_GRACE_S)


async def _finish_other_tasks(grace_s: float) -> None:
    """(On a LoopThread) Let the loop's other tasks end, cancelling those still running after
    `grace_s`, and wait until none is left. Tasks that start meanwhile (SQLAlchemy closes a
    connection in a shielded task of its own when a read is cancelled) are waited for, never
    cancelled, so every connection is back in its pool before the engine is disposed of."""
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current]
    if others:
        await asyncio.wait(others, timeout=grace_s)
    for task in others:
        task.cancel()
    while remaining := [task for task in asyncio.all_tasks() if task is not current]:
        await asyncio.wait(remaining)


class _Write:
    """One job handed to the writer, with the caller's loop, future and context."""

    __slots__ = ("context", "future", "job", "loop")

    def __init__(
        self, job: Job[Any], future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.job = job
        self.future = future
        self.loop = loop
        self.context = contextvars.copy_context()  # the caller's request id and trace

    def settle(self, outcome: Any, *, failed: bool) -> None:
        """Hand the outcome to the caller's loop (the writer runs on a thread of its own)."""
        self.loop.call_soon_threadsafe(_settle, self.future, outcome, failed)


def _settle(future: asyncio.Future[Any], outcome: Any, failed: bool) -> None:
    if future.done():
        return  # the caller gave up; the job's work stands (or was rolled back) regardless
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class WriterTurn:
    """Takes turns for the SQLite write lock with writers in other processes, fairly.

    SQLite's busy handler polls with sleeps of up to 100 ms, while a busy writer starts its
    next transaction microseconds after a COMMIT: a second server on the same file could
    miss every gap for the whole busy timeout. So each transaction first takes an exclusive
    `flock` on `<database>-writer.lock`, which the kernel hands to a waiting process when it
    is released. The wait runs on a helper thread, bounded by the busy timeout (then the
    write answers DATABASE_BUSY, like a refused BEGIN); a lock granted after that is given
    back at once. Each turn opens its own descriptor, so a late grant never releases a
    later turn's lock.
    """

    def __init__(self, database_path: str, timeout_s: float) -> None:
        self.path = f"{database_path}-writer.lock"
        self.timeout_s = timeout_s

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process's turn: wait for the kernel to hand it over
            await self._wait(fd)
        except BaseException:
            os.close(fd)
            raise
        try:
            yield
        finally:
            os.close(fd)  # releases the lock

    async def _wait(self, fd: int) -> None:
        """Block in flock on a daemon thread (it never holds up exit), bounded by the timeout.
        Whoever ends up with a lock nobody wants closes `fd`, which gives it back."""
        loop = asyncio.get_running_loop()
        granted: asyncio.Future[None] = loop.create_future()
        state = {"granted": False, "abandoned": False}
        guard = threading.Lock()

        def block() -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as error:
                os.close(fd)
                loop.call_soon_threadsafe(_set_exception_unless_done, granted, error)
                return
            with guard:
                if state["abandoned"]:
                    os.close(fd)  # granted after the caller gave up: give it back
                    return
                state["granted"] = True
            loop.call_soon_threadsafe(_set_result_unless_done, granted)

        threading.Thread(target=block, name="sqlite-writer-turn", daemon=True).start()
        try:
            async with asyncio.timeout(self.timeout_s):
                await asyncio.shield(granted)
        except BaseException as exc:
            with guard:
                if state["granted"]:
                    os.close(fd)  # granted just as we gave up
                else:
                    state["abandoned"] = True  # the thread gives it back if it comes
            if isinstance(exc, TimeoutError):
                raise Unavailable(
                    "another process kept the database locked; retry with the same request_id",
                    reason="DATABASE_BUSY",
                ) from None
            raise


def _set_result_unless_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _set_exception_unless_done(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class SingleWriter:
    """Runs write jobs one at a time on one connection, in arrival order, with group commit.

    The writer has a thread and an event loop of its own, and its connection calls `sqlite3`
    in place through SQLAlchemy's synchronous engine (sqlite_sync.py): a job's statements
    cost no thread round trips and no greenlets, and waiting on the disk there holds up no
    RPC. Jobs that queue up while a transaction is under way
    are committed together: one `BEGIN IMMEDIATE`, a SAVEPOINT per job (a failing job rolls
    back only its own work), one COMMIT (one fsync); only then is each caller answered. If
    the shared transaction itself fails (the disk fills at COMMIT, say), each of its jobs
    runs again alone, so one job's trouble never fails another's call.
    """

    def __init__(
        self,
        make_engine: Callable[[], Engine],
        queue_max: int,
        batch_max: int = 64,
        turn: WriterTurn | None = None,
    ) -> None:
        self._thread = LoopThread[Engine]("sqlite-writer", make_engine)
        # The one connection is used by one transaction (or one outside statement) at a
        # time; a second checkout would block the writer's thread.
        self._connection_free: asyncio.Lock | None = None
        self._turn = turn
        self.queue_max = queue_max
        self.batch_max = batch_max
        self._pending = 0  # submitted and not yet answered (only touched on the callers' loop)
        self._queue: asyncio.Queue[_Write] | None = None
        self._task: asyncio.Task[None] | None = None
        self.commits = 0  # transactions committed, each answering one batch
        self.jobs_committed = 0  # jobs answered after those commits (failed ones included)

    async def start(self) -> None:
        await self._thread.start(self._on_thread_start)

    def _on_thread_start(self) -> None:
        """(Writer thread, before its loop runs) The queue and the batch loop."""
        self._queue = asyncio.Queue()
        self._connection_free = asyncio.Lock()
        self._task = asyncio.get_event_loop().create_task(self._run(), name="sqlite-writer")

    async def stop(self) -> None:
        await self._thread.stop(self._drain)

    async def _drain(self) -> None:
        """(Writer thread) End the transaction under way and fail every queued job."""
        assert self._queue is not None and self._task is not None
        self._task.cancel()  # the batch loop, and with it the job under way
        await _finish_other_tasks(grace_s=0)
        while not self._queue.empty():
            self._queue.get_nowait().settle(Unavailable("the server is shutting down"), failed=True)

    async def submit(self, job: Job[T]) -> T:
        loop, queue = self._thread.loop, self._queue
        if loop is None or queue is None:
            raise Unavailable("the writer is not running")
        if self._pending >= self.queue_max:
            raise ResourceExhausted(
                f"more than {self.queue_max} writes in flight; retry shortly",
                reason="WRITE_QUEUE_FULL",
                limit="LOYALTY_WRITER_QUEUE_MAX",
                limit_value=self.queue_max,
                subject="server",
            )
        caller = asyncio.get_running_loop()
        write = _Write(job, caller.create_future(), caller)
        self._pending += 1
        try:
            loop.call_soon_threadsafe(queue.put_nowait, write)
            return await write.future  # type: ignore[no-any-return]
        finally:
            self._pending -= 1

    async def run_outside_transaction(self, statement: str) -> None:
        """Run one statement on the write connection outside any transaction (a PRAGMA that
        must not wait for BEGIN IMMEDIATE, such as lifting `query_only`)."""
        loop, engine = self._thread.loop, self._thread.engine
        if loop is None or engine is None:
            raise Unavailable("the writer is not running")

        async def run() -> None:
            assert self._connection_free is not None
            async with self._connection_free:
                with engine.connect() as conn:
                    conn.connection.driver_connection.execute(statement)  # type: ignore[union-attr]

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), loop))

    async def _run(self) -> None:
        """(Writer thread) Take whatever has queued up, up to `batch_max`, as one batch."""
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [write for write in batch if not write.future.cancelled()]
            if live:  # a job whose caller gave up before it started is never run
                await self._commit(live)

    def _take_turn(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._turn.turn() if self._turn is not None else contextlib.nullcontext()

    async def _commit(self, batch: list[_Write]) -> None:
        """(Writer thread) Run `batch` in one transaction; answer each job after COMMIT."""
        engine, connection_free = self._thread.engine, self._connection_free
        assert engine is not None and connection_free is not None
        outcomes: list[tuple[Any, bool]] = []
        began = False
        try:
            async with self._take_turn(), connection_free:
                with engine.begin() as sync_conn:
                    began = True
                    await self._run_batch(SyncBackedConnection(sync_conn), batch, outcomes)
        except asyncio.CancelledError:
            for write in batch:
                write.settle(Unavailable("the server is shutting down"), failed=True)
            raise
        except Exception as exc:
            if len(batch) == 1 or not began:  # not begun (say the lock never came): no job ran
                error = _storage_error(exc)
                for write in batch:
                    write.settle(error, failed=True)
                return
            log.warning("a group commit of %d writes failed (%s); each runs alone", len(batch), exc)
            for write in batch:
                await self._commit([write])
            return
        self.commits += 1
        self.jobs_committed += len(batch)
        for write, (outcome, failed) in zip(batch, outcomes, strict=True):
            write.settle(outcome, failed=failed)

    @staticmethod
    async def _run_batch(
        facade: SyncBackedConnection, batch: list[_Write], outcomes: list[tuple[Any, bool]]
    ) -> None:
        # Jobs are typed for AsyncConnection; the facade has the part of it they use.
        conn = cast(AsyncConnection, facade)
        if len(batch) == 1:  # alone: any failure rolls the whole transaction back
            outcomes.append((await _in_context(conn, batch[0]), False))
        else:
            for write in batch:
                outcomes.append(await _in_savepoint(conn, write))


async def _in_context(conn: AsyncConnection, write: _Write) -> Any:
    """Run a job as a task in its caller's context (log lines keep the request id)."""

    async def run() -> Any:
        return await write.job(conn)

    return await asyncio.get_running_loop().create_task(run(), context=write.context)


async def _in_savepoint(conn: AsyncConnection, write: _Write) -> tuple[Any, bool]:
    """Run a job of a shared transaction in its own SAVEPOINT: (result or error, failed)."""
    try:
        async with conn.begin_nested():
            return await _in_context(conn, write), False
    except DBAPIError:
        raise  # the shared transaction may be broken: the batch runs again job by job
    except Exception as error:  # the job's own refusal, for its caller alone
        return error, True


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
        if "database is locked" in lowered:  # another process held the write lock too long
            log.warning("SQLite write lock not granted within the busy timeout: %s", text)
            return Unavailable(
                "another process kept the database locked; retry with the same request_id",
                reason="DATABASE_BUSY",
            )
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


def _writer_turn(url: str, busy_timeout_ms: int) -> WriterTurn | None:
    path = make_url(url).database
    if not path or path == ":memory:":
        return None  # no other process can share it
    return WriterTurn(path, busy_timeout_ms / 1000)


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
            self._writer = SingleWriter(
                lambda: _sqlite_writer_engine(url, busy_timeout_ms=sqlite_busy_timeout_ms),
                writer_queue_max,
                turn=_writer_turn(url, sqlite_busy_timeout_ms),
            )
            self._readers: ReaderPool | None = ReaderPool(
                lambda: _sqlite_engine(
                    url,
                    write=False,
                    busy_timeout_ms=sqlite_busy_timeout_ms,
                    inline_pool=SQLITE_READ_CONNECTIONS_PER_THREAD,
                ),
                SQLITE_READ_THREADS,
            )
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
            self._readers = None

    async def start(self) -> None:
        if self._writer is not None:
            await self._writer.start()
        if self._readers is not None:
            await self._readers.start()

    async def close(self) -> None:
        if self._readers is not None:
            await self._readers.stop()
        if self._writer is not None:
            await self._writer.stop()  # disposes of its own engine, on its own thread
        else:
            await self.write_engine.dispose()
        await self.read_engine.dispose()

    async def sqlite_writer_statement(self, statement: str) -> None:
        """SQLite: run one statement on the write connection outside a transaction."""
        if self._writer is None:
            raise ValueError("only a SQLite database has a single writer")
        await self._writer.run_outside_transaction(statement)

    async def read(self, job: Job[T]) -> T:
        if self._readers is not None and self._readers.running:
            async with self._gate.slot():
                return await self._readers.read(job)
        # PostgreSQL, or SQLite before `start` (a one-off read, as tools and tests do).
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
