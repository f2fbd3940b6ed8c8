"""Count the SQL statements and transactions each RPC costs: a figure that does not depend on
the machine's speed, and the first thing a profile of the write path points at.

    python bench/statement_count.py                      # SQLite file in a temporary folder
    python bench/statement_count.py --url postgresql+asyncpg://postgres@127.0.0.1/bench_x

Runs the server in this process (loyalty_ledger.server.App on a free port) so that a
SQLAlchemy event listener sees every statement, calls each RPC a few times through a real
grpc.aio channel, and prints the statements per call (the median of the calls after a warm-up
one). BEGIN/COMMIT are counted apart from the statements when the driver shows them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiosqlite.core
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.v1 import (
    common_pb2,
    expiry_pb2,
    offer_pb2,
    offer_pb2_grpc,
    rewards_pb2,
    wallet_pb2,
    wallet_pb2_grpc,
)
from sqlalchemy import event
from sqlalchemy.engine import Engine

from loyalty_ledger.ledger import migrate
from loyalty_ledger.server import App
from loyalty_ledger.settings import Settings

ADMIN_KEY = "bench-admin-key-0123456789"
CALLS = 5

statements: Counter[str] = Counter()


@event.listens_for(Engine, "before_cursor_execute")
def _count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    verb = statement.lstrip().split(None, 1)[0].upper()
    statements[verb] += 1


def _count_thread_hops() -> None:
    """SQLite: every aiosqlite call (execute, fetch, cursor close, commit...) is a round trip
    to the connection's own thread and back through the event loop; count them as "hops"."""
    original = aiosqlite.core.Connection._execute

    async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        statements["(aiosqlite thread hops)"] += 1
        return await original(self, fn, *args, **kwargs)

    aiosqlite.core.Connection._execute = counted  # type: ignore[method-assign]


_count_thread_hops()


def snapshot() -> Counter[str]:
    return Counter(statements)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="", help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.url or f"sqlite+aiosqlite:///{Path(folder) / 'count.db'}"
        await migrate.upgrade_async(url)
        fields: dict[str, Any] = {"database_url": url, "port": 0, "scheduler": False}
        if "admin_key" in Settings.model_fields:
            fields["admin_key"] = ADMIN_KEY
        if "metrics_port" in Settings.model_fields:
            fields["metrics_port"] = 0
        app = App(Settings(**fields))
        port = await app.start()
        while not await app.is_ready():  # noqa: ASYNC110 (polls the database)
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # readiness task flips health to SERVING
        md = (("authorization", f"Bearer {ADMIN_KEY}"),)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await run_calls(channel, md)
        finally:
            await app.stop(0)


