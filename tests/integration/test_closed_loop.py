"""The closed loop: load steps, stale data, repeated hourly lists, and the two winter days."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from apm.core.config import ChargerConfig
from apm.core.lines import terminal_currents, to_lines
from apm.core.wiring import MEASURED_PAIR_ROTATION
from sim.charger import SimCharger
from sim.closed_loop import (
    ScenarioError,
    Trace,
    load_scenario,
    main,
    run,
    scenario_from_dict,
)
from sim.grid import Grid
from sim.household import SyntheticHome
from sim.oracle import best_allocation, fair_allocation, reports_i2, rule_house

SCENARIOS = Path(__file__).resolve().parents[2] / "sim" / "scenarios"


def step_scenario(tmp_path: Path, step_a: float, **extra: Any) -> dict[str, Any]:
    """TN 25 A; 5 A on every line, L1 up by ``step_a`` from 600 s to 900 s; a 1-phase car on L1 (a)
    and one on L2 (b)."""
    trace = tmp_path / "step.csv"
    trace.write_text(f"time_s,l1_a,l2_a,l3_a\n0,5,5,5\n600,{5 + step_a},5,5\n900,5,5,5\n", encoding="utf-8")
    d: dict[str, Any] = {
        "duration_s": 1500,
        "grid": {"network": "TN", "fuse_a": 25, "safety_margin_a": 2},
        "meter": {"vendor": "aidon", "kind": "3p-tn"},
        "household": {"trace": "step.csv"},
        "charger": [{"id": "a", "max_a": 32, "phases": 3, "rotation": ["L1", "L2", "L3"]},
                    {"id": "b", "max_a": 32, "phases": 3, "rotation": ["L2", "L3", "L1"]}],
        "ev": [{"charger": "a", "phases": 1, "max_a": 32, "battery_kwh": 80, "soc": 0.2},
               {"charger": "b", "phases": 1, "max_a": 32, "battery_kwh": 80, "soc": 0.2}],
    }
    d.update(extra)
    return d


def test_load_step_on_one_line_cuts_that_charger_before_a_trip_and_current_comes_back(tmp_path: Path) -> None:
    sc = scenario_from_dict(step_scenario(tmp_path, 15.0), base=tmp_path)
    trace = Trace()
    report = run(sc, trace=trace)
    a, b = trace.chargers["a"], trace.chargers["b"]
    l1 = [x[0] for x in trace.lines]
    assert report["trips"] == 0
    assert a[590] == pytest.approx(18.0) and b[590] == pytest.approx(18.0)  # 23 A limit - 5 A house
    # the step (house 20 A on L1) leaves 3 A: a pauses within a list period plus the EV's response
    over = [t for t in range(600, 900) if l1[t] > sc.limit_a]
    assert over and max(over) < 600 + 15
    assert max(a[615:900]) == 0.0
    assert min(b[600:900]) == pytest.approx(18.0)  # the charger on L2 is left alone
    # the load drops at 900: a restarts (after its restart delay) and gets its share back
    back = next(t for t in range(900, 1500) if a[t] >= 17.5)
    assert back < 900 + 120
    assert report["max_ratio"]["L1"] < 1.6
    # the same step without a meter (fixed 32 A) trips the fuse
    fixed = run(sc, fixed=True)
    assert fixed["trips"] >= 1
    assert "L1" in {e["line"] for e in fixed["trip_events"]}


def test_smaller_step_only_reduces_the_charger(tmp_path: Path) -> None:
    sc = scenario_from_dict(step_scenario(tmp_path, 7.0), base=tmp_path)
    trace = Trace()
    report = run(sc, trace=trace)
    a = trace.chargers["a"]
    assert report["trips"] == 0
    assert a[700] == pytest.approx(11.0)  # 23 - 12
    assert min(a[620:900]) >= 6.0  # never paused
    assert a[960] == pytest.approx(18.0)
    assert report["energy_total_kwh"] <= report["oracle_conservative_i2_energy_kwh"] * 1.01


def test_stale_meter_data_falls_back_to_the_safe_current(tmp_path: Path) -> None:
    d = step_scenario(tmp_path, 0.0, fixed_current_a=10)
    d["meter"]["outages"] = [[300, 700]]
    sc = scenario_from_dict(d, base=tmp_path)
    trace = Trace()
    report = run(sc, trace=trace)
    sa, sb = trace.setpoints["a"], trace.setpoints["b"]
    assert sa[290] == pytest.approx(18.0)
    # the last list 2 before the outage arrived at 300 - 10 s: stale 25 s after it
    assert sa[310] == pytest.approx(18.0)
    assert sa[316] == pytest.approx(10.0) and sb[316] == pytest.approx(10.0)  # 10 A per line, each alone
    assert max(sa[316:700]) == pytest.approx(10.0)
    assert sa[760] == pytest.approx(18.0)  # fresh again
    assert 380 <= report["stale_s"] <= 420
    assert report["trips"] == 0


def test_repeated_hourly_list_is_not_double_counted(tmp_path: Path) -> None:
    d = step_scenario(tmp_path, 0.0, duration_s=3 * 3600 + 15)
    d["meter"]["repeat_hourly"] = True
    report = run(scenario_from_dict(d, base=tmp_path))
    assert report["readings"]["list3"] == 4  # 00:00, 01:00, 02:00, 03:00 (sent at hh:00:10) ...
    assert report["repeated_hourly_dropped"] == 4  # ... each sent twice
    assert report["hourly_records"] == 3


def test_oracle_allocations() -> None:
    use = {"one": (1.0, 0.0, 0.0), "three": (1.0, 1.0, 1.0)}
    avail = (14.0, 30.0, 30.0)
    caps = {"one": 32.0, "three": 16.0}
    weight = {"one": 230.0, "three": 690.0}
    assert fair_allocation(caps, use, avail, 6.0) == pytest.approx({"one": 7.0, "three": 7.0})
    assert best_allocation(caps, use, avail, weight, 6.0) == pytest.approx({"one": 0.0, "three": 14.0})
    assert fair_allocation(caps, use, (10.0, 30.0, 30.0), 6.0) == pytest.approx({"three": 10.0})


def test_phasor_it_lines_never_exceed_the_in_phase_model() -> None:
    home = SyntheticHome("IT", seed=3)
    cfg = ChargerConfig("a", 32.0, 3, ("L3", "L1", "L2"))
    mag, pha = Grid("IT"), Grid("IT", model="phasor")
    ch = SimCharger(cfg, "IT")
    ch.terminals = terminal_currents("IT", 1, 20.0)
    ch.lines = to_lines(ch.terminals, cfg.rotation)
    seen_less = False
    for t in range(0, 86400, 600):
        s = home.sample(float(t))
        m, p = mag.line_currents(s, [ch]), pha.line_currents(s, [ch])
        for i in range(3):
            assert p[i] <= m[i] + 1e-9
            seen_less |= p[i] < m[i] - 1.0
    assert seen_less
    # a single load between two lines is the same in both models
    ch2 = SimCharger(ChargerConfig("b", 32.0, 1, ("L1", "L2", "L3")), "IT")
    ch2.terminals = terminal_currents("IT", 1, 16.0)
    ch2.lines = to_lines(ch2.terminals, ch2.config.rotation)
    quiet = home.sample(0.0)._replace(slots_w=(0.0, 0.0, 0.0, 0.0), lines=(0.0, 0.0, 0.0), reactive_var=0.0,
                                      slots_var=(0.0, 0.0, 0.0, 0.0))
    assert pha.line_currents(quiet, [ch2]) == pytest.approx((16.0, 16.0, 0.0))


def test_scenario_errors_name_the_key(tmp_path: Path) -> None:
    base = step_scenario(tmp_path, 0.0)
    for change, where in (
        ({"grid": {"network": "XX", "fuse_a": 25}}, "grid.network"),
        ({"grid": {"network": "TN", "fuse_a": 25, "fuse": 3}}, "grid.fuse"),
        ({"meter": {"vendor": "acme"}}, "meter.vendor"),
        ({"meter": {"kind": "3p-it"}}, "meter.kind"),
        ({"charger": [{"id": "a", "rotation": ["L1", "L1", "L2"]}]}, "charger[0].rotation"),
        ({"ev": [{"charger": "zz"}]}, "ev[0].charger"),
        ({"balancer": {"hold": 1}}, "balancer.hold"),
        ({"balancer": {"decrease_deadband_a": 2.5}}, "balancer.decrease_deadband_a"),
        ({"balancer": {"sharing": "greedy"}}, "balancer.sharing"),
        ({"grid": {"network": "TN", "fuse_a": 25, "sequence": "L2-L1-L3"}}, "grid.sequence"),
        ({"grid": {"network": "TN", "fuse_a": 25, "unbalance": [0.5, 0, 0]}}, "grid.unbalance"),
        ({"household": {"trace": "step.csv", "pf": 0.2}}, "household.pf"),
        ({"meter": {"vendor": "aidon", "kind": "3p-tn", "skew_s": -1}}, "meter.skew_s"),
        ({"colour": "red"}, "colour"),
    ):
        with pytest.raises(ScenarioError, match=where.replace("[", r"\[").replace("]", r"\]")):
            scenario_from_dict({**base, **change}, base=tmp_path)
    overlap = {**base, "ev": [{"charger": "a", "arrive_s": 0, "depart_s": 100},
                              {"charger": "a", "arrive_s": 50, "depart_s": 200}]}
    with pytest.raises(ScenarioError, match="overlaps"):
        scenario_from_dict(overlap, base=tmp_path)
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario(tmp_path / "missing.toml")


def test_command_line_writes_report_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s.toml").write_text(
        'duration_s = 600\n[grid]\nnetwork = "TN"\nfuse_a = 25\n[household]\nseed = 3\n'
        '[[charger]]\nid = "a"\n[[ev]]\ncharger = "a"\nphases = 3\nmax_a = 16\n', encoding="utf-8")
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main([str(tmp_path / "s.toml"), "--report", str(out), "--plot", str(png)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    for key in ("trips", "max_ratio", "seconds_above_in", "energy_kwh", "energy_total_kwh", "ratio", "peak",
                "seconds_above_in_total", "oracle_conservative_i2_energy_kwh", "setpoint_changes", "fixed_32a"):
        assert key in report
    # the headline is against the oracle that knows every line current
    assert report["ratio"] == report["oracle_measured_ratio"]
    assert png.stat().st_size > 10_000
    assert main([str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


# Floors (achieved on the winter days, fair sharing): share of the conservative-I2 diagnostic oracle,
# of the oracle that knows every line current (the headline), of the max-power oracle, and a ceiling
# on setpoint changes (both chargers, the whole day).
WINTER_FLOORS = {
    "winter-tn-25a": (0.98, 0.98, 0.89, 1100),
    # Aidon: no I2. The device's bound on it (Kirchhoff, the two-wattmeter triangle, and its smaller
    # solution where our own steps have shown it true, apm/core/it_learner.py) beats the issue's
    # Kirchhoff bound; about an eighth of what a measured I2 would give is still lost (lists after
    # several household loads switched at once, until our next step tells the mirror again).
    # The Kirchhoff bound is now safe at PF 0.7 (each line's household current at its worst angle,
    # docs/it-l2-inference.md): 0.878 -> 0.620 of oracle_measured, 2,707 -> 4,195 setpoint changes
    "winter-it-40a": (0.80, 0.60, 0.57, 4400),
    # the same day with a meter that reports I2 (Kaifa): what the measurement is worth
    "winter-it-40a-kaifa": (1.0, 1.0, 0.95, 3000),
}


@pytest.mark.parametrize("name", sorted(WINTER_FLOORS))
def test_winter_day_has_no_trips(name: str) -> None:
    sc = load_scenario(SCENARIOS / f"{name}.toml")
    assert sc.duration_s == 86400
    report = run(sc)
    assert report["trips"] == 0
    # the meter's first hourly list (00:00:10) is the baseline; the one closing 23:00-24:00 comes at
    # 24:00:10, after the day
    assert report["hourly_records"] == 23
    assert report["energy_total_kwh"] > 50
    issue, measured, most, changes = WINTER_FLOORS[name]
    assert report["oracle_conservative_i2_ratio"] >= issue
    assert report["oracle_measured_ratio"] >= measured
    assert report["oracle_max_ratio"] >= most
    assert report["setpoint_changes"] <= changes
    assert report["oracle_max_energy_kwh"] >= report["oracle_measured_energy_kwh"]
    if name == "winter-it-40a":
        # the unreported I2 costs the diagnostic oracle too: its bound is above the true L2 current
        assert report["oracle_conservative_i2_energy_kwh"] < 0.9 * report["oracle_measured_energy_kwh"]
    else:
        assert report["oracle_conservative_i2_energy_kwh"] == report["oracle_measured_energy_kwh"]
    if name == "winter-it-40a":
        i2 = report["i2"]
        assert i2["lists"] > 8000 and i2["method"]["two-wattmeter"] > 0
        # the two-wattmeter estimate and the Kirchhoff bound are upper bounds (apm/core/headroom.py)
        assert i2["max_shortfall_by_method_a"]["two-wattmeter"] <= 1e-6
        assert i2["max_shortfall_by_method_a"].get("kirchhoff", 0.0) <= 1e-6
        assert i2["max_shortfall_a"] < 1.0
    else:
        assert "i2" not in report


@pytest.mark.soak
@pytest.mark.parametrize("name", ["winter-tn-25a", "winter-it-40a"])
@pytest.mark.parametrize("seed", [3, 11, 21])
def test_winter_days_of_other_households(name: str, seed: int) -> None:
    """The same days with other households (seeds): no trips, and near the conservative-I2 oracle. The
    committed days are above 97 %; some evenings cost a few percent more: cooktop zones simmering
    (on and off every 30-60 s, several kW) move the headroom across the 6 A pause threshold faster
    than 10 s lists, an EV's response and a restart delay can follow, while the oracle charges in
    every gap."""
    sc = load_scenario(SCENARIOS / f"{name}.toml")
    report = run(dataclasses.replace(sc, household={**sc.household, "seed": seed}))
    assert report["trips"] == 0
    # Aidon IT: the diagnostic oracle takes the household's L2 as house L1 + house L3 from the true
    # house currents; the device cannot (our chargers' share of I1 and I3 has an unknown angle to the
    # household's), and its sound bound costs what that knowledge is worth (measured 0.86-0.90)
    assert report["oracle_conservative_i2_ratio"] >= (0.95 if name == "winter-tn-25a" else 0.82)


def test_the_diagnostic_oracle_bounds_an_unreported_i2_conservatively() -> None:
    aidon = load_scenario(SCENARIOS / "winter-it-40a.toml")
    kaifa = load_scenario(SCENARIOS / "winter-it-40a-kaifa.toml")
    tn = load_scenario(SCENARIOS / "winter-tn-25a.toml")
    assert not reports_i2(aidon) and reports_i2(kaifa) and reports_i2(tn)
    assert rule_house(aidon, (5.0, 6.0, 3.0)) == (5.0, 8.0, 3.0)  # house L2 <= house L1 + house L3
    assert rule_house(aidon, (5.0, 9.0, 3.0)) == (5.0, 9.0, 3.0)  # never below the truth
    assert rule_house(kaifa, (5.0, 6.0, 3.0)) == (5.0, 6.0, 3.0)


def test_the_kaifa_day_is_the_aidon_day_with_another_meter() -> None:
    aidon = load_scenario(SCENARIOS / "winter-it-40a.toml")
    kaifa = load_scenario(SCENARIOS / "winter-it-40a-kaifa.toml")
    assert (aidon.vendor, kaifa.vendor) == ("aidon", "kaifa")
    assert dataclasses.replace(kaifa, name=aidon.name, vendor="aidon") == aidon
    assert aidon.grid_model == "phasor"


def test_max_energy_sharing_on_the_tn_winter_day() -> None:
    """Giving the shared line to the EV that makes more power of it beats the fair-share rule's own
    ceiling (the fair oracle: on TN the conservative-I2 one is the measured one) on the TN day, with no trips; fair stays the
    default. (Not on every slice: on the night alone, filling the 3-phase car first gives less than
    sharing, and the max oracle is below the fair one too: the oracles are rules for each second,
    not schedules.)"""
    sc = load_scenario(SCENARIOS / "winter-tn-25a.toml")
    most = run(dataclasses.replace(sc, balancer={"sharing": "max_energy"}))
    assert most["trips"] == 0
    assert most["oracle_conservative_i2_ratio"] >= 1.03
    assert most["oracle_max_ratio"] >= 0.94
    assert most["setpoint_changes"] <= 1000


# winter-it-40a: 0.71 before the Kirchhoff bound was made sound at low power factor (0.60 after)
MAX_ENERGY_FLOORS = {"winter-tn-25a": 0.94, "winter-it-40a": 0.57, "winter-it-40a-kaifa": 0.95}


@pytest.mark.soak
@pytest.mark.parametrize("name", sorted(MAX_ENERGY_FLOORS))
def test_winter_day_with_max_energy_sharing(name: str) -> None:
    sc = load_scenario(SCENARIOS / f"{name}.toml")
    report = run(dataclasses.replace(sc, balancer={"sharing": "max_energy"}))
    assert report["trips"] == 0
    assert report["oracle_max_ratio"] >= MAX_ENERGY_FLOORS[name]


@pytest.mark.soak
@pytest.mark.parametrize("change", [{"sequence": -1}, {"skew_s": 1.0}, {"skew_s": 2.0},
                                    {"unbalance": (0.01, -0.01, 0.0)}])
def test_winter_it_day_is_robust_to_the_supply_and_the_meter(change: dict[str, Any]) -> None:
    """The other phase sequence, a meter whose powers lag its currents by one or two seconds, a 1 %
    voltage unbalance: no trips, the energy holds, and the L2 estimate is short only where a meter's
    skew makes one list a mixture of two states."""
    sc = dataclasses.replace(load_scenario(SCENARIOS / "winter-it-40a.toml"), **change)
    report = run(sc)
    assert report["trips"] == 0
    assert report["oracle_measured_ratio"] >= 0.57  # 0.84 on the in-phase Kirchhoff bound, 0.60-0.67 now
    short = dict(report["i2"]["max_shortfall_by_method_a"])
    assert short.pop("kirchhoff", 0.0) <= 1e-6  # sound at any skew: it uses the currents alone
    cap = 0.13 * sc.fuse_a + sc.safety_margin_a
    if not change.get("skew_s"):
        assert max(short.values()) <= 1e-6
        return
    # A household load switching between a list's powers and its currents (the skew) makes a triangle
    # of two states: the learned smaller solution was fooled on a few lists of the day (up to 5.8 A
    # with 2 s), never by more than its cap, 0.13 In + the margin (docs/it-l2-inference.md); the
    # larger solution by up to 2.6 A, until the next list 1 (2.5 s) shows the load's power and the
    # headroom adds it to every line.
    assert short.pop("two-wattmeter-learned", 0.0) < cap
    assert max(short.values(), default=0.0) < cap


@pytest.mark.soak  # a variant of the IT day (14 s of the suite); the power bound has unit tests
def test_winter_it_day_with_the_power_bound_on_i2() -> None:
    # the bound's assumption (every load at PF >= 1) holds only in a resistive world: the world this
    # scenario had before loads had power factors (in-phase model, every household load resistive,
    # thermostats stepped every 10 s)
    sc = load_scenario(SCENARIOS / "winter-it-40a.toml")
    house = {**sc.household, "reactive": False, "thermostat_step_s": 10.0}
    report = run(dataclasses.replace(sc, grid_model="magnitude", household=house,
                                     headroom={"i2_power_factor": 1.0, "two_wattmeter": False}))
    assert report["trips"] == 0
    assert report["oracle_measured_ratio"] >= 0.97


def test_an_it_trace_is_a_physical_world_for_the_two_wattmeter_bound(tmp_path: Path) -> None:
    """Issue 15 item 3: an IT trace of line-current magnitudes (loads L1-L2 20 A, L2-L3 10 A, L3-L1 2 A
    from 300 s to 600 s, at PF 0.95) runs in the phasor world with the two-wattmeter bound on; the
    bound is never below the true L2 current, and it delivers more than the Kirchhoff bound alone.
    ``scale`` halves the trace's currents."""
    def lines(a: float, b: float, c: float) -> str:  # IT line magnitudes of pair loads at one PF
        x = ((a * a + c * c + a * c) ** 0.5, (a * a + b * b + a * b) ** 0.5, (b * b + c * c + b * c) ** 0.5)
        return ",".join(f"{v:.3f}" for v in x)

    (tmp_path / "house.csv").write_text(f"time_s,l1_a,l2_a,l3_a\n0,{lines(6, 4, 1)}\n300,{lines(20, 10, 2)}\n"
                                        f"600,{lines(6, 4, 1)}\n", encoding="utf-8")
    d: dict[str, Any] = {
        "duration_s": 900, "grid": {"network": "IT", "fuse_a": 40, "safety_margin_a": 2},
        "meter": {"vendor": "aidon", "kind": "3p-it"}, "household": {"trace": "house.csv"},
        "charger": [{"id": "a", "max_a": 32, "phases": 1, "rotation": ["L1", "L2", "L3"]}],
        "ev": [{"charger": "a", "phases": 1, "max_a": 32, "battery_kwh": 80, "soc": 0.2}],
    }
    sc = scenario_from_dict(d, base=tmp_path)
    assert sc.grid_model == "phasor" and "two_wattmeter" not in sc.headroom
    trace = Trace()
    report = run(sc, trace=trace)
    assert report["trips"] == 0 and report["household_trace"] == {"rows": 3, "clamped_rows": 0}
    assert report["i2"]["method"]["two-wattmeter"] > 0
    assert report["i2"]["max_shortfall_by_method_a"]["two-wattmeter"] == 0.0
    # the household's line currents are the trace's (the supply's 1 % unbalance moves them a little)
    assert trace.house[400] == pytest.approx((21.07, 26.46, 11.14), rel=0.01)
    kirchhoff = run(dataclasses.replace(sc, headroom={"two_wattmeter": False}))
    assert report["energy_total_kwh"] > kirchhoff["energy_total_kwh"]
    half = Trace()
    run(scenario_from_dict({**d, "household": {"trace": "house.csv", "scale": 0.5}}, base=tmp_path), trace=half)
    assert half.house[400] == pytest.approx(tuple(x / 2 for x in trace.house[400]))


