"""The SQLite single writer: group commit with a savepoint per job, answers after COMMIT."""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loyalty_ledger.domain.errors import ResourceExhausted, Unavailable
from loyalty_ledger.ledger.db import Database, SingleWriter

CALLER = contextvars.ContextVar("CALLER", default="")
NOTES = text("CREATE TABLE notes (id INTEGER PRIMARY KEY, note TEXT)")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'writer.db'}", writer_queue_max=50)
    await database.start()

    async def schema(conn: AsyncConnection) -> None:
        await conn.execute(NOTES)

    await database.write(schema)
    yield database
    await database.close()


def writer(db: Database) -> SingleWriter:
    assert db._writer is not None
    return db._writer


def insert(note_id: int, *, fail_after: bool = False):  # type: ignore[no-untyped-def]
    async def job(conn: AsyncConnection) -> str:
        await conn.execute(
            text("INSERT INTO notes (id, note) VALUES (:id, :note)"),
            {"id": note_id, "note": CALLER.get()},
        )
        if fail_after:
            raise ValueError(f"job {note_id} refuses after writing")
        return f"done {note_id}"

    return job


async def notes(db: Database) -> dict[int, str]:
    async def job(conn: AsyncConnection) -> dict[int, str]:
        rows = (await conn.execute(text("SELECT id, note FROM notes ORDER BY id"))).all()
        return {row.id: row.note for row in rows}

    return await db.read(job)


async def hold_writer(db: Database) -> tuple[threading.Event, asyncio.Task[object]]:
    """Occupy the writer with one job until the returned event is set, so later jobs queue up."""
    release, started = threading.Event(), threading.Event()

    async def blocker(conn: AsyncConnection) -> None:
        started.set()
        await asyncio.to_thread(release.wait)  # yields the writer's loop, holds its transaction

    task = asyncio.create_task(db.write(blocker))
    await asyncio.to_thread(started.wait)
    return release, task


async def submit_all(db: Database, jobs: dict[int, object]) -> list[object]:
    async def one(note_id: int, job: object) -> object:
        CALLER.set(f"caller {note_id}")
        return await db.write(job)  # type: ignore[arg-type]

    return await asyncio.gather(*(one(i, job) for i, job in jobs.items()), return_exceptions=True)


async def test_jobs_queued_together_commit_together_and_a_refusal_spoils_only_itself(
    db: Database,
) -> None:
    release, blocker = await hold_writer(db)
    commits_before = writer(db).commits
    pending = asyncio.create_task(
        submit_all(db, {i: insert(i, fail_after=(i == 3)) for i in range(1, 7)})
    )
    await asyncio.sleep(0.1)  # all six are queued behind the blocker
    assert not pending.done()
    release.set()
    results = await pending
    await blocker

    assert results[:2] == ["done 1", "done 2"] and results[3:] == ["done 4", "done 5", "done 6"]
    assert isinstance(results[2], ValueError)
    # Job 3's row was rolled back to its savepoint; every other row is there, once, written
    # in its caller's context.
    assert await notes(db) == {i: f"caller {i}" for i in (1, 2, 4, 5, 6)}
    # The blocker's transaction, then one transaction for the six queued jobs.
    assert writer(db).commits - commits_before == 2


async def test_a_database_error_in_a_batch_reruns_its_jobs_one_by_one(db: Database) -> None:
    await db.write(insert(100))
    release, blocker = await hold_writer(db)
    commits_before = writer(db).commits
    pending = asyncio.create_task(submit_all(db, {1: insert(1), 100: insert(100), 2: insert(2)}))
    await asyncio.sleep(0.1)
    release.set()
    results = await pending
    await blocker

    assert results[0] == "done 1" and results[2] == "done 2"
    assert isinstance(results[1], IntegrityError)  # the duplicate, and only it, is refused
    assert await notes(db) == {1: "caller 1", 2: "caller 2", 100: ""}
    # blocker + the three jobs again, one transaction each (the failed one commits nothing).
    assert writer(db).commits - commits_before == 1 + 2


async def test_an_answer_comes_only_after_commit(db: Database) -> None:
    for i in range(20):
        assert await db.write(insert(i)) == f"done {i}"
        assert i in await notes(db)  # a separate reader connection sees it at once


async def test_a_caller_that_gave_up_before_its_turn_is_never_run(db: Database) -> None:
    release, blocker = await hold_writer(db)
    abandoned = asyncio.create_task(db.write(insert(7)))
    await asyncio.sleep(0.05)
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    release.set()
    await blocker
    await db.write(insert(8))
    assert await notes(db) == {8: ""}


