"""Which of the two-wattmeter triangle's two |I2| solutions is the true one, learned from our own steps.

An IT meter with two elements (`apm.core.three_wire`) gives |I1|, |I3|, P, Q and the line voltages.
For a phase sequence s (+1: L1-L2-L3, -1: L1-L3-L2) the triangle A + B = S (A = U12 conj I1,
B = U32 conj I3) has two solutions, mirror images m = +-1 of each other, and so four hypotheses
(s, m) for the phasors I1, I3 behind the list. |I2| = |I1 + I3| depends only on m s: two values,
the larger one (which three_wire takes when nothing else is known) and the smaller.

Our chargers are a known load: a 1-phase EV draws its current in phase with the line-to-line voltage
it sits on, a 3-phase one a balanced star in phase with the star voltages (power factor 1, on-board
chargers correct it). In a frame where U12 is real their line-current phasors per sequence are known
(`own_phasors`). Between two lists where the household did not change, the true hypothesis moves by
exactly our own change: I1' = I1 + dI1, I3' = I3 + dI3. A false one in general does not land on a
solution of the new list (unless Q = 0 and the step is on L1-L2 or L2-L3, or nothing moved: then
no hypothesis is dropped). So each new list keeps the hypotheses that some kept hypothesis of the
anchor list leads to, within the errors of both lists and of our own currents (`Learner.on_list`).

When the household changed (P + jQ moved by more than our own step explains), a single household load
that switched on one connection (L1-L2, L2-L3, L3-L1, or a balanced 3-phase one) moves the phasors
by an amount fixed by its P + jQ and the connection; each of the four is tried. A change that fits
none (several loads at once, a list whose values were not sampled together) finds no hypothesis:
everything is possible again and the larger solution is used until our next step tells them apart.

The smaller solution is used for a list only when every hypothesis still standing says so, each
with a margin. The anchor (the list the next one is compared with) moves on only at a quiet list:
our chargers steady for a few seconds before it and list 1's power on both sides of it equal to its
own (so values measured up to ``power_skew_s`` apart still describe one state), and no older than
``max_gap_s``. Why this cannot trip the fuse is in docs/it-l2-inference.md.

Cost per list 2: a few hundred floating-point operations (4 hypotheses x 5 links x 16 corners).
"""

from __future__ import annotations

import cmath
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

from apm.core.three_wire import NOMINAL_LL_V, Accuracy, voltage_angle

__all__ = ["Hypothesis", "Learner", "ListValues", "Snapshot", "own_phasors", "solve", "two_load_cost", "two_loads"]

Hypothesis = tuple[int, int]  # (phase sequence s, mirror m)
Pair = tuple[complex, complex]  # I1, I3 phasors (A) in the frame where U12 is real
ALL: tuple[Hypothesis, ...] = ((1, 1), (1, -1), (-1, 1), (-1, -1))
_DEG = math.pi / 180.0
SEQUENCE_VOTES = 5
# What differs between two lists of one meter a few tens of seconds apart at similar load: the
# resolution (Aidon 0.1 A, 1 W, 1 var) and a little of the class 1 relative error (mostly a gain and
# phase error of each element, the same in both lists, so it cancels in a link).
LINK_ACCURACY = Accuracy(current_abs_a=0.06, current_rel=0.001, power_abs_w=5.0, power_rel=0.001,
                         reactive_abs_var=5.0, reactive_rel=0.002)


def _star_units(s: int) -> tuple[complex, complex, complex]:
    """Unit star voltages with U12 = V1 - V2 real and positive."""
    return tuple(cmath.exp(-1j * s * (30.0 + 120.0 * k) * _DEG) for k in range(3))  # type: ignore[return-value]


def _ll_unit(s: int, i: int, j: int) -> complex:
    v = _star_units(s)
    d = v[i] - v[j]
    return d / abs(d)


def own_phasors(s: int, chargers: Iterable[tuple[tuple[int, int, int], tuple[float, float, float]]]) -> Pair:
    """I1, I3 our chargers draw, from (rotation index, terminal currents) each, for sequence ``s``."""
    acc = [0j, 0j, 0j]
    star = _star_units(s)
    for rot, t in chargers:
        if t[0] <= 0.0:
            continue
        if t[2] > 0.0:  # 3-phase: a balanced star in phase with its star voltages
            for k in range(3):
                acc[rot[k]] += t[k] * star[rot[k]]
        else:  # 1-phase between its first two terminals' lines
            j = t[0] * _ll_unit(s, rot[0], rot[1])
            acc[rot[0]] += j
            acc[rot[1]] -= j
    return acc[0], acc[2]


