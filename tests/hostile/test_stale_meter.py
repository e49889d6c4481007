"""Meter data gone stale under a valid subscription (issue 13 item 2): the device gives back no more
than the last measured headroom allowed (apm.core.controller STALE_HOLD_S), in the closed loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from apm.core.controller import STALE_HOLD_S, Controller
from sim.closed_loop import Trace, load_scenario, run

SCENARIO = Path(__file__).resolve().parents[2] / "sim" / "scenarios" / "outage-evening-tn-25a.toml"


def test_a_seven_minute_outage_at_the_evening_peak_trips_nothing():
    sc = load_scenario(SCENARIO)
    (start, end), = sc.outages
    assert end - start == 420
    trace = Trace()
    report = run(sc, trace=trace)
    assert report["trips"] == 0, report["trip_events"]
    t, sp = trace.t, trace.setpoints["a"]
    last_fresh = max(sp[i] for i, x in enumerate(t) if start - 30 <= x < start)
    during = [a for i, x in enumerate(t) if start <= x < end for a in [sp[i]]]  # end: data back
    # (the loaded house had paused the car: it stays paused, where the fixed fallback gave it 23 A)
    assert during and all(a <= last_fresh for a in during)
    assert report["stale_s"] > 300


def test_stale_data_holds_the_last_setpoints_then_comes_down_to_min_a():
    from apm.core.balancer import BalancerSettings
    from apm.core.charger_state import ChargerState
    from apm.core.config import ChargerConfig, GridConfig
    from apm.core.headroom import Headroom
    from apm.core.lines import ZERO

    c = Controller(GridConfig("TN", 25.0), [ChargerConfig("a", 32.0, 3)], settings=BalancerSettings(
        fixed_current_a=23.0, min_interval_s=0, hold_s=0, max_step_up_a=80))
    c.on_charger_states(0.0, [ChargerState("a", "charging", (16.0, 16.0, 16.0), 3, 16.0, 0.0)])
    c.use_headroom(Headroom(at=0.0, measured_at=0.0, network="TN", supply_phases=3, limit_a=23.0,
                            available_a=(16.0, 16.0, 16.0), measured_a=(None,) * 3, house_a=(None,) * 3,
                            own_a=ZERO, rise_a=0.0, age_s=0.0, fresh=True, reason=""))
    assert c.decide(1.0, mode="protect").as_dict()["a"] == 16.0
    stale_at = 1.0 + c.settings.stale_after_s + 1
    d = c.decide(stale_at, mode="protect")
    assert d.mode.startswith("fixed:") and d.as_dict()["a"] == 16.0  # held, not the fixed 23 A
    assert "held" in d.setpoints[0].reason
    assert c.decide(stale_at + STALE_HOLD_S, mode="protect").as_dict()["a"] == 16.0
    later = c.decide(stale_at + STALE_HOLD_S + 150, mode="protect").as_dict()["a"]
    assert 6.0 < later < 16.0
    assert c.decide(stale_at + 3600, mode="protect").as_dict()["a"] == 6.0  # min_a: never below what charges at all


def test_without_the_stale_policy_the_fixed_fallback_trips_the_fuse(monkeypatch: pytest.MonkeyPatch):
    # What the scenario shows: fuse - margin, shared, on top of the loaded house is too much.
    monkeypatch.setattr(Controller, "_stale_cap", lambda self, now, values, reasons: values)
    report = run(load_scenario(SCENARIO))
    assert report["trips"] > 0
