"""TestClockService: only on a server started with --clock=test."""

from __future__ import annotations

from datetime import timedelta
from typing import TypeAlias

import grpc
from loyalty.v1 import clock_pb2, clock_pb2_grpc

from loyalty_ledger.api import convert
from loyalty_ledger.api.errors import rpc_errors
from loyalty_ledger.api.validation import Checks
from loyalty_ledger.clock import TestClock
from loyalty_ledger.jobs.runner import Runner

Ctx: TypeAlias = grpc.aio.ServicerContext  # type: ignore[type-arg]
ADVANCE_SECONDS_MAX = 3660 * 24 * 3600


class TestClockServicer(clock_pb2_grpc.TestClockServiceServicer):
    __test__ = False  # not a pytest test class

    def __init__(self, clock: TestClock, runner: Runner) -> None:
        self.clock = clock
        self.runner = runner

    @rpc_errors
    async def GetTime(
        self, request: clock_pb2.GetTimeRequest, context: Ctx
    ) -> clock_pb2.GetTimeResponse:
        return clock_pb2.GetTimeResponse(now=convert.timestamp(self.clock.now_us()))

    @rpc_errors
    async def AdvanceTime(
        self, request: clock_pb2.AdvanceTimeRequest, context: Ctx
    ) -> clock_pb2.AdvanceTimeResponse:
        checks = Checks()
        by_us = checks.duration_us("by", request.by, low=0, high=ADVANCE_SECONDS_MAX)
        if by_us == 0:
            checks.fail("by", "must be more than 0")
        checks.done()
        assert by_us is not None
        self.clock.advance(timedelta(microseconds=by_us))
        # What became due fires now, before the call returns: tests and demos see it at once.
        await self.runner.run_all_due(self.clock.now_us(), "clock")
        return clock_pb2.AdvanceTimeResponse(now=convert.timestamp(self.clock.now_us()))
