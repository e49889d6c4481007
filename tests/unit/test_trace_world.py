"""A trace household in a physical world (issue 15 item 3): line-current magnitudes and power factors
become loads, the phasor grid carries them, and the device's two-wattmeter bound of I2 runs on them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from apm.core.charger_state import ChargerState
from apm.core.config import ChargerConfig, GridConfig
from apm.core.headroom import HeadroomEstimator
from apm.core.lines import charging_power_w, terminal_currents, to_lines
from apm.core.meter_state import MeterState
from apm.core.three_wire import i2_from_reading
from sim.charger import SimCharger
from sim.grid import Grid
from sim.household import TraceHome, it_pair_currents, make_household
from tests.sim_readings import list2_of

_AMPS = st.floats(0.0, 40.0)
_PF = st.floats(0.5, 1.0)
_UNBALANCE = st.tuples(*(st.floats(-0.01, 0.01) for _ in range(3)))


def it_lines(a: float, b: float, c: float) -> tuple[float, float, float]:
    """Line magnitudes of pair currents L1-L2, L2-L3, L3-L1 at one power factor (the law of cosines,
    120 degrees between the pair voltages)."""
    return (math.sqrt(a * a + c * c + a * c), math.sqrt(a * a + b * b + a * b), math.sqrt(b * b + c * c + b * c))


@settings(max_examples=300, deadline=None)
@given(pairs=st.tuples(_AMPS, _AMPS, _AMPS))
def test_pair_currents_are_recovered_from_line_magnitudes_that_loads_make(pairs) -> None:
    lines = it_lines(*pairs)
    got, clamped = it_pair_currents(*lines)
    assert not clamped or min(pairs) < 1e-6  # only on the boundary (a pair at 0) can rounding tip it
    assert got == pytest.approx(pairs, abs=1e-6)


@settings(max_examples=300, deadline=None)
@given(lines=st.tuples(_AMPS, _AMPS, _AMPS))
@example(lines=(0.0, 1.0, 2.9075281860267e-160))  # a subnormal square once lost the clamp its precision
def test_any_line_magnitudes_give_loads_and_are_clamped_up_only(lines) -> None:
    pairs, clamped = it_pair_currents(*lines)
    assert min(pairs) >= 0.0
    made = it_lines(*pairs)
    if clamped:  # the largest line is kept, the others raised: never a lighter world than the trace
        k = max(range(3), key=lambda i: lines[i])
        assert made[k] == pytest.approx(lines[k], abs=1e-9)
        assert all(m >= x - 1e-9 for m, x in zip(made, lines, strict=True))
        assert min(pairs) == 0.0
    else:
        assert made == pytest.approx(lines, abs=1e-6)


def test_clamping_examples() -> None:
    assert it_pair_currents(10.0, 0.0, 0.0) == (pytest.approx((10 / math.sqrt(3), 0.0, 10 / math.sqrt(3))), True)
    (a, b, c), clamped = it_pair_currents(30.0, 10.0, 10.0)  # L1 is more than L1-L2 and L3-L1 can make
    assert clamped and b == 0.0 and a == pytest.approx(c) and it_lines(a, b, c)[0] == pytest.approx(30.0)
    assert it_pair_currents(0.0, 0.0, 0.0) == ((0.0, 0.0, 0.0), False)
    assert it_pair_currents(10.0, 10.0, 0.0)[0] == pytest.approx((10.0, 0.0, 0.0))  # one load on L1-L2


@settings(max_examples=100, deadline=None)
@given(lines=st.tuples(_AMPS, _AMPS, _AMPS), pf=_PF, sequence=st.sampled_from([1, -1]))
def test_the_phasor_grid_carries_the_trace_on_a_symmetric_supply(lines, pf, sequence) -> None:
    """Both phase sequences, any power factor: the grid's line currents are the trace's (clamped ones
    as the home says), its two-element P and Q those of the loads."""
    home = TraceHome("IT", [0.0], [lines], pf=pf)
    s = home.sample(0.0)
    g = Grid("IT", model="phasor", sequence=sequence).measure(s, [])
    assert g.lines == pytest.approx(s.lines, abs=1e-6)
    if not home.clamped:
        assert g.lines == pytest.approx(lines, abs=1e-6)
    assert g.power_w == pytest.approx(s.power_w, abs=1e-6)
    assert g.reactive_var == pytest.approx(s.reactive_var, abs=1e-6)
    apparent = 230.0 * sum(it_pair_currents(*lines)[0])
    assert s.power_w == pytest.approx(apparent * pf) and s.reactive_var == pytest.approx(apparent * math.sin(math.acos(pf)))


_IT_CH = st.tuples(st.sampled_from([1, 3]), st.permutations(["L1", "L2", "L3"]), st.floats(0.0, 32.0))


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(_AMPS, _AMPS, _AMPS), min_size=1, max_size=4),
       pfs=st.one_of(st.none(), st.lists(st.tuples(_PF, _PF, _PF), min_size=4, max_size=4)),
       pairs=st.booleans(), pf=_PF, chargers=st.lists(_IT_CH, max_size=2), sequence=st.sampled_from([1, -1]),
       unbalance=_UNBALANCE, vendor=st.sampled_from(["aidon", "kamstrup"]))
def test_the_two_wattmeter_bound_never_underestimates_i2_on_a_trace(rows, pfs, pairs, pf, chargers, sequence,
                                                                    unbalance, vendor) -> None:
    """Random traces (line magnitudes, or per-pair currents with per-pair power factors that may
    differ), our chargers anywhere, both phase sequences, a slightly unbalanced supply, the meter's
    rounding: the device's L2 bound (three_wire alone, and the headroom with the Kirchhoff bound on the
    whole line) is never below the world's true |I2|."""
    times = [10.0 * k for k in range(len(rows))]
    per_row_pf = pfs[:len(rows)] if pfs else None
    home = TraceHome("IT", times, rows, pf=pf, pfs=per_row_pf, pairs=rows if pairs else None)
    grid = Grid("IT", model="phasor", sequence=sequence, unbalance=unbalance)
    configs = [ChargerConfig(f"c{i}", 32.0, 3, tuple(rot)) for i, (_, rot, _) in enumerate(chargers)]  # type: ignore[arg-type]
    sims, states = [], {}
    for cfg, (phases, _, amps) in zip(configs, chargers, strict=True):
        c = SimCharger(cfg, "IT")
        c.terminals = terminal_currents("IT", phases, amps)
        c.lines = to_lines(c.terminals, cfg.rotation)
        c.power_w = charging_power_w("IT", phases, amps)
        sims.append(c)
        states[cfg.id] = ChargerState(cfg.id, "charging" if amps else "connected", c.terminals,
                                      phases if amps else None, amps, 0.0)
    for t in times:
        g = grid.measure(home.sample(t), sims)
        (r,) = list2_of(g, vendor)
        est = i2_from_reading(r)
        assert est.value_a >= g.lines[1] - (0.1 if est.method == "kirchhoff" else 1e-6)
        h = HeadroomEstimator(GridConfig(network="IT", fuse_a=63.0), configs, refine_i2=False)
        h.observe_chargers(10.0, states)
        meter = MeterState()
        meter.update(10.0, r)
        out = h.compute(10.0, meter)
        assert out is not None and out.i2_a is not None
        assert out.i2_a >= g.lines[1] - (0.1 if out.i2_method == "kirchhoff" else 1e-6)


