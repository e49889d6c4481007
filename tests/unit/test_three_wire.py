"""The two-wattmeter estimate of I2 on three wires, against phasor ground truth."""

from __future__ import annotations

import cmath
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from apm.core.three_wire import (
    DEFAULT_ACCURACY,
    EXACT,
    Accuracy,
    estimate_i2,
    i2_candidates,
    i2_from_reading,
    voltage_angle,
)
from han.reading import Reading
from han.template import estimate_l2_voltage

PAIRS = ((0, 1), (1, 2), (2, 0))  # L1-L2, L2-L3, L3-L1


def world(loads, sequence: int = 1, unbalance=(0.0, 0.0, 0.0), volt: float = 230.0, elements: bool = False):
    """An IT supply (three wires) and its loads as phasors, independent of the simulator.

    ``loads``: (pair index 0..2, or 3 for a balanced delta load; P in W; Q in var). Returns the line
    currents, what a two-element meter with L2 as reference measures (S = U12 conj(I1) + U32 conj(I3)),
    and the line-to-line voltage magnitudes U12, U13, U23 as the 3-wire vendors report them.
    """
    e = volt / math.sqrt(3.0)
    v = [e * (1.0 + unbalance[k]) * cmath.exp(-1j * sequence * 2.0 * math.pi * k / 3.0) for k in range(3)]
    i = [0j, 0j, 0j]
    for where, p, q in loads:
        pairs = PAIRS if where == 3 else (PAIRS[where],)
        for a, b in pairs:
            branch = (complex(p, q) / len(pairs) / (v[a] - v[b])).conjugate()
            i[a] += branch
            i[b] -= branch
    ea, eb = (v[0] - v[1]) * i[0].conjugate(), (v[2] - v[1]) * i[2].conjugate()
    s = ea + eb
    assert abs(i[0] + i[1] + i[2]) < 1e-9  # three wires
    assert abs(s - sum(complex(p, q) for _, p, q in loads)) < 1e-6 * (1.0 + abs(s))  # the meter sees it all
    u = (abs(v[0] - v[1]), abs(v[0] - v[2]), abs(v[1] - v[2]))
    return (i, s, u, (ea, eb)) if elements else (i, s, u)


def q_of(p: float, pf: float, leading: bool) -> float:
    return (-1.0 if leading else 1.0) * p * math.tan(math.acos(pf))


_LOAD = st.tuples(st.integers(0, 3), st.floats(0.0, 9000.0), st.floats(0.6, 1.0), st.booleans()).map(
    lambda t: (t[0], t[1], q_of(t[1], t[2], t[3])))
_WORLD = dict(loads=st.lists(_LOAD, min_size=1, max_size=6), sequence=st.sampled_from([1, -1]),
              unbalance=st.tuples(*(st.floats(-0.01, 0.01) for _ in range(3))))


@settings(max_examples=300, deadline=None)
@given(**_WORLD)
def test_one_candidate_is_the_true_i2_and_the_estimate_covers_it(loads, sequence, unbalance) -> None:
    i, s, (u12, u13, u23) = world(loads, sequence, unbalance)
    i1, i2, i3 = abs(i[0]), abs(i[1]), abs(i[2])
    cand = i2_candidates(i1, i3, s.real, s.imag, u12, u13, u23)
    assert cand is not None
    # The candidates are the roots of a quadratic whose rounding scales with the measured currents, not
    # with I2: a true I2 near 0 beside 150 A lines comes out within a few uA, not within 1 uA.
    assert min(abs(cand[0] - i2), abs(cand[1] - i2)) < 1e-6 * (1.0 + i1 + i3)
    assert cand[0] >= cand[1] - 1e-9  # larger first
    exact = estimate_i2(i1, i3, s.real, s.imag, u12, u13, u23, accuracy=EXACT)
    assert exact.method == "two-wattmeter"
    assert i2 - 1e-6 <= exact.value_a <= i1 + i3 + 1e-9
    assert exact.value_a == pytest.approx(cand[0], abs=1e-6)


_NOISE = st.lists(st.floats(-1.0, 1.0), min_size=11, max_size=11)



