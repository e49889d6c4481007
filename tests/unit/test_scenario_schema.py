"""Scenario files: declared as msgspec Structs that reuse the device configuration's declarations."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from apm.core import config as cfg
from apm.core.config import BalancerSettings, HeadroomSettings
from han.profiles import SUPPORTED_METERS
from sim.closed_loop import (
    EV_PARAMS,
    ScenarioError,
    ScenarioEV,
    ScenarioFile,
    ScenarioGrid,
    ScenarioMeter,
    load_scenario,
    scenario_from_dict,
)
from sim.fuse import CURVES

SCENARIOS = Path(__file__).resolve().parents[2] / "sim" / "scenarios"


def base() -> dict[str, Any]:
    return {"duration_s": 3600, "grid": {"network": "TN", "fuse_a": 25},
            "charger": [{"id": "a"}], "ev": [{"charger": "a"}]}


def refused(change: dict[str, Any]) -> ScenarioError:
    with pytest.raises(ScenarioError) as err:
        scenario_from_dict({**base(), **change})
    assert str(err.value).startswith(err.value.path + ": ")
    return err.value


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_bundled_scenario_loads(path):
    sc = load_scenario(path)
    assert sc.duration_s > 0 and sc.chargers
    # fixed_current_a is the comparison's; the balancer never falls back to more than fuse - margin
    assert sc.balancer_settings.fixed_current_a == min(sc.fixed_current_a, sc.fuse_a - sc.safety_margin_a)
    assert isinstance(sc.headroom_settings, HeadroomSettings)


def test_the_world_keys_match_the_simulator():
    """The Literals in the schema are the simulator's own tables."""
    grid = {k.name: k for k in cfg.schema_keys(ScenarioGrid)}
    device = {k.name: k for k in cfg.schema_keys(cfg.GridConfig)}
    for name in ("network", "fuse_a", "safety_margin_a"):  # the device's declarations, bounds and all
        assert grid[name].type == device[name].type and grid[name].description == device[name].description
    curve = next(k for k in cfg.schema_keys(ScenarioFile) if k.path == "grid.curve")
    assert set(curve.type.values) == set(CURVES)
    vendor = next(k for k in cfg.schema_keys(ScenarioFile) if k.path == "meter.vendor")
    assert set(vendor.type.values) == set(SUPPORTED_METERS)
    assert set(ScenarioEV.__struct_fields__) - {"charger", "id", "arrive_s", "depart_s"} == set(EV_PARAMS)


@pytest.mark.parametrize(
    ("change", "path", "says"),
    [
        ({"grid": {"network": "TN", "fuse_a": 25, "fuse": 3}}, "grid.fuse", "unknown setting (did you mean fuse_a?)"),
        ({"grid": {"network": "TN"}}, "grid.fuse_a", "missing"),
        ({"grid": {"network": "TN", "fuse_a": 500}}, "grid.fuse_a", "500 A is out of range (6..400 A)"),
        ({"grid": {"network": "TN", "fuse_a": 25, "safety_margin_a": 25}}, "grid.safety_margin_a", "leaves nothing"),
        ({"grid": {"network": "TN", "fuse_a": 25, "curve": "D"}}, "grid.curve", "'D' is not one of B, C, gG"),
        ({"duration_s": 0}, "duration_s", "out of range"),
        ({"start": "yesterday"}, "start", "datetime"),
        ({"meter": {"outages": [[600, 300]]}}, "meter.outages[0]", "ends (300 s) before it starts (600 s)"),
        ({"meter": {"outages": [[-5, 300]]}}, "meter.outages[0][0]", "-5 is out of range (0..31622400)"),
        ({"meter": {"outages": [[600, 4000]]}}, "meter.outages[0]", "after the scenario (duration_s = 3600)"),
        ({"meter": {"outages": [[600]]}}, "meter.outages[0]", "length 2"),
        ({"meter": {"outages": [[600, 900], [100, 200]]}}, "meter.outages[1]", "before outages[0] (600 s)"),
        ({"meter": {"outages": [[600, 900], [800, 1000]]}}, "meter.outages[1]", "overlaps outages[0]"),
        ({"meter": {"kind": "3p-it"}}, "meter.kind", "a 3p-it meter on an TN network"),
        ({"household": {"heaters": 2.5}}, "household.heaters", "is not a whole number"),
        ({"household": {"colour": "red"}}, "household.colour", "unknown setting"),
        ({"household": {"pf": 0.9}}, "household.pf", "is a trace's power factor"),
        ({"household": {"trace": "x.csv", "pf": 0.3}}, "household.pf", "out of range (0.5..1)"),
        ({"charger": [{"id": "a"}, {"id": "a"}]}, "charger[1].id", "duplicate"),
        ({"charger": [{"id": "a", "max_a": 100}]}, "charger[0].max_a", "out of range (6..80 A)"),
        ({"ev": [{"charger": "a", "soc": 1.5}]}, "ev[0].soc", "1.5 is out of range (0..1)"),
        ({"ev": [{"charger": "a", "arrive_s": 100, "depart_s": 50}]}, "ev[0].depart_s", "not after arrive_s"),
        ({"ev": [{"charger": "a", "energy_kwh": 5}]}, "ev[0].energy_kwh", "unknown setting"),
        ({"balancer": {"hold_sec": 5}}, "balancer.hold_sec", "unknown setting (did you mean hold_s?)"),
        ({"balancer": {"min_a": -3}}, "balancer.min_a", "out of range (6..32 A)"),
        ({"balancer": {"fixed_current_a": 10}}, "balancer.fixed_current_a", "top level"),
        ({"balancer": {"min_a": 20}, "charger": [{"id": "a", "max_a": 16}]}, "balancer.min_a",
         "above charger[0].max_a (16 A)"),
        ({"headroom": {"stale_after_s": 5}}, "headroom.stale_after_s", "unknown setting"),
    ],
)
def test_scenario_errors_name_the_key(change, path, says):
    err = refused(change)
    assert err.path == path
    assert says in str(err), str(err)


