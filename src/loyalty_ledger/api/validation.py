"""Input checks that collect every field violation of a request before refusing it."""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from loyalty_ledger.api import limits
from loyalty_ledger.domain.errors import FieldViolation, InvalidArgument
from loyalty_ledger.domain.timeutil import to_us

_ASSET_CODE = re.compile(r"^[A-Z][A-Z0-9_]{1,11}$")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f]")  # ord(ch) < 32
_TAG = re.compile(r"^[a-z0-9_:-]{1,64}$")
_SCHEME_ID = re.compile(
    rf"^[a-z0-9][a-z0-9_-]{{{limits.SCHEME_ID_CHARS_MIN - 1},{limits.ID_CHARS_MAX - 1}}}$"
)
_MAX_TIMESTAMP_SECONDS = int(datetime(limits.TIMESTAMP_YEAR_MAX, 12, 31, tzinfo=UTC).timestamp())


class Checks:
    """Collects violations; `done()` raises one InvalidArgument carrying all of them."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def fail(self, field_path: str, description: str) -> None:
        if len(self.violations) < limits.FIELD_VIOLATIONS_MAX:
            self.violations.append(FieldViolation(field_path, description))

    def done(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations)

    # -- strings -------------------------------------------------------------------------

    def text(self, field_path: str, value: str, *, max_chars: int, required: bool = False) -> None:
        if required and not value:
            self.fail(field_path, "is required")
        elif len(value) > max_chars:
            self.fail(field_path, f"must be at most {max_chars} characters (got {len(value)})")
        elif _CONTROL_CHARACTER.search(value):
            self.fail(field_path, "must not contain control characters")

    def request_id(self, value: str) -> None:
        self.text("request_id", value, max_chars=limits.REQUEST_ID_CHARS_MAX, required=True)

    def resource_id(self, field_path: str, value: str, *, required: bool = True) -> None:
        self.text(field_path, value, max_chars=limits.ID_CHARS_MAX, required=required)
        if value.strip() != value:
            self.fail(field_path, "must not start or end with spaces")

    def scheme_id(self, field_path: str, value: str) -> None:
        if not _SCHEME_ID.match(value):
            self.fail(field_path, "must be 3-64 characters of a-z, 0-9, '-' and '_'")

    def ids(self, field_path: str, values: Iterable[str]) -> None:
        values = list(values)
        if len(values) > limits.CONDITION_IDS_MAX:
            self.fail(field_path, f"at most {limits.CONDITION_IDS_MAX} entries")
            return
        for i, value in enumerate(values):
            self.resource_id(f"{field_path}[{i}]", value)

    def month_day(self, field_path: str, month: int, day: int) -> tuple[int, int] | None:
        """A day of the year (29 February allowed), or None with a violation."""
        if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(2024, month)[1]:
            self.fail(field_path, "not a day of the year (month 1-12 and a day of that month)")
            return None
        return month, day

    def tags(self, field_path: str, values: Iterable[str]) -> None:
        values = list(values)
        if len(values) > limits.WALLET_TAGS_MAX:
            self.fail(field_path, f"at most {limits.WALLET_TAGS_MAX} tags")
            return
        for i, value in enumerate(values):
            self.tag(f"{field_path}[{i}]", value)

    def tag(self, field_path: str, value: str) -> None:
        if not _TAG.match(value):
            self.fail(field_path, "1-64 characters of a-z, 0-9, '-', '_' and ':'")

    def asset(self, field_path: str, value: str, *, required: bool = True) -> None:
        if not value and not required:
            return
        if not _ASSET_CODE.match(value):
            self.fail(field_path, "must be an upper-case asset code such as POINTS or EUR")

    def timezone(self, field_path: str, value: str) -> None:
        if not value:
            self.fail(field_path, "is required (an IANA name such as Europe/Amsterdam)")
            return
        try:
            if len(value) > limits.TIMEZONE_CHARS_MAX:
                raise ValueError
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(field_path, f"{value[:64]!r} is not an IANA timezone")

    def metadata(self, field_path: str, values: Mapping[str, str]) -> None:
        if len(values) > limits.METADATA_ENTRIES_MAX:
            self.fail(field_path, f"at most {limits.METADATA_ENTRIES_MAX} entries")
            return
        for key, value in values.items():
            if not key or len(key) > limits.METADATA_KEY_CHARS_MAX:
                self.fail(field_path, f"keys must be 1-{limits.METADATA_KEY_CHARS_MAX} characters")
            if len(value) > limits.METADATA_VALUE_CHARS_MAX:
                self.fail(
                    f"{field_path}[{key[:64]}]",
                    f"values must be at most {limits.METADATA_VALUE_CHARS_MAX} characters",
                )

    # -- numbers and times -----------------------------------------------------------------

    def amount(self, field_path: str, value: int, *, allow_zero: bool = False) -> None:
        low = 0 if allow_zero else 1
        if not low <= value <= limits.AMOUNT_MAX:
            self.fail(field_path, f"must be between {low} and {limits.AMOUNT_MAX} minor units")

    def timestamp(self, field_path: str, value: Timestamp) -> int | None:
        """Epoch microseconds of a set timestamp, or None (and a violation) if out of range."""
        if not 0 <= value.seconds <= _MAX_TIMESTAMP_SECONDS or not 0 <= value.nanos < 10**9:
            self.fail(field_path, "must be between 1970 and 9999")
            return None
        return to_us(value.ToDatetime(tzinfo=UTC))

    def duration_us(self, field_path: str, value: Duration, *, low: int, high: int) -> int | None:
        micros = value.seconds * 1_000_000 + value.nanos // 1_000
        if not low * 1_000_000 <= micros <= high * 1_000_000:
            self.fail(field_path, f"must be between {low} and {high} seconds")
            return None
        return micros