def test_single_phase_supply(tmp_path: Path) -> None:
    (tmp_path / "one.csv").write_text("time_s,l1_a,l2_a,l3_a\n0,10,0,0\n300,22,0,0\n600,10,0,0\n", encoding="utf-8")
    sc = scenario_from_dict({
        "duration_s": 800,
        "grid": {"network": "TN", "fuse_a": 32, "safety_margin_a": 2},
        "meter": {"vendor": "kaifa", "kind": "1p"},
        "household": {"trace": "one.csv"},
        "charger": [{"id": "a", "max_a": 32, "phases": 1, "rotation": ["L3", "L1", "L2"]}],
        "ev": [{"charger": "a", "phases": 1, "max_a": 32, "battery_kwh": 80}],
    }, base=tmp_path)
    assert sc.supply_phases == 1
    trace = Trace()
    report = run(sc, trace=trace)
    a = trace.chargers["a"]
    assert report["trips"] == 0
    assert a[290] == pytest.approx(20.0) and a[500] == pytest.approx(8.0) and a[700] == pytest.approx(20.0)
    assert all(x[1] == 0.0 and x[2] == 0.0 for x in trace.lines)


@pytest.mark.soak  # two winter days: 40 s of a 10-minute suite; the advice itself has unit tests
def test_the_advised_wiring_on_an_it_meter_without_i2_delivers_much_more() -> None:
    """apm.core.wiring's advice, on the Aidon IT day: the 1-phase car's charger rotated L1 L3 L2 loads only
    measured lines, and the day delivers much more. (Since the Kirchhoff bound is sound at low power
    factor, the 3-phase car gains no longer: while the 1-phase car draws 32 A on L1 and L3, the sound
    bounds on the household's L2 leave it less than 6 A there, and the day's gain is the 1-phase car's.)"""
    sc = load_scenario(SCENARIOS / "winter-it-40a.toml")
    a, b = sc.chargers
    assert a.rotation == ("L1", "L2", "L3")
    rotated = dataclasses.replace(sc, chargers=(msgspec.structs.replace(a, rotation=MEASURED_PAIR_ROTATION), b))
    before, after = run(sc), run(rotated)
    assert before["trips"] == after["trips"] == 0
    # 1.41x with the conservative I2 bound alone; 1.23x since the device learns the mirror (it_learner);
    # 1.27x since the Kirchhoff bound is sound at low power factor
    assert after["energy_total_kwh"] >= 1.15 * before["energy_total_kwh"]
    for ev in ("car-a-night", "car-a-evening"):
        assert after["energy_kwh"][ev] > 2 * before["energy_kwh"][ev]
