"""APScheduler 3.11 (AsyncIOScheduler) inside the server: an interval or cron trigger per run
kind.

Each tick first takes a database lease for its job, so with several replicas on one database
only the lease holder runs it; the lease outlives a dead holder by at most its TTL.
"""

from __future__ import annotations

import logging
import os
import socket

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from loyalty_ledger.clock import Clock
from loyalty_ledger.jobs.runner import Runner
from loyalty_ledger.ledger.records import RunKind

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        runner: Runner,
        clock: Clock,
        *,
        intervals_s: dict[RunKind, float],
        lease_s: float,
        crontabs: dict[RunKind, str] | None = None,
    ) -> None:
        self.runner = runner
        self.clock = clock
        self.intervals_s = intervals_s
        self.crontabs = {kind: tab for kind, tab in (crontabs or {}).items() if tab}
        self.lease_us = int(lease_s * 1_000_000)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._aps = AsyncIOScheduler(timezone="UTC")

    def start(self) -> None:
        triggers: list[tuple[RunKind, BaseTrigger]] = [
            (kind, IntervalTrigger(seconds=seconds)) for kind, seconds in self.intervals_s.items()
        ]
        triggers += [
            (kind, CronTrigger.from_crontab(tab, timezone="UTC"))
            for kind, tab in self.crontabs.items()
        ]
        for kind, trigger in triggers:
            self._aps.add_job(
                self.tick,
                trigger,
                args=[kind],
                id=f"run-{kind.value.lower()}",
                max_instances=1,  # a slow run is never overlapped by its own next tick
                coalesce=True,
                misfire_grace_time=None,
            )
        self._aps.start()

    def stop(self) -> None:
        if self._aps.running:
            self._aps.shutdown(wait=False)

    async def tick(self, kind: RunKind) -> None:
        """One scheduled run, if this replica holds (or takes) the job's lease."""
        name = f"run:{kind.value}"
        try:
            token = await self.runner.ledger.write(
                lambda tx: tx.acquire_lease(name, self.holder, self.lease_us)
            )
            if token is None:
                return  # another replica holds it
            await self.runner.run(kind, self.clock.now_us(), "schedule")
        except Exception:
            if self.runner.stopping:  # a shutdown stopped it after a chunk: not a failure
                log.info("scheduled %s run stopped by the shutdown; resumed at next start", kind)
                return
            log.exception("scheduled %s run failed; the next tick picks up what is due", kind)
