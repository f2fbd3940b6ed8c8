"""Instants as integer microseconds since the Unix epoch (UTC): exact, sortable, portable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROS_PER_SECOND = 1_000_000


def to_us(moment: datetime) -> int:
    """Convert an aware datetime to epoch microseconds. Naive datetimes are a programming error."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: every instant must carry a timezone")
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_us(micros: int) -> datetime:
    """Convert epoch microseconds to an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=micros)