async def test_more_writes_in_flight_than_the_queue_allows_are_refused(db: Database) -> None:
    release, blocker = await hold_writer(db)
    queued = [asyncio.create_task(db.write(insert(i))) for i in range(49)]  # 49 + blocker
    await asyncio.sleep(0.05)
    with pytest.raises(ResourceExhausted) as refused:
        await db.write(insert(1000))
    assert refused.value.reason == "WRITE_QUEUE_FULL"
    assert refused.value.metadata["limit"] == "LOYALTY_WRITER_QUEUE_MAX"
    release.set()
    await blocker
    await asyncio.gather(*queued)
    assert len(await notes(db)) == 49


async def test_stopping_fails_queued_writes_with_unavailable(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'stop.db'}")
    await database.start()
    await database.write(lambda conn: conn.execute(NOTES))
    release, blocker = await hold_writer(database)
    queued = asyncio.create_task(database.write(insert(1)))
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(database.close())
    await asyncio.sleep(0.05)
    release.set()
    with pytest.raises(Unavailable):
        await queued
    with pytest.raises(Unavailable):
        await blocker
    await closing
    with pytest.raises(Unavailable):
        await database.write(insert(2))


async def test_a_write_lock_held_elsewhere_past_the_busy_timeout_is_unavailable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "busy.db"
    database = Database(f"sqlite+aiosqlite:///{path}", sqlite_busy_timeout_ms=300)
    await database.start()
    try:
        await database.write(lambda conn: conn.execute(NOTES))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's writer, holding the lock
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                *(database.write(insert(i)) for i in range(3)), return_exceptions=True
            )
            took = time.monotonic() - started
        finally:
            other.rollback()
            other.close()
        assert all(isinstance(r, Unavailable) and r.reason == "DATABASE_BUSY" for r in results)
        # At most two transactions that never began (the first job may start alone): a batch
        # that cannot begin fails as one instead of waiting again for each of its jobs.
        assert took < 1.0, took
        await database.write(insert(9))  # the lock is free again: writes go through
        assert await notes(database) == {9: ""}
    finally:
        await database.close()


async def test_writers_of_two_processes_take_turns_and_a_late_turn_is_given_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "turns.db"
    database = Database(f"sqlite+aiosqlite:///{path}", sqlite_busy_timeout_ms=300)
    await database.start()
    try:
        await database.write(lambda conn: conn.execute(NOTES))
        other = os.open(f"{path}-writer.lock", os.O_RDWR | os.O_CREAT)  # another process
        try:
            fcntl.flock(other, fcntl.LOCK_EX)
            waiting = asyncio.create_task(database.write(insert(1)))
            await asyncio.sleep(0.15)
            assert not waiting.done()  # it waits for its turn...
            fcntl.flock(other, fcntl.LOCK_UN)
            assert await waiting == "done 1"  # ...and gets it when the other gives it up

            fcntl.flock(other, fcntl.LOCK_EX)
            with pytest.raises(Unavailable) as busy:  # held past the busy timeout
                await database.write(insert(2))
            assert busy.value.reason == "DATABASE_BUSY"
            fcntl.flock(other, fcntl.LOCK_UN)
        finally:
            os.close(other)
        # The turn granted after the write gave up was given back: writes go on.
        assert await asyncio.wait_for(database.write(insert(3)), 5) == "done 3"
        assert await notes(database) == {1: "", 3: ""}
    finally:
        await database.close()


async def test_a_writer_that_cannot_make_its_engine_fails_to_start_instead_of_hanging() -> None:
    def broken() -> AsyncEngine:
        raise PermissionError("cannot create the database folder")

    writer = SingleWriter(broken, queue_max=10)
    with pytest.raises(PermissionError):
        await asyncio.wait_for(writer.start(), 5)
    with pytest.raises(Unavailable):
        await writer.submit(insert(1))


async def test_a_jobs_reads_are_fetched_when_they_execute(db: Database) -> None:
    """The writer's connection fetches a SELECT's rows as it executes (sqlite_sync.py), as the
    async driver did: a job that writes while it walks a result walks what it read."""
    await db.write(insert(1))
    await db.write(insert(2))

    async def copy_forward(conn: AsyncConnection) -> list[int]:
        walked = []
        for row in await conn.execute(text("SELECT id FROM notes ORDER BY id")):
            walked.append(row.id)
            # A lazily fetched cursor would walk into these rows too, and never end.
            await conn.execute(
                text("INSERT INTO notes (id, note) VALUES (:id, 'copy')"), {"id": row.id + 100}
            )
        return walked

    assert await db.write(copy_forward) == [1, 2]
    assert sorted(await notes(db)) == [1, 2, 101, 102]


async def test_a_statement_outside_transactions_waits_for_the_transaction_under_way(
    db: Database,
) -> None:
    release, blocker = await hold_writer(db)
    outside = asyncio.create_task(db.sqlite_writer_statement("PRAGMA query_only = OFF"))
    await asyncio.sleep(0.1)
    assert not outside.done()  # the writer's one connection is in the blocker's transaction
    release.set()
    await blocker
    await asyncio.wait_for(outside, 5)
    assert await db.write(insert(3)) == "done 3"