@dataclass(frozen=True, slots=True)
class ListValues:
    """What a list 2 or 3 of a two-element meter says (CT ratio applied)."""

    i1: float
    i3: float
    p_w: float  # import minus export
    q_var: float
    u12: float = NOMINAL_LL_V
    u13: float = NOMINAL_LL_V
    u23: float = NOMINAL_LL_V
    u13_estimated: bool = False


def _triangle(v: ListValues, s: int, m: int) -> Pair | None:
    gamma = None if v.u13_estimated else voltage_angle(v.u12, v.u13, v.u23)
    if gamma is None:
        gamma = 60.0 * _DEG
    a, b = v.u12 * v.i1, v.u23 * v.i3
    big_s = complex(v.p_w, v.q_var)
    c = abs(big_s)
    if a <= 1e-9 or c <= 1e-9:
        alpha = cmath.phase(big_s) if a > 1e-9 else 0.0
        big_a = a * cmath.exp(1j * alpha)
    else:
        cos_d = (a * a + c * c - b * b) / (2.0 * a * c)
        if not -1.0 - 1e-3 <= cos_d <= 1.0 + 1e-3:
            return None
        d = math.acos(max(-1.0, min(1.0, cos_d)))
        big_a = a * cmath.exp(1j * (cmath.phase(big_s) + m * d))
    big_b = big_s - big_a
    u32 = v.u23 * cmath.exp(1j * s * gamma)
    return (big_a / v.u12).conjugate(), (big_b / u32).conjugate()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One list's four hypotheses: phasors, how far off they may be (A), and which |I2| each gives."""

    at: float
    values: ListValues
    pairs: dict[Hypothesis, Pair]
    radius: dict[Hypothesis, float]
    lower: dict[Hypothesis, bool]  # the hypothesis gives the smaller |I2| (with a margin)


def solve(at: float, v: ListValues, accuracy: Accuracy = LINK_ACCURACY) -> Snapshot | None:
    """The four hypotheses of one list, or None when the list does not close the triangle."""
    acc = accuracy
    di1 = acc.current_abs_a + acc.current_rel * v.i1
    di3 = acc.current_abs_a + acc.current_rel * v.i3
    s_abs = math.hypot(v.p_w, v.q_var)
    dp = acc.power_abs_w + acc.power_rel * s_abs
    dq = acc.reactive_abs_var + acc.reactive_rel * s_abs
    pairs: dict[Hypothesis, Pair] = {}
    radius: dict[Hypothesis, float] = {}
    for h in ALL:
        point = _triangle(v, *h)
        if point is None:
            return None
        worst = 0.0
        for x1 in (-di1, di1):
            for x3 in (-di3, di3):
                for xp in (-dp, dp):
                    for xq in (-dq, dq):
                        w = ListValues(max(0.0, v.i1 + x1), max(0.0, v.i3 + x3), v.p_w + xp, v.q_var + xq,
                                       v.u12, v.u13, v.u23, v.u13_estimated)
                        c = _triangle(w, *h)
                        if c is None:  # the box reaches past a degenerate triangle: angles unknown
                            worst = max(worst, 2.0 * (v.i1 + v.i3))
                            continue
                        worst = max(worst, abs(c[0] - point[0]), abs(c[1] - point[1]))
        # each element's phase error turns its current and the gain error scales it: the same way in
        # the lists a link compares (one meter, similar currents), so only a quarter is left over
        turn = 2.0 * acc.phase_deg * _DEG + acc.gain_rel
        radius[h] = worst + 0.25 * turn * max(v.i1, v.i3)
        pairs[h] = point
    lower: dict[Hypothesis, bool] = {}
    for s, m in ALL:
        mine = abs(sum(pairs[(s, m)]))
        other = abs(sum(pairs[(s, -m)]))
        margin = 2.0 * (radius[(s, m)] + radius[(s, -m)])
        lower[(s, m)] = mine < other - margin
    return Snapshot(at, v, pairs, radius, lower)


