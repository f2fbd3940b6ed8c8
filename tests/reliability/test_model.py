"""Item 5: a model-based test (hypothesis RuleBasedStateMachine) of the real server.

Driven through gRPC: every example starts a real server (in this process, on its own event
loop thread) on a fresh database, and the rules call it with blocking stubs. The pure model
below (`Model`) knows the rules of docs/concepts.md: lots in spend order, holds, captures with
the rest released, voids, refunds in reverse spend order (value of an expired lot is expired
again under the default EXPIRE policy), transfers creating lots in the target wallet, a clock
that moves forward, and expiry runs that expire each due open lot once.

Rules: award, spend, hold, capture (all or part), void, refund (all or part), transfer, advance
the clock, run expiry. After every step (hypothesis @invariant):
- postings of every transaction sum to zero, lots and holds agree (tests/invariants.py);
- every lot's amount = remaining + spent + held + expired + reversed, and each part equals the
  model's;
- each wallet's GetBalance equals the model: available = remaining of open, available,
  unexpired lots; held = active holds; none negative;
and after every debit, the allocation the server reports (lot by lot) equals the model's: the
spend order matches.

Scope: holds get a 7-day TTL and an example advances the clock by at most 3 hours a step, so
holds never lapse here (TTL ends are item 2's subject, test_hold_race.py); no spend conditions.
Sizes: CI runs EXAMPLES examples of up to STEPS steps per backend, from a fresh random seed
each time (a failure prints the blob that replays it); `make soak` runs 500 x 50.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from loyalty.v1 import (
    common_pb2,
    expiry_pb2,
    offer_pb2,
    offer_pb2_grpc,
    wallet_pb2,
    wallet_pb2_grpc,
)
from sqlalchemy import select

from loyalty_ledger.clock import TestClock
from loyalty_ledger.ledger import tables as t
from tests.conftest import BACKENDS, START_TIME, _pg_admin, _pg_url
from tests.helpers import error_info
from tests.reliability.support import ThreadedServer, size

EXAMPLES = size(ci=5, soak=500, env="LOYALTY_MODEL_EXAMPLES")
STEPS = size(ci=30, soak=50)
HOUR_US = 3600 * 1_000_000
HOLD_TTL_S = 7 * 24 * 3600
PROMO, CASH = common_pb2.FUNDING_PROMOTIONAL, common_pb2.FUNDING_CASH


@dataclass
class Lot:
    id: str
    wallet: str
    amount: int
    expires_at: int | None
    funding: int
    created_at: int
    remaining: int
    spent: int = 0
    held: int = 0
    expired: int = 0
    reversed: int = 0
    state: str = "OPEN"

    def key(self) -> tuple[bool, int, int, int, str]:
        never = self.expires_at is None
        return (
            never,
            self.expires_at or 0,
            0 if self.funding == PROMO else 1,
            self.created_at,
            self.id,
        )

    def expired_at(self, now: int) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def settle(self) -> None:
        if self.state in ("OPEN", "EXHAUSTED"):
            self.state = "OPEN" if self.remaining + self.held > 0 else "EXHAUSTED"

    def parts(self) -> tuple[int, int, int, int, int]:
        return (self.remaining, self.spent, self.held, self.expired, self.reversed)


@dataclass
class Hold:
    id: str
    wallet: str
    amount: int
    allocations: dict[str, int]
    status: str = "ACTIVE"


@dataclass
class Model:
    now: int
    lots: dict[str, Lot] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    debits: dict[str, dict[str, int]] = field(default_factory=dict)  # spend/capture -> left

    def eligible(self, wallet: str) -> list[Lot]:
        return sorted(
            (
                lot
                for lot in self.lots.values()
                if lot.wallet == wallet and lot.remaining > 0 and not lot.expired_at(self.now)
            ),
            key=Lot.key,
        )

    def plan(self, wallet: str, amount: int) -> dict[str, int] | None:
        """Greedy allocation in spend order, or None when the eligible value is short."""
        lots = self.eligible(wallet)
        if sum(lot.remaining for lot in lots) < amount:
            return None
        out, left = {}, amount
        for lot in lots:
            take = min(left, lot.remaining)
            if take:
                out[lot.id] = take
                left -= take
        return out

    def release(self, lot: Lot, amount: int) -> None:
        lot.held -= amount
        lot.remaining += amount
        if lot.state == "EXPIRED":  # released into a lot an expiry closed: expired at once
            lot.remaining -= amount
            lot.expired += amount
        lot.settle()

    def available(self, wallet: str) -> int:
        return sum(
            lot.remaining
            for lot in self.lots.values()
            if lot.wallet == wallet and lot.state == "OPEN" and not lot.expired_at(self.now)
        )


def _allocations(txn: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in txn.allocations:
        out[a.lot_id] = out.get(a.lot_id, 0) + a.amount
    return out


class Backend:
    """Fresh databases for examples: a copy of the migrated SQLite file, or a PostgreSQL clone."""

    def __init__(self, kind: str, request: pytest.FixtureRequest, tmp: Path) -> None:
        self.kind = kind
        self.tmp = tmp
        self.template = request.getfixturevalue(
            "sqlite_template" if kind == "sqlite" else "pg_template"
        )

    def create(self) -> tuple[str, Callable[[], None]]:
        name = f"loyalty_m_{uuid.uuid4().hex[:12]}"
        if self.kind == "sqlite":
            path = self.tmp / f"{name}.db"
            shutil.copyfile(self.template, path)
            return f"sqlite+aiosqlite:///{path}", lambda: path.unlink(missing_ok=True)
        asyncio.run(_pg_admin(f"CREATE DATABASE {name} TEMPLATE {self.template}"))
        return _pg_url(name), lambda: asyncio.run(
            _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        )


BACKEND: Backend | None = None


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert BACKEND is not None
        self.url, self.drop = BACKEND.create()
        self.clock = TestClock(START_TIME)
        self.server = ThreadedServer(self.url, self.clock)
        self.stub = wallet_pb2_grpc.WalletServiceStub(self.server.channel)
        self.model = Model(now=self.clock.now_us())
        self.wallets: list[str] = []
        self.n = 0

    def teardown(self) -> None:
        self.server.close()
        self.drop()

    def rid(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.n}"

    def expect(self, call: Callable[[], Any], ok: bool, reason: str) -> Any:
        """Run a call the model says succeeds (ok) or fails with `reason`."""
        try:
            response = call()
        except grpc.RpcError as error:
            assert not ok, f"model expected success, got {error.code()}: {error.details()}"
            assert error_info(error).reason == reason, error.details()  # type: ignore[arg-type]
            return None
        assert ok, f"model expected {reason}, the server succeeded"
        return response

    @initialize()
    def scheme_and_wallets(self) -> None:
        offer_pb2_grpc.OfferServiceStub(self.server.channel).CreateScheme(
            offer_pb2.CreateSchemeRequest(
                request_id="model-scheme",
                scheme=offer_pb2.Scheme(
                    scheme_id="acme",
                    name="Acme",
                    assets=[offer_pb2.AssetDefinition(code="POINTS", scale=0)],
                    timezone="UTC",
                ),
            )
        )
        for ref in ("a", "b"):
            self.wallets.append(
                self.stub.CreateWallet(
                    wallet_pb2.CreateWalletRequest(
                        request_id=self.rid("w"), scheme_id="acme", customer_ref=ref
                    )
                ).wallet.wallet_id
            )

    # -- rules ---------------------------------------------------------------------------

    @rule(
        w=st.integers(0, 1),
        amount=st.integers(1, 50),
        hours=st.one_of(st.none(), st.integers(1, 72)),
        cash=st.booleans(),
    )
    def award(self, w: int, amount: int, hours: int | None, cash: bool) -> None:
        wallet = self.wallets[w]
        expires = None if hours is None or cash else self.model.now + hours * HOUR_US
        request = wallet_pb2.CreditRequest(
            request_id=self.rid("credit"),
            wallet_id=wallet,
            kind=wallet_pb2.CREDIT_KIND_TOP_UP if cash else wallet_pb2.CREDIT_KIND_AWARD,
            asset="POINTS",
            amount=amount,
            funding=CASH if cash else PROMO,
            sponsor_id="" if cash else "m-1",
        )
        if expires is not None:
            stamp = Timestamp()
            stamp.FromMicroseconds(expires)
            request.expire_time.CopyFrom(stamp)
        lot = self.stub.Credit(request).lot
        self.model.lots[lot.lot_id] = Lot(
            lot.lot_id, wallet, amount, expires, CASH if cash else PROMO, self.model.now, amount
        )

    @rule(w=st.integers(0, 1), amount=st.integers(1, 60))
    def spend(self, w: int, amount: int) -> None:
        wallet = self.wallets[w]
        plan = self.model.plan(wallet, amount)
        response = self.expect(
            lambda: self.stub.Spend(
                wallet_pb2.SpendRequest(
                    request_id=self.rid("spend"),
                    wallet_id=wallet,
                    asset="POINTS",
                    amount=amount,
                    merchant_id="m-1",
                )
            ),
            plan is not None,
            "INSUFFICIENT_FUNDS",
        )
        if plan is None:
            return
        assert _allocations(response.transaction) == plan, "spend order differs from the model"
        for lot_id, take in plan.items():
            lot = self.model.lots[lot_id]
            lot.remaining -= take
            lot.spent += take
            lot.settle()
        self.model.debits[response.transaction.transaction_id] = dict(plan)

    @rule(w=st.integers(0, 1), amount=st.integers(1, 40))
    def hold(self, w: int, amount: int) -> None:
        wallet = self.wallets[w]
        plan = self.model.plan(wallet, amount)
        response = self.expect(
            lambda: self.stub.AuthorizeHold(
                wallet_pb2.AuthorizeHoldRequest(
                    request_id=self.rid("hold"),
                    wallet_id=wallet,
                    asset="POINTS",
                    amount=amount,
                    merchant_id="m-1",
                    ttl=Duration(seconds=HOLD_TTL_S),
                )
            ),
            plan is not None,
            "INSUFFICIENT_FUNDS",
        )
        if plan is None:
            return
        assert _allocations(response.transaction) == plan, "hold order differs from the model"
        for lot_id, take in plan.items():
            lot = self.model.lots[lot_id]
            lot.remaining -= take
            lot.held += take
            lot.settle()
        self.model.holds[response.hold.hold_id] = Hold(
            response.hold.hold_id, wallet, amount, dict(plan)
        )

    @precondition(lambda self: self.model.holds)
    @rule(data=st.data())
    def capture(self, data: st.DataObject) -> None:
        hold = self.model.holds[data.draw(st.sampled_from(sorted(self.model.holds)))]
        part = data.draw(st.integers(0, hold.amount))  # 0 captures all
        response = self.expect(
            lambda: self.stub.CaptureHold(
                wallet_pb2.CaptureHoldRequest(
                    request_id=self.rid("cap"), hold_id=hold.id, amount=part
                )
            ),
            hold.status == "ACTIVE",
            "HOLD_NOT_ACTIVE",
        )
        if response is None:
            return
        amount = part or hold.amount
        lots = sorted((self.model.lots[i] for i in hold.allocations), key=Lot.key)
        taken, left = {}, amount
        for lot in lots:
            take = min(left, hold.allocations[lot.id])
            if take:
                lot.held -= take
                lot.spent += take
                hold.allocations[lot.id] -= take
                taken[lot.id] = take
                left -= take
                lot.settle()
        assert _allocations(response.transaction) == taken, "capture order differs"
        for lot_id, rest in hold.allocations.items():
            if rest:
                self.model.release(self.model.lots[lot_id], rest)
        hold.status = "CAPTURED"
        self.model.debits[response.transaction.transaction_id] = taken

    @precondition(lambda self: self.model.holds)
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        hold = self.model.holds[data.draw(st.sampled_from(sorted(self.model.holds)))]
        response = self.expect(
            lambda: self.stub.VoidHold(
                wallet_pb2.VoidHoldRequest(request_id=self.rid("void"), hold_id=hold.id)
            ),
            hold.status == "ACTIVE",
            "HOLD_NOT_ACTIVE",
        )
        if response is None:
            return
        for lot_id, rest in hold.allocations.items():
            if rest:
                self.model.release(self.model.lots[lot_id], rest)
        hold.status = "VOIDED"

    @precondition(lambda self: self.model.debits)
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        txn = data.draw(st.sampled_from(sorted(self.model.debits)))
        left_of = self.model.debits[txn]
        refundable = sum(left_of.values())
        amount = data.draw(st.integers(0, refundable + 2))  # 0 refunds the rest
        ok = refundable > 0 and amount <= refundable
        response = self.expect(
            lambda: self.stub.RefundSpend(
                wallet_pb2.RefundSpendRequest(
                    request_id=self.rid("refund"), transaction_id=txn, amount=amount
                )
            ),
            ok,
            "REFUND_EXCEEDS_SPEND",
        )
        if response is None:
            return
        left = amount or refundable
        for lot in sorted((self.model.lots[i] for i in left_of), key=Lot.key, reverse=True):
            take = min(left, left_of[lot.id])
            if take <= 0:
                continue
            left -= take
            left_of[lot.id] -= take
            lot.spent -= take
            if lot.state == "EXPIRED" or lot.expired_at(self.model.now):
                lot.expired += take  # the default EXPIRE policy: expired again at once
            else:
                lot.remaining += take
            lot.settle()
        assert response.amount_refunded == (amount or refundable)

    @rule(amount=st.integers(1, 40), forward=st.booleans())
    def transfer(self, amount: int, forward: bool) -> None:
        source, target = self.wallets if forward else self.wallets[::-1]
        plan = self.model.plan(source, amount)
        response = self.expect(
            lambda: self.stub.Transfer(
                wallet_pb2.TransferRequest(
                    request_id=self.rid("transfer"),
                    from_wallet_id=source,
                    to_wallet_id=target,
                    asset="POINTS",
                    amount=amount,
                )
            ),
            plan is not None,
            "INSUFFICIENT_FUNDS",
        )
        if plan is None:
            return
        assert _allocations(response.transaction) == plan, "transfer order differs"
        for lot_id, take in plan.items():
            lot = self.model.lots[lot_id]
            lot.remaining -= take
            lot.spent += take
            lot.settle()
        created = {lot.origin_lot_id: lot for lot in response.lots}
        assert set(created) == set(plan)
        for origin, new in created.items():
            source_lot = self.model.lots[origin]
            self.model.lots[new.lot_id] = Lot(
                new.lot_id,
                target,
                plan[origin],
                source_lot.expires_at,
                source_lot.funding,
                self.model.now,
                plan[origin],
            )

    @rule(minutes=st.integers(1, 180))
    def advance_clock(self, minutes: int) -> None:
        self.clock.advance(timedelta(minutes=minutes))
        self.model.now = self.clock.now_us()

    @rule()
    def run_expiry(self) -> None:
        run = self.stub.RunExpiry(
            expiry_pb2.RunExpiryRequest(request_id=self.rid("run"), kind=expiry_pb2.RUN_KIND_EXPIRY)
        ).run
        assert run.status == expiry_pb2.RUN_STATUS_SUCCEEDED
        due = [
            lot
            for lot in self.model.lots.values()
            if lot.state == "OPEN" and lot.expired_at(self.model.now)
        ]
        for lot in due:
            lot.expired += lot.remaining
            lot.remaining = 0
            lot.state = "EXPIRED"
        assert run.items_processed == len(due)

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def ledger_rules_hold(self) -> None:
        self.server.invariants()

    @invariant()
    def lots_match_the_model(self) -> None:
        async def read(conn: Any) -> dict[str, tuple[int, ...]]:
            rows = await conn.execute(select(t.lots))
            return {r.id: (r.remaining, r.spent, r.held, r.expired, r.reversed) for r in rows}

        stored = self.server.call(self.server.app.db.read(read))
        assert stored == {i: lot.parts() for i, lot in self.model.lots.items()}

    @invariant()
    def balances_match_the_model(self) -> None:
        for wallet in self.wallets:
            (b,) = self.stub.GetBalance(
                wallet_pb2.GetBalanceRequest(wallet_id=wallet, asset="POINTS")
            ).balances
            assert b.available >= 0 and b.held >= 0
            assert b.available == self.model.available(wallet), wallet
            assert b.held == sum(
                sum(h.allocations.values())
                for h in self.model.holds.values()
                if h.wallet == wallet and h.status == "ACTIVE"
            )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield Backend(request.param, request, tmp_path)


def test_the_ledger_behaves_like_its_model(backend: Backend) -> None:
    global BACKEND
    BACKEND = backend
    try:
        run_state_machine_as_test(
            LedgerMachine,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                database=None,
                print_blob=True,  # a failure prints the blob that replays it
                suppress_health_check=list(HealthCheck),
            ),
        )
    finally:
        BACKEND = None
