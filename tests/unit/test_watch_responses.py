"""One stream message per expiration event, shared by every stream that delivers it."""

from __future__ import annotations

from loyalty_ledger.api import watch
from loyalty_ledger.events.hub import StoredEvent


def stored(seq: int, event_id: str, amount: int = 5) -> StoredEvent:
    return StoredEvent(
        seq=seq,
        event_id=event_id,
        type="EXPIRED",
        scheme_id="s",
        wallet_id="wal_1",
        transaction_id="txn_1",
        payload={"amount": amount, "asset": "POINTS", "lot_id": "lot_1", "expires_at_us": 10},
        created_at_us=20,
    )


def test_an_event_is_converted_once_and_shared() -> None:
    event = stored(1_000_001, "evt_a")
    first = watch.event_response(event)
    assert watch.event_response(event) is first
    assert first.event == watch.event_to_proto(event)
    assert first.event.amount == 5 and first.event.sequence == 1_000_001


def test_another_event_under_a_known_sequence_is_converted_anew() -> None:
    # A sequence can come back after the database was replaced: the event id tells them apart.
    old = watch.event_response(stored(1_000_002, "evt_old", amount=1))
    new = watch.event_response(stored(1_000_002, "evt_new", amount=2))
    assert new is not old
    assert (new.event.event_id, new.event.amount) == ("evt_new", 2)


def test_the_shared_messages_are_bounded() -> None:
    for seq in range(2_000_000, 2_000_000 + watch.RESPONSES_SHARED_MAX + 10):
        watch.event_response(stored(seq, f"evt_{seq}"))
    assert len(watch._responses) == watch.RESPONSES_SHARED_MAX
    assert 2_000_000 not in watch._responses  # the oldest went first


def test_an_event_alone_in_a_batch_message_is_shared_and_a_batch_is_not() -> None:
    first, second = stored(3_000_001, "evt_1"), stored(3_000_002, "evt_2")
    alone = watch.batch_response([first])
    assert watch.batch_response([first]) is alone
    assert list(alone.events.events) == [watch.event_to_proto(first)]
    assert alone.WhichOneof("message") == "events"
    both = watch.batch_response([first, second])
    assert [e.sequence for e in both.events.events] == [3_000_001, 3_000_002]
    assert watch.batch_response([first, second]) is not both
    # The one-event-per-message form of the same event is its own shared message.
    assert watch.event_response(first).WhichOneof("message") == "event"
