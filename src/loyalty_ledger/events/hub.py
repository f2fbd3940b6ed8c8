"""The hub behind WatchExpirations: one outbox reader fanning events out to subscribers.

The outbox is the source of truth. One reader task per process wakes when a local write
commits (`notify`) or every `poll_interval_s` (writes of other processes), reads new outbox
rows in sequence order and puts each expiration event into the bounded queue of every
subscriber whose filter matches. A full queue never blocks the reader or any writer: that
subscriber is cut off (RESOURCE_EXHAUSTED) and resumes from its last sequence.

While nobody subscribes, the reader does not read: a read after every commit was a quarter
of the server's CPU per write when writes commit one at a time. The first subscriber to come
then moves the hub's position to the newest events itself, before it registers.

A new subscriber registers first, remembering the sequence R the hub has dispatched up to;
live events after R queue up while it replays the stored events in (after_sequence, R] from
the database, so it sees no gap and no duplicate.

Gaps. SQLite has one writer that commits in sequence order, so a reader never sees a later
sequence before an earlier one. PostgreSQL draws sequences before commit: a transaction
holding sequence 10 may commit after the one holding 11, and rolled-back transactions leave
holes for good. So on PostgreSQL the reader stops at a missing sequence until every
transaction that was running when it first saw the hole has finished (the snapshot's xmin
passed the xmax seen then): by then the hole is either filled or permanent. A hole still
open after `GAP_WAIT_MAX_S` (a transaction holding a sequence that long) is skipped, with a
warning, so one stuck transaction cannot stall every stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty_ledger.clock import Clock
from loyalty_ledger.domain.errors import ResourceExhausted, Unavailable
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.db import Database
from loyalty_ledger.ledger.outbox import EXPIRATION_EVENT_TYPES
from loyalty_ledger.ledger.service import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

READ_PAGE_MAX = 1_000
# PostgreSQL: how long a missing sequence may hold the stream back before it is skipped.
GAP_WAIT_MAX_S = 5.0
# PostgreSQL: how often the reader looks again while it waits at a missing sequence.
GAP_RECHECK_S = 0.05
# PostgreSQL: at start, sequences this far below the newest are examined again, because
# transactions running at that moment may still commit lower ones.
START_LOOKBACK_SEQ = READ_PAGE_MAX
# How long `stop` lets open streams end with UNAVAILABLE before the server cancels them.
STOP_WAIT_S = 0.5
# PostgreSQL: every write commits a NOTIFY on this channel (ledger/service.py), so a replica
# learns of other replicas' events at once; the outbox stays the source of truth and the
# poll the fallback.
LISTEN_RETRY_S = 2.0
SHUTTING_DOWN = "the server is shutting down; resume from your last sequence"


@dataclass(frozen=True)
class StoredEvent:
    """One expiration event as stored in the outbox."""

    seq: int
    event_id: str
    type: str
    scheme_id: str
    wallet_id: str | None
    transaction_id: str | None
    payload: dict[str, Any]
    created_at_us: int

    @classmethod
    def from_row(cls, row: Any) -> StoredEvent:
        return cls(
            seq=row.seq,
            event_id=row.event_id,
            type=row.type,
            scheme_id=row.scheme_id,
            wallet_id=row.wallet_id,
            transaction_id=row.transaction_id,
            payload=json.loads(row.payload),
            created_at_us=row.created_at_us,
        )


@dataclass(frozen=True)
class WatchFilter:
    """Which events a subscriber wants; an empty field means "any"."""

    scheme_id: str = ""
    wallet_ids: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    def matches(self, event: StoredEvent) -> bool:
        return (
            (not self.scheme_id or event.scheme_id == self.scheme_id)
            and (not self.wallet_ids or event.wallet_id in self.wallet_ids)
            and (not self.types or event.type in self.types)
        )

    def where(self) -> list[Any]:
        """The same filter in SQL, for replays."""
        types = sorted(self.types or EXPIRATION_EVENT_TYPES)
        clauses: list[Any] = [t.outbox_events.c.type.in_(types)]
        if self.scheme_id:
            clauses.append(t.outbox_events.c.scheme_id == self.scheme_id)
        if self.wallet_ids:
            clauses.append(t.outbox_events.c.wallet_id.in_(sorted(self.wallet_ids)))
        return clauses


@dataclass(frozen=True)
class Heartbeat:
    """Nothing to deliver: every event up to `seq` was delivered or filtered out."""

    seq: int
    at_us: int


@dataclass(eq=False)
class _Subscriber:
    filter: WatchFilter
    queue: asyncio.Queue[StoredEvent | None]
    examined: int  # newest sequence dispatched to (or filtered out for) this subscriber
    overflowed: bool = False
    closed: bool = False


@dataclass(frozen=True)
class _Snapshot:
    """PostgreSQL transaction ids of a read's snapshot (see the module docstring)."""

    xmin: int  # every transaction below it had finished
    xmax: int  # every transaction below it had started


