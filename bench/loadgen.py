"""The load generator: one grpc.aio client per worker process, driven by asyncio.

Every function named `*_task` here runs inside a worker process (multiprocessing, spawn) and
returns a plain dict that the harness merges. Workers of one scenario share absolute wall-clock
instants: they warm up from `start_at`, record from `start_at + warmup` until
`start_at + warmup + duration`, so the harness can sample the server's CPU over exactly the
window the latencies come from.

Closed loop (`load_task` without `rate`): `concurrency` coroutines each send the next request
as soon as the previous one answers: the rate is whatever the server sustains.
Open loop (`load_task` with `rate`): requests are sent on a fixed schedule whatever the
answers do, and each latency is counted from the instant the request was *due*, so a stalled
server shows up in the percentiles instead of slowing the clients down (no coordinated
omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loyalty.v1 import (
    common_pb2,
    expiry_pb2,
    offer_pb2,
    offer_pb2_grpc,
    rewards_pb2,
    wallet_pb2,
    wallet_pb2_grpc,
)

CALL_TIMEOUT_S = 30.0
OPEN_LOOP_IN_FLIGHT_MAX = 2_000
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]

SCHEME_ID = "bench"
SPONSOR = "shop-1"
SEED_CREDIT = 1_000_000_000  # points each seeded wallet starts with: spends never run dry
AWARD_POINTS = 10
SPEND_POINTS = 5


def metadata(admin_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {admin_key}"),) if admin_key else ()


def error_name(error: grpc.RpcError) -> str:
    code = error.code()  # type: ignore[attr-defined]
    return code.name if code is not None else "UNKNOWN"


class Client:
    """Stubs on one channel, with the call metadata every call carries."""

    def __init__(self, target: str, admin_key: str) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.md = metadata(admin_key)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.wallets = wallet_pb2_grpc.WalletServiceStub(self.channel)
        self.offers = offer_pb2_grpc.OfferServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


# -- operations: each returns how many items it did (1, or the awards of a batch) ----------------

Op = Callable[[int], Awaitable[int]]


def make_op(client: Client, kind: str, params: dict[str, Any], prefix: str) -> Op:
    md, t = client.md, CALL_TIMEOUT_S
    wallets: list[str] = params.get("wallets", [])
    rng = random.Random(prefix)

    async def echo(_: int) -> int:
        await client.health.Check(health_pb2.HealthCheckRequest(), metadata=md, timeout=t)
        return 1

    async def award(n: int, wallet_id: str) -> int:
        await client.wallets.Credit(
            wallet_pb2.CreditRequest(
                request_id=f"{prefix}-{n}",
                wallet_id=wallet_id,
                kind=wallet_pb2.CREDIT_KIND_AWARD,
                asset="POINTS",
                amount=AWARD_POINTS,
                funding=common_pb2.FUNDING_PROMOTIONAL,
                sponsor_id=SPONSOR,
                expiry_policy=common_pb2.ExpiryPolicy(
                    after=common_pb2.ExpireAfter(count=6, unit=common_pb2.DURATION_UNIT_MONTHS)
                ),
            ),
            metadata=md,
            timeout=t,
        )
        return 1

    async def spend(n: int, wallet_id: str) -> int:
        await client.wallets.Spend(
            wallet_pb2.SpendRequest(
                request_id=f"{prefix}-{n}",
                wallet_id=wallet_id,
                asset="POINTS",
                amount=SPEND_POINTS,
                merchant_id=SPONSOR,
            ),
            metadata=md,
            timeout=t,
        )
        return 1

    async def mix(n: int) -> int:
        wallet_id = wallets[rng.randrange(len(wallets))]
        if rng.random() < params.get("award_share", 0.5):
            return await award(n, wallet_id)
        return await spend(n, wallet_id)

    async def spend_hot(n: int) -> int:
        return await spend(n, wallets[0])

    batch_size = int(params.get("batch", 500))

    async def bulk(n: int) -> int:
        occur = Timestamp()
        occur.GetCurrentTime()
        events = [
            offer_pb2.SubmitEventRequest(
                request_id=f"{prefix}-{n}-{i}",
                wallet_id=wallets[rng.randrange(len(wallets))],
                event=rewards_pb2.CustomerEvent(
                    type=rewards_pb2.CUSTOMER_EVENT_TYPE_PURCHASE,
                    occur_time=occur,
                    merchant_id=SPONSOR,
                    amount=2_000,
                    currency="EUR",
                ),
            )
            for i in range(batch_size)
        ]
        response = await client.offers.SubmitEvents(
            offer_pb2.SubmitEventsRequest(events=events), metadata=md, timeout=t * 4
        )
        awarded = 0
        for result in response.results:
            if result.WhichOneof("result") == "response":
                awarded += len(result.response.awards)
            else:
                raise RuntimeError(f"event refused: {result.error.reason} {result.error.message}")
        return awarded

    ops: dict[str, Op] = {"echo": echo, "mix": mix, "spend_hot": spend_hot, "bulk": bulk}
    return ops[kind]


# -- timed load ----------------------------------------------------------------------------------


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    client = Client(spec["target"], spec["admin_key"])
    op = make_op(client, spec["op"], spec.get("params", {}), spec["prefix"])
    start_at: float = spec["start_at"]
    record_from = start_at + spec["warmup"]
    stop_at = record_from + spec["duration"]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    ops_done = 0
    items_done = 0
    counter = iter(range(10**12))
    # drain: calls that start in the window count even if they end after it (long batches);
    # the rate is then taken up to the last end.
    drain = bool(spec.get("drain"))
    last_end = 0.0

    async def one(due: float) -> None:
        nonlocal ops_done, items_done
        n = next(counter)
        try:
            items = await op(n)
        except grpc.RpcError as error:
            if due >= record_from:
                errors[error_name(error)] += 1
            return
        except RuntimeError as error:
            errors[str(error)[:80]] += 1
            return
        end = time.time()
        if record_from <= due and (end <= stop_at or drain):
            latencies.append(end - due)
            ops_done += 1
            items_done += items
            nonlocal last_end
            last_end = max(last_end, end)

    await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu0 = time.process_time()
    rate = spec.get("rate")
    if not rate:

        async def loop() -> None:
            while (now := time.time()) < stop_at:
                await one(now)

        await asyncio.gather(*(loop() for _ in range(spec["concurrency"])))
    else:
        # Open loop: request k is due at start_at + k / rate; offsets spread the processes.
        interval = 1.0 / rate
        due = start_at + random.random() * interval
        in_flight: set[asyncio.Task[None]] = set()
        while due < stop_at:
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= OPEN_LOOP_IN_FLIGHT_MAX:
                errors["CLIENT_BACKLOG"] += 1  # the server is hopelessly behind
            else:
                task = asyncio.create_task(one(due))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            due += interval
        if in_flight:
            await asyncio.wait(in_flight, timeout=CALL_TIMEOUT_S)
    cpu = time.process_time() - cpu0
    await client.close()
    return {
        "latencies": latencies,
        "ops": ops_done,
        "items": items_done,
        "errors": dict(errors),
        "client_cpu_s": cpu,
        "last_end": last_end,
    }


def load_task(spec: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_load(spec))


# -- seeding: wallets with a large promotional lot ----------------------------------------------


async def _seed(spec: dict[str, Any]) -> dict[str, Any]:
    client = Client(spec["target"], spec["admin_key"])
    md, t = client.md, CALL_TIMEOUT_S
    indices: list[int] = spec["indices"]
    credit_amount: int = spec.get("credit", SEED_CREDIT)
    lots_per_wallet: int = spec.get("lots_per_wallet", 1)
    out: dict[int, tuple[str, list[str]]] = {}
    queue = list(indices)

    async def worker() -> None:
        while queue:
            i = queue.pop()
            run = spec["prefix"]
            wallet = (
                await client.wallets.CreateWallet(
                    wallet_pb2.CreateWalletRequest(
                        request_id=f"{run}-w{i}", scheme_id=SCHEME_ID, customer_ref=f"{run}-c{i}"
                    ),
                    metadata=md,
                    timeout=t,
                )
            ).wallet
            lots = []
            for k in range(lots_per_wallet):
                credit = await client.wallets.Credit(
                    wallet_pb2.CreditRequest(
                        request_id=f"{run}-c{i}-{k}",
                        wallet_id=wallet.wallet_id,
                        kind=wallet_pb2.CREDIT_KIND_AWARD,
                        asset="POINTS",
                        amount=credit_amount,
                        funding=common_pb2.FUNDING_PROMOTIONAL,
                        sponsor_id=SPONSOR,
                    ),
                    metadata=md,
                    timeout=t,
                )
                lots.append(credit.lot.lot_id)
            out[i] = (wallet.wallet_id, lots)

    await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
    await client.close()
    return {"wallets": out}


def seed_task(spec: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_seed(spec))


# -- (f) WatchExpirations subscribers -----------------------------------------------------------


async def _subscribe(spec: dict[str, Any], ready: Any, stop: Any) -> dict[str, Any]:
    """Open `streams` WatchExpirations streams; record when each EXPIRED event arrives.

    A stream counts as ready once it delivered its first event (the harness sends probe
    events until every stream is ready). Returns, per stream, {lot_id: arrival time}.
    """
    client = Client(spec["target"], spec["admin_key"])
    filters: list[list[str]] = spec["filters"]  # per stream: the wallet ids it watches
    arrivals: list[dict[str, float]] = [{} for _ in filters]
    errors: Counter[str] = Counter()

    async def stream(index: int) -> None:
        seen = arrivals[index]
        call = client.wallets.WatchExpirations(
            expiry_pb2.WatchExpirationsRequest(
                scheme_id=SCHEME_ID,
                wallet_ids=filters[index],
                event_types=[expiry_pb2.EXPIRATION_EVENT_TYPE_EXPIRED],
                from_now=True,
                max_events_per_message=spec.get("events_per_message", 1),
            ),
            metadata=client.md,
        )
        first = True
        try:
            async for message in call:
                kind = message.WhichOneof("message")
                if kind == "event":
                    events = [message.event]
                elif kind == "events":  # max_events_per_message above 1
                    events = list(message.events.events)
                else:
                    continue
                arrived = time.time()
                for event in events:
                    seen.setdefault(event.lot_id, arrived)
                if first:
                    first = False
                    with ready.get_lock():
                        ready.value += 1
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                errors[error_name(error)] += 1
        except asyncio.CancelledError:
            call.cancel()

    tasks = [asyncio.create_task(stream(i)) for i in range(len(filters))]
    cpu_samples: list[tuple[float, float]] = []  # (wall time, process CPU): CPU over a window
    while not stop.is_set():
        cpu_samples.append((time.time(), time.process_time()))
        await asyncio.sleep(0.05)
    cpu = time.process_time()
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    return {
        "index": spec["index"],  # which of the harness's processes: its share of the filters
        "arrivals": arrivals,
        "errors": dict(errors),
        "client_cpu_s": cpu,
        "cpu_samples": cpu_samples,
    }


def subscribe_process(spec: dict[str, Any], ready: Any, stop: Any, results: Any) -> None:
    results.put(asyncio.run(_subscribe(spec, ready, stop)))
