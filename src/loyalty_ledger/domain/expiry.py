"""Expiry policies and the instant at which a lot expires.

A policy is chosen on a scheme and may be overridden per offer or per credit; the ledger
turns it into one `expires_at` instant per lot when the lot is credited. The rules below are
the product's rules (DESIGN "Expiry policies"), so they are spelled out here in full:

* All instants are aware datetimes. Results are always in UTC (``tzinfo=datetime.UTC``).
  A naive datetime is a programming error and raises ``ValueError``.
* ``HOURS`` count exact elapsed time: ``credited_at + N * 3600 s``, whatever the clocks do.
* ``DAYS`` and ``MONTHS`` count the calendar of the scheme's timezone ``tz``: the result is the
  same local wall-clock time N days (or calendar months) later. Months clamp the day to the
  target month's length (Jan 31 + 1 month = Feb 28, or Feb 29 in a leap year).
* A local wall time that does not exist (a DST gap) is moved forward by the length of the gap
  (02:30 on a spring-forward day becomes 03:30); an ambiguous one (fall back) resolves to its
  first occurrence.
* ``END_OF_PERIOD`` applies the optional offset, then rounds up to the end of the local
  period containing that time. The end is the first instant of the next period (local
  midnight), so a credit exactly at a period start lasts the whole period. Value is usable
  strictly before the returned instant.

Because DAYS/MONTHS keep the local wall time, two credits a few minutes apart can land on
either side of a DST transition and receive expiries that are out of order by at most the
DST shift. The ledger only needs each lot's own expiry, so this is accepted.
"""

from __future__ import annotations

import calendar
import enum
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from loyalty_ledger.domain.errors import FieldViolation, InvalidArgument
from loyalty_ledger.domain.timeutil import from_us, to_us

MIN_COUNT = 1
MAX_COUNT = 100_000
# 100_000 months (8,333 years) would run past datetime's year 9999; 1,000 years is plenty.
MAX_MONTHS = 12_000


class DurationUnit(enum.Enum):
    """How an `After` count is measured: exact hours, or local calendar days / months."""

    HOURS = "HOURS"
    DAYS = "DAYS"
    MONTHS = "MONTHS"


class CalendarPeriod(enum.Enum):
    """A local calendar period an `EndOfPeriod` policy rounds up to."""

    DAY = "DAY"
    MONTH = "MONTH"
    QUARTER = "QUARTER"
    HALF_YEAR = "HALF_YEAR"
    YEAR = "YEAR"
    NAMED_MONTH = "NAMED_MONTH"


@dataclass(frozen=True)
class Never:
    """The credit never expires."""


@dataclass(frozen=True)
class FixedTime:
    """The credit expires at one fixed instant (aware datetime)."""

    expire_at: datetime


@dataclass(frozen=True)
class After:
    """The credit expires `count` units after it is credited (count 1..100_000)."""

    count: int
    unit: DurationUnit


@dataclass(frozen=True)
class EndOfPeriod:
    """The credit expires at the end of a local calendar period, after an optional offset.

    `month` (1..12) is required for, and only allowed with, ``CalendarPeriod.NAMED_MONTH``.
    """

    period: CalendarPeriod
    month: int | None = None
    offset: After | None = None


@dataclass(frozen=True)
class Inactivity:
    """Promotional value expires after `days` (1..3660) with no earn or spend in its asset in
    the wallet; activity pushes the deadline back. A lot under this policy has no fixed expiry
    instant: the inactivity run expires it once the last earn or spend is more than `days` x
    24 h before the run's as-of time (elapsed time, not calendar days)."""

    days: int


INACTIVITY_DAYS_MAX = 3660

ExpiryPolicy = Never | FixedTime | After | EndOfPeriod | Inactivity


def _require_aware(moment: datetime, name: str) -> None:
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got {moment!r}")


def resolve_local(wall: datetime, tz: tzinfo) -> datetime:
    """Map a naive local wall time in `tz` to a UTC instant, following the product's DST rules.

    The wall time can be read with either of the two offsets `tz` knows around it. Those
    readings that map back to the same wall time are real; if there are two (fall back), the
    earlier instant is the first occurrence and wins. If there is none, the wall time falls in
    a gap, and reading it with the smaller (pre-transition) offset moves it forward by exactly
    the gap. Taking min/max of offsets keeps this independent of how `fold` is interpreted.
    """
    if wall.tzinfo is not None:
        raise ValueError("resolve_local expects a naive wall time")
    offsets = set()
    for fold in (0, 1):
        offset = wall.replace(tzinfo=tz, fold=fold).utcoffset()
        if offset is None:
            raise ValueError(f"timezone {tz!r} gives no UTC offset for {wall}")
        offsets.add(offset)
    real = [
        (wall - off).replace(tzinfo=UTC)
        for off in offsets
        if (wall - off).replace(tzinfo=UTC).astimezone(tz).replace(tzinfo=None) == wall
    ]
    if real:
        return min(real)
    return (wall - min(offsets)).replace(tzinfo=UTC)