@dataclass(frozen=True)
class _Fence:
    """A missing sequence the reader waits at, and what it waits for."""

    seq: int  # newest sequence visible when the hole was seen: holes below it are covered
    xmax: int  # the hole is settled once a snapshot's xmin reaches this
    since_s: float  # monotonic time the hole was seen


class ExpirationHub:
    """Fans committed expiration events out to WatchExpirations subscribers (bounded)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        subscribers_max: int,
        buffer_max: int,
        heartbeat_interval_s: float,
        poll_interval_s: float,
    ) -> None:
        assert subscribers_max >= 1 and buffer_max >= 1
        assert heartbeat_interval_s > 0 and poll_interval_s > 0
        self.db = db
        self.clock = clock
        self.subscribers_max = subscribers_max
        self.buffer_max = buffer_max
        self.heartbeat_interval_s = heartbeat_interval_s
        self.poll_interval_s = poll_interval_s
        self._gaps_possible = not db.is_sqlite
        self._subscribers: set[_Subscriber] = set()  # live: events are dispatched to these
        self._open: set[_Subscriber] = set()  # every subscription not yet ended (the cap)
        self._all_ended = asyncio.Event()
        self._all_ended.set()
        self._wake = asyncio.Event()
        self._last_seq = 0  # every sequence up to here was dispatched or is settled missing
        self._fence: _Fence | None = None
        # Held while the outbox is read and dispatched: by the reader, or by a first
        # subscriber catching the position up (see `_catch_up`).
        self._reading = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def subscriber_count(self) -> int:
        """Subscribers receiving live events (a cut-off one no longer counts)."""
        return len(self._subscribers)

    async def start(self) -> None:
        """Start after the newest stored event, then read on in the background."""
        try:
            await self.db.read(self._start_position)
        except Exception:  # not migrated yet: the reader catches up once it is
            log.warning("expiration hub starts before the database is ready")
        self._task = asyncio.create_task(self._read_forever(), name="expiration-hub")
        if not self.db.is_sqlite:
            self._listen_task = asyncio.create_task(self._listen_forever(), name="hub-listen")

    async def stop(self) -> None:
        """Stop reading and end every open subscription (they resume elsewhere)."""
        self._stopped = True
        if self._listen_task is not None:
            self._listen_task.cancel()
            await asyncio.wait({self._listen_task}, timeout=STOP_WAIT_S)
            self._listen_task = None
        if self._task is not None:
            self._task.cancel()
            # Bounded: shutdown must end even if the reader is stuck in the database.
            done, _ = await asyncio.wait({self._task}, timeout=STOP_WAIT_S)
            if not done:
                log.warning("expiration hub reader did not stop within %s s", STOP_WAIT_S)
            self._task = None
        for subscriber in list(self._open):
            subscriber.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.queue.put_nowait(None)  # wakes a waiting stream
        # Give the streams a moment to end with UNAVAILABLE; one stuck writing to a client
        # that does not read is left to the server's shutdown.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_WAIT_S):
                await self._all_ended.wait()

    def notify(self) -> None:
        """A write committed: look for new events now."""
        self._wake.set()

    async def _listen_forever(self) -> None:
        """LISTEN on its own connection; each notification wakes the reader."""
        import asyncpg  # PostgreSQL only
        from sqlalchemy.engine import make_url

        dsn = make_url(self.db.url).set(drivername="postgresql")
        dsn_text = dsn.render_as_string(hide_password=False)
        while not self._stopped:
            conn = None
            try:
                conn = await asyncpg.connect(dsn_text, timeout=5)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda *_, lost=lost: lost.set())
                await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
                self._wake.set()  # what committed while we were not listening
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("expiration hub cannot LISTEN (%s); polling meanwhile", error)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=1)
            await asyncio.sleep(LISTEN_RETRY_S)

    # -- the reader ------------------------------------------------------------------------

    async def _start_position(self, conn: AsyncConnection) -> None:
        """Move the position up to the newest stored event (never back)."""
        newest = int(
            await conn.scalar(select(func.coalesce(func.max(t.outbox_events.c.seq), 0))) or 0
        )
        if not self._gaps_possible:
            self._last_seq = max(self._last_seq, newest)
            return
        snapshot = await self._snapshot(conn)
        self._last_seq = max(self._last_seq, newest - START_LOOKBACK_SEQ, 0)
        if newest > self._last_seq:
            self._fence = _Fence(newest, snapshot.xmax, time.monotonic())

    @staticmethod
    async def _snapshot(conn: AsyncConnection) -> _Snapshot:
        row = (
            await conn.execute(
                text(
                    "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint"
                    " FROM pg_current_snapshot() AS s"
                )
            )
        ).one()
        return _Snapshot(int(row[0]), int(row[1]))

    async def _read_forever(self) -> None:
        failing = False
        while not self._stopped:
            waiting_at_gap = self._fence is not None and self._subscribers
            wait_s = GAP_RECHECK_S if waiting_at_gap else self.poll_interval_s
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel
            # that arrives as the wait completes (CPython gh-86296), and stop() would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
            self._wake.clear()
            if not self._subscribers:
                continue  # nobody to tell; a first subscriber catches the position up
            try:
                async with self._reading:
                    while await self._read_page():
                        pass
                failing = False
            except Exception:
                if not failing:  # once per outage, not once per poll
                    log.exception("expiration hub cannot read the outbox; retrying")
                failing = True

    async def _catch_up(self) -> None:
        """(Before the first live subscriber registers) Bring the position, left behind while
        nobody subscribed, up to the newest stored events; the events passed over are not
        dispatched (they are the replay's)."""
        async with self._reading:
            if self._subscribers:
                return  # one that waited here before us registered: the reader follows now
            await self.db.read(self._start_position)
            while await self._read_page():
                pass

    async def _read_page(self) -> bool:
        """Dispatch the next page of new events; True if there may be more right now."""
        after = self._last_seq
        # Nobody listening: only the sequences are needed (to keep the position), not the
        # events (decoding them was a sixth of an expiry run's time).
        light = not self._subscribers

        async def fetch(
            conn: AsyncConnection,
        ) -> tuple[_Snapshot | None, list[tuple[int, StoredEvent | None]]]:
            # On PostgreSQL the snapshot ids come from the same snapshot as the rows.
            snapshot = await self._snapshot(conn) if self._gaps_possible else None
            o = t.outbox_events
            columns = [o.c.seq] if light else [o]
            rows = await conn.execute(
                select(*columns).where(o.c.seq > after).order_by(o.c.seq).limit(READ_PAGE_MAX)
            )
            # Every row counts for gaps; only expiration events are decoded.
            return snapshot, [
                (
                    r.seq,
                    StoredEvent.from_row(r)
                    if not light and r.type in EXPIRATION_EVENT_TYPES
                    else None,
                )
                for r in rows
            ]

        snapshot, rows = await self.db.read(fetch)
        if light and self._subscribers:
            return True  # someone subscribed meanwhile: read this page again, in full
        # No await from here on: registration never interleaves with a dispatch.
        blocked = False
        for seq, event in rows:
            assert seq > self._last_seq, (seq, self._last_seq)
            if seq != self._last_seq + 1 and not self._gap_settled(seq, snapshot):
                blocked = True
                if snapshot is not None and (self._fence is None or seq > self._fence.seq):
                    self._fence = _Fence(rows[-1][0], snapshot.xmax, time.monotonic())
                break
            if event is not None:
                self._dispatch(event)
            self._last_seq = seq
        if self._fence is not None and self._last_seq >= self._fence.seq:
            self._fence = None
        for subscriber in self._subscribers:
            subscriber.examined = max(subscriber.examined, self._last_seq)
        return len(rows) == READ_PAGE_MAX and not blocked

    def _gap_settled(self, seq: int, snapshot: _Snapshot | None) -> bool:
        """May the reader move past the missing sequences just below `seq`?"""
        if snapshot is None:
            return True  # SQLite: a later sequence never commits before an earlier one
        fence = self._fence
        if fence is None or seq > fence.seq:
            return False  # a new hole: wait for the transactions running now
        if snapshot.xmin >= fence.xmax:
            return True  # whoever held the missing sequences has finished: they are gone
        waited_s = time.monotonic() - fence.since_s
        if waited_s < GAP_WAIT_MAX_S:
            return False
        log.warning(
            "outbox sequences %d..%d still missing after %.1f s; streams move past them",
            self._last_seq + 1,
            seq - 1,
            waited_s,
        )
        return True

    def _dispatch(self, event: StoredEvent) -> None:
        for subscriber in list(self._subscribers):
            if not subscriber.filter.matches(event):
                continue
            try:
                subscriber.queue.put_nowait(event)
            except asyncio.QueueFull:
                subscriber.overflowed = True
                self._subscribers.discard(subscriber)  # never slows the reader down

    # -- subscriptions ---------------------------------------------------------------------

    async def subscribe(
        self, watch: WatchFilter, *, after_sequence: int, from_now: bool
    ) -> AsyncGenerator[StoredEvent | Heartbeat, None]:
        """Stored events after `after_sequence` (unless `from_now`), then live ones, one at
        a time (see `subscribe_batches`)."""
        batches = self.subscribe_batches(
            watch, after_sequence=after_sequence, from_now=from_now, batch_max=1
        )
        async with contextlib.aclosing(batches):
            async for item in batches:
                if isinstance(item, Heartbeat):
                    yield item
                else:
                    yield item[0]

    async def subscribe_batches(
        self, watch: WatchFilter, *, after_sequence: int, from_now: bool, batch_max: int
    ) -> AsyncGenerator[list[StoredEvent] | Heartbeat, None]:
        """Stored events after `after_sequence` (unless `from_now`), then live ones, in
        sequence order, in lists of 1 to `batch_max`: the events ready at that moment.

        Ends with Unavailable when the hub stops, and with ResourceExhausted when the
        subscriber falls more than `buffer_max` events behind; both carry `last_sequence`.
        """
        if not self._subscribers and not self._stopped:
            await self._catch_up()
        if self._stopped:
            raise Unavailable(SHUTTING_DOWN, last_sequence=after_sequence)
        if len(self._open) >= self.subscribers_max:
            raise ResourceExhausted(
                f"at most {self.subscribers_max} concurrent subscribers "
                "(LOYALTY_WATCH_SUBSCRIBERS_MAX); retry later",
                reason="TOO_MANY_SUBSCRIBERS",
                limit="LOYALTY_WATCH_SUBSCRIBERS_MAX",
                limit_value=self.subscribers_max,
                subject="server",
            )
        # Registration and reading R happen without an await in between (see the reader).
        registered_at = self._last_seq
        subscriber = _Subscriber(watch, asyncio.Queue(maxsize=self.buffer_max), registered_at)
        self._subscribers.add(subscriber)
        self._open.add(subscriber)
        self._all_ended.clear()
        self._wake.set()  # what committed since the catch-up's read
        last = registered_at if from_now else after_sequence  # the last delivered
        try:
            cursor = last
            while cursor < registered_at:  # the replay: stored events up to R
                fetch = functools.partial(
                    self._replay_page, watch=watch, low=cursor, high=registered_at
                )
                page = await self.db.read(fetch)
                for start in range(0, len(page), batch_max):
                    if subscriber.closed:
                        raise Unavailable(SHUTTING_DOWN, last_sequence=last)
                    batch = page[start : start + batch_max]
                    last = batch[-1].seq
                    yield batch
                cursor = page[-1].seq if len(page) == READ_PAGE_MAX else registered_at
            while True:  # live events after R
                if subscriber.closed:
                    raise Unavailable(SHUTTING_DOWN, last_sequence=last)
                try:
                    item = subscriber.queue.get_nowait()
                except asyncio.QueueEmpty:
                    if subscriber.overflowed:  # everything buffered went out: cut off now
                        raise ResourceExhausted(
                            f"subscriber fell more than {self.buffer_max} events behind "
                            f"(LOYALTY_WATCH_BUFFER_MAX); resume after sequence {last}",
                            reason="SUBSCRIBER_TOO_SLOW",
                            limit="LOYALTY_WATCH_BUFFER_MAX",
                            limit_value=self.buffer_max,
                            subject="subscriber",
                            last_sequence=last,
                        ) from None
                    try:
                        async with asyncio.timeout(self.heartbeat_interval_s):  # see _read_forever
                            item = await subscriber.queue.get()
                    except TimeoutError:
                        # A cancelled get leaves its item queued: beat only if truly idle,
                        # so the heartbeat never claims an event it did not deliver.
                        if subscriber.queue.empty() and not subscriber.closed:
                            yield Heartbeat(max(subscriber.examined, last), self.clock.now_us())
                        continue
                batch = []
                while item is not None:  # None: the stop signal; `closed` is checked above
                    if item.seq > last:  # else resumed past it (after_sequence beyond R)
                        batch.append(item)
                        last = item.seq
                    if len(batch) == batch_max:
                        break
                    try:
                        item = subscriber.queue.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                if batch:
                    yield batch
        finally:
            self._subscribers.discard(subscriber)
            self._open.discard(subscriber)
            if not self._open:
                self._all_ended.set()

    @staticmethod
    async def _replay_page(
        conn: AsyncConnection, watch: WatchFilter, low: int, high: int
    ) -> list[StoredEvent]:
        rows = await conn.execute(
            select(t.outbox_events)
            .where(t.outbox_events.c.seq > low, t.outbox_events.c.seq <= high, *watch.where())
            .order_by(t.outbox_events.c.seq)
            .limit(READ_PAGE_MAX)
        )
        return [StoredEvent.from_row(r) for r in rows]