@settings(max_examples=400, deadline=None)
@given(noise=_NOISE, u13_estimated=st.booleans(), **_WORLD)
def test_estimate_never_below_the_true_i2_with_errors_within_the_accuracy(loads, sequence, unbalance, noise,
                                                                          u13_estimated) -> None:
    """A meter whose every error is within `Accuracy` (each element's gain and phase error applied
    to its current and power together, then every reported value off by up to its own interval,
    U13 measured or estimated by the decoder): the estimate still covers the true |I2|, and never
    exceeds the Kirchhoff bound it falls back to."""
    acc = DEFAULT_ACCURACY
    k = 0.99  # the estimate centres its intervals on the reported value, the noise is around the truth
    i, s, (u12, u13, u23), elements = world(loads, sequence, unbalance, elements=True)
    i2 = abs(i[1])
    ga, gb = 1.0 + noise[7] * k * acc.gain_rel, 1.0 + noise[8] * k * acc.gain_rel
    ea = elements[0] * ga * cmath.exp(1j * math.radians(acc.phase_deg) * k * noise[9])
    eb = elements[1] * gb * cmath.exp(1j * math.radians(acc.phase_deg) * k * noise[10])
    i1, i3, sv = abs(i[0]) * ga, abs(i[2]) * gb, ea + eb
    smag = abs(sv)
    m1 = max(0.0, i1 + noise[0] * k * (acc.current_abs_a + acc.current_rel * i1))
    m3 = max(0.0, i3 + noise[1] * k * (acc.current_abs_a + acc.current_rel * i3))
    mp = sv.real + noise[2] * k * (acc.power_abs_w + acc.power_rel * smag)
    mq = sv.imag + noise[3] * k * (acc.reactive_abs_var + acc.reactive_rel * smag)
    mu = [u + n * k * (acc.voltage_abs_v + acc.voltage_rel * u)
          for u, n in zip((u12, u13, u23), noise[4:7], strict=True)]
    if u13_estimated:
        mu[1] = estimate_l2_voltage(mu[0], mu[2])
    est = estimate_i2(m1, m3, mp, mq, *mu, u13_estimated=u13_estimated)
    assert est.value_a >= i2 - 1e-9
    top = (m1 + m3 + 2 * acc.current_abs_a + acc.current_rel * (m1 + m3)) / (1 - acc.gain_rel)
    assert est.value_a <= top + 1e-9


def test_exact_for_loads_between_l1_l2_and_l2_l3() -> None:
    """Element A sees only the L1-L2 load, B only the L2-L3 one: theta = 0, one solution."""
    i, s, u = world([(0, 4000.0, 0.0), (1, 3000.0, 0.0)])
    est = estimate_i2(abs(i[0]), abs(i[2]), s.real, s.imag, *u, accuracy=EXACT)
    assert est.value_a == pytest.approx(abs(i[1]), abs=1e-6)
    assert est.value_a < abs(i[0]) + abs(i[2]) - 3.5  # well inside the Kirchhoff bound
    # with the meter's accuracy it stays close (theta near 0 is where noise costs the most)
    noisy = estimate_i2(abs(i[0]), abs(i[2]), s.real, s.imag, *u)
    assert abs(i[1]) <= noisy.value_a < abs(i[0]) + abs(i[2])


def test_a_balanced_load_looks_like_its_mirror_image_and_gets_the_larger_solution() -> None:
    """A balanced resistive load and a capacitive L1-L2 plus inductive L2-L3 load (PF 0.87 each)
    give the same P, Q, I1 and I3: the estimate must take the larger |I2| (2 I, not I)."""
    p = 9000.0
    balanced, s1, u = world([(3, p, 0.0)])
    mirror, s2, _ = world([(0, p / 2, -p / 2 * math.tan(math.radians(30))),
                           (1, p / 2, p / 2 * math.tan(math.radians(30)))])
    for a, b in ((balanced[0], mirror[0]), (balanced[2], mirror[2])):
        assert abs(a) == pytest.approx(abs(b), rel=1e-9)
    assert s1 == pytest.approx(s2, rel=1e-9)
    assert abs(mirror[1]) == pytest.approx(2 * abs(balanced[1]), rel=1e-9)
    est = estimate_i2(abs(balanced[0]), abs(balanced[2]), s1.real, s1.imag, *u, accuracy=EXACT)
    assert est.value_a == pytest.approx(abs(mirror[1]), rel=1e-9)
    assert est.point_a == pytest.approx((abs(mirror[1]), abs(balanced[1])), rel=1e-9)


def test_phase_sequence_does_not_matter() -> None:
    loads = [(0, 2500.0, 300.0), (2, 1800.0, -200.0), (3, 5000.0, 0.0), (1, 700.0, 500.0)]
    pos, s_pos, u_pos = world(loads, 1, (0.004, -0.003, 0.0))
    neg, s_neg, u_neg = world(loads, -1, (0.004, -0.003, 0.0))
    e_pos = estimate_i2(abs(pos[0]), abs(pos[2]), s_pos.real, s_pos.imag, *u_pos, accuracy=EXACT)
    e_neg = estimate_i2(abs(neg[0]), abs(neg[2]), s_neg.real, s_neg.imag, *u_neg, accuracy=EXACT)
    assert e_pos.value_a >= abs(pos[1]) - 1e-6 and e_neg.value_a >= abs(neg[1]) - 1e-6


@settings(max_examples=200, deadline=None)
@given(i1=st.floats(1.0, 60.0), i3=st.floats(1.0, 60.0), angle=st.floats(-math.pi, math.pi),
       factor=st.sampled_from([1.3, 2.0, 5.0]), low=st.booleans())
