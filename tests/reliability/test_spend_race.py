"""Item 1: 50 concurrent Spend(7) on a balance of 100 in one lot, from several client processes.

Extends tests/e2e/test_races.py (one process, one seed): here the calls come from PROCESSES
separate client processes, each seed splits the 50 calls differently between them and jitters
their start, and a reader polls the balance during the race. Per seed: exactly 14 succeed,
36 fail with INSUFFICIENT_FUNDS, the final balance is 2, no read ever sees a negative balance,
and nothing else (INTERNAL, UNAVAILABLE, ...) comes back.
"""

from __future__ import annotations

import asyncio
import random
import sys
from typing import Any

from tests.helpers import balance, credit, make_scheme, make_wallet
from tests.invariants import check_invariants
from tests.reliability.support import REPO, size

SEEDS = size(ci=2, soak=20)
PROCESSES = 4
SPENDS = 50
AMOUNT = 7
START = 100


async def _worker(target: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.reliability.spend_worker",
        target,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"READY"
    return proc


def _split(rng: random.Random) -> list[int]:
    """SPENDS calls over PROCESSES workers, at least one each, differently per seed."""
    cuts = sorted(rng.sample(range(1, SPENDS), PROCESSES - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, SPENDS], strict=True)]


async def _watch_balance(wallets: Any, wallet: str, seen: list[int], done: asyncio.Event) -> None:
    """Read the balance again and again while the race runs."""
    while not done.is_set():
        seen.append((await balance(wallets, wallet)).available)
        await asyncio.sleep(0)


async def test_fifty_spends_of_seven_from_several_processes_per_seed(app, offers, wallets) -> None:
    await make_scheme(offers)
    workers = await asyncio.gather(*(_worker(f"127.0.0.1:{app.port}") for _ in range(PROCESSES)))
    try:
        for seed in range(SEEDS):
            wallet = (await make_wallet(wallets)).wallet_id
            await credit(wallets, wallet, START)  # one lot
            shares = _split(random.Random(seed))
            for tag, (proc, share) in enumerate(zip(workers, shares, strict=True)):
                assert proc.stdin is not None
                proc.stdin.write(f"{wallet} {AMOUNT} {share} {seed} {tag}\n".encode())
                await proc.stdin.drain()

            seen: list[int] = []
            done = asyncio.Event()
            watcher = asyncio.create_task(_watch_balance(wallets, wallet, seen, done))
            lines = await asyncio.gather(
                *(asyncio.wait_for(p.stdout.readline(), 120) for p in workers)  # type: ignore[union-attr]
            )
            done.set()
            await watcher
            outcomes = [o for line in lines for o in line.decode().split()]
            expected_ok = START // AMOUNT
            assert len(outcomes) == SPENDS
            assert outcomes.count("OK") == expected_ok, (seed, outcomes)
            assert outcomes.count("FAILED_PRECONDITION:INSUFFICIENT_FUNDS") == SPENDS - expected_ok
            assert min(seen) >= 0, (seed, seen)
            assert (await balance(wallets, wallet)).available == START - expected_ok * AMOUNT
    finally:
        for proc in workers:
            assert proc.stdin is not None
            proc.stdin.close()
            await proc.wait()
    await app.db.read(check_invariants)
