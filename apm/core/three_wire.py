"""The L2 line current of a three-wire (IT) supply from what a two-element meter reports.

A 3-wire meter (Aidon 6525, Kamstrup on IT) measures with two elements and L2 as the reference
(Aron / two-wattmeter connection): element A sees U12 and I1, element B sees U32 and I3, and since
the three line currents sum to zero as phasors the total complex power of everything behind the
meter is exactly

    S = P + jQ = A + B,    A = U12 conj(I1),    B = U32 conj(I3)

for any loads, balanced or not, resistive or not (generation included). The meter reports P and Q
(import minus export), |I1|, |I3| and the three line-to-line voltage magnitudes, which give

- |A| = |U12| |I1| and |B| = |U32| |I3|: with A + B = S, the triangle (|A|, |B|, |S|) fixes the
  angle theta between the vectors A and B, but not on which side of S each lies (a mirror image);
- gamma, the angle between U12 and U32 (the voltage triangle's angle at L2, 60 degrees when the
  supply is symmetric), from the three voltage magnitudes.

Then I1 = conj(A / U12), I3 = conj(B / U32) and I2 = -(I1 + I3), so

    |I2|^2 = |I1|^2 + |I3|^2 + 2 |I1| |I3| cos(theta -/+ gamma).

The mirror ambiguity and the unknown phase sequence (L1-L2-L3 or L1-L3-L2) lead to the same two
candidates; nothing in the list tells them apart (a capacitive load on one pair and an inductive one
on the other look like a resistive balanced load), so the larger one is taken:
cos(theta - gamma) >= cos(theta + gamma) for theta, gamma in [0, pi]. It is exact when every load
sits between L1-L2 or L2-L3 and consumes power (theta = 0: one solution), and pessimistic for
balanced three-phase loads (2 I instead of I) and for loads between L3 and L1, but never above the
Kirchhoff bound |I1| + |I3|. Knowing our own chargers' currents does not resolve the ambiguity: the
mirror solution under the other phase sequence is the complex conjugate of the true configuration
(exactly so when Q = 0), so it fits our chargers just as well.

What it is worth: theta near 0 (the exact case) is also where the triangle is ill-conditioned (theta
grows with the square root of an error in |S|), so the meter's accuracy eats much of the gain there;
and a balanced 3-phase EV charging is exactly the load the mirror hides. On the winter IT day
(sim/scenarios/winter-it-40a.toml) it is the tighter of the headroom's bounds in about one list in
six and adds under 1 % of energy; measuring I2 (the Kaifa day) is worth about a third more.

Measurement errors are handled by interval arithmetic rather than a fixed margin, with the errors a
meter really has (`Accuracy`):

- per element, a gain error (current and voltage channels): it scales |A|, P_A and Q_A alike, so the
  reported values still close a triangle, of a slightly scaled world: the result is widened by it;
- per element, a phase error (the current transformer's): it turns A or B, so theta is widened by
  twice it. IEC 62053-21 class 1 (1 % at PF 0.5) allows about 0.3 degrees;
- what is not common to a value and its element: the reported resolution (Aidon 0.1 A, 1 W, 1 var;
  Kamstrup 1 V) and values of one list not sampled at quite the same instant: a small interval on
  every input. A load that switches between the samples of one list is not covered: the list after
  corrects it, and list 1's power rise (apm.core.headroom) covers the seconds between.

Every input is taken as such an interval, theta as the interval every consistent combination
allows, and the result is the largest |I2| over all of them. When no combination closes the
triangle (or a value is missing, or the list reports import and export at once), the data is
inconsistent and the estimate falls back to the Kirchhoff bound |I1| + |I3| (upper ends of the
intervals). The fallback is also what a stale or garbled list gets: the estimator never extrapolates.

Voltages (research notes han-readers 3-wire semantics): on a 3-wire meter all vendors report
line-to-line voltages, ``voltage_l1_v`` = U12, ``voltage_l2_v`` = U13, ``voltage_l3_v`` = U23. Kaifa
sends U13 = 0 and the decoder estimates it (marked in ``Reading.estimated``) from a symmetric
supply: then gamma is taken as 60 degrees, widened by ``Accuracy.angle_tol_deg``.

Cost: a few hundred floating-point operations per list 2 (every 10 s); a few small lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from han.reading import Reading

__all__ = ["Accuracy", "DEFAULT_ACCURACY", "EXACT", "I2Estimate", "estimate_i2", "i2_candidates",
           "i2_from_reading", "voltage_angle"]

NOMINAL_LL_V = 230.0
_DEG = math.pi / 180.0


@dataclass(frozen=True, slots=True)
class Accuracy:
    """How far the reported values may be from the truth (see the module doc).

    ``gain_rel`` and ``phase_deg``: per measuring element, common to its current, power and reactive
    power (class 1: 1 %, about 0.3 degrees). The rest are per value: half the coarsest resolution
    the vendors report (Aidon 0.1 A, Kamstrup 1 V) plus a small allowance for values of one list
    not being sampled at the same instant.
    """

    current_abs_a: float = 0.05
    current_rel: float = 0.003
    power_abs_w: float = 10.0
    power_rel: float = 0.003  # of |S|
    reactive_abs_var: float = 10.0
    reactive_rel: float = 0.005  # of |S|
    voltage_abs_v: float = 0.5
    voltage_rel: float = 0.002
    # Uncertainty of gamma when U13 is not measured (a symmetric supply is assumed; Norwegian
    # low-voltage grids stay within 2 % voltage unbalance, which moves gamma by about 1.5 degrees).
    angle_tol_deg: float = 2.5
    gain_rel: float = 0.01
    phase_deg: float = 0.4


DEFAULT_ACCURACY = Accuracy()
# No uncertainty at all: the exact solution (for tests and diagnostics).
EXACT = Accuracy(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class I2Estimate:
    """An upper estimate of |I2| and what it rests on.

    ``value_a`` covers the true |I2| whenever the inputs are within ``Accuracy``; ``method`` is
    "two-wattmeter" or "kirchhoff" (the fallback: ``value_a`` is the upper |I1| + |I3|). ``point_a``
    holds the two candidate solutions without any margin (None on the fallback).
    """

    value_a: float
    method: str
    reason: str
    point_a: tuple[float, float] | None = None


def voltage_angle(u12: float, u13: float, u23: float) -> float | None:
    """The angle (radians) between U12 and U32: the voltage triangle's angle at L2; None if the
    three magnitudes do not form a triangle."""
    if u12 <= 0.0 or u23 <= 0.0 or u13 <= 0.0:
        return None
    c = (u12 * u12 + u23 * u23 - u13 * u13) / (2.0 * u12 * u23)
    if not -1.0 <= c <= 1.0:
        return None
    return math.acos(c)


def i2_candidates(i1: float, i3: float, p_w: float, q_var: float, u12: float, u13: float,
                  u23: float) -> tuple[float, float] | None:
    """The two |I2| that exactly fit the inputs (no margin), larger first; None if none does."""
    gamma = voltage_angle(u12, u13, u23)
    if gamma is None or i1 < 0.0 or i3 < 0.0:
        return None
    a, b = u12 * i1, u23 * i3
    s2 = p_w * p_w + q_var * q_var
    if min(a, b) <= 1e-9 * (1.0 + a + b):  # one current is nil: I2 is the other one
        return (i1 + i3, i1 + i3) if abs(math.sqrt(s2) - a - b) <= 1e-6 * (1.0 + a + b) else None
    c = (s2 - a * a - b * b) / (2.0 * a * b)
    if not -1.0 - 1e-9 <= c <= 1.0 + 1e-9:
        return None
    theta = math.acos(max(-1.0, min(1.0, c)))
    hi = math.sqrt(max(0.0, i1 * i1 + i3 * i3 + 2.0 * i1 * i3 * math.cos(theta - gamma)))
    lo = math.sqrt(max(0.0, i1 * i1 + i3 * i3 + 2.0 * i1 * i3 * math.cos(theta + gamma)))
    return (hi, lo)


def _cos_theta(s2: float, a: float, b: float) -> float:
    return (s2 - a * a - b * b) / (2.0 * a * b)


def _cos_theta_range(s2lo: float, s2hi: float, alo: float, ahi: float, blo: float,
                     bhi: float) -> tuple[float, float]:
    """min and max of (s2 - a^2 - b^2) / (2ab) over the box (a, b > 0): linear in s2; along an edge
    in a the only stationary point is at a^2 = b^2 - s2 (likewise in b); no interior extremum."""
    lo, hi = math.inf, -math.inf
    for s2 in (s2lo, s2hi):
        pts: list[tuple[float, float]] = [(alo, blo), (alo, bhi), (ahi, blo), (ahi, bhi)]
        for b in (blo, bhi):
            x = b * b - s2
            if x > 0.0 and alo < math.sqrt(x) < ahi:
                pts.append((math.sqrt(x), b))
        for a in (alo, ahi):
            x = a * a - s2
            if x > 0.0 and blo < math.sqrt(x) < bhi:
                pts.append((a, math.sqrt(x)))
        for a, b in pts:
            c = _cos_theta(s2, a, b)
            lo = min(lo, c)
            hi = max(hi, c)
    return lo, hi


def estimate_i2(i1: float | None, i3: float | None, p_w: float | None, q_var: float | None,
                u12: float | None = None, u13: float | None = None, u23: float | None = None, *,
                u13_estimated: bool = False, accuracy: Accuracy = DEFAULT_ACCURACY,
                lower: bool = False) -> I2Estimate:
    """An upper estimate of |I2| from a two-element meter's list (see the module doc).

    ``lower``: of the smaller solution only, for when the mirror is known to be the one with
    cos(theta + gamma) (`apm.core.it_learner`); it is an upper bound only then.

    ``p_w`` and ``q_var`` are import minus export. Missing voltages are taken as nominal 230 V with
    the angle tolerance (like an estimated U13).
    """
    if i1 is None or i3 is None or not (math.isfinite(i1) and math.isfinite(i3)) or i1 < 0 or i3 < 0:
        return I2Estimate(math.inf, "none", "I1 or I3 not reported")
    acc = accuracy
    di1 = acc.current_abs_a + acc.current_rel * i1
    di3 = acc.current_abs_a + acc.current_rel * i3
    i1lo, i1hi = max(0.0, i1 - di1), i1 + di1
    i3lo, i3hi = max(0.0, i3 - di3), i3 + di3
    # the reported world is the true one scaled by each element's gain: undo the worst of it
    unscale = 1.0 / (1.0 - acc.gain_rel)
    kirchhoff = (i1hi + i3hi) * unscale

    def fallback(why: str) -> I2Estimate:
        return I2Estimate(kirchhoff, "kirchhoff", why)

    if p_w is None or q_var is None or not (math.isfinite(p_w) and math.isfinite(q_var)):
        return fallback("no active or reactive power in the list")
    # voltages and the angle between U12 and U32, as intervals
    known = u12 is not None and u23 is not None and u12 > 0.0 and u23 > 0.0
    if not known:
        u12 = u23 = NOMINAL_LL_V
    assert u12 is not None and u23 is not None
    dv12 = acc.voltage_abs_v + acc.voltage_rel * u12
    dv23 = acc.voltage_abs_v + acc.voltage_rel * u23
    if not known:
        dv12 = dv23 = 0.05 * NOMINAL_LL_V
    gamma_lo = gamma_hi = 60.0 * _DEG
    if known and not u13_estimated and u13 is not None and u13 > 0.0:
        dv13 = acc.voltage_abs_v + acc.voltage_rel * u13
        gs = [voltage_angle(x, y, z) for x in (u12 - dv12, u12 + dv12) for y in (u13 - dv13, u13 + dv13)
              for z in (u23 - dv23, u23 + dv23)]
        angles = [g for g in gs if g is not None]
        if len(angles) < len(gs):
            return fallback("the voltages do not form a triangle")
        gamma_lo = min(angles)
        gamma_hi = max(angles)
    else:
        tol = acc.angle_tol_deg * _DEG if known else max(acc.angle_tol_deg, 3.0) * _DEG
        gamma_lo, gamma_hi = gamma_lo - tol, gamma_hi + tol
    # |S| and the element magnitudes |A| = |U12| |I1|, |B| = |U32| |I3|
    s = math.hypot(p_w, q_var)
    dp = acc.power_abs_w + acc.power_rel * s
    dq = acc.reactive_abs_var + acc.reactive_rel * s
    s2lo = max(0.0, abs(p_w) - dp) ** 2 + max(0.0, abs(q_var) - dq) ** 2
    s2hi = (abs(p_w) + dp) ** 2 + (abs(q_var) + dq) ** 2
    alo, ahi = (u12 - dv12) * i1lo, (u12 + dv12) * i1hi
    blo, bhi = (u23 - dv23) * i3lo, (u23 + dv23) * i3hi
    # the triangle must close for some values in the box: |A| - |B| <= |S| <= |A| + |B|
    gap = max(alo - bhi, blo - ahi, 0.0)
    tiny = 1e-9 * (1.0 + ahi + bhi) ** 2  # rounding: a single load closes the triangle exactly
    if s2lo > (ahi + bhi) ** 2 + tiny or s2hi < gap * gap - tiny:
        return fallback("inconsistent list: P, Q, I1, I3 do not close the two-wattmeter triangle")
    point = i2_candidates(i1, i3, p_w, q_var, u12, u13 if (u13 and not u13_estimated) else
                          math.sqrt(u12 * u12 + u23 * u23 - u12 * u23), u23)
    if min(alo, blo) <= 1e-9 * (1.0 + ahi + bhi):
        theta_lo, theta_hi = 0.0, math.pi  # a current too small to tell its angle
    else:
        clo, chi = _cos_theta_range(s2lo, s2hi, alo, ahi, blo, bhi)
        theta_lo = math.acos(max(-1.0, min(1.0, chi)))
        theta_hi = math.acos(max(-1.0, min(1.0, clo)))
        turn = 2.0 * acc.phase_deg * _DEG  # each element's phase error turns A or B
        theta_lo, theta_hi = max(0.0, theta_lo - turn), min(math.pi, theta_hi + turn)
    if lower:
        # the largest cos(theta + gamma): theta + gamma lies in [0, 2 pi], where cos has no maximum
        # inside an interval but at 2 pi
        x_lo, x_hi = theta_lo + gamma_lo, theta_hi + gamma_hi
        c = 1.0 if x_hi >= 2.0 * math.pi else max(math.cos(x_lo), math.cos(x_hi))
    else:
        # the largest cos(theta - gamma) over both intervals: 1 where they overlap, else at the gap
        c = math.cos(max(0.0, theta_lo - gamma_hi, gamma_lo - theta_hi))
    # |I2|^2 = I1^2 + I3^2 + 2 I1 I3 c is convex in (I1, I3): its maximum is at a corner
    worst = max(x * x + y * y + 2.0 * x * y * c for x in (i1lo, i1hi) for y in (i3lo, i3hi))
    value = min(kirchhoff, math.sqrt(max(0.0, worst)) * unscale)
    which = "smaller solution, mirror learned" if lower else "larger solution"
    return I2Estimate(value, "two-wattmeter", f"I2 from the two-wattmeter triangle ({which})", point)


def i2_from_reading(r: Reading, ct_ratio: float = 1.0, accuracy: Accuracy = DEFAULT_ACCURACY, *,
                    lower: bool = False) -> I2Estimate:
    """`estimate_i2` on a decoded list 2 or 3 of a three-wire meter (currents and powers times the
    CT ratio; voltages as the 3-wire vendors report them: U12, U13, U23)."""
    k = ct_ratio
    i1 = None if r.current_l1_a is None else r.current_l1_a * k
    i3 = None if r.current_l3_a is None else r.current_l3_a * k
    imp, exp = r.active_import_w, r.active_export_w
    qi, qe = r.reactive_import_var, r.reactive_export_var
    if imp is None or qi is None:
        return estimate_i2(i1, i3, None, None, accuracy=accuracy)
    if (exp or 0.0) > 0.0 and imp > 0.0:
        # one list cannot import and export at once: not a coherent snapshot
        est = estimate_i2(i1, i3, None, None, accuracy=accuracy)
        return I2Estimate(est.value_a, est.method, "inconsistent list: import and export at once")
    p = (imp - (exp or 0.0)) * k
    q = (qi - (qe or 0.0)) * k
    return estimate_i2(i1, i3, p, q, r.voltage_l1_v, r.voltage_l2_v, r.voltage_l3_v,
                       u13_estimated="voltage_l2_v" in r.estimated, accuracy=accuracy, lower=lower)
