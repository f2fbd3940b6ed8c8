"""Tiers: a scheme's status levels, earned by qualifying points or spend over a rolling period.

A programme measures one number per wallet over the last `window_days` days (a rolling
window of whole 24-hour days ending at the moment of evaluation):
- POINTS: points of `asset` awarded to the wallet (award lots created in the window, less
  what was reversed of them). Top-ups, transfers, refunds and expiry do not count.
- SPEND: the amount of the wallet's PURCHASE events in currency `asset` that occurred in the
  window, less what was returned of them.
The wallet's tier is the one with the highest threshold at or below that number; below every
threshold it has none. There is no grace period: when old activity leaves the window, the next
evaluation (on activity, or the daily tier review) moves the wallet down.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

DAY_US = 86_400 * 1_000_000


class TierBasis(enum.StrEnum):
    POINTS = "POINTS"
    SPEND = "SPEND"


@dataclass(frozen=True)
class Tier:
    tier_id: str
    name: str
    threshold: int  # qualifying amount (minor units of the asset) from which a wallet is in it


@dataclass(frozen=True)
class TierProgram:
    basis: TierBasis
    asset: str  # the points asset (POINTS basis) or the purchase currency (SPEND basis)
    window_days: int
    tiers: tuple[Tier, ...]  # strictly increasing thresholds

    def __post_init__(self) -> None:
        assert self.window_days > 0 and self.tiers, self
        thresholds = [tier.threshold for tier in self.tiers]
        assert thresholds == sorted(set(thresholds)) and thresholds[0] >= 0, self

    def window_start_us(self, as_of_us: int) -> int:
        """The window is (start, as_of]: activity exactly `window_days` ago no longer counts."""
        return as_of_us - self.window_days * DAY_US

    def tier_for(self, qualifying: int) -> str | None:
        """The tier a wallet with `qualifying` is in, or None below every threshold."""
        reached = [tier for tier in self.tiers if tier.threshold <= qualifying]
        return reached[-1].tier_id if reached else None

    def tier_ids(self) -> list[str]:
        return [tier.tier_id for tier in self.tiers]

    def to_dict(self) -> dict[str, Any]:
        return {
            "basis": self.basis.value,
            "asset": self.asset,
            "window_days": self.window_days,
            "tiers": [[t.tier_id, t.name, t.threshold] for t in self.tiers],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TierProgram:
        return cls(
            basis=TierBasis(data["basis"]),
            asset=data["asset"],
            window_days=data["window_days"],
            tiers=tuple(Tier(*tier) for tier in data["tiers"]),
        )
