"""Metrics, logs and traces of a real server: what an operator scrapes and reads.

The metrics endpoint is scraped over HTTP and parsed with prometheus_client's own parser, so
the names, labels and values are what Prometheus would store.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loyalty.v1 import expiry_pb2, wallet_pb2, wallet_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from loyalty_ledger import logs
from loyalty_ledger.clock import TestClock
from loyalty_ledger.ledger.reads import Reader
from loyalty_ledger.server import App
from loyalty_ledger.settings import Settings
from tests.helpers import credit, make_scheme, make_wallet, open_channel, rid, spend, ts

WALLET = "loyalty.v1.WalletService"
OFFER = "loyalty.v1.OfferService"
HEALTH = "grpc.health.v1.Health"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


async def scrape(port: int) -> Samples:
    """Every sample of http://127.0.0.1:port/metrics, keyed by name and labels."""
    text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def handled(samples: Samples, service: str, method: str, code: str, kind: str = "unary") -> float:
    found = value(
        samples,
        "grpc_server_handled_total",
        grpc_type=kind,
        grpc_service=service,
        grpc_method=method,
        grpc_code=code,
    )
    return found or 0.0


@pytest.fixture
def metrics_port(app: App) -> Iterator[int]:
    """The endpoint of the test server's own registry, on a free port."""
    port = app.metrics.serve("127.0.0.1", 0)
    yield port
    app.metrics.close()


# -- gRPC call metrics ------------------------------------------------------------------------


async def test_handled_total_and_latency_count_each_call_with_its_status_code(
    app: App, wallets, offers, metrics_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    await credit(wallets, wallet.wallet_id, 100)
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="wal_missing"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await credit(wallets, wallet.wallet_id, -5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as short:
        await spend(wallets, wallet.wallet_id, 1_000)
    assert short.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    async def explode(self: Reader, wallet_id: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Reader, "get_wallet", explode)
    with pytest.raises(grpc.aio.AioRpcError) as internal:
        await wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="wal_x"))
    assert internal.value.code() == grpc.StatusCode.INTERNAL

    samples = await scrape(metrics_port)
    assert handled(samples, OFFER, "CreateScheme", "OK") == 1
    assert handled(samples, WALLET, "CreateWallet", "OK") == 1
    assert handled(samples, WALLET, "Credit", "OK") == 1
    assert handled(samples, WALLET, "Credit", "INVALID_ARGUMENT") == 1
    assert handled(samples, WALLET, "GetWallet", "NOT_FOUND") == 2
    assert handled(samples, WALLET, "GetWallet", "INTERNAL") == 1
    assert handled(samples, WALLET, "GetWallet", "OK") == 0
    assert handled(samples, WALLET, "Spend", "FAILED_PRECONDITION") == 1
    labels = {"grpc_type": "unary", "grpc_service": WALLET, "grpc_method": "GetWallet"}
    assert value(samples, "grpc_server_handling_seconds_count", **labels) == 3
    assert value(samples, "grpc_server_started_total", **labels) == 3
    # go-grpc-prometheus buckets: a dashboard's le="0.005" ... le="10" series exist.
    assert value(samples, "grpc_server_handling_seconds_bucket", **labels, le="+Inf") == 3
    assert value(samples, "grpc_server_handling_seconds_bucket", **labels, le="0.005") is not None


async def test_calls_refused_by_authentication_are_counted_and_logged(
    app: App, metrics_port: int, log_stream: io.StringIO
) -> None:
    for key in (None, "forged-key-that-does-not-exist"):
        async with open_channel(f"127.0.0.1:{app.port}", key=key) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetBalance(wallet_pb2.GetBalanceRequest(wallet_id="wal_x"))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    samples = await scrape(metrics_port)
    assert handled(samples, WALLET, "GetBalance", "UNAUTHENTICATED") == 2
    ended = [line for line in _parse(log_stream) if line["message"] == "call ended"]
    assert [(line["method"], line["grpc_code"]) for line in ended] == [
        (f"/{WALLET}/GetBalance", "UNAUTHENTICATED")
    ] * 2