def test_defaults_that_depend_on_other_keys():
    it = scenario_from_dict({**base(), "grid": {"network": "IT", "fuse_a": 40}})
    assert (it.grid_model, it.supply_phases, it.headroom) == ("phasor", 3, {})
    # a trace on IT is a physical world too (sim.household.TraceHome): phasor, the two-wattmeter bound on
    traced = {**base(), "grid": {"network": "IT", "fuse_a": 40}, "household": {"trace": "x.csv", "scale": 0.5}}
    phasor = scenario_from_dict(traced, base=Path("/data"))
    assert phasor.grid_model == "phasor" and phasor.headroom == {}
    assert phasor.household == {"trace": str(Path("/data/x.csv").resolve()), "scale": 0.5}
    magnitude = scenario_from_dict({**traced, "grid": {"network": "IT", "fuse_a": 40, "model": "magnitude"}})
    assert magnitude.grid_model == "magnitude" and magnitude.headroom == {"two_wattmeter": False}
    one = scenario_from_dict({**base(), "meter": {"kind": "1p"}})
    assert one.supply_phases == 1
    ev = scenario_from_dict({**base(), "ev": [{"charger": "a", "soc": 0.5}]}).evs[0]
    assert (ev.id, ev.depart_s, ev.params) == ("a-ev1", 3600.0, (("soc", 0.5),))
    sc = scenario_from_dict({**base(), "balancer": {"hold_s": 20}, "fixed_current_a": 16})
    assert sc.balancer == {"hold_s": 20.0}
    assert sc.balancer_settings == BalancerSettings(hold_s=20.0, fixed_current_a=16.0)


ROOM = {
    "grid.safety_margin_a": {"grid.fuse_a": 400, "balancer.decrease_deadband_a": 0},
    "balancer.decrease_deadband_a": {"grid.fuse_a": 400, "grid.safety_margin_a": 50},
    "balancer.min_increase_a": {"balancer.max_step_up_a": 80},
    "balancer.max_step_up_a": {"balancer.min_increase_a": 0},
    "balancer.min_a": {"charger[].max_a": 80},
    "household.pf": {"household.trace": "house.csv"},  # a trace's
}


def _document(values: dict[str, Any]) -> dict[str, Any]:
    doc = base()
    doc["grid"] = dict(doc["grid"])
    for path, value in values.items():
        *tables, name = path.split(".")
        where = doc
        for t in tables:
            where = where[t.removesuffix("[]")][0] if t.endswith("[]") else where.setdefault(t, {})
        where[name] = value
    return doc


def _cases() -> list[Any]:
    out = []
    for k in cfg.schema_keys(ScenarioFile):
        lo, hi = k.bounds
        for bound, beyond in ((lo, -math.inf), (hi, math.inf)):
            if bound is not None:
                out.append(pytest.param(k, bound, math.nextafter(bound, beyond), id=f"{k.path}={bound}"))
    return out


@pytest.mark.parametrize(("key", "bound", "outside"), _cases())
def test_a_bound_is_accepted_and_just_beyond_it_refused(key, bound, outside):
    room = ROOM.get(key.path, {})
    if key.type.__class__.__name__ == "IntType":
        outside = int(bound) + (1 if outside > bound else -1)
    scenario_from_dict(_document({**room, key.path: bound}))
    with pytest.raises(ScenarioError) as err:
        scenario_from_dict(_document({**room, key.path: outside}))
    assert err.value.path == key.path.replace("[]", "[0]")
    assert "out of range" in str(err.value)


def test_meter_outages_are_values():
    m = cfg.convert({"outages": [[0, 10], [20, 30]]}, ScenarioMeter)
    assert m.outages == ((0.0, 10.0), (20.0, 30.0))


def test_the_comparison_shares_the_scenarios_fixed_current_and_the_balancer_falls_back_safely() -> None:
    from sim.closed_loop import loop_controller

    sc = load_scenario(SCENARIOS / "winter-tn-25a.toml")  # TN 25 A, margin 2 A, fixed_current_a = 32
    assert sc.fixed_current_a == 32
    assert loop_controller(sc).settings.fixed_current_a == 23  # the device never falls back above fuse - margin
    assert loop_controller(sc, fixed=True).settings.fixed_current_a == 32  # the comparison is what it says
