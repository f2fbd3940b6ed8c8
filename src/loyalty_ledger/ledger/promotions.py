"""Promotion codes: batches of codes that credit an expiring promotional lot when redeemed.

A redemption locks the wallet and the code's row (PostgreSQL; SQLite has one writer), checks
the batch's window and limits, credits the lot and counts the redemption. The counts carry
their limits, so CHECK constraints refuse an extra redemption even if a check were missed.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.exc import IntegrityError

from loyalty_ledger.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from loyalty_ledger.domain.expiry import ExpiryPolicy, policy_from_dict, policy_to_dict
from loyalty_ledger.domain.spend_order import Funding
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.engine import OPERATOR_SPONSOR, CreditCommand, Tx
from loyalty_ledger.ledger.ids import new_id
from loyalty_ledger.ledger.records import LotRecord, TransactionRecord, TxType

# No look-alikes (0/O, 1/I/L): customers type these.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
GENERATED_CODE_CHARS = 12


@dataclass(frozen=True)
class BatchSpec:
    name: str
    asset: str
    amount: int
    sponsor_id: str
    expiry_policy: ExpiryPolicy | None
    max_per_code: int
    max_per_wallet: int
    valid_from_us: int | None
    valid_until_us: int | None


@dataclass(frozen=True)
class BatchRecord:
    id: str
    scheme_id: str
    spec: BatchSpec
    created_at_us: int

    @classmethod
    def from_row(cls, row: Any) -> BatchRecord:
        policy = policy_from_dict(json.loads(row.expiry_policy)) if row.expiry_policy else None
        return cls(
            row.id,
            row.scheme_id,
            BatchSpec(
                row.name,
                row.asset,
                row.amount,
                row.sponsor_id,
                policy,
                row.max_per_code,
                row.max_per_wallet,
                row.valid_from_us,
                row.valid_until_us,
            ),
            row.created_at_us,
        )


def normalize(code: str) -> str:
    """Codes are compared without case or surrounding spaces."""
    return code.strip().upper()


def generate_codes(count: int) -> list[str]:
    return [
        "".join(secrets.choice(CODE_ALPHABET) for _ in range(GENERATED_CODE_CHARS))
        for _ in range(count)
    ]


async def create_batch(
    tx: Tx, scheme_id: str, spec: BatchSpec, codes: list[str]
) -> tuple[BatchRecord, list[str]]:
    """A batch and its codes; a code the scheme already has is ALREADY_EXISTS (CODE_EXISTS)."""
    scheme = await tx.get_scheme(scheme_id)
    if spec.asset not in scheme.assets:
        raise InvalidArgument.single("batch.asset", f"{spec.asset} is not an asset of {scheme.id}")
    batch = BatchRecord(new_id("pcb"), scheme.id, spec, tx.now_us)
    await tx.conn.execute(
        t.promotion_batches.insert().values(
            id=batch.id,
            scheme_id=scheme.id,
            name=spec.name,
            asset=spec.asset,
            amount=spec.amount,
            sponsor_id=spec.sponsor_id,
            expiry_policy=json.dumps(policy_to_dict(spec.expiry_policy))
            if spec.expiry_policy
            else None,
            max_per_code=spec.max_per_code,
            max_per_wallet=spec.max_per_wallet,
            valid_from_us=spec.valid_from_us,
            valid_until_us=spec.valid_until_us,
            created_at_us=tx.now_us,
        )
    )
    codes = [normalize(c) for c in codes]
    try:
        async with tx.conn.begin_nested():
            await tx.conn.execute(
                t.promotion_codes.insert(),
                [
                    {
                        "scheme_id": scheme.id,
                        "code": code,
                        "batch_id": batch.id,
                        "redemptions": 0,
                        "max_redemptions": spec.max_per_code,
                    }
                    for code in codes
                ],
            )
    except IntegrityError:
        raise AlreadyExists(
            f"scheme {scheme.id} already has one of these codes", reason="CODE_EXISTS"
        ) from None
    return batch, codes


async def redeem(
    tx: Tx, wallet_id: str, code: str
) -> tuple[BatchRecord, TransactionRecord, LotRecord]:
    """Credit the code's award to the wallet, within the batch's window and limits."""
    wallet = await tx.lock_active_wallet(wallet_id)
    code = normalize(code)
    codes, batches = t.promotion_codes, t.promotion_batches
    query = (
        select(codes.c.redemptions, batches)
        .join(batches, batches.c.id == codes.c.batch_id)
        .where(codes.c.scheme_id == wallet.scheme_id, codes.c.code == code)
    )
    if tx.conn.dialect.name == "postgresql":
        query = query.with_for_update(of=codes)
    row = (await tx.conn.execute(query)).first()
    if row is None:
        raise NotFound("promotion code", code)
    batch = BatchRecord.from_row(row)
    spec = batch.spec
    if spec.valid_from_us is not None and tx.now_us < spec.valid_from_us:
        raise FailedPrecondition(f"code {code} is not valid yet", reason="CODE_NOT_YET_VALID")
    if spec.valid_until_us is not None and tx.now_us >= spec.valid_until_us:
        raise FailedPrecondition(f"code {code} has expired", reason="CODE_EXPIRED")
    if row.redemptions >= spec.max_per_code:
        raise FailedPrecondition(f"code {code} has been used up", reason="CODE_USED_UP")
    mine = t.code_redemptions
    key = and_(
        mine.c.scheme_id == wallet.scheme_id, mine.c.code == code, mine.c.wallet_id == wallet.id
    )
    used = (await tx.conn.execute(select(mine.c.redemptions).where(key))).scalar()
    if (used or 0) >= spec.max_per_wallet:
        raise FailedPrecondition(
            f"wallet {wallet.id} has redeemed code {code} as often as it may",
            reason="CODE_ALREADY_REDEEMED",
        )
    txn, lot = await tx.credit(
        CreditCommand(
            wallet.id,
            TxType.AWARD,
            spec.asset,
            spec.amount,
            Funding.PROMOTIONAL,
            spec.sponsor_id or OPERATOR_SPONSOR,
            expire_at_us=None,
            expiry_policy=spec.expiry_policy,
            available_at_us=None,
            metadata={"promotion_code": code, "promotion_batch_id": batch.id},
        )
    )
    await tx.conn.execute(
        update(codes)
        .where(codes.c.scheme_id == wallet.scheme_id, codes.c.code == code)
        .values(redemptions=codes.c.redemptions + 1)
    )
    if used is None:
        await tx.conn.execute(
            mine.insert().values(
                scheme_id=wallet.scheme_id,
                code=code,
                wallet_id=wallet.id,
                redemptions=1,
                max_redemptions=spec.max_per_wallet,
            )
        )
    else:
        await tx.conn.execute(update(mine).where(key).values(redemptions=used + 1))
    return batch, txn, lot