async def run_calls(channel: grpc.aio.Channel, md: Any) -> None:
    offers = offer_pb2_grpc.OfferServiceStub(channel)
    wallets = wallet_pb2_grpc.WalletServiceStub(channel)
    run = f"{int(time.time())}"
    await offers.CreateScheme(
        offer_pb2.CreateSchemeRequest(
            request_id=f"{run}-scheme",
            scheme=offer_pb2.Scheme(
                scheme_id="count",
                name="Count",
                timezone="UTC",
                assets=[
                    offer_pb2.AssetDefinition(code="POINTS", scale=0),
                    offer_pb2.AssetDefinition(code="EUR", scale=2),
                ],
            ),
        ),
        metadata=md,
    )
    offer = (
        await offers.CreateOffer(
            offer_pb2.CreateOfferRequest(
                request_id=f"{run}-offer",
                offer=rewards_pb2.Offer(
                    scheme_id="count",
                    name="10 points",
                    asset="POINTS",
                    sponsor_id="shop-1",
                    rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=10)),
                ),
            ),
            metadata=md,
        )
    ).offer
    await offers.SetOfferStatus(
        offer_pb2.SetOfferStatusRequest(
            request_id=f"{run}-on", offer_id=offer.offer_id, status=rewards_pb2.OFFER_STATUS_ACTIVE
        ),
        metadata=md,
    )
    wallet_ids: list[str] = []
    lot_ids: list[str] = []
    n = iter(range(10**9))

    async def create_wallet() -> None:
        i = next(n)
        response = await wallets.CreateWallet(
            wallet_pb2.CreateWalletRequest(
                request_id=f"{run}-w{i}", scheme_id="count", customer_ref=f"c{i}"
            ),
            metadata=md,
        )
        wallet_ids.append(response.wallet.wallet_id)

    async def credit() -> None:
        response = await wallets.Credit(
            wallet_pb2.CreditRequest(
                request_id=f"{run}-c{next(n)}",
                wallet_id=wallet_ids[0],
                kind=wallet_pb2.CREDIT_KIND_AWARD,
                asset="POINTS",
                amount=100,
                funding=common_pb2.FUNDING_PROMOTIONAL,
                sponsor_id="shop-1",
                expiry_policy=common_pb2.ExpiryPolicy(
                    after=common_pb2.ExpireAfter(count=6, unit=common_pb2.DURATION_UNIT_MONTHS)
                ),
            ),
            metadata=md,
        )
        lot_ids.append(response.lot.lot_id)

    async def spend() -> None:
        await wallets.Spend(
            wallet_pb2.SpendRequest(
                request_id=f"{run}-s{next(n)}",
                wallet_id=wallet_ids[0],
                asset="POINTS",
                amount=5,
                merchant_id="shop-1",
            ),
            metadata=md,
        )

    async def balance() -> None:
        await wallets.GetBalance(wallet_pb2.GetBalanceRequest(wallet_id=wallet_ids[0]), metadata=md)

    def purchase() -> rewards_pb2.CustomerEvent:
        occur = Timestamp()
        occur.GetCurrentTime()
        return rewards_pb2.CustomerEvent(
            type=rewards_pb2.CUSTOMER_EVENT_TYPE_PURCHASE,
            occur_time=occur,
            merchant_id="shop-1",
            amount=2_000,
            currency="EUR",
        )

    async def submit_event() -> None:
        await offers.SubmitEvent(
            offer_pb2.SubmitEventRequest(
                request_id=f"{run}-e{next(n)}", wallet_id=wallet_ids[0], event=purchase()
            ),
            metadata=md,
        )

    async def submit_events_10() -> None:
        await offers.SubmitEvents(
            offer_pb2.SubmitEventsRequest(
                events=[
                    offer_pb2.SubmitEventRequest(
                        request_id=f"{run}-b{next(n)}", wallet_id=wallet_ids[0], event=purchase()
                    )
                    for _ in range(10)
                ]
            ),
            metadata=md,
        )

    async def expire_lot() -> None:
        await wallets.ExpireLot(
            wallet_pb2.ExpireLotRequest(request_id=f"{run}-x{next(n)}", lot_id=lot_ids.pop()),
            metadata=md,
        )

    async def run_expiry_empty() -> None:
        await wallets.RunExpiry(
            expiry_pb2.RunExpiryRequest(request_id=f"{run}-r{next(n)}"), metadata=md
        )

    calls = [
        ("CreateWallet", create_wallet),
        ("Credit (AWARD)", credit),
        ("Spend", spend),
        ("GetBalance", balance),
        ("SubmitEvent", submit_event),
        ("SubmitEvents x10", submit_events_10),
        ("ExpireLot", expire_lot),
        ("RunExpiry (nothing due)", run_expiry_empty),
    ]
    await create_wallet()
    for _ in range(CALLS + 1):
        await credit()
    print(f"{'RPC':<26} {'statements':>10}  by verb (median of {CALLS} calls after a warm-up)")
    for name, call in calls:
        totals: list[int] = []
        verbs: list[Counter[str]] = []
        for _ in range(CALLS + 1):
            before = snapshot()
            await call()
            await asyncio.sleep(0.05)  # let the hub's read after the commit land in this call
            diff = snapshot() - before
            totals.append(sum(diff.values()))
            verbs.append(diff)
        median = statistics.median(totals[1:])
        typical = verbs[1 + totals[1:].index(int(median))] if median in totals[1:] else verbs[-1]
        hops = typical.pop("(aiosqlite thread hops)", 0)
        by_verb = ", ".join(f"{k} {v}" for k, v in sorted(typical.items()))
        median -= hops
        print(f"{name:<26} {median:>10g}  {by_verb}" + (f"; thread hops {hops}" if hops else ""))


if __name__ == "__main__":
    asyncio.run(main())
