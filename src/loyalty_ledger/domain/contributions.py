"""Who funds an award: contribution shares resolved to parties and split into parts.

A share names the event's merchant, a named sponsor or the programme operator, with basis
points that add up to 10,000 across a list. The parts are each share of the amount rounded
down; what rounding leaves goes to the first share, so the parts always add up to the amount.
Shares that resolve to the same party are merged.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

OPERATOR = "operator"  # the programme operator as a party (also cash value's "sponsor")
BASIS_POINTS_WHOLE = 10_000


class ContributorKind(enum.StrEnum):
    EVENT_MERCHANT = "EVENT_MERCHANT"
    SPONSOR = "SPONSOR"
    OPERATOR = "OPERATOR"


@dataclass(frozen=True)
class Contribution:
    kind: ContributorKind
    sponsor_id: str  # for SPONSOR; "" otherwise
    basis_points: int


EVENT_MERCHANT_PAYS = (Contribution(ContributorKind.EVENT_MERCHANT, "", BASIS_POINTS_WHOLE),)


def party(contribution: Contribution, event_merchant: str) -> str:
    if contribution.kind is ContributorKind.SPONSOR:
        return contribution.sponsor_id
    if contribution.kind is ContributorKind.EVENT_MERCHANT and event_merchant:
        return event_merchant
    return OPERATOR


def split(
    amount: int, shares: Sequence[Contribution], event_merchant: str
) -> list[tuple[str, int]]:
    """(party, part) pairs in share order, parts > 0 adding up to `amount`."""
    assert amount >= 0 and shares
    assert sum(s.basis_points for s in shares) == BASIS_POINTS_WHOLE, shares
    parts = [s.basis_points * amount // BASIS_POINTS_WHOLE for s in shares]
    parts[0] += amount - sum(parts)
    merged: dict[str, int] = {}
    for share, part in zip(shares, parts, strict=True):
        key = party(share, event_merchant)
        merged[key] = merged.get(key, 0) + part
    return [(key, part) for key, part in merged.items() if part > 0]


def to_list(shares: Sequence[Contribution]) -> list[list[object]]:
    return [[s.kind.value, s.sponsor_id, s.basis_points] for s in shares]


def from_list(data: list[list[object]]) -> tuple[Contribution, ...]:
    return tuple(
        Contribution(ContributorKind(str(kind)), str(sponsor), int(str(bp)))
        for kind, sponsor, bp in data
    )