def _slot_moves(s: int, ds: complex) -> list[Pair]:
    """How I1, I3 move when one household load of complex power ``ds`` switches on each connection."""
    u = NOMINAL_LL_V
    moves: list[Pair] = []
    for i, j in ((0, 1), (1, 2), (2, 0)):
        cur = (ds / (u * _ll_unit(s, i, j))).conjugate()  # flows i -> j
        d = [0j, 0j, 0j]
        d[i] += cur
        d[j] -= cur
        moves.append((d[0], d[2]))
    third = [0j, 0j, 0j]
    for i, j in ((0, 1), (1, 2), (2, 0)):
        cur = (ds / 3.0 / (u * _ll_unit(s, i, j))).conjugate()
        third[i] += cur
        third[j] -= cur
    moves.append((third[0], third[2]))
    return moves


# A two-load link is kept only if it switches at most this many times the load of the most
# economical one (plus the slack): a flip of the mirror needs loads far larger than the net change.
TWO_LOAD_EXCESS = 2.0
TWO_LOAD_SLACK_VA = 500.0
HOUSE_PF_MIN = 0.7  # the least power factor of a household load (either sign of Q) a two-load change may have


def _in_cone(x: complex, err: float, pf_min: float) -> bool:
    """Whether a load change of complex power ``x`` (+-, within ``err`` VA) has |PF| >= ``pf_min``."""
    r = abs(x)
    if r <= err:
        return True
    off = abs(math.atan2(x.imag, abs(x.real))) - math.acos(pf_min)  # beyond the cone, either sign of P
    return off <= 0.0 or (off < math.pi / 2.0 and r * math.sin(off) <= err)


def two_loads(s: int, d: Pair, tol: float, pf_min: float = HOUSE_PF_MIN) -> bool:
    """Whether a move ``d`` of I1, I3 (A, each within ``tol``) is two household loads switching on two
    different connections, each with a power factor of at least ``pf_min`` (leading or lagging).

    A load of complex power x on connection c moves (I1, I3) by conj(x) w_c; two of them give two
    complex equations in two unknowns, so a pair of connections explains any move: only the power
    factors it needs can rule it out (a false mirror needs loads 60-120 degrees off their voltage)."""
    return two_load_cost(s, d, tol, pf_min) is not None


def two_load_cost(s: int, d: Pair, tol: float,
                  pf_min: float = HOUSE_PF_MIN) -> tuple[float, float] | None:
    """How much load (VA, |x_a| + |x_b|) the least of the `two_loads` explanations of ``d`` switches,
    and how far that may be off within ``tol``; None when none has plausible power factors.

    The mirror the household was in before a change and the other one after it are both explained
    by two loads, but a flip of the mirror needs a move of the order of the whole current: loads
    switching on and off several times the net change (measured on the evening sets: 3-8x the
    switching the true link needs)."""
    w = _slot_moves(s, 1.0 + 0j)
    best: tuple[float, float] | None = None
    for ia in range(4):
        for ib in range(ia + 1, 4):
            (a1, a3), (b1, b3) = w[ia], w[ib]
            det = a1 * b3 - b1 * a3
            if abs(det) < 1e-12:
                continue
            ya = (d[0] * b3 - b1 * d[1]) / det
            yb = (a1 * d[1] - d[0] * a3) / det
            # how far each load's power may be off when each current is off by tol (the inverse's rows)
            ea = tol * (abs(b3) + abs(b1)) / abs(det)
            eb = tol * (abs(a3) + abs(a1)) / abs(det)
            if _in_cone(ya.conjugate(), ea, pf_min) and _in_cone(yb.conjugate(), eb, pf_min):
                size = abs(ya) + abs(yb)
                if best is None or size < best[0]:
                    best = (size, ea + eb)
    return best


