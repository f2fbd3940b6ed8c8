"""Prometheus metrics: gRPC calls (go-grpc-prometheus names), runs, and ledger gauges.

Every App has its own registry, so several servers in one process (the tests) never share
counters. The HTTP endpoint runs in a daemon thread (prometheus_client's server), so a
scrape never waits for the event loop. Ledger gauges (liability and open lots per scheme
and asset) come from one grouped query every `refresh_interval_s` on the event loop; a
scrape reads the last snapshot and never touches the database.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.db import Database
from loyalty_ledger.ledger.records import LotState

log = logging.getLogger(__name__)

# go-grpc-prometheus uses Prometheus' default buckets (prometheus.DefBuckets); the same here
# keeps dashboards built for Go services working.
GRPC_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RUN_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# The ledger gauges have one series per (scheme, asset); past this many the rest are summed
# under scheme_id="_other" so a huge number of schemes cannot blow up every scrape.
LEDGER_SERIES_MAX = 1_000
OTHER_SCHEMES = "_other"


@dataclass(frozen=True)
class LedgerRow:
    scheme_id: str
    asset: str
    open_lots: int
    liability_minor: int


async def ledger_rows(conn: AsyncConnection) -> list[LedgerRow]:
    """Open lots and their remaining + held value per scheme and asset (state index)."""
    lots = t.lots
    rows = await conn.execute(
        select(
            lots.c.scheme_id,
            lots.c.asset,
            func.count(),
            func.coalesce(func.sum(lots.c.remaining + lots.c.held), 0),
        )
        .where(lots.c.state == LotState.OPEN.value)
        .group_by(lots.c.scheme_id, lots.c.asset)
        .order_by(lots.c.scheme_id, lots.c.asset)
    )
    out = [LedgerRow(r[0], r[1], int(r[2]), int(r[3])) for r in rows]
    if len(out) <= LEDGER_SERIES_MAX:
        return out
    kept, rest = out[: LEDGER_SERIES_MAX - 1], out[LEDGER_SERIES_MAX - 1 :]
    other: dict[str, LedgerRow] = {}
    for row in rest:
        seen = other.get(row.asset, LedgerRow(OTHER_SCHEMES, row.asset, 0, 0))
        other[row.asset] = LedgerRow(
            OTHER_SCHEMES,
            row.asset,
            seen.open_lots + row.open_lots,
            seen.liability_minor + row.liability_minor,
        )
    return kept + sorted(other.values(), key=lambda r: r.asset)


class _LedgerCollector(Collector):
    """Yields the last snapshot; `rows` is replaced whole, so a scrape sees one refresh."""

    def __init__(self) -> None:
        self.rows: list[LedgerRow] | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        rows = self.rows
        if rows is None:
            return  # not refreshed yet: no series rather than false zeros
        liability = GaugeMetricFamily(
            "loyalty_liability_minor",
            "Value owed to holders (remaining + held of open lots) in the asset's minor units.",
            labels=["scheme_id", "asset"],
        )
        open_lots = GaugeMetricFamily(
            "loyalty_open_lots", "Lots with value left (state OPEN).", labels=["scheme_id", "asset"]
        )
        for row in rows:
            liability.add_metric([row.scheme_id, row.asset], row.liability_minor)
            open_lots.add_metric([row.scheme_id, row.asset], row.open_lots)
        yield liability
        yield open_lots


class Metrics:
    """The metrics of one server, its /metrics endpoint and the ledger gauge refresh."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.grpc_started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            labels,
            registry=self.registry,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            [*labels, "grpc_code"],
            registry=self.registry,
        )
        self.grpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            labels,
            buckets=GRPC_BUCKETS_S,
            registry=self.registry,
        )
        self.runs = Counter(
            "loyalty_runs_total",
            "Runs that ended here, by kind and status (SUCCEEDED, FAILED, INTERRUPTED).",
            ["kind", "status"],
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "loyalty_run_duration_seconds",
            "How long this process worked on a run, start or resume to end.",
            ["kind"],
            buckets=RUN_BUCKETS_S,
            registry=self.registry,
        )
        self.run_items = Counter(
            "loyalty_run_items_total",
            "Items processed by runs that ended here.",
            ["kind"],
            registry=self.registry,
        )
        self.subscribers = Gauge(
            "loyalty_watch_subscribers",
            "WatchExpirations streams receiving live events on this server.",
            registry=self.registry,
        )
        self.ledger_refreshed = Gauge(
            "loyalty_ledger_gauges_refreshed_timestamp_seconds",
            "When the liability and open-lot gauges were last read from the database.",
            registry=self.registry,
        )
        self._ledger = _LedgerCollector()
        self.registry.register(self._ledger)
        self.port = 0
        self._http: Any = None
        self._http_thread: threading.Thread | None = None

    def observe_call(self, grpc_type: str, method: str, code: str, seconds: float) -> None:
        service, name = split_method(method)
        self.grpc_handled.labels(grpc_type, service, name, code).inc()
        self.grpc_seconds.labels(grpc_type, service, name).observe(seconds)

    def call_started(self, grpc_type: str, method: str) -> None:
        self.grpc_started.labels(grpc_type, *split_method(method)).inc()

    def run_ended(self, kind: str, status: str, seconds: float, items: int) -> None:
        self.runs.labels(kind, status).inc()
        self.run_seconds.labels(kind).observe(seconds)
        if items:
            self.run_items.labels(kind).inc(items)

    def watch_subscribers_from(self, count: Callable[[], int]) -> None:
        self.subscribers.set_function(lambda: float(count()))

    async def refresh_ledger(self, db: Database) -> None:
        self._ledger.rows = await db.read(ledger_rows)
        self.ledger_refreshed.set_to_current_time()

    async def refresh_forever(self, db: Database, interval_s: float) -> None:
        failing = False
        while True:
            try:
                await self.refresh_ledger(db)
                failing = False
            except Exception:
                if not failing:  # once per outage (e.g. before migration), not every interval
                    log.warning("cannot refresh the ledger gauges; will retry", exc_info=True)
                failing = True
            await asyncio.sleep(interval_s)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0 picks a free port); returns the port."""
        self._http, self._http_thread = start_http_server(port, host, registry=self.registry)
        self.port = int(self._http.server_port)
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
            self._http_thread = None


def split_method(method: str) -> tuple[str, str]:
    """'/loyalty.v1.WalletService/Spend' -> ('loyalty.v1.WalletService', 'Spend')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name
