"""Worked examples for expiry policies.

Expected instants are written with hand-built fixed offsets (EST -5, EDT -4, WIB +7), taken
from the published DST calendar, so they do not rely on the code under test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from loyalty_ledger.domain.errors import InvalidArgument
from loyalty_ledger.domain.expiry import (
    After,
    CalendarPeriod,
    DurationUnit,
    EndOfPeriod,
    FixedTime,
    Never,
    add_duration,
    compute_expire_time,
    policy_from_dict,
    policy_to_dict,
    validate_policy,
)

NEW_YORK = ZoneInfo("America/New_York")
JAKARTA = ZoneInfo("Asia/Jakarta")
HAVANA = ZoneInfo("America/Havana")
EST = timezone(timedelta(hours=-5))
EDT = timezone(timedelta(hours=-4))
WIB = timezone(timedelta(hours=7))
CST_CUBA = timezone(timedelta(hours=-5))
CDT_CUBA = timezone(timedelta(hours=-4))

DAYS = DurationUnit.DAYS
HOURS = DurationUnit.HOURS
MONTHS = DurationUnit.MONTHS


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def expire(policy, credited_at: datetime, tz: ZoneInfo = JAKARTA) -> datetime | None:
    result = compute_expire_time(policy, credited_at, tz)
    if result is not None:
        assert result.tzinfo is UTC
    return result


# --- simple policies -----------------------------------------------------------------------


def test_never_has_no_expiry() -> None:
    assert expire(Never(), utc(2027, 1, 1)) is None


def test_fixed_time_is_returned_in_utc() -> None:
    at = datetime(2027, 6, 30, 23, 59, tzinfo=WIB)
    result = expire(FixedTime(at), utc(2027, 1, 1))
    assert result == utc(2027, 6, 30, 16, 59)
    assert result.tzinfo is UTC


def test_naive_input_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        compute_expire_time(After(1, DAYS), datetime(2027, 1, 1), JAKARTA)
    with pytest.raises(ValueError):
        compute_expire_time(FixedTime(datetime(2027, 1, 1)), utc(2027, 1, 1), JAKARTA)
    with pytest.raises(ValueError):
        add_duration(datetime(2027, 1, 1), 1, HOURS, JAKARTA)


def test_result_is_utc_even_for_non_utc_input() -> None:
    credited = datetime(2027, 2, 10, 12, 0, tzinfo=WIB)
    result = expire(After(3, HOURS), credited)
    assert result == utc(2027, 2, 10, 8, 0)


# --- calendar months clamp to the month's end -----------------------------------------------


@pytest.mark.parametrize(
    ("credited", "months", "expected"),
    [
        (datetime(2027, 1, 31, 10, 0, tzinfo=WIB), 1, datetime(2027, 2, 28, 10, 0, tzinfo=WIB)),
        (datetime(2028, 1, 31, 10, 0, tzinfo=WIB), 1, datetime(2028, 2, 29, 10, 0, tzinfo=WIB)),
        (datetime(2027, 3, 31, 10, 0, tzinfo=WIB), 1, datetime(2027, 4, 30, 10, 0, tzinfo=WIB)),
        (datetime(2027, 1, 31, 10, 0, tzinfo=WIB), 13, datetime(2028, 2, 29, 10, 0, tzinfo=WIB)),
        (datetime(2027, 11, 30, 10, 0, tzinfo=WIB), 3, datetime(2028, 2, 29, 10, 0, tzinfo=WIB)),
        (datetime(2027, 5, 15, 10, 0, tzinfo=WIB), 24, datetime(2029, 5, 15, 10, 0, tzinfo=WIB)),
    ],
)
def test_months_clamp_to_month_end(credited: datetime, months: int, expected: datetime) -> None:
    assert expire(After(months, MONTHS), credited) == expected


def test_months_use_the_local_calendar_not_utc() -> None:
    # 2027-01-31T20:00Z is already Feb 1, 03:00 in Jakarta: one month later is Mar 1 there.
    credited = utc(2027, 1, 31, 20, 0)
    assert expire(After(1, MONTHS), credited) == datetime(2027, 3, 1, 3, 0, tzinfo=WIB)


# --- days keep wall time across DST, hours are exact -----------------------------------------


def test_days_across_spring_forward_keep_wall_time() -> None:
    credited = datetime(2026, 3, 7, 12, 0, tzinfo=EST)  # Saturday before DST starts
    result = expire(After(1, DAYS), credited, NEW_YORK)
    assert result == datetime(2026, 3, 8, 12, 0, tzinfo=EDT)
    assert result - credited == timedelta(hours=23)


def test_days_across_fall_back_keep_wall_time() -> None:
    credited = datetime(2026, 10, 31, 12, 0, tzinfo=EDT)  # Saturday before DST ends
    result = expire(After(1, DAYS), credited, NEW_YORK)
    assert result == datetime(2026, 11, 1, 12, 0, tzinfo=EST)
    assert result - credited == timedelta(hours=25)


def test_months_across_dst_keep_wall_time() -> None:
    credited = datetime(2026, 2, 15, 9, 0, tzinfo=EST)
    assert expire(After(1, MONTHS), credited, NEW_YORK) == datetime(2026, 3, 15, 9, 0, tzinfo=EDT)


@pytest.mark.parametrize(
    ("credited", "expected"),
    [
        (datetime(2026, 3, 7, 12, 0, tzinfo=EST), datetime(2026, 3, 8, 13, 0, tzinfo=EDT)),
        (datetime(2026, 10, 31, 12, 0, tzinfo=EDT), datetime(2026, 11, 1, 11, 0, tzinfo=EST)),
    ],
)
def test_hours_are_exact_across_dst(credited: datetime, expected: datetime) -> None:
    result = expire(After(24, HOURS), credited, NEW_YORK)
    assert result == expected
    assert result - credited == timedelta(hours=24)


# --- DST gap and overlap -----------------------------------------------------------------------


def test_nonexistent_wall_time_moves_forward_by_the_gap() -> None:
    # 2026-03-08 02:30 does not exist in New York (02:00 EST jumps to 03:00 EDT).
    credited = datetime(2026, 3, 7, 2, 30, tzinfo=EST)
    assert expire(After(1, DAYS), credited, NEW_YORK) == datetime(2026, 3, 8, 3, 30, tzinfo=EDT)
    credited = datetime(2026, 2, 8, 2, 30, tzinfo=EST)
    assert expire(After(1, MONTHS), credited, NEW_YORK) == datetime(2026, 3, 8, 3, 30, tzinfo=EDT)


def test_ambiguous_wall_time_takes_first_occurrence() -> None:
    # 2026-11-01 01:30 happens twice in New York; the first is EDT.
    credited = datetime(2026, 10, 31, 1, 30, tzinfo=EDT)
    assert expire(After(1, DAYS), credited, NEW_YORK) == datetime(2026, 11, 1, 1, 30, tzinfo=EDT)


def test_credit_during_the_repeated_hour_uses_its_own_wall_time() -> None:
    # 06:30Z is the second 01:30 (EST) on 2026-11-01; a day later is 01:30 EST again.
    credited = utc(2026, 11, 1, 6, 30)
    assert expire(After(1, DAYS), credited, NEW_YORK) == datetime(2026, 11, 2, 1, 30, tzinfo=EST)


def test_days_out_of_order_across_a_gap_is_bounded_by_the_shift() -> None:
    # Documented consequence of wall-time days: 02:50 -> 03:50 but 03:10 -> 03:10.
    early = expire(After(1, DAYS), datetime(2026, 3, 7, 2, 50, tzinfo=EST), NEW_YORK)
    late = expire(After(1, DAYS), datetime(2026, 3, 7, 3, 10, tzinfo=EST), NEW_YORK)
    assert early == datetime(2026, 3, 8, 3, 50, tzinfo=EDT)
    assert late == datetime(2026, 3, 8, 3, 10, tzinfo=EDT)
    assert early - late == timedelta(minutes=40)


# --- end of period: Jakarta (UTC+7, no DST) ----------------------------------------------------

FEB_10_JKT = datetime(2027, 2, 10, 12, 0, tzinfo=WIB)


@pytest.mark.parametrize(
    ("policy", "credited", "expected"),
    [
        (EndOfPeriod(CalendarPeriod.DAY), FEB_10_JKT, utc(2027, 2, 10, 17)),
        (EndOfPeriod(CalendarPeriod.MONTH), FEB_10_JKT, utc(2027, 2, 28, 17)),
        (EndOfPeriod(CalendarPeriod.QUARTER), FEB_10_JKT, utc(2027, 3, 31, 17)),
        (EndOfPeriod(CalendarPeriod.HALF_YEAR), FEB_10_JKT, utc(2027, 6, 30, 17)),
        (EndOfPeriod(CalendarPeriod.YEAR), FEB_10_JKT, utc(2027, 12, 31, 17)),
        (
            EndOfPeriod(CalendarPeriod.HALF_YEAR),
            datetime(2027, 8, 1, 9, 0, tzinfo=WIB),
            utc(2027, 12, 31, 17),
        ),
        (
            EndOfPeriod(CalendarPeriod.QUARTER),
            datetime(2027, 11, 20, 9, 0, tzinfo=WIB),
            utc(2027, 12, 31, 17),
        ),
        (
            EndOfPeriod(CalendarPeriod.MONTH),
            datetime(2027, 12, 20, 9, 0, tzinfo=WIB),
            utc(2027, 12, 31, 17),
        ),
        # Named month: March of this year while ahead or current, else next year's.
        (EndOfPeriod(CalendarPeriod.NAMED_MONTH, month=3), FEB_10_JKT, utc(2027, 3, 31, 17)),
        (
            EndOfPeriod(CalendarPeriod.NAMED_MONTH, month=3),
            datetime(2027, 3, 15, 9, 0, tzinfo=WIB),
            utc(2027, 3, 31, 17),
        ),
        (
            EndOfPeriod(CalendarPeriod.NAMED_MONTH, month=3),
            datetime(2027, 4, 1, 0, 0, tzinfo=WIB),
            utc(2028, 3, 31, 17),
        ),
        (
            EndOfPeriod(CalendarPeriod.NAMED_MONTH, month=12),
            datetime(2027, 12, 5, 9, 0, tzinfo=WIB),
            utc(2027, 12, 31, 17),
        ),
        (
            EndOfPeriod(CalendarPeriod.NAMED_MONTH, month=1),
            datetime(2027, 2, 1, 0, 0, tzinfo=WIB),
            utc(2028, 1, 31, 17),
        ),
    ],
)
def test_end_of_period_in_jakarta(policy, credited: datetime, expected: datetime) -> None:
    assert expire(policy, credited) == expected


#                       Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec
QUARTER_END_MONTHS = [4, 4, 4, 7, 7, 7, 10, 10, 10, 1, 1, 1]
HALF_YEAR_END_MONTHS = [7, 7, 7, 7, 7, 7, 1, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("month", range(1, 13))
@pytest.mark.parametrize("day", [1, 15, 28])
def test_quarter_and_half_year_ends_for_every_month(month: int, day: int) -> None:
    credited = datetime(2027, month, day, 23, 0, tzinfo=WIB)
    for period, table in [
        (CalendarPeriod.QUARTER, QUARTER_END_MONTHS),
        (CalendarPeriod.HALF_YEAR, HALF_YEAR_END_MONTHS),
    ]:
        end_month = table[month - 1]
        end_year = 2028 if end_month == 1 else 2027
        expected = datetime(end_year, end_month, 1, tzinfo=WIB)
        assert expire(EndOfPeriod(period), credited) == expected, period


def test_end_of_quarter_uses_local_time() -> None:
    # 2027-03-31T17:30Z is still Q1 in UTC but already Apr 1, 00:30 in Jakarta.
    result = expire(EndOfPeriod(CalendarPeriod.QUARTER), utc(2027, 3, 31, 17, 30))
    assert result == datetime(2027, 7, 1, 0, 0, tzinfo=WIB)


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        (CalendarPeriod.DAY, datetime(2027, 4, 2, tzinfo=WIB)),
        (CalendarPeriod.MONTH, datetime(2027, 5, 1, tzinfo=WIB)),
        (CalendarPeriod.QUARTER, datetime(2027, 7, 1, tzinfo=WIB)),
        (CalendarPeriod.HALF_YEAR, datetime(2027, 7, 1, tzinfo=WIB)),
        (CalendarPeriod.YEAR, datetime(2028, 1, 1, tzinfo=WIB)),
    ],
)
def test_credit_exactly_at_period_start_gets_the_whole_period(
    period: CalendarPeriod, expected: datetime
) -> None:
    credited = datetime(2027, 4, 1, 0, 0, tzinfo=WIB)
    assert expire(EndOfPeriod(period), credited) == expected


def test_credit_one_microsecond_before_period_end_ends_at_that_boundary() -> None:
    credited = datetime(2027, 3, 31, 23, 59, 59, 999_999, tzinfo=WIB)
    assert expire(EndOfPeriod(CalendarPeriod.QUARTER), credited) == datetime(2027, 4, 1, tzinfo=WIB)


def test_end_of_quarter_one_year_after_earning() -> None:
    policy = EndOfPeriod(CalendarPeriod.QUARTER, offset=After(12, MONTHS))
    assert expire(policy, FEB_10_JKT) == utc(2028, 3, 31, 17)
    # Earned on the last day of a quarter: a year later is still that quarter.
    late = datetime(2027, 6, 30, 23, 0, tzinfo=WIB)
    assert expire(policy, late) == datetime(2028, 7, 1, tzinfo=WIB)


def test_end_of_day_after_hours_offset() -> None:
    policy = EndOfPeriod(CalendarPeriod.DAY, offset=After(48, HOURS))
    credited = datetime(2027, 2, 10, 23, 30, tzinfo=WIB)
    assert expire(policy, credited) == datetime(2027, 2, 13, tzinfo=WIB)


# --- end of period: New York across DST --------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "credited", "expected"),
    [
        # Credited in EST, period ends in EDT.
        (CalendarPeriod.QUARTER, datetime(2027, 2, 10, 12, tzinfo=EST), utc(2027, 4, 1, 4)),
        (CalendarPeriod.MONTH, datetime(2027, 3, 2, 12, tzinfo=EST), utc(2027, 4, 1, 4)),
        # Credited in EDT, period ends in EST.
        (CalendarPeriod.MONTH, datetime(2026, 10, 20, 12, tzinfo=EDT), utc(2026, 11, 1, 4)),
        (CalendarPeriod.MONTH, datetime(2026, 11, 20, 12, tzinfo=EST), utc(2026, 12, 1, 5)),
        (CalendarPeriod.HALF_YEAR, datetime(2026, 8, 20, 12, tzinfo=EDT), utc(2027, 1, 1, 5)),
        (CalendarPeriod.YEAR, datetime(2026, 6, 1, 12, tzinfo=EDT), utc(2027, 1, 1, 5)),
        # The days around the transitions.
        (CalendarPeriod.DAY, datetime(2026, 3, 7, 12, tzinfo=EST), utc(2026, 3, 8, 5)),
        (CalendarPeriod.DAY, datetime(2026, 3, 8, 12, tzinfo=EDT), utc(2026, 3, 9, 4)),
        (CalendarPeriod.DAY, datetime(2026, 11, 1, 12, tzinfo=EST), utc(2026, 11, 2, 5)),
    ],
)
def test_end_of_period_in_new_york(
    period: CalendarPeriod, credited: datetime, expected: datetime
) -> None:
    assert expire(EndOfPeriod(period), credited, NEW_YORK) == expected


def test_end_of_period_when_local_midnight_does_not_exist() -> None:
    # Cuba springs forward at midnight: 2026-03-08 starts at 01:00 CDT.
    credited = datetime(2026, 3, 7, 12, 0, tzinfo=CST_CUBA)
    result = expire(EndOfPeriod(CalendarPeriod.DAY), credited, HAVANA)
    assert result == datetime(2026, 3, 8, 1, 0, tzinfo=CDT_CUBA)


def test_end_of_period_when_local_midnight_is_repeated() -> None:
    # Cuba falls back from 01:00 CDT to 00:00 CST on 2026-11-01: the month ends at the first
    # midnight (CDT), not an hour later.
    credited = datetime(2026, 10, 15, 12, 0, tzinfo=CDT_CUBA)
    result = expire(EndOfPeriod(CalendarPeriod.MONTH), credited, HAVANA)
    assert result == datetime(2026, 11, 1, 0, 0, tzinfo=CDT_CUBA)


# --- validation -------------------------------------------------------------------------------


def violations_of(policy) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as info:
        validate_policy(policy, "expiry")
    return {v.field: v.description for v in info.value.violations}


@pytest.mark.parametrize(
    "policy",
    [
        Never(),
        FixedTime(utc(2030, 1, 1)),
        After(1, HOURS),
        After(100_000, HOURS),
        After(100_000, DAYS),
        After(12_000, MONTHS),
        EndOfPeriod(CalendarPeriod.QUARTER),
        EndOfPeriod(CalendarPeriod.NAMED_MONTH, month=1),
        EndOfPeriod(CalendarPeriod.NAMED_MONTH, month=12),
        EndOfPeriod(CalendarPeriod.YEAR, offset=After(6, MONTHS)),
    ],
)
def test_valid_policies_pass(policy) -> None:
    validate_policy(policy, "expiry")


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (After(0, DAYS), "expiry.count"),
        (After(-3, HOURS), "expiry.count"),
        (After(100_001, HOURS), "expiry.count"),
        (After(12_001, MONTHS), "expiry.count"),
        (After(1, "DAYS"), "expiry.unit"),  # type: ignore[arg-type]
        (FixedTime(datetime(2030, 1, 1)), "expiry.expire_at"),
        (EndOfPeriod(CalendarPeriod.NAMED_MONTH), "expiry.month"),
        (EndOfPeriod(CalendarPeriod.NAMED_MONTH, month=0), "expiry.month"),
        (EndOfPeriod(CalendarPeriod.NAMED_MONTH, month=13), "expiry.month"),
        (EndOfPeriod(CalendarPeriod.MONTH, month=3), "expiry.month"),
        (EndOfPeriod(CalendarPeriod.QUARTER, offset=After(0, DAYS)), "expiry.offset.count"),
        (EndOfPeriod("WEEK"), "expiry.period"),  # type: ignore[arg-type]
        ("60 days", "expiry"),
    ],
)
def test_invalid_policies_name_the_field(policy, field: str) -> None:
    assert field in violations_of(policy)


def test_every_violation_is_reported() -> None:
    policy = EndOfPeriod(CalendarPeriod.MONTH, month=3, offset=After(0, HOURS))
    assert set(violations_of(policy)) == {"expiry.month", "expiry.offset.count"}


# --- storage round trip -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        Never(),
        FixedTime(datetime(2027, 6, 30, 23, 59, 59, 123_456, tzinfo=WIB)),
        After(36, HOURS),
        After(90, DAYS),
        After(6, MONTHS),
        EndOfPeriod(CalendarPeriod.HALF_YEAR),
        EndOfPeriod(CalendarPeriod.NAMED_MONTH, month=2),
        EndOfPeriod(CalendarPeriod.QUARTER, offset=After(12, MONTHS)),
    ],
)
def test_policy_dict_round_trip(policy) -> None:
    import json

    stored = json.loads(json.dumps(policy_to_dict(policy)))
    restored = policy_from_dict(stored)
    assert restored == policy
    assert type(restored) is type(policy)


def test_fixed_time_is_stored_as_epoch_microseconds() -> None:
    stored = policy_to_dict(FixedTime(utc(1970, 1, 1, 0, 0, 1)))
    assert stored == {"kind": "FIXED_TIME", "expire_at_us": 1_000_000}
    assert policy_from_dict(stored).expire_at.tzinfo is not None


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"kind": "WEEKLY"},
        {"kind": "AFTER", "count": 3},
        {"kind": "AFTER", "count": 3, "unit": "YEARS"},
    ],
)
def test_malformed_stored_policy_raises_value_error(data: dict) -> None:
    with pytest.raises(ValueError):
        policy_from_dict(data)


def test_inactivity_has_no_fixed_instant_and_round_trips() -> None:
    from loyalty_ledger.domain.expiry import Inactivity

    moment = datetime(2027, 1, 31, 12, tzinfo=UTC)
    assert compute_expire_time(Inactivity(30), moment, ZoneInfo("UTC")) is None
    assert policy_from_dict(policy_to_dict(Inactivity(30))) == Inactivity(30)
    for bad in (0, 3661):
        with pytest.raises(InvalidArgument) as caught:
            validate_policy(Inactivity(bad), "policy")
        assert [v.field for v in caught.value.violations] == ["policy.days"]
