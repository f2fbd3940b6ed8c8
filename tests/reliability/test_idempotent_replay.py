"""Item 3: idempotent replay of every kind of mutating call.

For each mutating RPC below: one request_id sent 10 times in a row and then 10 times at once,
and a fresh request_id sent 10 times at once from the start (the first claims race). Every
response is byte-identical, and the whole database (every row of every table) is exactly what
it was after the first call. The same request_id with a different request is refused with
ALREADY_EXISTS / IDEMPOTENCY_KEY_REUSED and changes nothing. Extends
tests/e2e/test_idempotency.py, which covers Credit and Spend.

Scoping per caller: until API keys exist every gRPC caller shares the scope `anonymous`
(docs/api.md), so the per-caller test drives `Ledger.write_idempotent` with two scopes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from loyalty.v1 import offer_pb2, wallet_pb2
from sqlalchemy import select

from loyalty_ledger.ledger import tables as t
from tests.helpers import balance, credit, make_scheme, make_wallet, rid, rpc_error, spend
from tests.invariants import check_invariants

REPEATS = 10


async def database_digest(app: Any) -> dict[str, str]:
    """A digest of every row of every table, per table."""

    async def job(conn: Any) -> dict[str, str]:
        out = {}
        for table in t.metadata.sorted_tables:
            rows = sorted(repr(tuple(r)) for r in await conn.execute(select(table)))
            out[table.name] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
        return out

    return await app.db.read(job)


Case = Callable[[Any, Any, str], Awaitable[tuple[Callable[..., Any], Message, Message]]]


async def case_credit(offers: Any, wallets: Any, scheme: str) -> Any:
    wallet = (await make_wallet(wallets, scheme)).wallet_id
    request = wallet_pb2.CreditRequest(
        wallet_id=wallet,
        kind=wallet_pb2.CREDIT_KIND_AWARD,
        asset="POINTS",
        amount=50,
        funding=1,
        sponsor_id="m-1",
    )
    other = wallet_pb2.CreditRequest()
    other.CopyFrom(request)
    other.amount = 51
    return wallets.Credit, request, other


async def _wallet_with(wallets: Any, scheme: str, amount: int = 100) -> str:
    wallet = (await make_wallet(wallets, scheme)).wallet_id
    await credit(wallets, wallet, amount)
    return wallet


async def case_spend(offers: Any, wallets: Any, scheme: str) -> Any:
    wallet = await _wallet_with(wallets, scheme)
    request = wallet_pb2.SpendRequest(wallet_id=wallet, asset="POINTS", amount=7, merchant_id="m")
    return (
        wallets.Spend,
        request,
        wallet_pb2.SpendRequest(wallet_id=wallet, asset="POINTS", amount=8, merchant_id="m"),
    )


async def case_hold(offers: Any, wallets: Any, scheme: str) -> Any:
    wallet = await _wallet_with(wallets, scheme)
    make = lambda amount: wallet_pb2.AuthorizeHoldRequest(  # noqa: E731
        wallet_id=wallet, asset="POINTS", amount=amount, merchant_id="m"
    )
    return wallets.AuthorizeHold, make(9), make(10)


async def _hold(wallets: Any, scheme: str) -> str:
    wallet = await _wallet_with(wallets, scheme)
    response = await wallets.AuthorizeHold(
        wallet_pb2.AuthorizeHoldRequest(
            request_id=rid("hold"), wallet_id=wallet, asset="POINTS", amount=40, merchant_id="m"
        )
    )
    return response.hold.hold_id


async def case_capture(offers: Any, wallets: Any, scheme: str) -> Any:
    hold = await _hold(wallets, scheme)
    return (
        wallets.CaptureHold,
        wallet_pb2.CaptureHoldRequest(hold_id=hold, amount=15),
        wallet_pb2.CaptureHoldRequest(hold_id=hold, amount=16),
    )


async def case_void(offers: Any, wallets: Any, scheme: str) -> Any:
    hold, other = await _hold(wallets, scheme), await _hold(wallets, scheme)
    return (
        wallets.VoidHold,
        wallet_pb2.VoidHoldRequest(hold_id=hold),
        wallet_pb2.VoidHoldRequest(hold_id=other),
    )


async def case_refund(offers: Any, wallets: Any, scheme: str) -> Any:
    wallet = await _wallet_with(wallets, scheme)
    spent = await spend(wallets, wallet, 30)
    txn = spent.transaction.transaction_id
    return (
        wallets.RefundSpend,
        wallet_pb2.RefundSpendRequest(transaction_id=txn, amount=10),
        wallet_pb2.RefundSpendRequest(transaction_id=txn, amount=11),
    )


async def case_reverse(offers: Any, wallets: Any, scheme: str) -> Any:
    wallet = (await make_wallet(wallets, scheme)).wallet_id
    first = (await credit(wallets, wallet, 20)).transaction.transaction_id
    second = (await credit(wallets, wallet, 20)).transaction.transaction_id
    return (
        wallets.ReverseCredit,
        wallet_pb2.ReverseCreditRequest(transaction_id=first, reason="fraud"),
        wallet_pb2.ReverseCreditRequest(transaction_id=second, reason="fraud"),
    )


async def case_transfer(offers: Any, wallets: Any, scheme: str) -> Any:
    source = await _wallet_with(wallets, scheme)
    target = (await make_wallet(wallets, scheme)).wallet_id
    make = lambda amount: wallet_pb2.TransferRequest(  # noqa: E731
        from_wallet_id=source, to_wallet_id=target, asset="POINTS", amount=amount
    )
    return wallets.Transfer, make(12), make(13)


async def case_create_wallet(offers: Any, wallets: Any, scheme: str) -> Any:
    return (
        wallets.CreateWallet,
        wallet_pb2.CreateWalletRequest(scheme_id=scheme, customer_ref=rid("alice")),
        wallet_pb2.CreateWalletRequest(scheme_id=scheme, customer_ref=rid("bob")),
    )


async def case_freeze(offers: Any, wallets: Any, scheme: str) -> Any:
    wallet = (await make_wallet(wallets, scheme)).wallet_id
    return (
        wallets.FreezeWallet,
        wallet_pb2.FreezeWalletRequest(wallet_id=wallet, reason="review"),
        wallet_pb2.FreezeWalletRequest(wallet_id=wallet, reason="other"),
    )


async def case_expire_lot(offers: Any, wallets: Any, scheme: str) -> Any:
    wallet = (await make_wallet(wallets, scheme)).wallet_id
    lot = (await credit(wallets, wallet, 20)).lot.lot_id
    other = (await credit(wallets, wallet, 20)).lot.lot_id
    return (
        wallets.ExpireLot,
        wallet_pb2.ExpireLotRequest(lot_id=lot, reason="manual"),
        wallet_pb2.ExpireLotRequest(lot_id=other, reason="manual"),
    )


async def case_create_scheme(offers: Any, wallets: Any, scheme: str) -> Any:
    make = lambda name: offer_pb2.CreateSchemeRequest(  # noqa: E731
        scheme=offer_pb2.Scheme(
            scheme_id=rid(f"{scheme}-x"),
            name=name,
            assets=[offer_pb2.AssetDefinition(code="POINTS", scale=0)],
            timezone="UTC",
        )
    )
    return offers.CreateScheme, make("One"), make("Two")


CASES = [
    case_credit,
    case_spend,
    case_hold,
    case_capture,
    case_void,
    case_refund,
    case_reverse,
    case_transfer,
    case_create_wallet,
    case_freeze,
    case_expire_lot,
    case_create_scheme,
]


def _with_id(request: Message, request_id: str) -> Message:
    out = type(request)()
    out.CopyFrom(request)
    out.request_id = request_id  # type: ignore[attr-defined]
    return out


async def test_replays_answer_identically_and_change_nothing(app, offers, wallets) -> None:
    scheme = "acme"
    await make_scheme(offers, scheme_id=scheme)
    for case in CASES:
        name = case.__name__
        method, request, different = await case(offers, wallets, scheme)

        # One id: 10 in a row, then 10 at once.
        in_a_row = _with_id(request, rid("row"))
        before = await database_digest(app)
        first = await method(in_a_row)
        after_first = await database_digest(app)
        assert after_first != before, f"{name}: the first call must have an effect"
        answers = [first]
        for _ in range(REPEATS - 1):
            answers.append(await method(in_a_row))
        answers += await asyncio.gather(*(method(in_a_row) for _ in range(REPEATS)))
        assert {a.SerializeToString(deterministic=True) for a in answers} == {
            first.SerializeToString(deterministic=True)
        }, name
        assert await database_digest(app) == after_first, name

        # The same id for a different request: refused, nothing changes.
        await rpc_error(
            method(_with_id(different, in_a_row.request_id)),  # type: ignore[attr-defined]
            grpc.StatusCode.ALREADY_EXISTS,
            "IDEMPOTENCY_KEY_REUSED",
        )
        assert await database_digest(app) == after_first, name

        # A fresh id sent 10 times at once from the start: the first claims race.
        at_once = _with_id(different if name == "case_create_wallet" else request, rid("once"))
        if name in ONE_SHOT:  # the first request already used up what it acts on
            method, at_once, _ = await case(offers, wallets, scheme)
            at_once = _with_id(at_once, rid("once"))
        answers = await asyncio.gather(*(method(at_once) for _ in range(REPEATS)))
        settled = await database_digest(app)
        assert settled != after_first, f"{name}: the first of the racing calls has an effect"
        answers += [await method(at_once) for _ in range(REPEATS)]
        assert len({a.SerializeToString(deterministic=True) for a in answers}) == 1, name
        assert await database_digest(app) == settled, name
    await app.db.read(check_invariants)


# Requests that cannot succeed twice (the hold is captured, the wallet frozen, ...): the
# racing part of the test builds a fresh target for them.
ONE_SHOT = {
    "case_capture",
    "case_void",
    "case_reverse",
    "case_freeze",
    "case_expire_lot",
    "case_create_scheme",
}


async def test_request_ids_are_scoped_per_caller(app, offers, wallets) -> None:
    """The same request_id from two callers is two requests; each caller replays its own."""
    from loyalty_ledger.domain.spend_order import Funding
    from loyalty_ledger.ledger.engine import CreditCommand, Tx
    from loyalty_ledger.ledger.records import TxType

    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id

    async def award(tx: Tx) -> bytes:
        txn, _lot = await tx.credit(
            CreditCommand(
                wallet, TxType.AWARD, "POINTS", 5, Funding.PROMOTIONAL, "m1", None, None, None
            )
        )
        return txn.id.encode()

    async def call(scope: str) -> bytes:
        return await app.ledger.write_idempotent(
            scope=scope, method="Credit", request_id="shared-id", request_bytes=b"r", fn=award
        )

    a, b = await asyncio.gather(call("merchant-a"), call("merchant-b"))
    assert a != b  # two transactions
    assert await call("merchant-a") == a
    assert await call("merchant-b") == b
    assert (await balance(wallets, wallet)).available == 10
    await app.db.read(check_invariants)
