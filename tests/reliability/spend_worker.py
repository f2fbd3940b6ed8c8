"""A client process for the spend race (test_spend_race.py); not a test module.

Usage: python -m tests.reliability.spend_worker <target>. For every stdin line
`<wallet_id> <amount> <count> <seed> <tag>` it fires `count` Spend calls at once (each after a
seeded jitter of 0-3 ms) and prints one line: the outcomes, `OK`, a reason, or a status code.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

import grpc
from google.rpc import error_details_pb2, status_pb2
from loyalty.v1 import wallet_pb2, wallet_pb2_grpc


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = status_pb2.Status()
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status.ParseFromString(value)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return f"{error.code().name}:{info.reason}"
    return f"{error.code().name}:{error.details()}".replace(" ", "_")


KEY = os.environ.get("LOYALTY_ADMIN_KEY")  # set when the test servers take an admin key
AUTH = (("authorization", f"Bearer {KEY}"),) if KEY else ()


async def burst(stub: wallet_pb2_grpc.WalletServiceStub, line: str) -> str:
    wallet_id, amount, count, seed, tag = line.split()
    rng = random.Random(f"{seed}-{tag}")

    async def one(i: int) -> str:
        await asyncio.sleep(rng.uniform(0, 0.003))
        try:
            await stub.Spend(
                wallet_pb2.SpendRequest(
                    request_id=f"race-{seed}-{tag}-{i}",
                    wallet_id=wallet_id,
                    asset="POINTS",
                    amount=int(amount),
                    merchant_id="m-1",
                ),
                timeout=60,
                metadata=AUTH,
            )
        except grpc.aio.AioRpcError as error:
            return _reason(error)
        return "OK"

    return " ".join(await asyncio.gather(*(one(i) for i in range(int(count)))))


async def main(target: str) -> None:
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        await channel.channel_ready()
        print("READY", flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            print(await burst(stub, line), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
