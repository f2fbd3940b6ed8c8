"""Calls that reach the server before it is ready (both backends).

`loyalty serve` listens before the database is migrated and the admin key is set up. A call
that comes in between must not be refused UNAUTHENTICATED for a key that merely does not
exist yet: it waits, briefly, for readiness and then runs, or ends UNAVAILABLE
`SERVER_STARTING`, which clients retry. Health and reflection answer all along.

Readiness is held back by a gate in front of `App.is_ready` (as if the database were being
migrated by another process); the database itself is migrated and has no keys yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loyalty.v1 import admin_pb2, admin_pb2_grpc, expiry_pb2, wallet_pb2_grpc

from loyalty_ledger import server as server_module
from loyalty_ledger.api.auth import AuthInterceptor
from loyalty_ledger.clock import TestClock
from loyalty_ledger.server import App
from tests.helpers import error_info, open_channel, rpc_error, server_settings

SHORT_WAIT_S = 0.5  # the readiness wait of the test server, instead of its 10 s


@dataclass
class Starting:
    app: App
    gate: asyncio.Event  # set: the database counts as migrated
    channel: grpc.aio.Channel
    auth: AuthInterceptor


@pytest.fixture
async def starting(
    database_url: str, clock: TestClock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Starting]:
    """A server that listens but is not ready until the test sets `gate`."""
    gate = asyncio.Event()
    really_ready = App.is_ready

    async def is_ready(self: App) -> bool:
        return gate.is_set() and await really_ready(self)

    monkeypatch.setattr(App, "is_ready", is_ready)
    monkeypatch.setattr(server_module, "READINESS_POLL_SECONDS", 0.05)
    settings = server_settings(database_url)
    app = App(settings, clock=clock)
    (auth,) = (i for i in app.interceptors if isinstance(i, AuthInterceptor))
    auth.ready_wait_seconds_max = SHORT_WAIT_S
    await app.start()
    try:
        async with open_channel(f"127.0.0.1:{app.port}") as channel:
            yield Starting(app, gate, channel, auth)
    finally:
        await app.stop(0)


async def _list_keys(channel: grpc.aio.Channel, deadline_s: float = 10) -> int:
    response = await admin_pb2_grpc.AdminServiceStub(channel).ListApiKeys(
        admin_pb2.ListApiKeysRequest(), timeout=deadline_s
    )
    return len(response.keys)


def _outcome(call: asyncio.Task[object]) -> str:
    """How a call that should still be waiting ended (retrieving its error)."""
    error = call.exception()
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name} {error.details()!r}"
    return repr(error) if error is not None else "OK"


async def _health(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=2
    )
    return response.status


async def test_a_call_before_ready_waits_and_then_succeeds(starting: Starting) -> None:
    starting.auth.ready_wait_seconds_max = 10.0  # long enough for the gate below
    call = asyncio.create_task(_list_keys(starting.channel))
    await asyncio.sleep(0.3)
    assert not call.done(), f"answered before readiness: {_outcome(call)}"
    assert not starting.app.serving.is_set()
    starting.gate.set()
    assert await asyncio.wait_for(call, 10) >= 1  # the configured admin key, now set up
    assert starting.app.serving.is_set()


async def test_a_stream_before_ready_waits_and_then_runs(starting: Starting) -> None:
    starting.auth.ready_wait_seconds_max = 10.0

    async def first_message() -> None:
        stream = wallet_pb2_grpc.WalletServiceStub(starting.channel).WatchExpirations(
            expiry_pb2.WatchExpirationsRequest(), timeout=10
        )
        async for _ in stream:  # a heartbeat within watch_heartbeat_seconds
            stream.cancel()
            return

    call = asyncio.create_task(first_message())
    await asyncio.sleep(0.3)
    assert not call.done(), f"answered before readiness: {_outcome(call)}"
    starting.gate.set()
    await asyncio.wait_for(call, 10)


def _assert_starting(error: grpc.aio.AioRpcError, waited_s: float) -> None:
    assert "server is starting" in (error.details() or ""), error.details()
    assert "retry" in (error.details() or ""), error.details()
    info = error_info(error)
    assert info.domain == "loyalty.v1"
    assert info.metadata["waited_seconds"] == f"{waited_s:g}"
    assert info.metadata["limit"] == "READY_WAIT_SECONDS_MAX"
    assert info.metadata["limit_seconds"] == f"{SHORT_WAIT_S:g}"


async def test_a_call_that_stays_unready_ends_unavailable_after_the_limit(
    starting: Starting,
) -> None:
    started = time.monotonic()
    error = await rpc_error(
        _list_keys(starting.channel), grpc.StatusCode.UNAVAILABLE, "SERVER_STARTING"
    )
    took_s = time.monotonic() - started
    assert SHORT_WAIT_S * 0.9 <= took_s < SHORT_WAIT_S + 2, took_s
    _assert_starting(error, SHORT_WAIT_S)


async def test_a_stream_that_stays_unready_ends_unavailable(starting: Starting) -> None:
    stream = wallet_pb2_grpc.WalletServiceStub(starting.channel).WatchExpirations(
        expiry_pb2.WatchExpirationsRequest(), timeout=10
    )

    async def drain() -> None:
        async for _ in stream:
            pass

    error = await rpc_error(drain(), grpc.StatusCode.UNAVAILABLE, "SERVER_STARTING")
    _assert_starting(error, SHORT_WAIT_S)


async def test_the_wait_ends_before_the_callers_deadline(starting: Starting) -> None:
    starting.auth.ready_wait_seconds_max = 10.0
    started = time.monotonic()
    # UNAVAILABLE with the reason, not DEADLINE_EXCEEDED: the server gives up just before.
    error = await rpc_error(
        _list_keys(starting.channel, deadline_s=1.0), grpc.StatusCode.UNAVAILABLE, "SERVER_STARTING"
    )
    assert time.monotonic() - started < 1.0
    assert float(error_info(error).metadata["waited_seconds"]) < 1.0


async def test_health_answers_while_calls_wait(starting: Starting) -> None:
    starting.auth.ready_wait_seconds_max = 10.0
    call = asyncio.create_task(_list_keys(starting.channel))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    assert await _health(starting.channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert time.monotonic() - started < 1.0
    assert not call.done(), f"the call must still wait, but: {_outcome(call)}"
    starting.gate.set()
    assert await asyncio.wait_for(call, 10) >= 1
    assert await _health(starting.channel) == health_pb2.HealthCheckResponse.SERVING
