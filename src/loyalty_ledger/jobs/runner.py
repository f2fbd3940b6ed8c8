"""Runs: resumable batch jobs made of bounded chunks, one database transaction each.

A chunk processes at most `chunk_max` due items and commits them together with the run's
counters; whatever it processed is no longer due, so a run that dies halfway (or a second
run started meanwhile) simply picks up what is still due. Memory stays flat whatever the
backlog: a chunk is the largest thing held in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from loyalty_ledger.domain.errors import Unavailable
from loyalty_ledger.domain.settlement import Period
from loyalty_ledger.ledger import settlement, tiers
from loyalty_ledger.ledger.engine import Tx
from loyalty_ledger.ledger.records import RunKind, RunRecord, RunStatus
from loyalty_ledger.ledger.rewarding import Decoder, birthday_chunk
from loyalty_ledger.ledger.service import Ledger
from loyalty_ledger.logs import run_context

log = logging.getLogger(__name__)
# Called when this process stops working on a run: kind, status (SUCCEEDED, FAILED, or
# INTERRUPTED by a shutdown), seconds spent, items processed (metrics.Metrics.run_ended).
RunObserver = Callable[[str, str, float, int], None]
INTERRUPTED = "INTERRUPTED"
STOPPING = "the server is shutting down; the run resumes at the next start"

RUN_CHUNK_MAX_DEFAULT = 2_000
# Expiry chunks are set-based (ledger/expiry_chunk.py): a few statements for any number of
# lots, about 20 µs per lot on SQLite here. Part of each chunk's cost is its commit (one WAL
# fsync, about 2 ms), so bigger chunks expire more lots per second; 4,000 lots hold the one
# SQLite writer for about 80 ms (docs/expiry.md, "Performance"). The inactivity run keeps
# `chunk_max`: it also looks for each lot's recent activity (unmeasured).
EXPIRY_CHUNK_MAX_DEFAULT = 4_000
# The order a full pass takes: holds first (their value may then expire), warnings last.
RUN_ORDER = (
    RunKind.HOLD_TIMEOUT,
    RunKind.EXPIRY,
    RunKind.INACTIVITY,
    RunKind.EXPIRY_WARNING,
    RunKind.BIRTHDAY,
    RunKind.TIER_REVIEW,
)


class Runner:
    """Starts, resumes and finishes runs against the ledger."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        chunk_max: int = RUN_CHUNK_MAX_DEFAULT,
        expiry_chunk_max: int | None = None,
        decode: Decoder | None = None,
        settlement_period: Period = Period.DAY,
        observe: RunObserver | None = None,
    ) -> None:
        """`chunk_max` items per chunk, and `expiry_chunk_max` lots per chunk of the set-based
        EXPIRY run (None: `chunk_max` as well). `decode` turns stored offers into domain offers
        (the API layer's); without it there is no BIRTHDAY run (it evaluates offers)."""
        lots_max = chunk_max if expiry_chunk_max is None else expiry_chunk_max
        if chunk_max < 1 or lots_max < 1:
            raise ValueError("chunk_max and expiry_chunk_max must be positive")
        self.ledger = ledger
        self.chunk_max = chunk_max
        self.observe = observe
        self.stopping = False  # set by `stop`: runs end after the chunk under way
        self._working = 0  # `complete` calls under way
        self._idle = asyncio.Event()
        self._idle.set()
        self._steps: dict[RunKind, Callable[[Tx, RunRecord], Awaitable[int]]] = {
            RunKind.EXPIRY: lambda tx, run: tx.expire_due_chunk(run.id, run.as_of_us, lots_max),
            RunKind.EXPIRY_WARNING: lambda tx, run: tx.warn_chunk(run.id, run.as_of_us, chunk_max),
            RunKind.HOLD_TIMEOUT: lambda tx, run: tx.release_lapsed_holds_chunk(
                run.as_of_us, chunk_max
            ),
            RunKind.INACTIVITY: lambda tx, run: tx.expire_inactive_chunk(
                run.id, run.as_of_us, chunk_max
            ),
            RunKind.TIER_REVIEW: lambda tx, run: tiers.review_chunk(
                tx, run.id, run.as_of_us, chunk_max
            ),
            # Not in RUN_ORDER: it runs on its own (cron) schedule, or when asked for.
            RunKind.SETTLEMENT: lambda tx, run: settlement.due_chunk(
                tx.conn, run.as_of_us, settlement_period, chunk_max, tx.now_us
            ),
        }
        if decode is not None:
            self._steps[RunKind.BIRTHDAY] = lambda tx, run: birthday_chunk(
                tx, run.id, run.as_of_us, chunk_max, decode
            )

    async def start(self, kind: RunKind, as_of_us: int, trigger: str) -> RunRecord:
        """Record a new run (it does nothing until `complete`)."""
        if self.stopping:
            raise Unavailable(STOPPING)
        return await self.ledger.write(lambda tx: tx.start_run(kind, as_of_us, trigger))

    async def run(self, kind: RunKind, as_of_us: int, trigger: str) -> RunRecord:
        """Start a run and work it to the end."""
        return await self.complete(await self.start(kind, as_of_us, trigger))

    async def complete(self, run: RunRecord) -> RunRecord:
        """Work a started (or interrupted) run chunk by chunk until nothing is due.

        Once `stopping` is set it stops after the chunk under way (each commits on its own)
        and raises Unavailable, leaving the run RUNNING for `resume_interrupted`."""
        self._working += 1
        self._idle.clear()
        try:
            with run_context(run.id, run.kind.value):
                return await self._complete(run)
        finally:
            self._working -= 1
            if not self._working:
                self._idle.set()

    async def stop(self, wait_s: float) -> bool:
        """Runs under way end after their current chunk; True if all ended within `wait_s`."""
        self.stopping = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._idle.wait()
        return self._idle.is_set()

    async def _complete(self, run: RunRecord) -> RunRecord:
        step = self._steps[run.kind]
        started_s = time.monotonic()
        items = 0

        async def chunk(tx: Tx) -> int:
            done = await step(tx, run)
            if done:
                await tx.count_chunk(run.id, done)
            return done

        drained = False
        try:
            while not self.stopping:
                done = await self.ledger.write(chunk)
                items += done
                if not done:
                    drained = True
                    break
        except Exception as error:
            log.exception("run %s (%s) failed", run.id, run.kind.value)
            message = f"{type(error).__name__}: {error}"
            await self.ledger.write(lambda tx: tx.finish_run(run.id, RunStatus.FAILED, message))
            self._observe(run, RunStatus.FAILED.value, started_s, items)
            raise
        if not drained:
            log.info(
                "run %s (%s) stops after %d items: shutting down", run.id, run.kind.value, items
            )
            self._observe(run, INTERRUPTED, started_s, items)
            raise Unavailable(STOPPING, run_id=run.id)
        finished = await self.ledger.write(lambda tx: tx.finish_run(run.id, RunStatus.SUCCEEDED))
        self._observe(run, RunStatus.SUCCEEDED.value, started_s, items)
        log.info(
            "run %s (%s) processed %d items in %d chunks",
            finished.id,
            finished.kind.value,
            finished.items_processed,
            finished.chunks_committed,
        )
        return finished

    def _observe(self, run: RunRecord, status: str, started_s: float, items: int) -> None:
        if self.observe is not None:
            self.observe(run.kind.value, status, time.monotonic() - started_s, items)

    async def resume_interrupted(self) -> list[RunRecord]:
        """Finish the runs a killed process left RUNNING."""
        runs = await self.ledger.write(lambda tx: tx.interrupted_runs())
        return [await self.complete(run) for run in runs]

    async def run_all_due(self, as_of_us: int, trigger: str) -> list[RunRecord]:
        """One run of every kind, in RUN_ORDER (used by the test clock and the CLI)."""
        return [
            await self.run(kind, as_of_us, trigger) for kind in RUN_ORDER if kind in self._steps
        ]
