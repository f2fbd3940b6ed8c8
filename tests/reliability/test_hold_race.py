"""Item 2: capture, void and TTL expiry of one hold at once, many times.

Each round authorizes a hold with a 10-second TTL, then starts three things at once, in a
seeded random order with jitter: CaptureHold (all of it), VoidHold, and the end of the TTL (the
test clock moves to the hold's expiry and a hold-timeout run starts through RunExpiry).
Whatever wins, the hold ends in exactly one terminal state that agrees with what the callers
were told:
- CAPTURED: the capture succeeded, before the TTL ended, and the void was refused;
- VOIDED: the void succeeded and the capture was refused;
- EXPIRED: the capture was refused (released by the run or by a void after the TTL).
A capture attempted after expiry always fails. The wallet's available balance is what was
credited minus what was captured, it never reads negative, and no value stays held.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from loyalty.v1 import clock_pb2, clock_pb2_grpc, expiry_pb2, wallet_pb2

from tests.helpers import balance, credit, error_info, make_scheme, make_wallet, rid
from tests.invariants import check_invariants
from tests.reliability.support import size

ROUNDS = size(ci=12, soak=100)
HOLD = 10
TTL_S = 10
HS = wallet_pb2.HoldStatus


async def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "OK", await call
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        return error_info(error).reason, None


async def _later(delay: float, make: Any) -> tuple[str, Any]:
    await asyncio.sleep(delay)
    return await _outcome(make())


async def _lapse(app: Any, wallets: Any) -> Any:
    """The TTL ends: the clock reaches the hold's expiry and the hold-timeout run starts."""
    app.clock.advance(timedelta(seconds=TTL_S))
    return await wallets.RunExpiry(
        expiry_pb2.RunExpiryRequest(request_id=rid("lapse"), kind=expiry_pb2.RUN_KIND_HOLD_TIMEOUT)
    )


async def test_capture_void_and_ttl_race_one_terminal_state(app, offers, wallets) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    funded = HOLD * ROUNDS
    await credit(wallets, wallet, funded)
    rng = random.Random(2)
    captured = 0
    finals: dict[int, int] = {}
    for _ in range(ROUNDS):
        hold = (
            await wallets.AuthorizeHold(
                wallet_pb2.AuthorizeHoldRequest(
                    request_id=rid("hold"),
                    wallet_id=wallet,
                    asset="POINTS",
                    amount=HOLD,
                    merchant_id="m-1",
                    ttl=Duration(seconds=TTL_S),
                )
            )
        ).hold
        jitter = [rng.uniform(0, 0.004) for _ in range(3)]
        (cap, cap_resp), (void, _), (adv, _) = await asyncio.gather(
            _later(
                jitter[0],
                lambda h=hold.hold_id: wallets.CaptureHold(
                    wallet_pb2.CaptureHoldRequest(request_id=rid("cap"), hold_id=h)
                ),
            ),
            _later(
                jitter[1],
                lambda h=hold.hold_id: wallets.VoidHold(
                    wallet_pb2.VoidHoldRequest(request_id=rid("void"), hold_id=h)
                ),
            ),
            _later(jitter[2], lambda: _lapse(app, wallets)),
        )
        assert adv == "OK"
        state = (await wallets.GetHold(wallet_pb2.GetHoldRequest(hold_id=hold.hold_id))).hold.status
        finals[state] = finals.get(state, 0) + 1
        if state == HS.HOLD_STATUS_CAPTURED:
            assert cap == "OK" and void == "HOLD_NOT_ACTIVE", (cap, void)
            assert cap_resp.transaction.create_time.ToDatetime() < hold.expire_time.ToDatetime()
            captured += HOLD
        elif state == HS.HOLD_STATUS_VOIDED:
            assert void == "OK" and cap == "HOLD_NOT_ACTIVE", (cap, void)
        else:
            assert state == HS.HOLD_STATUS_EXPIRED, state
            assert cap in ("HOLD_EXPIRED", "HOLD_NOT_ACTIVE"), cap
            assert void in ("OK", "HOLD_NOT_ACTIVE"), void
        # A capture after expiry (and after any terminal state) fails.
        late, _ = await _outcome(
            wallets.CaptureHold(
                wallet_pb2.CaptureHoldRequest(request_id=rid("late"), hold_id=hold.hold_id)
            )
        )
        assert late in ("HOLD_NOT_ACTIVE", "HOLD_EXPIRED"), late
        now = await balance(wallets, wallet)
        assert now.held == 0
        assert now.available == funded - captured >= 0
    assert sum(finals.values()) == ROUNDS
    await app.db.read(check_invariants)


async def test_a_capture_after_the_ttl_fails_before_and_after_the_release(
    app, channel, offers, wallets
) -> None:
    clock = clock_pb2_grpc.TestClockServiceStub(channel)
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    await credit(wallets, wallet, 50)
    hold = await wallets.AuthorizeHold(
        wallet_pb2.AuthorizeHoldRequest(
            request_id=rid("hold"),
            wallet_id=wallet,
            asset="POINTS",
            amount=HOLD,
            merchant_id="m-1",
            ttl=Duration(seconds=TTL_S),
        )
    )
    app.clock.advance(timedelta(seconds=TTL_S))  # lapsed, not yet released by any run
    before, _ = await _outcome(
        wallets.CaptureHold(
            wallet_pb2.CaptureHoldRequest(request_id=rid("cap"), hold_id=hold.hold.hold_id)
        )
    )
    assert before == "HOLD_EXPIRED"
    assert (await balance(wallets, wallet)).available == 50
    await clock.AdvanceTime(clock_pb2.AdvanceTimeRequest(by=Duration(seconds=1)))
    after, _ = await _outcome(
        wallets.CaptureHold(
            wallet_pb2.CaptureHoldRequest(request_id=rid("cap"), hold_id=hold.hold.hold_id)
        )
    )
    assert after == "HOLD_NOT_ACTIVE"
    status = (await wallets.GetHold(wallet_pb2.GetHoldRequest(hold_id=hold.hold.hold_id))).hold
    assert status.status == HS.HOLD_STATUS_EXPIRED
    await app.db.read(check_invariants)
