"""The capacity-charge guard in the closed loop: the month's figure stays in the owner's step while
every departure that can be met is met; the cost against no guard is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.capacity_loop import compare, shorten
from sim.eco_loop import load

MONTH = Path(__file__).resolve().parents[2] / "sim" / "scenarios" / "capacity-month-tn.toml"


def _check(res: dict) -> None:
    guard, free = res["guard"], res["no_guard"]
    assert guard["capacity_figure_kw"] <= 5.0
    assert guard["capacity_step"] == [2, 5]
    assert free["capacity_figure_kw"] > 5.0  # without the guard the cars lift the house a step
    assert guard["departures_missed_that_could_meet"] == []
    assert guard["departures_met"] == guard["departures_could_meet"] == guard["departures"]
    assert guard["trips"] == free["trips"] == 0
    assert guard["guard_steps_lowered"] > 0 and guard["guard_steps_paused"] > 0  # both ways of holding back
    assert guard["cost_total_nok"] < free["cost_total_nok"]
    assert res["summary"]["saving_nok"] == pytest.approx(free["cost_total_nok"] - guard["cost_total_nok"], abs=0.02)


@pytest.mark.soak  # 32 s of the suite; the guard in the device: test_capacity_guard_device.py
def test_two_winter_days_with_the_guard_at_5_kw() -> None:
    sc, sessions = shorten(*load(MONTH), days=2)
    res = compare(sc, sessions, step_kw=5.0)
    _check(res)
    assert res["guard"]["departures"] == 2
    # early in the month no hour may pass the step (the month's last days may: see hour_cap_kwh)
    assert max(k for _, k in res["guard"]["daily_peaks"]) <= 5.0


@pytest.mark.soak
@pytest.mark.timeout(2400)  # a simulated month, with and without the guard: about 10 minutes on this machine
def test_a_winter_month_with_the_guard_at_5_kw() -> None:
    sc, sessions = load(MONTH)
    res = compare(sc, sessions, step_kw=5.0)
    _check(res)
    assert res["guard"]["departures"] == 60
    assert len(res["guard"]["daily_peaks"]) == 31
