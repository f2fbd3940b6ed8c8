"""An offer's life: DRAFT -> ACTIVE <-> PAUSED, and ENDED from any of them. No I/O."""

from __future__ import annotations

from enum import Enum

from loyalty_ledger.domain.errors import FailedPrecondition


class OfferStatus(Enum):
    DRAFT = "DRAFT"
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    ENDED = "ENDED"


# Where each status may go. ENDED is final; a draft is activated, not paused.
TRANSITIONS: dict[OfferStatus, frozenset[OfferStatus]] = {
    OfferStatus.DRAFT: frozenset({OfferStatus.ACTIVE, OfferStatus.ENDED}),
    OfferStatus.ACTIVE: frozenset({OfferStatus.PAUSED, OfferStatus.ENDED}),
    OfferStatus.PAUSED: frozenset({OfferStatus.ACTIVE, OfferStatus.ENDED}),
    OfferStatus.ENDED: frozenset(),
}

# Only offers that award nothing right now may be edited; an ACTIVE one is paused first.
EDITABLE = frozenset({OfferStatus.DRAFT, OfferStatus.PAUSED})


def check_transition(offer_id: str, current: OfferStatus, target: OfferStatus) -> None:
    """Refuse a move the life cycle does not allow (FAILED_PRECONDITION)."""
    if target not in TRANSITIONS[current]:
        raise FailedPrecondition(
            f"offer {offer_id} cannot go from {current.value} to {target.value}",
            reason="INVALID_OFFER_TRANSITION",
            offer_id=offer_id,
            status=current.value,
            target_status=target.value,
        )


def check_editable(offer_id: str, current: OfferStatus) -> None:
    """Refuse an edit of an ACTIVE or ENDED offer (FAILED_PRECONDITION)."""
    if current not in EDITABLE:
        raise FailedPrecondition(
            f"offer {offer_id} is {current.value}: pause it before editing"
            if current is OfferStatus.ACTIVE
            else f"offer {offer_id} has ended and is read-only",
            reason="OFFER_NOT_EDITABLE",
            offer_id=offer_id,
            status=current.value,
        )
