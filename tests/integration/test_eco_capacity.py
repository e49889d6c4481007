"""The capacity-charge guard: the hour's cap, the projection, the currents, the month's status."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apm.core.eco.capacity import (
    DEFAULT_LADDER,
    CapacityGoal,
    GuardedCharger,
    HourMeter,
    MonthLog,
    advise,
    charger_currents,
    hour_cap_kwh,
    ladder,
    ladder_pairs,
    merge_caps,
    status,
)
from apm.core.eco.prices import OSLO
from apm.core.eco.tariff import TariffError

JAN = datetime(2026, 1, 1, tzinfo=OSLO)
GOAL5 = CapacityGoal(5.0)
TN3 = 3 * 230 / 1000  # kW per A, 3-phase TN
ONE = 230 / 1000


def _log(peaks: dict[int, float]) -> MonthLog:
    """A January log with one hour (19:00) of the given energy on each given day."""
    log = MonthLog.of(JAN)
    for day, kwh in peaks.items():
        log = log.with_hour(JAN.replace(day=day, hour=19), kwh)
    return log


def test_default_ladder_is_the_common_one() -> None:
    bounds = [s.hi_kw for s in DEFAULT_LADDER.steps][:6]
    assert bounds == [2, 5, 10, 15, 20, 25]
    assert ladder(ladder_pairs(DEFAULT_LADDER)) == DEFAULT_LADDER
    with pytest.raises(TariffError):
        ladder([(1, 100), (5, 200)])  # must start at 0
    with pytest.raises(TariffError):
        CapacityGoal(0)
    with pytest.raises(TariffError, match="not a step of the ladder: one of 2, 5, 10"):
        CapacityGoal(4)


def test_cap_is_the_step_early_in_the_month() -> None:
    assert hour_cap_kwh(GOAL5, MonthLog.of(JAN), JAN.replace(day=3, hour=18)) == pytest.approx(5.0)
    # Lower peaks so far do not give room: the worst case is that three later days reach the cap.
    assert hour_cap_kwh(GOAL5, _log({1: 2.0, 2: 2.0}), JAN.replace(day=3)) == pytest.approx(5.0)


def test_an_early_high_peak_leaves_less_room() -> None:
    # 8 kWh on the 1st: (8 + x + x) / 3 <= 5 -> x <= 3.5
    assert hour_cap_kwh(GOAL5, _log({1: 8.0}), JAN.replace(day=5)) == pytest.approx(3.5)


def test_the_last_day_may_use_what_the_month_left() -> None:
    log = _log({d: 2.0 for d in range(1, 31)})
    # 31 January: no later days; the figure is (x + 2 + 2) / 3 <= 5 -> x <= 11
    assert hour_cap_kwh(GOAL5, log, JAN.replace(day=31, hour=12)) == pytest.approx(11.0)
    # 30 January: one later day may peak as high: (x + x + 2) / 3 <= 5 -> 6.5
    log30 = _log({d: 2.0 for d in range(1, 30)})
    assert hour_cap_kwh(GOAL5, log30, JAN.replace(day=30, hour=12)) == pytest.approx(6.5)


def test_todays_own_peak_is_not_counted_twice() -> None:
    log = _log({d: 4.0 for d in range(1, 31)})
    # today (31st) already had 4.0 in an earlier hour; the hour may go to 7: (7 + 4 + 4) / 3 = 5
    assert hour_cap_kwh(GOAL5, log, JAN.replace(day=31, hour=20)) == pytest.approx(7.0)


def test_a_lost_goal_holds_the_next_step() -> None:
    log = _log({1: 9.0, 2: 9.0, 3: 9.0})
    # The month is already at 9 kW whatever comes: keep it in 5-10.
    assert hour_cap_kwh(GOAL5, log, JAN.replace(day=4)) == pytest.approx(10.0)


def test_hour_meter_integrates_and_closes_hours() -> None:
    t = JAN.replace(hour=10)
    m = HourMeter.start(t, 3000.0)
    m, closed = m.advance(t + timedelta(minutes=30), 6000.0)
    assert closed == () and m.kwh == pytest.approx(1.5)
    m, closed = m.advance(t + timedelta(minutes=90), 1000.0)
    assert closed == ((t.astimezone(UTC), pytest.approx(4.5)),)
    assert m.hour == (t + timedelta(hours=1)).astimezone(UTC) and m.kwh == pytest.approx(3.0)
    assert m.used_kwh(t + timedelta(minutes=120)) == pytest.approx(3.0 + 0.5)
    assert m.advance(t, 0.0)[0] is m  # an older sample is ignored


def test_list3_counters_replace_the_integral() -> None:
    h = JAN.replace(hour=7)
    log = MonthLog.of(JAN).with_hour(h, 4.8).with_hour(h, 5.1)
    assert log.hours == ((h.astimezone(UTC), 5.1),)
    # an hour of February starts February's log
    feb = log.with_hour(JAN.replace(month=2, day=1, hour=0), 1.0)
    assert (feb.year, feb.month, len(feb.hours)) == (2026, 2, 1)


def test_advice_is_a_fixed_point_and_says_whats_left() -> None:
    now = JAN.replace(day=2, hour=18, minute=15)
    a = advise(GOAL5, 5.0, 1.0, now, 2.0)
    # 4 kWh left in 0.75 h with the household at 2 kW: the chargers may average 3.333 kW
    assert a.left_kwh == pytest.approx(4.0)
    assert a.chargers_kw == pytest.approx(4.0 / 0.75 - 2.0)
    assert a.projected_kwh(a.chargers_kw) == pytest.approx(5.0)
    assert advise(GOAL5, math.inf, 1.0, now, 2.0).chargers_kw == math.inf
    assert advise(GOAL5, 5.0, 4.9, now, 2.0).chargers_kw == 0.0


def test_currents_lower_before_they_pause() -> None:
    one = GuardedCharger("a", ONE, 6, 32)
    three = GuardedCharger("b", TN3, 6, 16)
    assert charger_currents(3.0, [one]) == {"a": pytest.approx(3.0 / ONE)}  # 13 A: lowered, not paused
    assert charger_currents(1.0, [one]) == {"a": 0.0}  # 4.3 A < 6 A: pause
    assert charger_currents(math.inf, [one, three]) == {"a": 32, "b": 16}
    # 6 kW: equal currents 6 kW / (0.23 + 0.69) = 6.52 A each
    both = charger_currents(6.0, [one, three])
    assert both["a"] == pytest.approx(both["b"]) == pytest.approx(6.0 / (ONE + TN3))
    # 5 kW: 5.43 A each is under the minimum: the last charger pauses, the first gets all
    assert charger_currents(5.0, [one, three]) == {"a": pytest.approx(5.0 / ONE), "b": 0.0}
    assert merge_caps(None, {"a": 10.0}, {"a": 8.0, "b": 3.0}) == {"a": 8.0, "b": 3.0}
    assert merge_caps(None) is None


def test_status_names_the_peaks_and_step() -> None:
    log = _log({1: 3.0, 2: 6.0, 3: 4.0, 4: 1.0})
    s = status(GOAL5, log, 1.2, JAN.replace(day=5, hour=10))
    assert [k for _, k in s.peaks] == [6.0, 4.0, 3.0]
    assert s.figure_kw == pytest.approx(13 / 3)
    assert (s.step.lo_kw, s.step.hi_kw) == (2, 5)
    d = s.to_dict()
    assert d["hour_left_kwh"] == pytest.approx(s.hour_cap_kwh - 1.2, abs=1e-3)
    assert d["peaks"][0] == {"day": "2026-01-02", "kwh": 6.0}


# --- properties -----------------------------------------------------------------------------------

BOUNDS = GOAL5.ladder_bounds
peaks_st = st.dictionaries(st.integers(1, 28), st.floats(0, 12), max_size=27)


@settings(max_examples=150, deadline=None)
@given(peaks_st, st.integers(1, 31), st.floats(0, 4.5), st.floats(0, 0.9), st.sampled_from([60, 10, 1]))
def test_projection_never_exceeds_the_cap_with_a_constant_household(peaks, day, house_kw, start_frac, step_s) -> None:
    """The household constant, the chargers drawing what the guard allows (recomputed every step,
    held in between): the hour ends at or under the cap."""
    goal = CapacityGoal(5.0, margin_kwh=0.0)
    log = _log({d: k for d, k in peaks.items() if d < day})
    hour = JAN.replace(day=day, hour=17)
    cap = hour_cap_kwh(goal, log, hour)
    t = hour + timedelta(seconds=int(3600 * start_frac))
    used = house_kw * start_frac  # the hour so far: the household alone
    if used + house_kw * (1 - start_frac) > cap:
        return  # the household alone breaks it: nothing the chargers can do
    end = hour + timedelta(hours=1)
    while t < end:
        dt = min(timedelta(seconds=step_s), end - t)
        a = advise(goal, cap, used, t, house_kw)
        used += (house_kw + a.chargers_kw) * dt.total_seconds() / 3600
        t += dt
    assert used <= cap + 1e-6


@settings(max_examples=150, deadline=None)
@given(peaks_st, st.integers(1, 31), st.sampled_from(BOUNDS), st.sampled_from(BOUNDS))
def test_a_higher_step_never_gives_less(peaks, day, a, b) -> None:
    log = _log({d: k for d, k in peaks.items() if d < day})
    now = JAN.replace(day=day, hour=12)
    low, high = CapacityGoal(min(a, b)), CapacityGoal(max(a, b))
    assert hour_cap_kwh(high, log, now) >= hour_cap_kwh(low, log, now) - 1e-9
    a_low = advise(low, hour_cap_kwh(low, log, now), 1.0, now, 2.0)
    a_high = advise(high, hour_cap_kwh(high, log, now), 1.0, now, 2.0)
    assert a_high.chargers_kw >= a_low.chargers_kw - 1e-9


@settings(max_examples=100, deadline=None)
@given(peaks_st, st.integers(1, 31))
def test_the_cap_keeps_the_month_in_the_step(peaks, day) -> None:
    """If this hour and every later day of the month reach the cap, the month ends at the goal, or,
    when the days before had already lost it, at the bound of the step they forced (every day of the
    month has its peak, as the meter records one)."""
    log = _log({d: peaks.get(d, 0.0) for d in range(1, day)})
    now = JAN.replace(day=day, hour=12)
    cap = hour_cap_kwh(GOAL5, log, now)
    full = log
    for d in range(day, 32):
        full = full.with_hour(JAN.replace(day=d, hour=12), cap)
    forced = sum(sorted(log.daily_peaks().values(), reverse=True)[:3]) / 3
    bound = 5.0 if forced <= 5.0 else DEFAULT_LADDER.step_for(forced).hi_kw
    assert full.figure_kw(3) <= bound + 1e-6


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 40), st.lists(st.tuples(st.sampled_from([ONE, TN3]), st.floats(6, 32)), min_size=1, max_size=3))
def test_currents_stay_within_the_cap(cap_kw, spec) -> None:
    chargers = [GuardedCharger(f"c{i}", p, 6.0, m) for i, (p, m) in enumerate(spec)]
    out = charger_currents(cap_kw, chargers)
    assert sum(out[c.id] * c.kw_per_a for c in chargers) <= cap_kw + 1e-6
    for c in chargers:
        assert out[c.id] == 0.0 or c.min_a - 1e-9 <= out[c.id] <= c.max_a + 1e-9
    if cap_kw >= chargers[0].min_a * chargers[0].kw_per_a:
        assert out[chargers[0].id] > 0  # the first charger runs whenever its minimum fits


def test_the_planner_takes_the_guards_step() -> None:
    from apm.core.config import CapacitySettings
    from apm.core.eco.capacity import goal_from_settings
    from apm.core.eco.planner import CapacityLimit

    assert goal_from_settings(CapacitySettings()) is None
    goal = goal_from_settings(CapacitySettings(enabled=True, step_kw=5.0))
    assert goal == CapacityGoal(5.0, DEFAULT_LADDER, 0.05)
    log = _log({1: 8.0})
    now = JAN.replace(day=5, hour=20)
    limit = CapacityLimit.for_goal(goal, log, now, 2.0)
    assert limit.goal is goal
    assert limit.cap_kw == pytest.approx(hour_cap_kwh(goal, log, now) - 0.05) == pytest.approx(3.45)


def test_cli_plan_with_the_guards_step() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    base = [sys.executable, "-m", "apm", "eco", "plan", "--now", "2026-01-12T17:00", "--departure", "07:30",
            "--energy-kwh", "20", "--household-kw", "2"]
    r = subprocess.run([*base, "--capacity-step-kw", "5"], cwd=root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "capacity: peak hour 5.00 kWh, cap 5 kW" in r.stdout
    r = subprocess.run([*base, "--capacity-step-kw", "4"], cwd=root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a step of the ladder" in r.stderr
