"""An offer's definition as stored: the Offer message without its output-only fields, as
canonical proto3 JSON. The ledger keeps it opaque; this module is its only reader and writer."""

from __future__ import annotations

from google.protobuf import json_format
from loyalty.v1 import rewards_pb2

from loyalty_ledger.api.convert import timestamp
from loyalty_ledger.api.offer_rules import domain_offer
from loyalty_ledger.domain import rewards
from loyalty_ledger.domain.offer_lifecycle import OfferStatus
from loyalty_ledger.ledger.offers import OfferChangeRecord, OfferRecord
from loyalty_ledger.ledger.rewarding import AwardSettings

# Fields the server sets; never part of a stored definition.
OUTPUT_ONLY = (
    "offer_id",
    "status",
    "budget_used",
    "create_time",
    "update_time",
    "copied_from_offer_id",
)

STATUS_TO_PROTO = {
    OfferStatus.DRAFT: rewards_pb2.OFFER_STATUS_DRAFT,
    OfferStatus.ACTIVE: rewards_pb2.OFFER_STATUS_ACTIVE,
    OfferStatus.PAUSED: rewards_pb2.OFFER_STATUS_PAUSED,
    OfferStatus.ENDED: rewards_pb2.OFFER_STATUS_ENDED,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}


def definition_json(offer: rewards_pb2.Offer) -> str:
    """The stored form: output-only fields cleared, keys sorted, so equal offers are equal text."""
    clean = rewards_pb2.Offer()
    clean.CopyFrom(offer)
    for name in OUTPUT_ONLY:
        clean.ClearField(name)  # type: ignore[arg-type]
    return json_format.MessageToJson(
        clean, preserving_proto_field_name=True, sort_keys=True, indent=None
    )


def definition_proto(definition: str) -> rewards_pb2.Offer:
    return json_format.Parse(definition, rewards_pb2.Offer())


def offer_to_proto(record: OfferRecord) -> rewards_pb2.Offer:
    offer = definition_proto(record.definition)
    offer.offer_id = record.id
    offer.scheme_id = record.scheme_id
    offer.status = STATUS_TO_PROTO[record.status]
    offer.budget_used = record.budget_used
    offer.create_time.CopyFrom(timestamp(record.created_at_us))
    offer.update_time.CopyFrom(timestamp(record.updated_at_us))
    offer.copied_from_offer_id = record.copied_from_offer_id or ""
    return offer


def change_to_proto(change: OfferChangeRecord, scheme_id: str) -> rewards_pb2.OfferChange:
    offer = definition_proto(change.snapshot)
    offer.offer_id = change.offer_id
    offer.scheme_id = scheme_id
    offer.status = STATUS_TO_PROTO[change.status]
    return rewards_pb2.OfferChange(
        version=change.version,
        action=change.action,
        status=STATUS_TO_PROTO[change.status],
        reason=change.reason,
        offer=offer,
        create_time=timestamp(change.created_at_us),
    )


def decode_offer(record: OfferRecord) -> tuple[rewards.Offer, AwardSettings]:
    """A stored offer as the domain evaluates it (the ledger's `Decoder`)."""
    return domain_offer(record.id, definition_proto(record.definition))
