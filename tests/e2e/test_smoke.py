"""The happy path through a real server, on both backends."""

from __future__ import annotations

from loyalty.v1 import wallet_pb2

from tests.helpers import balance, credit, make_scheme, make_wallet, spend


async def test_credit_spend_balance(offers, wallets) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets)
    await credit(wallets, wallet.wallet_id, 100)
    response = await spend(wallets, wallet.wallet_id, 30)
    assert response.amount_spent == 30
    assert response.transaction.type == wallet_pb2.TRANSACTION_TYPE_SPEND
    assert (await balance(wallets, wallet.wallet_id)).available == 70