async def test_a_watch_stream_is_a_server_stream_and_counts_as_a_subscriber(
    app: App, wallets, metrics_port: int
) -> None:
    assert value(await scrape(metrics_port), "loyalty_watch_subscribers") == 0
    call = wallets.WatchExpirations(expiry_pb2.WatchExpirationsRequest(scheme_id="acme"))
    first = await asyncio.wait_for(call.read(), 10)  # a heartbeat: the stream is live
    assert first is not grpc.aio.EOF
    assert value(await scrape(metrics_port), "loyalty_watch_subscribers") == 1
    call.cancel()
    samples: Samples = {}
    for _ in range(100):
        samples = await scrape(metrics_port)
        if handled(samples, WALLET, "WatchExpirations", "CANCELLED", "server_stream"):
            break
        await asyncio.sleep(0.05)
    assert handled(samples, WALLET, "WatchExpirations", "CANCELLED", "server_stream") == 1
    assert value(samples, "loyalty_watch_subscribers") == 0
    with pytest.raises(grpc.aio.AioRpcError) as bad:  # refused before streaming anything
        async for _ in wallets.WatchExpirations(
            expiry_pb2.WatchExpirationsRequest(after_sequence=-1)
        ):
            pass
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    samples = await scrape(metrics_port)
    assert handled(samples, WALLET, "WatchExpirations", "INVALID_ARGUMENT", "server_stream") == 1


# -- ledger and run metrics -------------------------------------------------------------------


async def test_liability_and_open_lots_per_scheme_and_asset(
    app: App, wallets, offers, metrics_port: int
) -> None:
    await make_scheme(offers)
    await make_scheme(offers, "beta")
    one, two = await make_wallet(wallets), await make_wallet(wallets)
    await credit(wallets, one.wallet_id, 500)
    await credit(wallets, two.wallet_id, 300)
    await credit(wallets, one.wallet_id, 1_250, asset="EUR")
    await spend(wallets, one.wallet_id, 120)
    await spend(wallets, two.wallet_id, 300)  # that lot is used up: no longer open
    await wallets.AuthorizeHold(
        wallet_pb2.AuthorizeHoldRequest(
            request_id=rid("hold"),
            wallet_id=one.wallet_id,
            asset="EUR",
            amount=250,
            merchant_id="m-1",
        )
    )
    beta = await make_wallet(wallets, "beta")
    await credit(wallets, beta.wallet_id, 7)
    # No series before the first refresh: a zero would claim the liability is zero.
    before = await scrape(metrics_port)
    assert value(before, "loyalty_liability_minor", scheme_id="acme", asset="POINTS") is None
    await app.metrics.refresh_ledger(app.db)
    samples = await scrape(metrics_port)
    liability = {
        dict(labels)["scheme_id"] + "/" + dict(labels)["asset"]: amount
        for (name, labels), amount in samples.items()
        if name == "loyalty_liability_minor"
    }
    # Held value is still owed: EUR 1250 = 1000 available + 250 held.
    assert liability == {"acme/POINTS": 380, "acme/EUR": 1_250, "beta/POINTS": 7}
    assert value(samples, "loyalty_open_lots", scheme_id="acme", asset="POINTS") == 1
    assert value(samples, "loyalty_open_lots", scheme_id="acme", asset="EUR") == 1
    assert value(samples, "loyalty_ledger_gauges_refreshed_timestamp_seconds") > 0


async def test_runs_are_counted_by_kind_and_status_with_items_and_duration(
    app: App, wallets, offers, clock: TestClock, metrics_port: int
) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    for amount in (10, 20, 30):
        await credit(
            wallets, wallet.wallet_id, amount, expire_time=ts(clock.now() + timedelta(hours=1))
        )
    clock.advance(timedelta(hours=2))
    response = await wallets.RunExpiry(expiry_pb2.RunExpiryRequest(request_id=rid("run")))
    assert response.run.items_processed == 3
    await wallets.RunExpiry(expiry_pb2.RunExpiryRequest(request_id=rid("run")))  # nothing due
    samples = await scrape(metrics_port)
    assert value(samples, "loyalty_runs_total", kind="EXPIRY", status="SUCCEEDED") == 2
    assert value(samples, "loyalty_run_items_total", kind="EXPIRY") == 3
    assert value(samples, "loyalty_run_duration_seconds_count", kind="EXPIRY") == 2
    assert value(samples, "loyalty_runs_total", kind="EXPIRY", status="FAILED") is None