def _solve4(m: list[list[float]], b: list[float]) -> tuple[list[float], list[float]] | None:
    """x with m x = b (4x4, partial pivoting) and each row's sum of |inverse| (how far x_i moves when
    every b_j moves by 1), or None when m is singular."""
    n = len(b)
    a = [row[:] + [b[i]] + [1.0 if j == i else 0.0 for j in range(n)] for i, row in enumerate(m)]
    for c in range(n):
        piv = max(range(c, n), key=lambda r: abs(a[r][c]))
        if abs(a[piv][c]) < 1e-9:
            return None
        a[c], a[piv] = a[piv], a[c]
        for r in range(n):
            if r != c:
                f = a[r][c] / a[c][c]
                a[r] = [x - f * y for x, y in zip(a[r], a[c], strict=True)]
    x = [a[i][n] / a[i][i] for i in range(n)]
    spread = [sum(abs(v) for v in a[i][n + 1:]) / abs(a[i][i]) for i in range(n)]
    return x, spread


def consuming_loads(s: int, house: Pair, tol: float, pf_min: float = HOUSE_PF_MIN) -> bool:
    """Whether the household's I1, I3 (A, each within ``tol``) can be drawn by loads that consume
    (P >= 0) with a power factor of at least ``pf_min``, leading or lagging, on L1-L2, L2-L3 and
    L3-L1 under sequence ``s`` (a balanced 3-phase load is one on each).

    Each connection's load is a non-negative mix of its two extreme power factors: six columns, four
    real equations, and (Caratheodory) a non-negative solution exists if one exists on four columns."""
    turn = math.acos(pf_min)
    cols: list[list[float]] = []
    for w1, w3 in _slot_moves(s, 1.0 + 0j)[:3]:
        for sign in (1, -1):
            k = cmath.exp(-1j * sign * turn)  # conj of the load's unit power at that extreme
            c1, c3 = k * w1, k * w3
            cols.append([c1.real, c1.imag, c3.real, c3.imag])
    b = [house[0].real, house[0].imag, house[1].real, house[1].imag]
    if max(abs(x) for x in b) <= tol:
        return True
    for pick in itertools.combinations(range(6), 4):
        sol = _solve4([[cols[j][i] for j in pick] for i in range(4)], b)
        if sol is not None and all(x >= -tol * e for x, e in zip(*sol, strict=True)):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Verdict:
    lower: bool
    hypotheses: tuple[Hypothesis, ...]
    reason: str


