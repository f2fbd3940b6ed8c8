"""A driver connection for SQLAlchemy's aiosqlite dialect that calls `sqlite3` in place.

aiosqlite runs every call (cursor, execute, fetch, close, commit) on its own thread and
waits for the answer: about 55 thread round trips per ledger write, most of the CPU a write
costs (bench/hop_cost.py measures it). The SQLite writer instead runs on a thread of its own
with its own event loop (db.SingleWriter), where blocking is harmless, so the driver can call
`sqlite3` directly: each "await" here completes at once and never yields to the loop.

Only the methods SQLAlchemy's adapter uses are provided (see
sqlalchemy/dialects/sqlite/aiosqlite.py and sqlalchemy/connectors/asyncio.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any


class InlineCursor:
    """An aiosqlite-shaped cursor whose coroutines finish without suspending."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        if parameters is None:
            self._cursor.execute(sql)
        else:
            self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    async def setinputsizes(self, *_sizes: Any) -> None:
        return None


class _Immediate:
    """Stands in for aiosqlite's request queue: runs the function now, settles the future."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as error:  # handed to the awaiting adapter
            future.set_exception(error)


class InlineConnection:
    """An aiosqlite-shaped connection over one `sqlite3` connection, used on one thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._connection: sqlite3.Connection | None = conn
        self._tx = _Immediate(conn)

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._conn.isolation_level = value  # type: ignore[assignment]  # None, or a BEGIN kind

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> InlineCursor:
        return await self.cursor().execute(sql, parameters)

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    def stop(self) -> None:
        """Called by SQLAlchemy to terminate the connection without waiting."""
        if self._connection is not None:
            self._connection = None
            self._conn.close()


def inline_creator(path: str) -> Callable[[], Any]:
    """An `async_creator` for create_async_engine: a new inline connection to `path`."""

    async def create() -> InlineConnection:
        # isolation_level=None: we issue BEGIN ourselves (db.py). check_same_thread=False only
        # lets the pool close the connection from another thread at shutdown; every
        # statement runs on the writer's thread.
        return InlineConnection(
            sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        )

    return create
