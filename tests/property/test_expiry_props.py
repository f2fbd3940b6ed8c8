"""Properties of expiry computation over many instants, zones and policies."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from loyalty_ledger.domain.expiry import (
    After,
    CalendarPeriod,
    DurationUnit,
    EndOfPeriod,
    FixedTime,
    Never,
    compute_expire_time,
)

# Zones with and without DST, odd offsets, and a southern-hemisphere half-hour DST. None of
# them changes its clocks across local midnight, so local midnight always exists.
ZONE_NAMES = [
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Jakarta",
    "Asia/Kolkata",
    "America/St_Johns",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Australia/Sydney",
]
NO_DST_ZONES = ["UTC", "Asia/Jakarta", "Asia/Kolkata"]
# The largest clock change among ZONE_NAMES (one hour): how far DAYS/MONTHS may be out of
# order when two credits straddle a transition.
MAX_DST_SHIFT = timedelta(hours=1)

zones = st.sampled_from(ZONE_NAMES).map(ZoneInfo)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 12, 31), timezones=st.just(UTC)
)
units = st.sampled_from(list(DurationUnit))


@st.composite
def afters(draw: st.DrawFn, unit: DurationUnit | None = None) -> After:
    chosen = draw(units) if unit is None else unit
    limit = 12_000 if chosen is DurationUnit.MONTHS else 100_000
    # Mostly realistic counts, sometimes the extremes.
    count = draw(st.one_of(st.integers(1, 60), st.integers(1, limit)))
    return After(count, chosen)


@st.composite
def end_of_periods(draw: st.DrawFn) -> EndOfPeriod:
    period = draw(st.sampled_from(list(CalendarPeriod)))
    month = draw(st.integers(1, 12)) if period is CalendarPeriod.NAMED_MONTH else None
    offset = draw(st.none() | afters())
    return EndOfPeriod(period, month, offset)


expiring_policies = st.one_of(afters(), end_of_periods())
all_policies = st.one_of(
    st.just(Never()), st.builds(FixedTime, instants), afters(), end_of_periods()
)


@settings(max_examples=300, deadline=None)
@given(policy=expiring_policies, credited=instants, tz=zones)
def test_expiry_is_after_credit(policy, credited: datetime, tz: ZoneInfo) -> None:
    result = compute_expire_time(policy, credited, tz)
    assert result is not None
    assert result.tzinfo is UTC
    assert result > credited


@settings(max_examples=300, deadline=None)
@given(after=afters(DurationUnit.MONTHS), credited=instants, tz=zones)
def test_months_keep_day_clamped_to_month_length(
    after: After, credited: datetime, tz: ZoneInfo
) -> None:
    local = credited.astimezone(tz)
    index = local.year * 12 + local.month - 1 + after.count
    year, month = index // 12, index % 12 + 1
    result = compute_expire_time(after, credited, tz).astimezone(tz)
    assert (result.year, result.month) == (year, month)
    assert result.day == min(local.day, calendar.monthrange(year, month)[1])


@settings(max_examples=200, deadline=None)
@given(after=afters(DurationUnit.DAYS), credited=instants, tz=zones)
def test_days_keep_local_wall_time_unless_it_does_not_exist(
    after: After, credited: datetime, tz: ZoneInfo
) -> None:
    local = credited.astimezone(tz)
    wall = local.replace(tzinfo=None) + timedelta(days=after.count)
    result = compute_expire_time(after, credited, tz).astimezone(tz).replace(tzinfo=None)
    if result != wall:
        # Only a DST gap may move it, forward and by less than the shift.
        assert wall < result <= wall + MAX_DST_SHIFT
        gap_probe = wall.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None)
        assert gap_probe != wall, "wall time exists, so it must be kept"


@settings(max_examples=200, deadline=None)
@given(after=afters(DurationUnit.HOURS), credited=instants, tz=zones)
def test_hours_are_exact(after: After, credited: datetime, tz: ZoneInfo) -> None:
    assert compute_expire_time(after, credited, tz) - credited == timedelta(hours=after.count)


@settings(max_examples=300, deadline=None)
@given(policy=end_of_periods(), credited=instants, tz=zones)
def test_end_of_period_is_a_local_period_start(
    policy: EndOfPeriod, credited: datetime, tz: ZoneInfo
) -> None:
    local = compute_expire_time(policy, credited, tz).astimezone(tz)
    assert (local.hour, local.minute, local.second, local.microsecond) == (0, 0, 0, 0)
    if policy.period is CalendarPeriod.DAY:
        return
    assert local.day == 1
    if policy.period is CalendarPeriod.NAMED_MONTH:
        assert policy.month is not None
        assert local.month == policy.month % 12 + 1
        return
    starts = {
        CalendarPeriod.MONTH: set(range(1, 13)),
        CalendarPeriod.QUARTER: {1, 4, 7, 10},
        CalendarPeriod.HALF_YEAR: {1, 7},
        CalendarPeriod.YEAR: {1},
    }
    assert local.month in starts[policy.period]


def _period_id(wall: datetime, policy: EndOfPeriod) -> object:
    """Which local period a wall time is in, written from the rule text (an oracle)."""
    y, m = wall.year, wall.month
    return {
        CalendarPeriod.DAY: wall.date(),
        CalendarPeriod.MONTH: (y, m),
        CalendarPeriod.QUARTER: (y, (m - 1) // 3),
        CalendarPeriod.HALF_YEAR: (y, (m - 1) // 6),
        CalendarPeriod.YEAR: y,
        # A named-month cycle runs to the end of month `month`; name it by that year.
        CalendarPeriod.NAMED_MONTH: y if policy.month is None or m <= policy.month else y + 1,
    }[policy.period]


@settings(max_examples=300, deadline=None)
@given(
    policy=st.builds(
        EndOfPeriod,
        period=st.sampled_from([p for p in CalendarPeriod if p is not CalendarPeriod.NAMED_MONTH]),
        offset=st.none() | afters(DurationUnit.HOURS),
    )
    | st.builds(
        EndOfPeriod,
        period=st.just(CalendarPeriod.NAMED_MONTH),
        month=st.integers(1, 12),
        offset=st.none() | afters(DurationUnit.HOURS),
    ),
    credited=instants,
    tz=zones,
)
def test_end_of_period_is_the_end_of_the_period_containing_the_base(
    policy: EndOfPeriod, credited: datetime, tz: ZoneInfo
) -> None:
    base = credited if policy.offset is None else credited + timedelta(hours=policy.offset.count)
    result = compute_expire_time(policy, credited, tz)
    base_period = _period_id(base.astimezone(tz).replace(tzinfo=None), policy)
    last_usable = (result - timedelta(microseconds=1)).astimezone(tz).replace(tzinfo=None)
    assert _period_id(last_usable, policy) == base_period
    assert _period_id(result.astimezone(tz).replace(tzinfo=None), policy) != base_period


def _expiry_pair(policy, a: datetime, b: datetime, tz: ZoneInfo):
    early, late = sorted((a, b))
    return compute_expire_time(policy, early, tz), compute_expire_time(policy, late, tz)


@settings(max_examples=300, deadline=None)
@given(
    policy=st.one_of(
        st.just(Never()),
        st.builds(FixedTime, instants),
        afters(DurationUnit.HOURS),
        end_of_periods(),
    ),
    a=instants,
    delta=st.one_of(
        st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=3)),
        st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=800)),
    ),
    tz=zones,
)
def test_later_credit_never_expires_earlier(
    policy, a: datetime, delta: timedelta, tz: ZoneInfo
) -> None:
    first, second = _expiry_pair(policy, a, a + delta, tz)
    if first is None:
        assert second is None
    else:
        assert first <= second


@settings(max_examples=300, deadline=None)
@given(
    policy=st.one_of(afters(DurationUnit.DAYS), afters(DurationUnit.MONTHS)),
    a=instants,
    delta=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=3)),
    tz_name=st.sampled_from(ZONE_NAMES),
)
def test_calendar_durations_are_monotonic_up_to_a_dst_shift(
    policy: After, a: datetime, delta: timedelta, tz_name: str
) -> None:
    # Wall-clock durations can swap two credits that straddle a DST change by up to the shift
    # (see the docstring of loyalty_ledger.domain.expiry); zones without DST never do.
    tz = ZoneInfo(tz_name)
    first, second = _expiry_pair(policy, a, a + delta, tz)
    slack = timedelta(0) if tz_name in NO_DST_ZONES else MAX_DST_SHIFT
    if policy.unit is DurationUnit.MONTHS:
        # Month-end clamping keeps the wall time but not the day: 30 Dec 23:47 + 9 months is
        # 30 Sep 23:47, while 31 Dec 00:00 (13 minutes later) is clamped to 30 Sep 00:00. The
        # local date never goes backwards, and the instant by less than a day.
        assert first.astimezone(tz).date() <= second.astimezone(tz).date()
        slack += timedelta(days=1)
    assert first <= second + slack


def test_month_end_clamping_can_move_a_later_credit_earlier_within_the_day() -> None:
    """The example hypothesis found: the rule is the issue's (same wall time, clamped)."""
    tz = ZoneInfo("America/New_York")
    policy = After(45, DurationUnit.MONTHS)
    early = datetime(2000, 12, 31, 4, 47, tzinfo=UTC)  # 30 Dec 23:47 local
    late = early + timedelta(minutes=13)  # 31 Dec 00:00 local
    first, second = _expiry_pair(policy, early, late, tz)
    assert first.astimezone(tz).replace(tzinfo=None) == datetime(2004, 9, 30, 23, 47)
    assert second.astimezone(tz).replace(tzinfo=None) == datetime(2004, 9, 30, 0, 0)
