"""The SQLite writer's connection: SQLAlchemy's synchronous engine (`sqlite3`), behind the
part of `AsyncConnection` the ledger uses.

The writer runs on a thread of its own with its own event loop (db.SingleWriter), where
blocking on the database holds up no RPC. Its jobs are the ledger's async functions, which
`await conn.execute(...)`. Through SQLAlchemy's asyncio extension, every statement then
starts a greenlet and crosses the async driver adapter several times, although the driver
(sqlite_inline.py) never suspends: that machinery cost more per statement than SQLAlchemy's
synchronous execution and SQLite together (about 140 against 60 µs per simple SELECT here).
`SyncBackedConnection` instead calls the synchronous `Connection` directly: each of its
coroutines finishes without suspending, and a job's statements run exactly as they did.

Rows are fetched when a statement executes (`BufferedCursor`), as the async adapter did, so
a job that reads rows while it writes sees the same rows either way.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy.engine import Connection, Dialect


class BufferedCursor(sqlite3.Cursor):
    """A cursor that fetches all of a statement's rows when it executes it."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        super().__init__(connection)
        self._rows: deque[Any] = deque()

    def execute(self, sql: str, parameters: Any = (), /) -> BufferedCursor:
        super().execute(sql, parameters)
        self._rows = deque(super().fetchall()) if self.description is not None else deque()
        return self

    def executemany(self, sql: str, parameters: Any, /) -> BufferedCursor:
        super().executemany(sql, parameters)
        self._rows = deque()
        return self

    def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        count = self.arraysize if size is None else size
        rows = self._rows
        return [rows.popleft() for _ in range(min(count, len(rows)))]

    def fetchall(self) -> list[Any]:
        rows = list(self._rows)
        self._rows.clear()
        return rows


class BufferedConnection(sqlite3.Connection):
    def cursor(self, factory: Any = BufferedCursor) -> Any:  # type: ignore[override]
        return super().cursor(factory)


def sync_creator(path: str) -> Callable[[], sqlite3.Connection]:
    """A `creator` for create_engine: a new `sqlite3` connection to `path`."""

    def create() -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN ourselves (db.py). check_same_thread=False only
        # lets the pool close the connection from another thread at shutdown; every
        # statement runs on the writer's thread.
        return sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, factory=BufferedConnection
        )

    return create


class SyncBackedConnection:
    """What the ledger calls on an `AsyncConnection`, over a synchronous `Connection`."""

    def __init__(self, sync_connection: Connection) -> None:
        self.sync_connection = sync_connection

    @property
    def dialect(self) -> Dialect:
        return self.sync_connection.dialect

    async def execute(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        return self.sync_connection.execute(
            statement, parameters, execution_options=execution_options
        )

    async def scalar(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        return self.sync_connection.scalar(
            statement, parameters, execution_options=execution_options
        )

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> Any:
        return self.sync_connection.exec_driver_sql(statement, parameters)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.sync_connection, *args, **kwargs)

    @contextlib.asynccontextmanager
    async def begin_nested(self) -> AsyncIterator[Any]:
        """A SAVEPOINT: released when the block ends, rolled back if it raises."""
        with self.sync_connection.begin_nested() as savepoint:
            yield savepoint

    def in_transaction(self) -> bool:
        return self.sync_connection.in_transaction()