def _add_months(wall: datetime, months: int) -> datetime:
    index = wall.year * 12 + (wall.month - 1) + months
    year, month0 = divmod(index, 12)
    month = month0 + 1
    if not 1 <= year <= 9999:
        raise OverflowError("date value out of range")
    day = min(wall.day, calendar.monthrange(year, month)[1])
    return wall.replace(year=year, month=month, day=day)


def add_duration(start: datetime, count: int, unit: DurationUnit, tz: tzinfo) -> datetime:
    """Return `start` plus `count` units, in UTC.

    HOURS add exact elapsed time. DAYS and MONTHS move the local wall clock in `tz` (so a day
    across a DST change lasts 23 or 25 hours, and a month keeps the day of month, clamped to
    the target month's end). Non-existent results move forward by the DST gap; ambiguous ones
    take the first occurrence. Raises ValueError for a naive `start` or a negative count, and
    OverflowError past year 9999.
    """
    _require_aware(start, "start")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    if unit is DurationUnit.HOURS:
        return start.astimezone(UTC) + timedelta(hours=count)
    wall = start.astimezone(tz).replace(tzinfo=None, fold=0)
    if unit is DurationUnit.DAYS:
        target = wall + timedelta(days=count)
    elif unit is DurationUnit.MONTHS:
        target = _add_months(wall, count)
    else:
        raise ValueError(f"unknown duration unit {unit!r}")
    return resolve_local(target, tz)


def _next_period_start(local: date, period: CalendarPeriod, month: int | None) -> date:
    """First day of the period following the one containing `local`."""
    year = local.year
    if period is CalendarPeriod.DAY:
        return local + timedelta(days=1)
    if period is CalendarPeriod.MONTH:
        next_month = local.month + 1
    elif period is CalendarPeriod.QUARTER:
        next_month = (local.month - 1) // 3 * 3 + 4
    elif period is CalendarPeriod.HALF_YEAR:
        next_month = 7 if local.month <= 6 else 13
    elif period is CalendarPeriod.YEAR:
        next_month = 13
    elif period is CalendarPeriod.NAMED_MONTH:
        if month is None or not 1 <= month <= 12:
            raise ValueError(f"NAMED_MONTH needs a month in 1..12, got {month!r}")
        if local.month > month:
            year += 1  # this year's month has passed: the next occurrence is next year's
        next_month = month + 1
    else:
        raise ValueError(f"unknown calendar period {period!r}")
    if next_month > 12:
        return date(year + 1, next_month - 12, 1)
    return date(year, next_month, 1)


def end_of_period(
    moment: datetime, period: CalendarPeriod, month: int | None, tz: tzinfo
) -> datetime:
    """Return the first instant (UTC) of the local period after the one containing `moment`.

    Periods: the day, month, quarter (ending Apr 1, Jul 1, Oct 1, Jan 1), half-year (ending
    Jul 1, Jan 1), year, or the next occurrence of month `month` at or after `moment`. The end
    is local midnight in `tz` (moved forward if midnight falls in a DST gap), so the result is
    always strictly later than `moment`.
    """
    _require_aware(moment, "moment")
    local_day = moment.astimezone(tz).date()
    start = _next_period_start(local_day, period, month)
    return resolve_local(datetime(start.year, start.month, start.day), tz)


def compute_expire_time(policy: ExpiryPolicy, credited_at: datetime, tz: tzinfo) -> datetime | None:
    """Return when a lot credited at `credited_at` expires under `policy`, in UTC.

    The ledger passes max(now, available_time) as `credited_at`, so a delayed lot's validity
    starts when it becomes usable. Never gives None (no expiry). FixedTime gives its instant
    as is (even if already past: whether that is acceptable is the caller's decision). After
    adds the duration (see `add_duration`). EndOfPeriod adds the optional offset and rounds up
    to the end of the local period (see `end_of_period`). The lot is usable strictly before the
    returned instant.
    """
    _require_aware(credited_at, "credited_at")
    if isinstance(policy, Never | Inactivity):
        return None
    if isinstance(policy, FixedTime):
        _require_aware(policy.expire_at, "expire_at")
        return policy.expire_at.astimezone(UTC)
    if isinstance(policy, After):
        return add_duration(credited_at, policy.count, policy.unit, tz)
    if isinstance(policy, EndOfPeriod):
        base = credited_at
        if policy.offset is not None:
            base = add_duration(credited_at, policy.offset.count, policy.offset.unit, tz)
        return end_of_period(base, policy.period, policy.month, tz)
    raise ValueError(f"unknown expiry policy {policy!r}")