def test_trace_columns_power_factors_and_scale(tmp_path: Path) -> None:
    tn = tmp_path / "tn.csv"
    tn.write_text("time_s,l1_a,l2_a,l3_a,l1_pf,l2_pf,l3_pf\n0,10,20,0,1,0.8,0.5\n", encoding="utf-8")
    s = TraceHome.from_csv("TN", tn).sample(0.0)
    assert s.lines == (10.0, 20.0, 0.0)
    assert s.power_w == pytest.approx(230.0 * (10 + 16)) and s.reactive_var == pytest.approx(230.0 * 12)
    common = tmp_path / "common.csv"
    common.write_text("time_s,l1_a,l2_a,l3_a,pf\n0,10,10,10,0.6\n", encoding="utf-8")
    it = make_household("IT", trace=common, scale=2.0)
    s = it.sample(0.0)
    assert s.lines == pytest.approx((20.0, 20.0, 20.0))  # scale: every current
    assert s.slots_w == pytest.approx((230.0 * 20 / math.sqrt(3) * 0.6,) * 3 + (0.0,))
    per_pair = tmp_path / "pairs.csv"
    per_pair.write_text("time_s,l12_a,l23_a,l31_a,l12_pf,l23_pf,l31_pf\n0,8,0,4,1,1,0.5\n", encoding="utf-8")
    s = make_household("IT", trace=per_pair, pf=0.7).sample(0.0)
    assert s.slots_w == pytest.approx((230.0 * 8, 0.0, 230.0 * 2, 0.0))
    assert s.slots_var == pytest.approx((0.0, 0.0, 230.0 * 4 * math.sin(math.acos(0.5)), 0.0))
    # no pf column: the stated one; a pf column wins over it
    flat = tmp_path / "flat.csv"
    flat.write_text("time_s,l1_a,l2_a,l3_a\n0,10,10,10\n", encoding="utf-8")
    assert make_household("TN", trace=flat, pf=0.9).sample(0.0).power_w == pytest.approx(230.0 * 30 * 0.9)
    assert make_household("TN", trace=common, pf=0.9).sample(0.0).power_w == pytest.approx(230.0 * 30 * 0.6)


def test_bad_trace_power_factors_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("time_s,l1_a,l2_a,l3_a,pf\n0,1,1,1,0.3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="0.5..1"):
        TraceHome.from_csv("TN", bad)
    bad.write_text("time_s,l1_a,l2_a,l3_a,l1_pf,l2_pf,l3_pf\n0,1,1,1,1,1,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="pair"):
        TraceHome.from_csv("IT", bad)
    bad.write_text("time_s,l12_a,l23_a,l31_a\n0,1,1,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header"):
        TraceHome.from_csv("TN", bad)
    bad.write_text("time_s,l1_a,l2_a,l3_a\n0,1,-1,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="negative"):
        TraceHome.from_csv("IT", bad)
