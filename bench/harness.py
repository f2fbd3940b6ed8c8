"""Benchmark harness: the real server as its own process, a multi-process load generator, and an
empty-RPC echo server measured in the same run as the baseline.

    python bench/harness.py --quick              # everything, small (the CI smoke test, < 60 s)
    python bench/harness.py                      # everything at full size (5,000,000 lots in (e))
    python bench/harness.py --only a,d,c         # some scenarios
    python bench/harness.py --json out.json      # also write the rows as JSON

Scenarios (issue 7): (a) awards and spends over N wallets on SQLite; (b) the same on
PostgreSQL; (c) spends on one hot wallet (both backends); (d) the mix at half of the rate (a)
and (b) reached, paced open loop; (e) one expiry run over N due lots (both backends), with
the server's memory; (f) WatchExpirations subscribers, delivery latency at 20 events/s;
(g) bulk awards through SubmitEvents (500 events a call).

Every rate is printed next to the echo server's rate measured right before it with the same
clients, processes and concurrency, because the machine is shared and noisy: only ratios and
counts from one run mean anything. CPU is the server process's user+system time over the
measured window divided by its length (1.0 = one core busy); memory is its VmHWM (peak RSS so
far). PostgreSQL scenarios run when PostgreSQL answers at --pg-dsn; without it they are
skipped, except with CI=true (or --require-pg), where that is a failure.

The exit code is non-zero when the harness breaks: a server that does not start or dies, a
scenario with no successful operation, more than 1 % failed calls, a lost stream event, or an
expiry run that did not expire every lot. Timings never fail it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import loadgen
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loyalty.v1 import (
    expiry_pb2,
    offer_pb2,
    offer_pb2_grpc,
    rewards_pb2,
    wallet_pb2,
    wallet_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin: loyalty, python
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
ERROR_SHARE_MAX = 0.01
START_TIMEOUT_S = 60.0

# Targets of issue 7, checked (and printed) but never enforced by the exit code.
TARGETS = {
    "a": ("ratio", 0.6, ">= 0.6 x echo (stretch 1.0)"),
    "b": ("ratio", 0.35, ">= 0.35 x echo"),
    "c": ("ops", 1_000, ">= 1,000 spends/s"),
    "d-sqlite": ("p99_ms", 15, "p99 <= 15 ms"),
    "d-pg": ("p99_ms", 25, "p99 <= 25 ms"),
    "e-sqlite": ("seconds_5m", 120, "5 M lots <= 120 s, memory flat"),
    "e-pg": ("seconds_5m", 300, "5 M lots <= 300 s, memory flat"),
    "f": ("p99_ms", 100, "p99 delivery <= 100 ms"),
    "g": ("ops", 50_000, ">= 50,000 awards/s"),
}


@dataclass
class Config:
    quick: bool
    procs: int
    concurrency: int
    warmup_s: float
    duration_s: float
    wallets: int
    lots: int
    subscribers: int
    watch_rate: float
    watch_s: float
    events_per_message: int  # (f): WatchExpirations max_events_per_message
    bulk_batch: int
    bulk_concurrency: int
    admin_key: str
    pg_dsn: str
    require_pg: bool
    only: set[str]
    src: str = ""  # a folder holding src/ and generated/ of the code under test; "": worktree
    profile: str = ""  # folder for py-spy profiles of the server, one per measured phase
    profile_gil: bool = False  # py-spy samples only the thread holding the GIL (CPU, not waits)
    d_rate: float = 0.0  # (d) at this rate instead of half of (a)/(b)'s; 0: half


@dataclass
class Row:
    scenario: str
    backend: str
    what: str
    ops_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    echo_ops_per_s: float | None = None
    ratio: float | None = None
    server_cpu: float | None = None
    peak_mib: float | None = None
    count: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    target: str = ""
    verdict: str = ""

    @property
    def backend_key(self) -> str:
        return "pg" if self.backend == "postgresql" else self.backend


class HarnessError(Exception):
    """The harness broke (not a slow result)."""


# -- processes under test ------------------------------------------------------------------------


class Server(AbstractContextManager["Server"]):
    """A server process started from a command line that prints '... listening on HOST:PORT'."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log
        self.address = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if " listening on " in line:
                    self.address = line.rsplit(" ", 1)[1]
                    break
            if self.address:
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not self.address:
            self.stop()
            raise HarnessError(f"{self.name} did not start:\n{self.tail()}")
        self.wait_serving()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise HarnessError(f"{self.name} never reported SERVING:\n{self.tail()}")

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise HarnessError(f"{self.name} exited:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cpu_s(self) -> float:
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def memory_mib(self, key: str = "VmHWM") -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ledger_env(url: str, cfg: Config, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LOYALTY_DATABASE_URL=url,
        LOYALTY_HOST="127.0.0.1",
        LOYALTY_PORT="0",
        LOYALTY_ADMIN_KEY=cfg.admin_key,
        LOYALTY_METRICS_PORT="0",  # several servers at once must not fight over one port
        LOYALTY_SHUTDOWN_GRACE_SECONDS="1",  # open streams must not hold the next scenario up
        # (f) opens every stream with the one admin key (the default allows 100 per key).
        LOYALTY_STREAMS_PER_KEY_MAX=str(max(100, cfg.subscribers + 10)),
    )
    if cfg.src:  # a snapshot of a commit comes before the editable install of the worktree
        env["PYTHONPATH"] = f"{cfg.src}/src:{cfg.src}/generated"
    env.update(extra)
    return env


def ledger_server(name: str, url: str, cfg: Config, folder: Path, **extra: str) -> Server:
    env = ledger_env(url, cfg, **extra)
    migrated = subprocess.run(
        [str(BIN / "loyalty"), "migrate"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if migrated.returncode != 0:
        raise HarnessError(f"loyalty migrate failed:\n{migrated.stdout}{migrated.stderr}")
    return Server(name, [str(BIN / "loyalty"), "serve"], env, folder / f"{name}.log")


def seed_lots(url: str, cfg: Config, *, with_scheme: bool) -> None:
    """Due lots straight into the tables, with the code under test (bench/expiry_bench.py)."""
    argv = [sys.executable, str(ROOT / "bench" / "expiry_bench.py"), "--seed-only"]
    argv += ["--url", url, "--lots", str(cfg.lots)] + ([] if with_scheme else ["--no-scheme"])
    seeded = subprocess.run(argv, env=ledger_env(url, cfg), cwd=ROOT, capture_output=True)
    if seeded.returncode != 0:
        raise HarnessError(
            f"seeding lots failed:\n{seeded.stdout.decode()}{seeded.stderr.decode()}"
        )


def echo_server(folder: Path) -> Server:
    argv = [sys.executable, str(ROOT / "bench" / "echo_server.py")]
    return Server("echo", argv, dict(os.environ), folder / "echo.log")


# -- PostgreSQL databases ------------------------------------------------------------------------


def pg_available(dsn: str) -> bool:
    import asyncpg

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(dsn, timeout=3)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


class PgDatabase(AbstractContextManager[str]):
    """A fresh database `bench_<random>` on the cluster of `dsn`, dropped on exit."""

    def __init__(self, dsn: str, label: str) -> None:
        self.dsn = dsn
        self.name = f"bench_{label}_{uuid.uuid4().hex[:8]}"

    def _admin(self, sql: str) -> None:
        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(self.dsn)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(run())

    def __enter__(self) -> str:
        self._admin(f'CREATE DATABASE "{self.name}"')
        base = self.dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        return f"{base}/{self.name}"

    def __exit__(self, *exc: object) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# -- measuring -----------------------------------------------------------------------------------


def percentile_ms(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index] * 1000


class Bench:
    def __init__(self, cfg: Config, pool: Any, folder: Path) -> None:
        self.cfg, self.pool, self.folder = cfg, pool, folder
        self.rows: list[Row] = []
        self.failures: list[str] = []
        self.run_id = uuid.uuid4().hex[:8]
        self.echo: Server | None = None
        self._echo: dict[str, Any] | None = None
        self._n = 0

    def prefix(self, what: str) -> str:
        self._n += 1
        return f"{self.run_id}-{what}-{self._n}"

    def fail(self, message: str) -> None:
        print(f"FAILED: {message}", flush=True)
        self.failures.append(message)

    def load(
        self,
        server: Server,
        op: str,
        params: dict[str, Any],
        *,
        rate: float | None = None,
        concurrency: int | None = None,
        duration_s: float | None = None,
        drain: bool = False,
        label: str = "",
    ) -> dict[str, Any]:
        """One timed load phase over every worker process; the merged result."""
        cfg = self.cfg
        duration = duration_s or cfg.duration_s
        # Drained phases (long batch calls) count every call started from the first instant.
        warmup = 0.0 if drain else cfg.warmup_s
        start_at = time.time() + 0.5
        specs = [
            {
                "target": server.address,
                "admin_key": cfg.admin_key,
                "op": op,
                "params": params,
                "prefix": self.prefix(f"{op}{i}"),
                "concurrency": concurrency or cfg.concurrency,
                "rate": rate / cfg.procs if rate else None,
                "start_at": start_at,
                "warmup": warmup,
                "duration": duration,
                "drain": drain,
            }
            for i in range(cfg.procs)
        ]
        pending = self.pool.map_async(loadgen.load_task, specs)
        record_from = start_at + warmup
        time.sleep(max(0.0, record_from - time.time()))
        cpu0, t0 = server.cpu_s(), time.time()
        profiler = self.profiler(server, label or op, duration) if label else None
        time.sleep(max(0.0, record_from + duration - time.time()))
        if not drain:
            cpu1, t1 = server.cpu_s(), time.time()
        results = pending.get(timeout=duration + warmup + 300)
        if drain:
            cpu1, t1 = server.cpu_s(), time.time()
            duration = max([r["last_end"] for r in results] + [record_from + duration])
            duration -= record_from
        if profiler is not None:
            profiler.wait()
        server.check_alive()
        latencies = sorted(x for r in results for x in r["latencies"])
        errors: dict[str, int] = {}
        for r in results:
            for name, count in r["errors"].items():
                errors[name] = errors.get(name, 0) + count
        ops = sum(r["ops"] for r in results)
        return {
            "ops": ops,
            "items": sum(r["items"] for r in results),
            "ops_per_s": ops / duration,
            "items_per_s": sum(r["items"] for r in results) / duration,
            "p50_ms": percentile_ms(latencies, 0.50),
            "p99_ms": percentile_ms(latencies, 0.99),
            "p999_ms": percentile_ms(latencies, 0.999),
            "errors": errors,
            "server_cpu": (cpu1 - cpu0) / (t1 - t0),
            "client_cpu": sum(r["client_cpu_s"] for r in results) / (t1 - t0),
        }

    def profiler(
        self, server: Server, label: str, duration: float
    ) -> subprocess.Popen[bytes] | None:
        """py-spy on the server for `duration` seconds (with --profile), collapsed stacks."""
        if not self.cfg.profile or server.proc is None:
            return None
        out = Path(self.cfg.profile) / f"{label}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(BIN / "py-spy"), "record", "--nonblocking", "--pid", str(server.proc.pid)]
        argv += ["--duration", str(max(1, int(duration))), "--format", "raw", "-o", str(out)]
        if self.cfg.profile_gil:
            argv.append("--gil")
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def check(self, row: Row) -> None:
        total = row.count + sum(row.errors.values())
        if row.count == 0:
            self.fail(f"({row.scenario}) {row.backend}: no successful operation {row.errors}")
        elif sum(row.errors.values()) > ERROR_SHARE_MAX * total:
            self.fail(f"({row.scenario}) {row.backend}: failed calls {row.errors} of {total}")

    def add(self, row: Row) -> Row:
        spec = TARGETS.get(row.scenario) or TARGETS.get(f"{row.scenario}-{row.backend_key}")
        if spec:
            key, bound, text = spec
            row.target = text
            value = {
                "ratio": row.ratio,
                "ops": row.ops_per_s,
                "p99_ms": row.p99_ms,
                "seconds_5m": row.extra.get("projected_5m_s"),
            }[key]
            if value is not None:
                ok = value >= bound if key in ("ratio", "ops") else value <= bound
                row.verdict = "met" if ok else "MISSED"
        self.rows.append(row)
        print_row(row)
        return row

    def echo_rate(self, concurrency: int | None = None) -> dict[str, Any]:
        """The echo server's rate, measured now (--quick: once, then reused)."""
        assert self.echo is not None
        if self.cfg.quick and self._echo is not None:
            return self._echo
        result = self._echo = self.load(self.echo, "echo", {}, concurrency=concurrency)
        if result["ops"] == 0:
            self.fail(f"echo baseline: no successful call {result['errors']}")
        print(
            f"    echo baseline: {result['ops_per_s']:,.0f} calls/s, p50 "
            f"{fmt(result['p50_ms'])} ms, echo server CPU {result['server_cpu']:.2f}, "
            f"({1000 * result['server_cpu'] / max(result['ops_per_s'], 1e-9):.3f} ms/call), "
            f"clients CPU {result['client_cpu']:.2f}",
            flush=True,
        )
        return result

    def throughput_row(
        self, scenario: str, backend: str, what: str, server: Server, op: str, params: dict
    ) -> Row:
        echo = self.echo_rate()
        result = self.load(server, op, params, label=f"{scenario}-{backend}")
        row = Row(
            scenario,
            backend,
            what,
            ops_per_s=result["ops_per_s"],
            p50_ms=result["p50_ms"],
            p99_ms=result["p99_ms"],
            p999_ms=result["p999_ms"],
            echo_ops_per_s=echo["ops_per_s"],
            ratio=result["ops_per_s"] / echo["ops_per_s"] if echo["ops_per_s"] else None,
            server_cpu=result["server_cpu"],
            peak_mib=server.memory_mib(),
            count=result["ops"],
            errors=result["errors"],
            extra={"client_cpu": result["client_cpu"], "echo_server_cpu": echo["server_cpu"]},
        )
        self.check(row)
        return self.add(row)

    # -- scenario groups -------------------------------------------------------------------------

    def seed(self, server: Server, count: int, credit: int, lots_per_wallet: int = 1) -> list:
        started = time.perf_counter()
        with grpc.insecure_channel(server.address) as channel:
            offers = offer_pb2_grpc.OfferServiceStub(channel)
            md = loadgen.metadata(self.cfg.admin_key)
            offers.CreateScheme(
                offer_pb2.CreateSchemeRequest(
                    request_id=f"{self.run_id}-scheme",
                    scheme=offer_pb2.Scheme(
                        scheme_id=loadgen.SCHEME_ID,
                        name="Bench",
                        timezone="UTC",
                        assets=[
                            offer_pb2.AssetDefinition(code="POINTS", scale=0),
                            offer_pb2.AssetDefinition(code="EUR", scale=2),
                        ],
                    ),
                ),
                metadata=md,
                timeout=30,
            )
        procs = self.cfg.procs
        specs = [
            {
                "target": server.address,
                "admin_key": self.cfg.admin_key,
                "indices": list(range(i, count, procs)),
                "prefix": self.prefix("seed"),
                "credit": credit,
                "lots_per_wallet": lots_per_wallet,
                "concurrency": 16,
            }
            for i in range(procs)
        ]
        merged: dict[int, tuple[str, list[str]]] = {}
        for result in self.pool.map(loadgen.seed_task, specs):
            merged.update(result["wallets"])
        if len(merged) != count:
            raise HarnessError(f"seeded {len(merged)} wallets of {count}")
        elapsed = time.perf_counter() - started
        calls = count * (1 + lots_per_wallet)
        print(
            f"    seeded {count:,} wallets ({calls:,} calls) in {elapsed:.1f} s: "
            f"{calls / elapsed:,.0f} calls/s",
            flush=True,
        )
        return [merged[i] for i in range(count)]

    def mix_group(self, backend: str, url: str) -> None:
        """(a)/(b), (d), (c) and (g) on one server."""
        cfg = self.cfg
        main = "a" if backend == "sqlite" else "b"
        want = {main, "c", "d", "g"} & cfg.only
        if cfg.quick and backend != "sqlite":
            want -= {"c", "g"}  # the smoke test runs those code paths on SQLite only
        if not want and not (cfg.quick and {"e", "f"} & cfg.only):
            return
        folder = self.folder
        # The smoke test saves server starts: no schedule, and (e) and (f) on this server too.
        quiet = {"LOYALTY_SCHEDULER": "false"} if cfg.quick else {}
        with ledger_server(f"ledger-{backend}", url, cfg, folder, **quiet) as server:
            print(f"== {backend}: ledger at {server.address}", flush=True)
            seeded = self.seed(server, cfg.wallets + 1, loadgen.SEED_CREDIT)
            wallets = [w for w, _ in seeded[1:]]
            hot = seeded[0][0]
            mix = {"wallets": wallets, "award_share": 0.5}
            max_rate = None
            if main in want or ("d" in want and not cfg.d_rate):
                what = f"awards+spends 50/50 over {len(wallets):,} wallets"
                row = self.throughput_row(main, backend, what, server, "mix", mix)
                max_rate = row.ops_per_s
            if "d" in want and (max_rate or cfg.d_rate):
                rate = cfg.d_rate or max_rate / 2  # type: ignore[operator]
                result = self.load(server, "mix", mix, rate=rate, label=f"d-{backend}")
                row = Row(
                    "d",
                    backend,
                    f"the mix paced open loop at {rate:,.0f}/s "
                    + ("(--d-rate)" if cfg.d_rate else f"(half of ({main}))"),
                    ops_per_s=result["ops_per_s"],
                    p50_ms=result["p50_ms"],
                    p99_ms=result["p99_ms"],
                    p999_ms=result["p999_ms"],
                    server_cpu=result["server_cpu"],
                    peak_mib=server.memory_mib(),
                    count=result["ops"],
                    errors=result["errors"],
                    extra={"offered_rate": rate, "client_cpu": result["client_cpu"]},
                )
                self.check(row)
                self.add(row)
            if "c" in want:
                what = "spends of 5 points on one wallet"
                self.throughput_row("c", backend, what, server, "spend_hot", {"wallets": [hot]})
            if "g" in want:
                self.bulk(server, backend, wallets)
            if cfg.quick and "e" in cfg.only:
                self.expiry(backend, url, server)
            if cfg.quick and "f" in cfg.only and backend == "sqlite":
                for kind in cfg.watch_kinds:  # type: ignore[attr-defined]
                    self.watch(backend, url, kind == "fanout", server)

    def bulk(self, server: Server, backend: str, wallets: list[str]) -> None:
        md = loadgen.metadata(self.cfg.admin_key)
        with grpc.insecure_channel(server.address) as channel:
            offers = offer_pb2_grpc.OfferServiceStub(channel)
            offer = offers.CreateOffer(
                offer_pb2.CreateOfferRequest(
                    request_id=f"{self.run_id}-offer",
                    offer=rewards_pb2.Offer(
                        scheme_id=loadgen.SCHEME_ID,
                        name="10 points a purchase",
                        asset="POINTS",
                        sponsor_id=loadgen.SPONSOR,
                        rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=10)),
                    ),
                ),
                metadata=md,
                timeout=30,
            ).offer
            offers.SetOfferStatus(
                offer_pb2.SetOfferStatusRequest(
                    request_id=f"{self.run_id}-offer-on",
                    offer_id=offer.offer_id,
                    status=rewards_pb2.OFFER_STATUS_ACTIVE,
                ),
                metadata=md,
                timeout=30,
            )
        params = {"wallets": wallets, "batch": self.cfg.bulk_batch}
        result = self.load(
            server,
            "bulk",
            params,
            concurrency=self.cfg.bulk_concurrency,
            drain=True,
            label=f"g-{backend}",
        )
        row = Row(
            "g",
            backend,
            f"SubmitEvents, {self.cfg.bulk_batch} purchases a call, one award each",
            ops_per_s=result["items_per_s"],
            p50_ms=result["p50_ms"],
            p99_ms=result["p99_ms"],
            p999_ms=result["p999_ms"],
            server_cpu=result["server_cpu"],
            peak_mib=server.memory_mib(),
            count=result["items"],
            errors=result["errors"],
            extra={"calls_per_s": result["ops_per_s"], "client_cpu": result["client_cpu"]},
        )
        self.check(row)
        self.add(row)

    def expiry(self, backend: str, url: str, shared: Server | None = None) -> None:
        """(e): seed due lots straight into the tables, then one RunExpiry through the server."""
        cfg = self.cfg
        started = time.perf_counter()
        context: AbstractContextManager[Server]
        if shared is None:
            # Migrate, then seed with the server down (seeding is not what is measured).
            # No schedule: the run under test is the one RunExpiry starts.
            context = ledger_server(
                f"expiry-{backend}",
                url,
                cfg,
                self.folder,
                LOYALTY_SCHEDULER="false",
                # RunExpiry answers when the run ends: millions of lots take minutes.
                LOYALTY_UNARY_SECONDS_MAX="3600",
            )
            seed_lots(url, cfg, with_scheme=True)
        else:  # the smoke test: the scheme exists, the server runs (without its schedule)
            context = nullcontext(shared)
            seed_lots(url, cfg, with_scheme=False)
        print(f"    seeded {cfg.lots:,} due lots in {time.perf_counter() - started:.1f} s")
        with context as server:
            print(f"== {backend}: expiry server at {server.address}", flush=True)
            rss_before = server.memory_mib("VmRSS")
            hwm_before = server.memory_mib()
            samples: list[float] = []
            md = loadgen.metadata(cfg.admin_key)
            with grpc.insecure_channel(server.address) as channel:
                stub = wallet_pb2_grpc.WalletServiceStub(channel)
                cpu0, t0 = server.cpu_s(), time.perf_counter()
                # Profile the first minutes at most (py-spy needs a duration up front).
                profiler = self.profiler(server, f"e-{backend}", 120)
                future = stub.RunExpiry.future(
                    expiry_pb2.RunExpiryRequest(
                        request_id=f"{self.run_id}-expiry", kind=expiry_pb2.RUN_KIND_EXPIRY
                    ),
                    metadata=md,
                    timeout=3600,
                )
                while not future.done():
                    samples.append(server.memory_mib("VmRSS"))
                    time.sleep(0.25)
                run = future.result().run
                elapsed = time.perf_counter() - t0
                cpu = (server.cpu_s() - cpu0) / elapsed
                if profiler is not None:
                    profiler.wait()
            hwm_after = server.memory_mib()
        rate = run.items_processed / elapsed
        row = Row(
            "e",
            backend,
            f"one expiry run over {cfg.lots:,} due lots (100 per wallet)",
            ops_per_s=rate,
            server_cpu=cpu,
            peak_mib=hwm_after,
            count=run.items_processed,
            extra={
                "seconds": elapsed,
                "projected_5m_s": 5_000_000 / rate if rate else None,
                "chunks": run.chunks_committed,
                "rss_before_mib": rss_before,
                "hwm_before_mib": hwm_before,
                "rss_max_during_mib": max(samples, default=rss_before),
                "status": expiry_pb2.RunStatus.Name(run.status),
            },
        )
        if run.items_processed != cfg.lots or run.status != expiry_pb2.RUN_STATUS_SUCCEEDED:
            self.fail(
                f"(e) {backend}: run {expiry_pb2.RunStatus.Name(run.status)} expired "
                f"{run.items_processed:,} of {cfg.lots:,} lots: {run.error}"
            )
        self.add(row)

    def watch(self, backend: str, url: str, fanout: bool, shared: Server | None = None) -> None:
        """(f): subscribers on WatchExpirations; ExpireLot at a fixed rate; delivery latency."""
        cfg = self.cfg
        n = cfg.subscribers
        events = int(cfg.watch_rate * cfg.watch_s)
        probes_max = 20 if cfg.quick else 200
        label = "every subscriber gets every event" if fanout else "one wallet per subscriber"
        context = (
            nullcontext(shared)
            if shared is not None
            else ledger_server(f"watch-{backend}", url, cfg, self.folder)
        )
        with context as server:
            print(f"== {backend}: watch server at {server.address} ({label})", flush=True)
            # Fan-out: a few wallets hold the lots. Filtered: one wallet per subscriber.
            wallet_count = 10 if fanout else n
            # Filtered: the probes are one lot of each wallet, all at once.
            probes = probes_max if fanout else n
            lots_each = -(-(events + probes) // wallet_count)
            seeded = self.seed(server, wallet_count, 100, lots_per_wallet=lots_each)
            filters = [[] if fanout else [seeded[i][0]] for i in range(n)]
            ctx = mp.get_context("spawn")
            ready = ctx.Value("i", 0)
            stop = ctx.Event()
            results = ctx.Queue()
            procs = [
                ctx.Process(
                    target=loadgen.subscribe_process,
                    args=(
                        {
                            "target": server.address,
                            "admin_key": cfg.admin_key,
                            "filters": filters[i :: cfg.procs],
                            "events_per_message": cfg.events_per_message,
                            "index": i,
                        },
                        ready,
                        stop,
                        results,
                    ),
                )
                for i in range(cfg.procs)
            ]
            for proc in procs:
                proc.start()
            # Lots in round-robin over the wallets, so in the filtered case each probe reaches
            # a different subscriber.
            lots = [lot for k in range(lots_each) for _, ls in seeded for lot in ls[k : k + 1]]
            md = loadgen.metadata(cfg.admin_key)
            sent: dict[str, float] = {}
            call_errors: dict[str, int] = {}
            write_latencies: list[float] = []  # ExpireLot: from due to answered
            try:
                with grpc.insecure_channel(server.address) as channel:
                    stub = wallet_pb2_grpc.WalletServiceStub(channel)

                    def expire(lot_id: str) -> Any:
                        return stub.ExpireLot.future(
                            wallet_pb2.ExpireLotRequest(
                                request_id=f"{self.run_id}-x-{lot_id}", lot_id=lot_id
                            ),
                            metadata=md,
                            timeout=60,
                        )

                    # Probe until every stream delivered something: then all are subscribed.
                    next_lot = 0
                    deadline = time.monotonic() + 60
                    if not fanout:
                        time.sleep(2.0)  # let the streams register before the probes
                        for probe in [expire(lot) for lot in lots[:n]]:
                            probe.result()
                        next_lot = n
                    while ready.value < n:
                        if time.monotonic() > deadline or next_lot >= len(lots) - events:
                            raise HarnessError(f"only {ready.value} of {n} streams came up")
                        for proc in procs:
                            if not proc.is_alive():
                                raise HarnessError("a subscriber process died")
                        if fanout:
                            expire(lots[next_lot]).result()
                            next_lot += 1
                        time.sleep(0.1)
                    time.sleep(0.3 if cfg.quick else 1.0)  # let the probes drain
                    cpu0, t0 = server.cpu_s(), time.time()
                    interval = 1.0 / cfg.watch_rate
                    measured = lots[next_lot : next_lot + events]
                    # Open loop: each ExpireLot is sent when due, whether or not the ones before
                    # it have answered; delivery latency counts from the instant it was due.
                    calls = []
                    for k, lot_id in enumerate(measured):
                        due = t0 + k * interval
                        delay = due - time.time()
                        if delay > 0:
                            time.sleep(delay)
                        sent[lot_id] = due
                        call = expire(lot_id)
                        call.add_done_callback(
                            lambda _, due=due: write_latencies.append(time.time() - due)
                        )
                        calls.append(call)
                    sent_s = time.time() - t0
                    for lot_id, call in zip(measured, calls, strict=True):
                        try:
                            call.result()
                        except grpc.RpcError as error:  # counted: it fails the scenario
                            code = error.code().name  # type: ignore[attr-defined]
                            key = f"ExpireLot {code}"
                            call_errors[key] = call_errors.get(key, 0) + 1
                            sent.pop(lot_id, None)
                    time.sleep(0.5 if cfg.quick else 2.0)  # stragglers
                    t_end = time.time()
                    cpu = (server.cpu_s() - cpu0) / (t_end - t0)
                    achieved = events / max(sent_s, interval)
            finally:
                stop.set()
                # The queue hands results over in the order the processes finish.
                outputs = sorted(
                    (results.get(timeout=60) for _ in procs), key=lambda out: out["index"]
                )
                for proc in procs:
                    proc.join(10)
            server.check_alive()
            latencies: list[float] = []
            missing = 0
            stream_errors: dict[str, int] = {}
            subscriber_filters = [f for i in range(cfg.procs) for f in filters[i :: cfg.procs]]
            arrivals = [a for out in outputs for a in out["arrivals"]]
            for out in outputs:
                for name, count in out["errors"].items():
                    stream_errors[name] = stream_errors.get(name, 0) + count
            lot_wallet = {lot: w for w, ls in seeded for lot in ls}
            for watched, seen in zip(subscriber_filters, arrivals, strict=True):
                for lot_id, at in sent.items():
                    if watched and lot_wallet[lot_id] not in watched:
                        continue
                    if lot_id in seen:
                        latencies.append(seen[lot_id] - at)
                    else:
                        missing += 1
            latencies.sort()
            row = Row(
                "f",
                backend,
                f"{n:,} subscribers, {label}, ExpireLot at {cfg.watch_rate:g}/s, "
                f"max_events_per_message {cfg.events_per_message}",
                ops_per_s=len(latencies) / cfg.watch_s,
                p50_ms=percentile_ms(latencies, 0.50),
                p99_ms=percentile_ms(latencies, 0.99),
                p999_ms=percentile_ms(latencies, 0.999),
                server_cpu=cpu,
                peak_mib=server.memory_mib(),
                count=len(latencies),
                errors={
                    **stream_errors,
                    **call_errors,
                    **({"MISSING": missing} if missing else {}),
                },
                extra={
                    "events": events,
                    "achieved_event_rate": achieved,
                    "subscriber_processes_cpu": window_cpu(outputs, t0, t_end),
                    # How much of the delivery latency the write itself took.
                    "expire_lot_p50_ms": percentile_ms(sorted(write_latencies), 0.50),
                    "expire_lot_p99_ms": percentile_ms(sorted(write_latencies), 0.99),
                },
            )
            if missing or stream_errors or call_errors or not latencies:
                self.fail(
                    f"(f) {backend}: {missing} deliveries missing, errors "
                    f"{stream_errors} {call_errors}"
                )
            self.add(row)


# -- output --------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ",.1f") -> str:
    return "-" if value is None else format(value, spec)


def window_cpu(outputs: list[dict[str, Any]], t0: float, t1: float) -> float:
    """CPU of the subscriber processes over [t0, t1], from their (wall, CPU) samples."""
    total = 0.0
    for out in outputs:
        inside = [(w, c) for w, c in out["cpu_samples"] if t0 <= w <= t1]
        if len(inside) >= 2:
            total += (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
    return total


def cpu_ms_per_op(row: Row) -> float | None:
    """Server CPU time per operation: less sensitive to a busy machine than rates are."""
    if row.server_cpu is None or not row.ops_per_s:
        return None
    return 1000 * row.server_cpu / row.ops_per_s


def print_row(row: Row) -> None:
    line = (
        f"  ({row.scenario}) {row.backend:<10} {row.what}\n"
        f"      rate {fmt(row.ops_per_s, ',.0f')}/s  p50 {fmt(row.p50_ms, '.2f')} ms  "
        f"p99 {fmt(row.p99_ms, '.2f')} ms  p999 {fmt(row.p999_ms, '.2f')} ms  "
        f"x echo {fmt(row.ratio, '.3f')}  server CPU {fmt(row.server_cpu, '.2f')} "
        f"({fmt(cpu_ms_per_op(row), '.2f')} ms/op)  "
        f"peak mem {fmt(row.peak_mib, '.0f')} MiB  n={row.count:,}"
    )
    if row.errors:
        line += f"  errors {row.errors}"
    if row.extra:
        extras = ", ".join(
            f"{k}={v:,.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.extra.items()
        )
        line += f"\n      {extras}"
    if row.target:
        line += f"\n      target {row.target}: {row.verdict or '-'}"
    print(line, flush=True)


def print_table(rows: list[Row]) -> None:
    print(
        "\n| scen. | backend | ops/s | p50 ms | p99 ms | p999 ms | x echo | server CPU "
        "| CPU ms/op | peak MiB | target | result |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.scenario} | {r.backend} | {fmt(r.ops_per_s, ',.0f')} | {fmt(r.p50_ms, '.2f')} "
            f"| {fmt(r.p99_ms, '.2f')} | {fmt(r.p999_ms, '.2f')} | {fmt(r.ratio, '.3f')} "
            f"| {fmt(r.server_cpu, '.2f')} | {fmt(cpu_ms_per_op(r), '.2f')} "
            f"| {fmt(r.peak_mib, '.0f')} | {r.target} "
            f"| {r.verdict or '-'} |"
        )


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    load = os.getloadavg()
    return (
        f"nproc {os.cpu_count()}, {model}, RAM {mem_kib / 1024 / 1024:.1f} GiB, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, Python {sys.version.split()[0]}, "
        f"grpcio {grpc.__version__}"
    )


def code_under_test(cfg: Config, folder: Path) -> str:
    """Export the revision to test (unless 'worktree') and say what is being measured."""
    git = ["git", "-C", str(ROOT)]
    if cfg.src == "worktree":
        cfg.src = ""
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True)
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "src", "generated"], capture_output=True
        )
        changed = len(dirty.stdout.splitlines())
        return f"worktree at {head.stdout.decode().strip()}, {changed} changed files in src/"
    if Path(cfg.src, "src", "loyalty_ledger").is_dir():  # a folder: e.g. a patched copy
        cfg.src = str(Path(cfg.src).resolve())
        return f"the code in {cfg.src}"
    commit = subprocess.run(
        [*git, "rev-parse", "--verify", f"{cfg.src}^{{commit}}"], capture_output=True, text=True
    )
    if commit.returncode != 0:
        raise SystemExit(f"unknown revision {cfg.src}")
    snapshot = folder / "snapshot"
    snapshot.mkdir()
    archive = subprocess.run(
        [*git, "archive", commit.stdout.strip(), "src", "generated"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(snapshot)], input=archive.stdout, check=True)
    cfg.src = str(snapshot)
    return f"commit {commit.stdout.strip()[:12]} (exported)"


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: the CI smoke test")
    parser.add_argument("--only", default="a,b,c,d,e,f,g", help="scenarios, e.g. a,c,d")
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--concurrency", type=int, default=0, help="calls in flight per process")
    parser.add_argument("--duration", type=float, default=0, help="seconds measured per phase")
    parser.add_argument("--wallets", type=int, default=0)
    parser.add_argument("--lots", type=int, default=0, help="(e): due lots to expire")
    parser.add_argument("--subscribers", type=int, default=0, help="(f): streams")
    parser.add_argument(
        "--watch", default="fanout", choices=["fanout", "filtered", "both"], help="(f) kind"
    )
    parser.add_argument(
        "--events-per-message",
        type=int,
        default=100,
        help="(f): the streams' max_events_per_message (1: one event per message)",
    )
    parser.add_argument(
        "--admin-key",
        default=os.environ.get("BENCH_ADMIN_KEY", "bench-admin-key-0123456789"),
        help="sent as 'authorization: Bearer KEY' on every call, and given to the server as "
        "LOYALTY_ADMIN_KEY ('' sends nothing)",
    )
    parser.add_argument(
        "--pg-dsn", default=os.environ.get("BENCH_PG_DSN", DEFAULT_PG_DSN), help="PostgreSQL"
    )
    parser.add_argument(
        "--require-pg",
        action="store_true",
        default=os.environ.get("CI") == "true",
        help="fail when PostgreSQL does not answer (default with CI=true)",
    )
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="which backends to run the scenarios on"
    )
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument(
        "--src",
        default="worktree",
        help="code under test: 'worktree' (the checkout as it is), a git revision whose "
        "src/ and generated/ are exported to a temporary folder (pins the measured commit), or "
        "a folder holding src/ and generated/ (to measure a change without touching the tree)",
    )
    parser.add_argument(
        "--profile", default="", help="folder: py-spy profiles of the server, one per phase"
    )
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: sample only the thread holding the GIL (py-spy --gil), so the "
        "profile shows where CPU goes, not where threads wait",
    )
    parser.add_argument(
        "--d-rate",
        type=float,
        default=0,
        help="(d): offer this rate (ops/s) instead of half of what (a)/(b) reached, and skip "
        "(a)/(b) unless asked for: the same load for both sides of a back-to-back pair",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    cfg = Config(
        quick=quick,
        procs=args.procs,
        concurrency=args.concurrency or (4 if quick else 32),
        warmup_s=0.2 if quick else 2.0,
        duration_s=args.duration or (1.0 if quick else 15.0),
        wallets=args.wallets or (50 if quick else 10_000),
        lots=args.lots or (5_000 if quick else 5_000_000),
        subscribers=args.subscribers or (50 if quick else 1_000),
        watch_rate=20.0,
        watch_s=1.0 if quick else 20.0,
        events_per_message=args.events_per_message,
        bulk_batch=10 if quick else 500,
        bulk_concurrency=1,
        admin_key=args.admin_key,
        pg_dsn=args.pg_dsn,
        require_pg=args.require_pg,
        only=set(args.only.split(",")),
    )
    cfg.watch_kinds = ["fanout", "filtered"] if args.watch == "both" else [args.watch]  # type: ignore[attr-defined]
    cfg.json = args.json  # type: ignore[attr-defined]
    cfg.backends = set(args.backends.split(","))  # type: ignore[attr-defined]
    cfg.src = args.src
    cfg.profile = str(Path(args.profile).resolve()) if args.profile else ""
    cfg.profile_gil = args.profile_gil
    cfg.d_rate = args.d_rate
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    started = time.perf_counter()
    print(f"machine: {machine()}")
    print(
        f"load: {cfg.procs} processes x {cfg.concurrency} calls in flight, warm-up "
        f"{cfg.warmup_s:g} s, measured {cfg.duration_s:g} s; {cfg.wallets:,} wallets, "
        f"{cfg.lots:,} lots, {cfg.subscribers:,} subscribers",
        flush=True,
    )
    pg = pg_available(cfg.pg_dsn)
    if not pg:
        print(f"PostgreSQL does not answer at {cfg.pg_dsn}", flush=True)
    ctx = mp.get_context("spawn")
    with (
        tempfile.TemporaryDirectory(prefix="loyalty-bench-") as tmp,
        ctx.Pool(cfg.procs) as pool,
        ExitStack() as stack,
    ):
        folder = Path(tmp)
        print(f"server code: {code_under_test(cfg, folder)}", flush=True)
        bench = Bench(cfg, pool, folder)
        try:
            bench.echo = stack.enter_context(echo_server(folder))
            print(f"echo server at {bench.echo.address}", flush=True)

            def sqlite_url(name: str) -> str:
                return f"sqlite+aiosqlite:///{folder / name}.db"

            def pg_url(label: str) -> str:
                return stack.enter_context(PgDatabase(cfg.pg_dsn, label))

            backends: list[tuple[str, Any]] = []
            if "sqlite" in cfg.backends:  # type: ignore[attr-defined]
                backends.append(("sqlite", sqlite_url))
            if "postgresql" not in cfg.backends:  # type: ignore[attr-defined]
                pass
            elif pg:
                backends.append(("postgresql", pg_url))
            elif cfg.require_pg:
                bench.fail(f"PostgreSQL is required (CI=true) but does not answer at {cfg.pg_dsn}")
            else:
                print("PostgreSQL scenarios skipped", flush=True)
            for backend, url in backends:
                bench.mix_group(backend, url("mix"))
            if "e" in cfg.only and not cfg.quick:
                for backend, url in backends:
                    bench.expiry(backend, url("expiry"))
            if "f" in cfg.only and not cfg.quick:
                for kind in cfg.watch_kinds:  # type: ignore[attr-defined]
                    bench.watch("sqlite", sqlite_url(f"watch-{kind}"), kind == "fanout")
        except HarnessError as error:
            bench.fail(str(error))
        except Exception as error:  # a bug in the harness or the server: fail loudly, tidy up
            traceback.print_exc()
            bench.fail(f"{type(error).__name__}: {error}")
        print(f"\nmachine: {machine()}")
        print_table(bench.rows)
        if cfg.json:  # type: ignore[attr-defined]
            Path(cfg.json).write_text(  # type: ignore[attr-defined]
                json.dumps(
                    {
                        "machine": machine(),
                        "config": {k: v for k, v in asdict(cfg).items() if k != "only"},
                        "rows": [asdict(r) for r in bench.rows],
                        "failures": bench.failures,
                    },
                    indent=1,
                    default=str,
                )
            )
    print(f"\nbench took {time.perf_counter() - started:.0f} s")
    if bench.failures:
        print(f"BENCH FAILED: {len(bench.failures)} problem(s):", file=sys.stderr)
        for failure in bench.failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print("bench OK (timings are reported, never asserted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