def _after_violations(after: object, path: str) -> list[FieldViolation]:
    if not isinstance(after, After):
        return [FieldViolation(path, "must be a duration (count and unit)")]
    found: list[FieldViolation] = []
    if not isinstance(after.unit, DurationUnit):
        found.append(FieldViolation(f"{path}.unit", "must be one of HOURS, DAYS, MONTHS"))
    limit = MAX_MONTHS if after.unit is DurationUnit.MONTHS else MAX_COUNT
    count = after.count
    if isinstance(count, bool) or not isinstance(count, int) or not MIN_COUNT <= count <= limit:
        unit_name = after.unit.value if isinstance(after.unit, DurationUnit) else "units"
        found.append(
            FieldViolation(f"{path}.count", f"must be between {MIN_COUNT} and {limit} {unit_name}")
        )
    return found


def validate_policy(policy: ExpiryPolicy, field_path: str) -> None:
    """Check a policy from a request, raising InvalidArgument with every violation found.

    Field paths are `field_path` plus the dataclass attribute (e.g. ``expiry.count``,
    ``expiry.offset.count``, ``expiry.month``) so the API can report them as BadRequest.
    Checks: counts 1..100_000 (1..12_000 for MONTHS, which keeps dates within year 9999),
    a known unit and period, month 1..12 required with NAMED_MONTH and refused otherwise,
    FixedTime carrying a timezone.
    """
    violations: list[FieldViolation] = []
    if isinstance(policy, Never):
        pass
    elif isinstance(policy, FixedTime):
        moment = policy.expire_at
        if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
            violations.append(
                FieldViolation(f"{field_path}.expire_at", "must be an instant with a timezone")
            )
    elif isinstance(policy, After):
        violations.extend(_after_violations(policy, field_path))
    elif isinstance(policy, Inactivity):
        days = policy.days
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3660:
            violations.append(
                FieldViolation(f"{field_path}.days", f"must be between 1 and {INACTIVITY_DAYS_MAX}")
            )
    elif isinstance(policy, EndOfPeriod):
        if not isinstance(policy.period, CalendarPeriod):
            names = ", ".join(p.value for p in CalendarPeriod)
            violations.append(FieldViolation(f"{field_path}.period", f"must be one of {names}"))
        month = policy.month
        if policy.period is CalendarPeriod.NAMED_MONTH:
            if month is None:
                violations.append(
                    FieldViolation(f"{field_path}.month", "is required when period is NAMED_MONTH")
                )
            elif isinstance(month, bool) or not isinstance(month, int) or not 1 <= month <= 12:
                violations.append(FieldViolation(f"{field_path}.month", "must be between 1 and 12"))
        elif month is not None:
            violations.append(
                FieldViolation(f"{field_path}.month", "is only allowed when period is NAMED_MONTH")
            )
        if policy.offset is not None:
            violations.extend(_after_violations(policy.offset, f"{field_path}.offset"))
    else:
        violations.append(FieldViolation(field_path, "unknown expiry policy"))
    if violations:
        raise InvalidArgument(violations)


def _after_to_dict(after: After) -> dict[str, Any]:
    return {"count": after.count, "unit": after.unit.value}


def policy_to_dict(policy: ExpiryPolicy) -> dict[str, Any]:
    """Serialize a policy to JSON-safe primitives for storage (instants as epoch microseconds)."""
    if isinstance(policy, Never):
        return {"kind": "NEVER"}
    if isinstance(policy, FixedTime):
        return {"kind": "FIXED_TIME", "expire_at_us": to_us(policy.expire_at)}
    if isinstance(policy, After):
        return {"kind": "AFTER", **_after_to_dict(policy)}
    if isinstance(policy, Inactivity):
        return {"kind": "INACTIVITY", "days": policy.days}
    if isinstance(policy, EndOfPeriod):
        return {
            "kind": "END_OF_PERIOD",
            "period": policy.period.value,
            "month": policy.month,
            "offset": None if policy.offset is None else _after_to_dict(policy.offset),
        }
    raise ValueError(f"unknown expiry policy {policy!r}")


def policy_from_dict(data: dict[str, Any]) -> ExpiryPolicy:
    """Rebuild a policy stored by `policy_to_dict`. Malformed data raises ValueError."""
    try:
        kind = data["kind"]
        if kind == "NEVER":
            return Never()
        if kind == "FIXED_TIME":
            return FixedTime(expire_at=from_us(int(data["expire_at_us"])))
        if kind == "AFTER":
            return After(count=int(data["count"]), unit=DurationUnit(data["unit"]))
        if kind == "INACTIVITY":
            return Inactivity(days=int(data["days"]))
        if kind == "END_OF_PERIOD":
            raw_offset = data.get("offset")
            offset = (
                None
                if raw_offset is None
                else After(count=int(raw_offset["count"]), unit=DurationUnit(raw_offset["unit"]))
            )
            month = data.get("month")
            return EndOfPeriod(
                period=CalendarPeriod(data["period"]),
                month=None if month is None else int(month),
                offset=offset,
            )
    except (AttributeError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed expiry policy {data!r}") from exc
    raise ValueError(f"unknown expiry policy kind {data.get('kind')!r}")
