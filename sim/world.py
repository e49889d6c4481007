"""The physics of a scenario, one step at a time: what both closed loops simulate around the device.

    EVs come and go -> household + SimChargers -> sim.grid (line currents, P, Q, voltages)
                    -> FuseJudge, and the oracles (sim.oracle.Oracles)

Sans-IO and driven by the step number: ``step(k)`` advances to ``k * step_s`` and returns the
`GridState` a meter there would measure. The in-process loop (sim/closed_loop.py) calls it and then
runs the meter, headroom and balancer in the same step; the pipeline (sim/pipeline.py) paces it with
a clock and lets the real parts read it through a pty and a broker. Setpoints reach the chargers from
outside (``chargers[id].set_setpoint``), so the world never knows who controls it.

``history_s`` keeps that many steps of measurements for a meter that samples the past (the
pipeline's `sim.meter.Meter` reads the second it stamps, up to a minute back).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from apm.core.lines import Triple
from sim.charger import SimCharger
from sim.fuse import FuseJudge
from sim.grid import Grid, GridState
from sim.household import HouseSample, make_household
from sim.oracle import Oracles

if TYPE_CHECKING:
    from sim.closed_loop import Scenario, Trace


class World:
    """A scenario's household, chargers, EVs, grid and fuse judge (see the module doc)."""

    def __init__(self, sc: Scenario, *, trace: Trace | None = None, house_offset_s: float | None = None,
                 oracles: bool = True, duration_s: float | None = None, step_s: float | None = None,
                 history_s: int = 0) -> None:
        self.sc = sc
        self.trace = trace
        self.step_s = sc.step_s if step_s is None else step_s
        # None: the scenario's (the demo passes the wall clock's time of day)
        house_offset_s = sc.house_offset_s if house_offset_s is None else house_offset_s
        self.house_offset_s = house_offset_s
        span = sc.duration_s if duration_s is None else duration_s
        self._days = 7 if not math.isfinite(span) else int(math.ceil((span + house_offset_s) / 86400.0)) + 1
        self._house_origin = 0.0
        self._house_seed = int(sc.household.get("seed", 1))
        self.household = self._make_household()
        self.grid = Grid(sc.network, sc.supply_phases, sc.grid_model,  # type: ignore[arg-type]
                         sequence=sc.sequence, unbalance=sc.unbalance)
        self.chargers = {c.id: SimCharger(c, sc.network, sc.supply_phases) for c in sc.chargers}
        self.charger_list = list(self.chargers.values())
        self.fuse = FuseJudge(sc.fuse_a, sc.curve, lines=3)
        self.oracles: Oracles | None = Oracles(sc) if oracles else None
        self.evs = {e.id: e.make() for e in sc.evs}
        self._schedule = sorted(sc.evs, key=lambda e: e.arrive_s)
        self._present: dict[str, str] = {}  # charger id -> EV id
        self._gone: set[str] = set()
        self.k = -1  # the last step taken
        self.state: GridState | None = None  # the last step's
        self.history_s = history_s
        # the worst second: (largest line current / In, its line, when, every line, the household's lines)
        self._peak: tuple[float, int, float, Triple, Triple] = (-1.0, 0, 0.0, (0.0,) * 3, (0.0,) * 3)
        self._hist: dict[int, GridState] = {}
        if trace is not None:
            for cid in self.chargers:
                trace.chargers[cid] = []
                trace.setpoints[cid] = []

    def _make_household(self) -> Any:
        opts = dict(self.sc.household)
        opts.pop("seed", None)
        return make_household(self.sc.network, model=opts.pop("model", None), trace=opts.pop("trace", None),
                              seed=self._house_seed, days=self._days, **opts)

    def _house(self, t: float) -> HouseSample:
        ht = t + self.house_offset_s - self._house_origin
        if "trace" not in self.sc.household and ht >= self._days * 86400.0:
            # An endless run (the demo): a new plan, with the next seed, every few days.
            self._house_origin += self._days * 86400.0
            self._house_seed += 1
            self.household = self._make_household()
            ht -= self._days * 86400.0
        return self.household.sample(ht)

    def step(self, k: int) -> GridState:
        """Advance to step ``k``: plug and unplug EVs, step the chargers, measure the grid, judge the
        fuse and step the oracles."""
        now = k * self.step_s
        for spec in self._schedule:
            if spec.id in self._gone:
                continue
            if self._present.get(spec.charger) == spec.id:
                if now >= spec.depart_s:
                    self.chargers[spec.charger].unplug(now)
                    del self._present[spec.charger]
                    self._gone.add(spec.id)
            elif now >= spec.arrive_s and spec.charger not in self._present:
                if now < spec.depart_s:
                    self.chargers[spec.charger].plug(now, self.evs[spec.id])
                    self._present[spec.charger] = spec.id
                else:
                    self._gone.add(spec.id)
        house = self._house(now)
        for c in self.charger_list:
            c.step(now)
        g = self.grid.measure(house, self.charger_list)
        self.fuse.step(now, g.lines)
        top = max(g.lines)
        if top > self._peak[0] * self.sc.fuse_a:
            self._peak = (top / self.sc.fuse_a, g.lines.index(top), now, g.lines, g.house_lines)
        if k > 0 and self.oracles is not None:
            self.oracles.step(now, self.step_s, g.house_lines)
        self.k = k
        self.state = g
        if self.history_s:
            self._hist[k] = g
            self._hist.pop(k - self.history_s, None)
        return g

    def fuse_report(self) -> dict[str, Any]:
        """The fuse judge's report keys and the worst second: ``peak`` (``x_in``: its largest line
        current / In, that ``line``, ``at_s``, every line's ``current_a`` and the household's alone,
        ``house_a``) and ``seconds_above_in_total`` (over the lines)."""
        out = self.fuse.report()
        x, i, at, lines, house = self._peak
        out["peak"] = {"x_in": round(max(x, 0.0), 4), "line": ("L1", "L2", "L3")[i], "at_s": at,
                       "current_a": [round(a, 2) for a in lines], "house_a": [round(a, 2) for a in house]}
        out["seconds_above_in_total"] = sum(self.fuse.seconds_above_in)
        return out

    def record(self) -> None:
        """Add the present step to the trace (when there is one): lines, charger draws, setpoints."""
        tr, g = self.trace, self.state
        if tr is None or g is None:
            return
        tr.t.append(self.k * self.step_s)
        tr.lines.append(g.lines)
        tr.house.append(g.house_lines)
        for c in self.charger_list:
            tr.chargers[c.id].append(max(c.terminals))
            tr.setpoints[c.id].append(c.setpoint_a)

    # --- what a meter measures: a step already taken (needs history_s) ---------------------------

    def state_at(self, t: float) -> GridState:
        return self._hist[int(t / self.step_s)]

    def currents_at(self, t: float) -> Triple:
        return self.state_at(t).lines

    def power_at(self, t: float) -> float:
        return self.state_at(t).power_w

    def reactive_at(self, t: float) -> float:
        return self.state_at(t).reactive_var

    def voltages_at(self, t: float, currents: Triple) -> Triple:
        return self.state_at(t).voltages