class Learner:
    """The hypotheses standing for the latest list, kept against every new one (module doc).

    ``sequence``: the installation's phase sequence when the installer knows it (+1 or -1), else
    None. ``power_skew_s``: how far apart a meter may sample a list's powers and currents.
    """

    def __init__(self, sequence: int | None = None, *, accuracy: Accuracy = LINK_ACCURACY,
                 max_gap_s: float = 90.0, power_skew_s: float = 2.0, through_house: bool = True,
                 own_rel: float = 0.05, house_noise_a: float = 0.3,
                 house_pf_min: float | None = HOUSE_PF_MIN) -> None:
        self.sequences = (1, -1) if sequence is None else (sequence,)
        self.given_sequence = sequence
        # The phase sequence is a constant of the installation: own-step links that leave hypotheses
        # of one sequence only vote for it; SEQUENCE_VOTES of them and none against fix it, and
        # as many links that then fit nothing (a wrong sequence fits no step) unfix it.
        self.votes = {1: 0, -1: 0}
        self.misfits = 0
        self.accuracy = accuracy
        self.max_gap_s = max_gap_s
        self.power_skew_s = power_skew_s
        self.through_house = through_house
        self.own_rel = own_rel
        self.house_noise_a = house_noise_a
        self.house_pf_min = house_pf_min  # None: a change no single load explains keeps no hypothesis
        self.anchor: Snapshot | None = None
        self.anchor_own: dict[int, Pair] = {}
        self.kept: tuple[Hypothesis, ...] = ()
        self._pending: tuple[Snapshot, dict[int, Pair], tuple[Hypothesis, ...], bool] | None = None
        self._last_power: tuple[float, float] | None = None
        self._seen_list1 = False
        self.learned = 0  # quiet lists that dropped a hypothesis (diagnostics)

    def _all(self) -> tuple[Hypothesis, ...]:
        return tuple(h for h in ALL if h[0] in self.sequences)

    def _power_tol(self, p: float) -> float:
        return 30.0 + 0.01 * abs(p)

    def on_power(self, at: float, p_w: float) -> None:
        """A list 1's power: it confirms (or not) that the list before it was quiet."""
        self._seen_list1 = True
        pend = self._pending
        if pend is not None and at > pend[0].at:
            self._pending = None
            if abs(p_w - pend[0].values.p_w) <= self._power_tol(p_w):
                self._set_anchor(*pend)
        self._last_power = (at, p_w)

    def _set_anchor(self, snap: Snapshot, own: dict[int, Pair], kept: tuple[Hypothesis, ...],
                    house_moved: bool) -> None:
        a = self.anchor
        shrank = bool(kept) and len(kept) < len(self.kept or self._all())
        if shrank and a is not None:
            self.learned += 1
        # Keep an anchor that only our own steps moved away from while it is young: the evidence of
        # several small steps adds up against the same list.
        if (a is not None and kept and not shrank and not house_moved
                and snap.at - a.at <= self.max_gap_s / 2.0):
            return
        self.anchor, self.anchor_own, self.kept = snap, own, kept or self._all()

    def on_list(self, at: float, values: ListValues, own: dict[int, Pair], steady: bool) -> Verdict:
        """A list 2 or 3 at ``at`` with our chargers' phasors then (per sequence) and whether they had
        been steady for the skew window before it. Returns which solution the list may use."""
        snap = solve(at, values, self.accuracy)
        if snap is None:
            self._pending = None
            return Verdict(False, (), "triangle does not close: no inference")
        if self.anchor is not None and at - self.anchor.at > self.max_gap_s:
            self.anchor, self.kept = None, ()
        kept, house_moved = self._link(snap, own) if self.anchor is not None else ((), True)
        kept = self._consuming(snap, own, kept)
        if len(self.sequences) == 2:
            # (s, m) and (-s, -m) give the same |I2| and, with Q ~ 0, fit the same steps: keep both
            # while the sequence is open, so that links by chance to the conjugate world alone do
            # not leave the true sequence behind (its links are then of a world that is not there)
            kept = kept + tuple((-s, -m) for s, m in kept if (-s, -m) not in kept)
        if self.anchor is not None and not house_moved and self.given_sequence is None:
            # what this link alone says of the sequence, whatever the anchor's hypotheses
            self._vote(self._link(snap, own, ALL)[0] if len(self.sequences) == 2 else kept)
        lp = self._last_power
        quiet = steady and (lp is None or (at - lp[0] <= 3.0 + self.power_skew_s
                                           and abs(lp[1] - values.p_w) <= self._power_tol(values.p_w)))
        self._pending = (snap, own, kept, house_moved) if quiet else None
        if quiet and not self._seen_list1:  # a meter without list 1 (Kamstrup): nothing to wait for
            self._set_anchor(snap, own, kept, house_moved)
            self._pending = None
        if not kept:
            return Verdict(False, (), "mirror not known")
        if all(snap.lower[h] for h in kept):
            return Verdict(True, kept, "smaller I2 solution: the mirror learned from our own steps")
        return Verdict(False, kept, "larger I2 solution possible")

    def _consuming(self, snap: Snapshot, own: dict[int, Pair],
                   kept: tuple[Hypothesis, ...]) -> tuple[Hypothesis, ...]:
        """Of ``kept`` (or of all hypotheses when nothing is known), those under which the household
        alone is loads that consume with a plausible power factor (``consuming_loads``). When none
        is (export, a load below the power factor bound), this says nothing."""
        if self.house_pf_min is None:
            return kept
        acc = self.accuracy
        turn = 2.0 * acc.phase_deg * _DEG + acc.gain_rel
        out = []
        for h in kept or self._all():
            o = own.get(h[0], (0j, 0j))
            i1, i3 = snap.pairs[h]
            tol = (snap.radius[h] + turn * max(snap.values.i1, snap.values.i3) + self.house_noise_a
                   + self.own_rel * (abs(o[0]) + abs(o[1])))
            if consuming_loads(h[0], (i1 - o[0], i3 - o[1]), tol, self.house_pf_min):
                out.append(h)
        return tuple(out) if out else kept

    def _vote(self, kept: tuple[Hypothesis, ...]) -> None:
        """Learn the phase sequence from an own-step link (see ``__init__``)."""
        if self.given_sequence is not None:
            return
        if not kept:
            self.misfits += 1
            if len(self.sequences) == 1 and self.misfits >= SEQUENCE_VOTES:
                self.sequences, self.votes, self.misfits = (1, -1), {1: 0, -1: 0}, 0
            return
        seqs = {h[0] for h in kept}
        if len(seqs) == 1 and len(self.sequences) == 2:
            s = seqs.pop()
            self.votes[s] += 1
            self.misfits = 0
            if self.votes[s] >= SEQUENCE_VOTES and self.votes[-s] == 0:
                self.sequences = (s,)

    def _link(self, snap: Snapshot, own: dict[int, Pair],
              kept: tuple[Hypothesis, ...] | None = None) -> tuple[tuple[Hypothesis, ...], bool]:
        """The hypotheses of ``snap`` that some kept hypothesis of the anchor leads to, and whether
        the household changed since the anchor."""
        a = self.anchor
        assert a is not None
        out: list[Hypothesis] = []
        house_moved = False
        ds_meas = complex(snap.values.p_w - a.values.p_w, snap.values.q_var - a.values.q_var)
        pair_moves: list[tuple[int, int, Pair]] = []
        for s, m in self.kept if kept is None else kept:
            o0, o1 = self.anchor_own.get(s, (0j, 0j)), own.get(s, (0j, 0j))
            d_own = (o1[0] - o0[0], o1[1] - o0[1])
            u12, u32 = NOMINAL_LL_V, NOMINAL_LL_V * cmath.exp(1j * s * 60.0 * _DEG)
            ds_own = u12 * d_own[0].conjugate() + u32 * d_own[1].conjugate()
            ds_house = ds_meas - ds_own
            moves: list[Pair] = []
            if abs(ds_house) <= self._power_tol(abs(snap.values.p_w) + abs(a.values.p_w)):
                moves.append((0j, 0j))
            else:
                house_moved = True
            if self.through_house:
                # also below the power tolerance: a 200 W load moves a current by ~1 A, more than a
                # link's tolerance
                moves.extend(_slot_moves(s, ds_house))
                pair_moves.append((s, m, d_own))
            i1, i3 = a.pairs[(s, m)]
            for mv in moves:
                tol_own = self.house_noise_a + self.own_rel * (abs(d_own[0]) + abs(d_own[1])
                                                              + abs(mv[0]) + abs(mv[1]))
                p1, p3 = i1 + d_own[0] + mv[0], i3 + d_own[1] + mv[1]
                for m2 in (1, -1):
                    h2 = (s, m2)
                    tol = a.radius[(s, m)] + snap.radius[h2] + tol_own
                    n1, n3 = snap.pairs[h2]
                    if abs(p1 - n1) <= tol and abs(p3 - n3) <= tol and h2 not in out:
                        out.append(h2)
        if not out and self.house_pf_min is not None:
            out = self._two_load_link(snap, pair_moves, self.house_pf_min)
        return tuple(out), house_moved

    def _two_load_link(self, snap: Snapshot, pair_moves: list[tuple[int, int, Pair]],
                       pf_min: float) -> list[Hypothesis]:
        """When no single household load explains a change: the hypotheses two loads with plausible
        power factors lead to (``two_loads``), less those that need more than ``TWO_LOAD_EXCESS``
        times the switching of the most economical one (`two_load_cost`: a flip of the mirror)."""
        a = self.anchor
        assert a is not None
        cost: dict[Hypothesis, float] = {}
        for s, m, d_own in pair_moves:
            i1, i3 = a.pairs[(s, m)]
            for m2 in (1, -1):
                h2 = (s, m2)
                n1, n3 = snap.pairs[h2]
                d = (n1 - i1 - d_own[0], n3 - i3 - d_own[1])
                tol = (a.radius[(s, m)] + snap.radius[h2] + self.house_noise_a
                       + self.own_rel * (abs(d_own[0]) + abs(d_own[1]) + abs(d[0]) + abs(d[1])))
                c = two_load_cost(s, d, tol, pf_min)
                if c is not None and (h2 not in cost or c[0] < cost[h2]):
                    cost[h2] = c[0]
        if not cost:
            return []
        # Central values: the tolerances are those of a feasibility test (several kVA on a large
        # move), far wider than the sizes of the two explanations really differ by.
        least = min(cost.values())
        return [h for h, c in cost.items() if c <= TWO_LOAD_EXCESS * least + TWO_LOAD_SLACK_VA]
