"""What one aiosqlite round trip costs next to the same SQL on a plain sqlite3 connection.

    python bench/hop_cost.py

A write RPC on SQLite makes about 55 such round trips (bench/statement_count.py). This runs
the same small transaction (BEGIN IMMEDIATE, 12 indexed statements, COMMIT with
synchronous=FULL) both ways, in the same run, and prints the time per transaction and the
process CPU per transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

import aiosqlite

STATEMENTS = 12
ROUNDS = 300


def prepare(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?, 0)", [(i,) for i in range(10_000)])
    conn.commit()
    conn.close()


def plain(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=FULL")
    for r in range(ROUNDS):
        conn.execute("BEGIN IMMEDIATE")
        for k in range(STATEMENTS // 2):
            conn.execute("SELECT v FROM t WHERE id = ?", ((r * 7 + k) % 10_000,)).fetchall()
            conn.execute("UPDATE t SET v = v + 1 WHERE id = ?", ((r * 7 + k) % 10_000,))
        conn.execute("COMMIT")
    conn.close()


async def through_aiosqlite(path: Path) -> None:
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        await conn.execute("PRAGMA synchronous=FULL")
        for r in range(ROUNDS):
            await conn.execute("BEGIN IMMEDIATE")
            for k in range(STATEMENTS // 2):
                cursor = await conn.execute("SELECT v FROM t WHERE id = ?", ((r * 7 + k) % 10_000,))
                await cursor.fetchall()
                await cursor.close()
                cursor = await conn.execute(
                    "UPDATE t SET v = v + 1 WHERE id = ?", ((r * 7 + k) % 10_000,)
                )
                await cursor.close()
            await conn.execute("COMMIT")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hop.db"
        prepare(path)
        for name, run in (
            ("sqlite3, one thread", lambda: plain(path)),
            ("aiosqlite (a thread hop per call)", lambda: asyncio.run(through_aiosqlite(path))),
        ):
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"{name:<36} {1000 * wall / ROUNDS:6.2f} ms/transaction wall, "
                f"{1000 * cpu / ROUNDS:6.2f} ms CPU"
            )


if __name__ == "__main__":
    main()