# -- the endpoint as configured -----------------------------------------------------------------


@pytest.fixture
async def metered(database_url: str, clock: TestClock) -> AsyncIterator[App]:
    """A server with the metrics endpoint on (a free port) and a fast gauge refresh."""
    settings = Settings(
        host="127.0.0.1",
        port=0,
        database_url=database_url,
        metrics=True,
        metrics_port=0,
        metrics_refresh_seconds=0.05,
    )
    server = App(settings, clock=clock)
    await server.start()
    await asyncio.wait_for(server.serving.wait(), 10)
    yield server
    await server.stop(0)


async def test_the_endpoint_serves_on_its_own_port_refreshes_and_closes_on_stop(
    metered: App,
) -> None:
    assert metered.metrics_port not in (0, metered.port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{metered.port}") as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    samples: Samples = {}
    for _ in range(100):  # the refresh task runs every 50 ms once SERVING
        samples = await scrape(metered.metrics_port)
        if value(samples, "loyalty_ledger_gauges_refreshed_timestamp_seconds"):
            break
        await asyncio.sleep(0.05)
    assert value(samples, "loyalty_ledger_gauges_refreshed_timestamp_seconds") > 0
    assert handled(samples, HEALTH, "Check", "OK") == 1
    await metered.stop(0)
    with pytest.raises(urllib.error.URLError):
        await scrape(metered.metrics_port)


async def test_metrics_off_opens_no_port(database_url: str) -> None:
    settings = Settings(host="127.0.0.1", port=0, database_url=database_url, metrics=False)
    server = App(settings)
    await server.start()
    try:
        assert server.metrics_port == 0
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "metrics"]
    finally:
        await server.stop(0)