def test_inconsistent_lists_fall_back_to_kirchhoff(i1, i3, angle, factor, low) -> None:
    """P and Q that no pair of currents I1, I3 could give (|S| beyond |A| + |B|, or short of
    ||A| - |B||, by more than the accuracy) are a garbled or non-simultaneous list: I1 + I3."""
    acc = DEFAULT_ACCURACY
    a, b = 230.0 * i1, 230.0 * i3
    if low:
        assume(abs(a - b) > 2000.0)
        smag = abs(a - b) / factor
    else:
        smag = (a + b) * factor
    est = estimate_i2(i1, i3, smag * math.cos(angle), smag * math.sin(angle), 230.0, 230.0, 230.0)
    kirchhoff = (i1 + i3 + 2 * acc.current_abs_a + acc.current_rel * (i1 + i3)) / (1 - acc.gain_rel)
    assert est.method == "kirchhoff" and "inconsistent" in est.reason
    assert est.value_a == pytest.approx(kirchhoff)


def test_fallbacks_for_missing_or_contradictory_values() -> None:
    assert estimate_i2(10.0, 5.0, None, 100.0).method == "kirchhoff"
    assert estimate_i2(10.0, 5.0, 3000.0, None).method == "kirchhoff"
    assert estimate_i2(None, 5.0, 3000.0, 0.0).value_a == math.inf
    # voltages that cannot be a triangle
    bad = estimate_i2(10.0, 10.0, 4000.0, 0.0, 230.0, 500.0, 230.0)
    assert bad.method == "kirchhoff" and "triangle" in bad.reason
    # one list cannot import and export at once
    r = Reading(meter="aidon", list=2, phases=3, active_import_w=4000.0, active_export_w=200.0,
                reactive_import_var=0.0, reactive_export_var=0.0, current_l1_a=10.0, current_l3_a=10.0,
                voltage_l1_v=230.0, voltage_l2_v=230.0, voltage_l3_v=230.0)
    est = i2_from_reading(r)
    assert est.method == "kirchhoff" and "import and export" in est.reason
    # an old list without reactive power (a meter that does not send it)
    assert i2_from_reading(Reading(meter="aidon", list=2, active_import_w=4000.0, current_l1_a=10.0,
                                   current_l3_a=10.0)).method == "kirchhoff"


def test_reading_with_export_ct_ratio_and_an_estimated_u13() -> None:
    """Export is fine (the two-wattmeter identity holds for generation too: with a generator on one
    element the true solution is the smaller one, and the estimate stays above it); the CT ratio
    scales currents and powers; an estimated U13 widens the angle (never tighter than measured)."""
    i, s, (u12, u13, u23) = world([(0, -3000.0, 0.0), (1, 1000.0, 200.0)])  # a PV inverter on L1-L2
    assert s.real < 0
    r = Reading(meter="aidon", list=2, phases=3, active_import_w=0.0, active_export_w=-s.real / 10,
                reactive_import_var=s.imag / 10, reactive_export_var=0.0, current_l1_a=abs(i[0]) / 10,
                current_l3_a=abs(i[2]) / 10, voltage_l1_v=u12, voltage_l2_v=u13, voltage_l3_v=u23)
    est = i2_from_reading(r, ct_ratio=10.0, accuracy=EXACT)
    assert est.method == "two-wattmeter" and est.point_a is not None
    assert est.point_a[1] == pytest.approx(abs(i[1]), abs=1e-6)
    assert abs(i[1]) < est.value_a < abs(i[0]) + abs(i[2])
    kaifa = Reading(meter="kaifa", list=2, phases=3, active_import_w=s.real if s.real > 0 else 0.0,
                    active_export_w=-s.real, reactive_import_var=s.imag, reactive_export_var=0.0,
                    current_l1_a=abs(i[0]), current_l3_a=abs(i[2]), voltage_l1_v=u12,
                    voltage_l2_v=estimate_l2_voltage(u12, u23), voltage_l3_v=u23, estimated=("voltage_l2_v",))
    only_angle = Accuracy(0, 0, 0, 0, 0, 0, 0, 0, angle_tol_deg=2.5, gain_rel=0, phase_deg=0)
    wide = i2_from_reading(kaifa, accuracy=only_angle)
    assert abs(i[1]) - 1e-6 <= est.value_a <= wide.value_a


def test_voltage_angle() -> None:
    assert voltage_angle(230.0, 230.0, 230.0) == pytest.approx(math.pi / 3)
    assert voltage_angle(230.0, 460.0, 230.0) == pytest.approx(math.pi)
    assert voltage_angle(230.0, 500.0, 230.0) is None
    assert voltage_angle(0.0, 230.0, 230.0) is None


def test_the_smaller_solution_is_not_a_bound_for_a_plain_consuming_household() -> None:
    """Why the device may use the smaller |I2| only as a capped inference (docs/it-l2-inference.md):
    4 kW resistive on L1-L2, a 4 kW motor at PF 0.7 lagging on L2-L3 and 2 kW resistive on L3-L1
    draw the LARGER of the two solutions; the smaller is 2.5 A short of the true I2."""
    i, s, (u12, u13, u23) = world([(0, 4000.0, 0.0), (1, 4000.0, q_of(4000.0, 0.7, False)), (2, 2000.0, 0.0)])
    cand = i2_candidates(abs(i[0]), abs(i[2]), s.real, s.imag, u12, u13, u23)
    assert cand is not None
    assert abs(i[1]) == pytest.approx(cand[0], abs=1e-6)
    assert abs(i[1]) - cand[1] == pytest.approx(2.48, abs=0.01)
