"""The simulated service connection: phasor physics on IT and TN, and the meter that reads it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apm.core.config import ChargerConfig
from apm.core.lines import charging_power_w, terminal_currents, to_lines
from sim.charger import SimCharger
from sim.frames import MeterSpec
from sim.grid import Grid
from sim.household import HouseSample, SyntheticHome, slot_lines
from sim.meter import Meter
from tests.sim_readings import START, list2_of
from tests.unit.test_three_wire import world


def house(network: str, slots_w, slots_var) -> HouseSample:
    lines = slot_lines(network, slots_w, slots_var=slots_var)  # type: ignore[arg-type]
    return HouseSample(lines, sum(slots_w), tuple(slots_w), sum(slots_var), tuple(slots_var))


def charger(cid: str, network: str, phases: int, amps: float, rotation=("L1", "L2", "L3")) -> SimCharger:
    c = SimCharger(ChargerConfig(cid, 32.0, 3, rotation), network)  # type: ignore[arg-type]
    c.terminals = terminal_currents(network, phases, amps)  # type: ignore[arg-type]
    c.lines = to_lines(c.terminals, rotation)
    c.power_w = charging_power_w(network, phases, amps)  # type: ignore[arg-type]
    return c


_SLOTS = st.tuples(*(st.floats(0.0, 5000.0) for _ in range(4)))
_VARS = st.tuples(*(st.floats(-1500.0, 1500.0) for _ in range(4)))
_CH = st.tuples(st.sampled_from([1, 3]), st.permutations(["L1", "L2", "L3"]), st.floats(0.0, 32.0))


@settings(max_examples=150, deadline=None)
@given(slots=_SLOTS, var=_VARS, chargers=st.lists(_CH, max_size=3), sequence=st.sampled_from([1, -1]),
       unbalance=st.tuples(*(st.floats(-0.01, 0.01) for _ in range(3))))
def test_it_phasor_world_is_three_wire_and_the_meter_sees_every_load(slots, var, chargers, sequence,
                                                                     unbalance) -> None:
    grid = Grid("IT", model="phasor", sequence=sequence, unbalance=unbalance)
    h = house("IT", slots, var)
    sims = [charger(f"c{i}", "IT", ph, amps, tuple(rot)) for i, (ph, rot, amps) in enumerate(chargers)]
    lines, house_only = grid.line_phasors(h, sims)
    assert abs(sum(lines)) < 1e-9 and abs(sum(house_only)) < 1e-9  # no neutral
    g = grid.measure(h, sims)
    assert g.lines == pytest.approx(tuple(abs(x) for x in lines))
    # chargers draw in phase with their voltage: the reactive power is the household's alone
    assert g.reactive_var == pytest.approx(sum(var), abs=1e-6)
    assert g.power_w >= sum(slots) - 1e-6
    # the household's lines: the same physics as the independent model of the estimator's tests
    loads = [(k, slots[k], var[k]) for k in range(4)]
    i, s, u = world(loads, sequence, unbalance)
    assert g.house_lines == pytest.approx(tuple(abs(x) for x in i), abs=1e-9)
    assert g.voltages == pytest.approx(u)
    # never more than the in-phase model's currents for the same loads on a symmetric supply
    if unbalance == (0.0, 0.0, 0.0):
        mag = Grid("IT").measure(h, sims)
        assert all(p <= m + 1e-9 for p, m in zip(g.lines, mag.lines, strict=True))


def test_it_symmetric_supply_charger_powers_and_voltages() -> None:
    grid = Grid("IT", model="phasor")
    quiet = house("IT", (0.0,) * 4, (0.0,) * 4)
    one = grid.measure(quiet, [charger("a", "IT", 1, 16.0)])
    assert one.lines == pytest.approx((16.0, 16.0, 0.0))
    assert one.power_w == pytest.approx(230.0 * 16.0)
    three = grid.measure(quiet, [charger("b", "IT", 3, 16.0, ("L2", "L3", "L1"))])
    assert three.lines == pytest.approx((16.0, 16.0, 16.0))
    assert three.power_w == pytest.approx(math.sqrt(3) * 230.0 * 16.0)
    assert three.reactive_var == pytest.approx(0.0, abs=1e-9)
    assert one.voltages == pytest.approx((230.0, 230.0, 230.0))
    # an unbalanced supply reports three different line-to-line voltages
    assert len({round(x, 3) for x in Grid("IT", model="phasor", unbalance=(0.0, -0.004, 0.005))
                .measure(quiet, []).voltages}) == 3


def test_tn_phasor_lines_and_power() -> None:
    grid = Grid("TN", model="phasor")
    h = house("TN", (2300.0, 0.0, 1000.0, 6900.0), (0.0, 500.0, -300.0, 0.0))
    g = grid.measure(h, [charger("a", "TN", 1, 10.0, ("L2", "L3", "L1"))])
    assert g.power_w == pytest.approx(2300.0 + 1000.0 + 6900.0 + 2300.0)
    assert g.reactive_var == pytest.approx(200.0)
    assert g.lines[0] == pytest.approx(10.0 + 10.0)  # L1: 2300 W plus a third of the 3-phase load, in phase
    assert g.lines[1] == pytest.approx(abs(complex(10.0 + 10.0, -500.0 / 230.0)))  # + the charger on L2
    mag = Grid("TN").measure(h, [charger("a", "TN", 1, 10.0, ("L2", "L3", "L1"))])
    assert mag.power_w == pytest.approx(g.power_w) and mag.reactive_var == pytest.approx(g.reactive_var)
    assert all(p <= m + 1e-9 for p, m in zip(g.lines, mag.lines, strict=True))


def test_phasor_model_needs_per_connection_loads_and_checks_its_settings() -> None:
    lines_only = HouseSample((5.0, 5.0, 5.0), 1725.0, None)  # (sim.household.TraceHome gives slots)
    with pytest.raises(ValueError, match="slots_w"):
        Grid("IT", model="phasor").measure(lines_only, [])
    assert Grid("IT").measure(lines_only, []).lines == (5.0, 5.0, 5.0)
    with pytest.raises(ValueError):
        Grid("IT", sequence=2)
    with pytest.raises(ValueError):
        Grid("IT", unbalance=(0.0, 0.5, 0.0))


def test_household_reactive_loads_and_the_resistive_option() -> None:
    home = SyntheticHome("IT", seed=7)
    plain = SyntheticHome("IT", seed=7, reactive=False)
    seen = False
    for t in range(0, 86400, 300):
        a, b = home.sample(float(t)), plain.sample(float(t))
        assert a.slots_w == b.slots_w and a.power_w == b.power_w  # the same day, to the watt
        assert b.reactive_var == 0.0
        seen |= abs(a.reactive_var) > 50.0
    assert seen


def test_it_meters_report_what_their_vendors_send() -> None:
    grid = Grid("IT", model="phasor", unbalance=(0.0, -0.004, 0.005))
    g = grid.measure(house("IT", (2000.0, 1500.0, 800.0, 0.0), (300.0, -100.0, 0.0, 0.0)),
                     [charger("a", "IT", 1, 12.34)])
    (aidon,) = list2_of(g, "aidon")
    assert aidon.current_l2_a is None  # two elements: no I2
    assert aidon.current_l1_a == pytest.approx(round(g.lines[0], 1))
    assert aidon.voltage_l2_v == pytest.approx(round(g.voltages[1], 1))  # U13, measured
    assert aidon.active_import_w == round(g.power_w) and aidon.active_export_w == 0.0
    assert aidon.reactive_import_var == round(g.reactive_var) and aidon.reactive_export_var == 0.0
    (kaifa,) = list2_of(g, "kaifa")
    assert kaifa.current_l2_a == pytest.approx(g.lines[1], abs=0.001)  # MA304H3E reports I2 ...
    assert kaifa.estimated == ("voltage_l2_v",)  # ... but U2 = 0, estimated by the decoder
    u1, u3 = kaifa.voltage_l1_v, kaifa.voltage_l3_v
    assert u1 is not None and u3 is not None
    assert kaifa.voltage_l2_v == pytest.approx(math.sqrt(u1 * u1 + u3 * u3 - u1 * u3), abs=0.06)
    kamstrup = list2_of(g, "kamstrup")
    assert [r.list for r in kamstrup] == [2]
    assert kamstrup[0].current_l2_a is None and kamstrup[0].voltage_l1_v == round(g.voltages[0])


def test_export_and_capacitive_power_go_to_the_export_registers() -> None:
    g = type("G", (), {"lines": (5.0, 5.0, 0.0), "power_w": -1150.0, "reactive_var": -400.0,
                       "voltages": (230.0, 230.0, 230.0)})()
    (r,) = list2_of(g, "aidon")
    assert (r.active_import_w, r.active_export_w) == (0.0, 1150.0)
    assert (r.reactive_import_var, r.reactive_export_var) == (0.0, 400.0)


def test_skew_reports_the_power_of_a_few_seconds_before() -> None:
    power = {t: 1000.0 + 100.0 * t for t in range(0, 30)}
    m = Meter(MeterSpec("aidon", "3p-tn"), START, currents=lambda t: (10.0, 10.0, 10.0),
              voltages=lambda t, i: (230.0, 230.0, 230.0), power=lambda t: power[int(t)], skew_s=2.0)
    got = {(p.t, p.list): p.reading for p in m.pushes_between(0.0, 25.0)}
    assert got[(10.0, 2)].active_import_w == power[8]
    assert got[(20.0, 2)].active_import_w == power[18]
    assert got[(20.0, 2)].current_l1_a == 10.0  # the currents are those of the list's own second
    with pytest.raises(ValueError):
        Meter(MeterSpec("aidon"), START, skew_s=-1.0)