async def test_a_taken_metrics_port_is_logged_and_calls_are_still_served(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(
            host="127.0.0.1", port=0, database_url=database_url, metrics=True, metrics_port=port
        )
        server = App(settings)
        await server.start()
        try:
            assert server.metrics_port == 0
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        finally:
            await server.stop(0)
    assert any(
        r.levelno == logging.WARNING and f"cannot listen on 127.0.0.1:{port}" in r.getMessage()
        for r in caplog.records
    )


def test_metrics_defaults_are_loopback_9464() -> None:
    # The defaults as declared: the suite's environment sets LOYALTY_METRICS_PORT=0.
    fields = Settings.model_fields
    defaults = (fields[name].default for name in ("metrics", "metrics_host", "metrics_port"))
    assert tuple(defaults) == (True, "127.0.0.1", 9464)


# -- logs -------------------------------------------------------------------------------------


def _parse(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Every line the server logs (DEBUG and up for loyalty_ledger), in JSON."""
    stream = io.StringIO()
    handler = logs.handler("json", stream)
    handler.setLevel(logging.DEBUG)
    root, ours = logging.getLogger(), logging.getLogger("loyalty_ledger")
    level = ours.level
    root.addHandler(handler)
    ours.setLevel(logging.DEBUG)
    yield stream
    ours.setLevel(level)
    root.removeHandler(handler)


async def test_json_lines_logged_during_a_call_carry_its_request_id_and_method(
    app: App, wallets, offers, clock: TestClock, log_stream: io.StringIO
) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    await credit(wallets, wallet.wallet_id, 10, expire_time=ts(clock.now() + timedelta(hours=1)))
    clock.advance(timedelta(hours=2))
    log_stream.truncate(0)
    log_stream.seek(0)
    run = await wallets.RunExpiry(expiry_pb2.RunExpiryRequest(request_id="obs-run-1"))
    with pytest.raises(grpc.aio.AioRpcError):
        await wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="wal_missing"))
    lines = _parse(log_stream)
    during_calls = [
        line
        for line in lines
        if line["logger"].startswith(("loyalty_ledger.api", "loyalty_ledger.jobs"))
    ]
    assert during_calls, lines
    for line in during_calls:
        assert line.get("request_id") and line.get("method"), line
    run_lines = [line for line in lines if line["logger"] == "loyalty_ledger.jobs.runner"]
    assert run_lines
    for line in run_lines:  # the run started by the call logs with the call's id too
        assert line["request_id"] == "obs-run-1"
        assert line["method"] == f"/{WALLET}/RunExpiry"
        assert line["run_id"] == run.run.run_id
        assert line["run_kind"] == "EXPIRY"
    ended = [line for line in lines if line["message"] == "call ended"]
    assert [(line["method"], line["grpc_code"], line["level"]) for line in ended] == [
        (f"/{WALLET}/RunExpiry", "OK", "DEBUG"),
        (f"/{WALLET}/GetWallet", "NOT_FOUND", "INFO"),
    ]
    assert ended[0]["request_id"] == "obs-run-1"
    # GetWallet has no request_id field: the server makes one up for the call.
    assert re.fullmatch(r"req_[0-9a-f]{16}", ended[1]["request_id"])
    assert isinstance(ended[1]["duration_ms"], float)
    for line in lines:
        assert set(line) >= {"time", "level", "logger", "message"}


async def test_an_internal_error_line_carries_the_call_and_the_stack(
    app: App, wallets, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(self: Reader, wallet_id: str) -> None:
        raise RuntimeError("boom in get_wallet")

    monkeypatch.setattr(Reader, "get_wallet", explode)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="wal_x"))
    incident = re.search(r"incident (\w+)", caught.value.details() or "")
    assert incident
    (line,) = [line for line in _parse(log_stream) if incident.group(1) in line["message"]]
    assert line["level"] == "ERROR"
    assert line["method"] == f"/{WALLET}/GetWallet"
    assert line["request_id"].startswith("req_")
    assert "boom in get_wallet" in line["exc_info"]


def test_text_format_appends_the_context_and_json_leaves_unset_fields_out() -> None:
    record = logging.LogRecord(
        "loyalty_ledger.x", logging.INFO, __file__, 1, "hello %s", ("you",), None
    )
    filt = logs.ContextFilter()
    token = logs.request_id_var.set("r-1")
    try:
        filt.filter(record)
    finally:
        logs.request_id_var.reset(token)
    text = logs.TextFormatter().format(record)
    assert text.endswith("INFO loyalty_ledger.x hello you request_id=r-1")
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["request_id"] == "r-1" and line["message"] == "hello you"
    assert "method" not in line and "run_id" not in line


def test_configure_writes_json_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        logs.configure("info", "json")
        assert len(root.handlers) == 1
        logging.getLogger("loyalty_ledger.test").info("ready", extra={"port": 1})
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)
    (line,) = capsys.readouterr().err.splitlines()
    parsed = json.loads(line)
    assert (parsed["message"], parsed["port"], parsed["level"]) == ("ready", 1, "INFO")


# -- tracing ----------------------------------------------------------------------------------


async def test_otel_makes_a_server_span_per_call_and_logs_carry_its_trace_id(
    database_url: str, monkeypatch: pytest.MonkeyPatch, log_stream: io.StringIO
) -> None:
    pytest.importorskip("opentelemetry.instrumentation.grpc")
    from grpc_health.v1.health import aio as health_aio
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    original = health_aio.HealthServicer.Check

    async def logged_check(self, request, context):  # type: ignore[no-untyped-def]
        logging.getLogger("loyalty_ledger.test").info("checking %r", request.service)
        return await original(self, request, context)

    monkeypatch.setattr(health_aio.HealthServicer, "Check", logged_check)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")  # only the in-memory exporter below
    settings = Settings(
        host="127.0.0.1", port=0, database_url=database_url, metrics=False, otel=True
    )
    server = App(settings)
    assert server.tracing is not None
    exporter = InMemorySpanExporter()
    server.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest())
            with pytest.raises(grpc.aio.AioRpcError):
                await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    finally:
        await server.stop(0)
    spans = [span for span in exporter.get_finished_spans() if span.name.endswith("Health/Check")]
    assert len(spans) == 2
    assert {span.kind for span in spans} == {SpanKind.SERVER}
    codes = sorted(span.attributes["rpc.grpc.status_code"] for span in spans)
    assert codes == [grpc.StatusCode.OK.value[0], grpc.StatusCode.NOT_FOUND.value[0]]
    checking = [line for line in _parse(log_stream) if line["message"].startswith("checking")]
    assert sorted(line["trace_id"] for line in checking) == sorted(
        f"{span.context.trace_id:032x}" for span in spans
    )


def test_otel_is_off_by_default() -> None:
    assert Settings.model_fields["otel"].default is False
