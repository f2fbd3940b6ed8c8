"""Properties of tier programmes (domain.tiers)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from loyalty_ledger.domain.tiers import DAY_US, Tier, TierBasis, TierProgram

thresholds = st.lists(st.integers(0, 10**12), min_size=1, max_size=16, unique=True).map(sorted)


def make(values: list[int], window_days: int = 30) -> TierProgram:
    return TierProgram(
        TierBasis.POINTS,
        "POINTS",
        window_days,
        tuple(Tier(f"t{i}", f"Tier {i}", v) for i, v in enumerate(values)),
    )


@given(thresholds, st.integers(0, 10**12), st.integers(0, 10**12))
def test_more_qualifying_never_means_a_lower_tier(values, a, b) -> None:
    program = make(values)
    rank = {tier_id: i for i, tier_id in enumerate(program.tier_ids())}
    low, high = sorted((a, b))
    low_tier, high_tier = program.tier_for(low), program.tier_for(high)
    assert (-1 if low_tier is None else rank[low_tier]) <= (
        -1 if high_tier is None else rank[high_tier]
    )


@given(thresholds, st.integers(0, 10**12))
def test_the_tier_is_the_highest_threshold_reached(values, qualifying) -> None:
    program = make(values)
    found = program.tier_for(qualifying)
    reached = [t for t in program.tiers if t.threshold <= qualifying]
    if not reached:
        assert found is None and qualifying < values[0]
    else:
        tier = next(t for t in program.tiers if t.tier_id == found)
        assert tier.threshold <= qualifying
        assert all(t.threshold > qualifying for t in program.tiers if t.threshold > tier.threshold)


@given(thresholds, st.integers(1, 1096), st.sampled_from(list(TierBasis)))
def test_programmes_survive_storage(values, window_days, basis) -> None:
    program = TierProgram(
        basis, "EUR", window_days, tuple(Tier(f"t{i}", "n", v) for i, v in enumerate(values))
    )
    assert TierProgram.from_dict(program.to_dict()) == program
    assert program.window_start_us(10**15) == 10**15 - window_days * DAY_US
