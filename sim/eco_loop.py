"""Smart eco in the closed loop: the joint planner caps the chargers, and every kWh drawn is priced.

``EcoPolicy`` is a ``sim.closed_loop.LoopPolicy``. For each EV session of the scenario it knows the
arrival, the departure and the energy the car needs from the grid: an explicit ``energy_kwh`` in the
``[[ev]]`` table (read from the raw TOML; the loop itself does not take that key), otherwise
``(target_soc - soc) * battery_kwh / efficiency``. It plans all cars on the fuse together
(apm.core.eco.planner.plan) and gives the balancer ``allowed_current(plan, id, now)`` for each charger with a
planned car (0 A outside its slots), in protect mode, so the balancer still keeps the fuse.

When it plans: when a car arrives (once the first headroom is known), at 13:00 local time when the next
day's prices are published, and every hour while a car is plugged in, with the energy still missing;
the hourly re-plan catches up what the balancer had to hold back when the household took more than
its estimate.

Prices: the bundled NO1 week, revealed as day-ahead prices are: until local midnight, and after 13:00
until the next midnight; the planner continues the series with estimates (the day before) past that.
Every kWh is charged at spot + the default grid energy charge (Elvia's day/night rate).

Budget per slot (what the balancer is expected to leave the chargers): ``fuse - margin - household``,
the household being its mean per quarter hour of the day on the day before (the largest line, from the
device's own headroom estimates); quarters not seen yet take the latest measured household current.

    python -m sim.eco_loop sim/scenarios/eco-week-tn.toml [--report OUT.json]
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apm.core.eco.planner import CarRequest, Charger, PlanError, PlanOptions, plan
from apm.core.eco.prices import PriceSeries, sample_week
from apm.core.eco.schedule import allowed_current, change_times
from apm.core.eco.tariff import ELVIA, EnergyCharge
from apm.core.headroom import Headroom
from sim.charger import SimCharger
from sim.closed_loop import Scenario, ScenarioError, read_toml, run, scenario_from_dict

QUARTER_S = 900.0
DAY_S = 86400.0
PUBLISH_HOUR = 13  # day-ahead prices for tomorrow are known from about 13:00
REPLAN_S = 3600.0
# plan a little more than needed: each (re)start costs the EV's start delay and ramp (~15 Wh at 11 kW);
# the car stops at its target anyway
NEED_MARGIN = 1.02
NEED_PAD_KWH = 0.15
MET_TOL_KWH = 0.01


@dataclass(frozen=True, slots=True)
class Session:
    """One EV's stay on a charger and the grid energy it needs before it leaves."""

    id: str
    charger: str
    arrive_s: float
    depart_s: float
    need_kwh: float


def load(path: str | Path) -> tuple[Scenario, tuple[Session, ...]]:
    """The scenario and its sessions; ``energy_kwh`` keys are taken out before the loop sees them."""
    path = Path(path)
    return from_dict(read_toml(path), name=path.stem, base=path.parent)


def from_dict(data: dict[str, Any], name: str = "scenario",
              base: Path | None = None) -> tuple[Scenario, tuple[Session, ...]]:
    data = dict(data)
    evs = [dict(e) for e in data.get("ev", [])]
    explicit: list[float | None] = []
    for i, e in enumerate(evs):
        v = e.pop("energy_kwh", None)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0):
            raise ScenarioError(f"ev[{i}].energy_kwh: {v!r} is not a number >= 0")
        explicit.append(None if v is None else float(v))
    data["ev"] = evs
    sc = scenario_from_dict(data, name=name, base=base)
    sessions = []
    for spec, energy in zip(sc.evs, explicit, strict=True):
        if energy is None:
            ev = spec.make()
            energy = max(0.0, ev.target_soc - ev.soc) * ev.battery_kwh / ev.efficiency
        depart = min(spec.depart_s, sc.duration_s)
        sessions.append(Session(spec.id, spec.charger, spec.arrive_s, depart, energy))
    return sc, tuple(sessions)


class EcoPolicy:
    """Smart eco caps for the closed loop (``eco=False``: charging at once, only priced)."""

    def __init__(self, sc: Scenario, sessions: Sequence[Session], prices: PriceSeries | None = None,
                 grid: EnergyCharge = ELVIA.energy, *, eco: bool = True) -> None:
        self.sc = sc
        self.sessions = tuple(sessions)
        self.prices = prices or sample_week()
        self.grid = grid
        self.eco = eco
        self.start = sc.start
        self._sod0 = sc.start.hour * 3600 + sc.start.minute * 60 + sc.start.second
        self._cfg = {c.id: c for c in sc.chargers}
        self._evcfg = {e.id: e.make() for e in sc.evs}
        # the price of each quarter of the run (spot + grid), and the slot index offset
        self._rates: list[float] = []
        t = sc.start
        end = sc.start + timedelta(seconds=sc.duration_s)
        while t < end:
            slot = self.prices.at(t)
            if slot is None:
                raise ScenarioError(f"the prices ({self.prices.start.isoformat()} .. "
                                    f"{self.prices.end.isoformat()}) do not cover {t.isoformat()}")
            self._rates.append(slot.nok_per_kwh + grid.rate_at(t))
            t += timedelta(seconds=QUARTER_S)
        self.energy = {s.id: 0.0 for s in self.sessions}
        self.cost = {s.id: 0.0 for s in self.sessions}
        self._on: dict[str, Session] = {}  # charger -> session plugged in now
        self._planned: set[str] = set()
        self._caps: dict[str, tuple[float, ...]] = {}  # charger -> (change times s, ...) of the plan
        self._vals: dict[str, tuple[float, ...]] = {}
        self._plan: Any = None
        self._last_plan_s = -math.inf
        self._house_sum: dict[int, float] = {}  # quarter of the run -> sum of house current samples
        self._house_n: dict[int, int] = {}
        self._house_now: float | None = None
        self._last_headroom: Headroom | None = None
        self.plans = 0
        self.plan_notes: list[str] = []
        self.infeasible: list[str] = []

    # --- helpers -----------------------------------------------------------------------------------

    def _dt(self, s: float) -> datetime:
        return self.start + timedelta(seconds=s)

    def _known(self, s: float) -> PriceSeries:
        """The day-ahead prices published by sim time ``s``."""
        local = (self._sod0 + s) % DAY_S
        midnight = s - local + DAY_S  # the coming local midnight, in sim seconds
        until = midnight + (DAY_S if local >= PUBLISH_HOUR * 3600 else 0.0)
        end = min(self._dt(until), self.prices.end)
        return self.prices.window(self.prices.start, end)

    def _house_estimate(self, s: float) -> float:
        q = int(s // QUARTER_S)
        prev = q - int(DAY_S // QUARTER_S)
        if self._house_n.get(prev):
            return self._house_sum[prev] / self._house_n[prev]
        return self._house_now or 0.0

    def _budget(self, t: datetime) -> float:
        s = (t - self.start).total_seconds()
        return max(0.0, self.sc.limit_a - self._house_estimate(s))

    def _replan(self, now: float) -> None:
        reqs = []
        for cid, ses in self._on.items():
            left = ses.need_kwh - self.energy[ses.id]
            if now >= ses.depart_s:
                continue
            cfg, ev = self._cfg[cid], self._evcfg[ses.id]
            ch = Charger(cid, max_a=min(cfg.max_a, ev.max_a), phases=min(cfg.phases, ev.phases),
                         network=self.sc.network, min_a=ev.min_a)
            want = left * NEED_MARGIN + NEED_PAD_KWH if left > MET_TOL_KWH / 10 else 0.0
            reqs.append(CarRequest(ch, self._dt(ses.depart_s), want))
        self._last_plan_s = now
        self._caps.clear()
        self._vals.clear()
        if not reqs:
            return
        try:
            p = plan(reqs, self._known(now), self._dt(now),
                     PlanOptions(grid=self.grid, budget_a=self._budget))
        except PlanError as exc:  # no cap: the balancer charges at once
            self.plan_notes.append(f"{now:.0f}s: {exc}")
            return
        self.plans += 1
        self._plan = p
        for cp in p.chargers:
            if not cp.feasible and cp.reason:
                self.infeasible.append(f"{now:.0f}s {cp.charger.id}: {cp.reason}")
            cid = cp.charger.id
            times = [(t - self.start).total_seconds() for t in change_times(p, cid)]
            times = sorted({now, *(x for x in times if x > now)})
            self._caps[cid] = tuple(times)
            self._vals[cid] = tuple(allowed_current(p, cid, self._dt(x)) for x in times)

    # --- LoopPolicy --------------------------------------------------------------------------------

    def decide(self, now: float, headroom: Headroom | None) -> tuple[str, dict[str, float] | None]:
        if headroom is not None and headroom is not self._last_headroom:
            self._last_headroom = headroom
            house = max((h for h in headroom.house_a if h is not None), default=None)
            if house is not None:
                self._house_now = house
                q = int(now // QUARTER_S)
                self._house_sum[q] = self._house_sum.get(q, 0.0) + house
                self._house_n[q] = self._house_n.get(q, 0) + 1
        changed = False
        for ses in self.sessions:
            on = self._on.get(ses.charger)
            if on is ses and now >= ses.depart_s:
                del self._on[ses.charger]
                changed = True
            elif on is None and ses.arrive_s <= now < ses.depart_s and ses.id not in self._planned:
                self._on[ses.charger] = ses
                self._planned.add(ses.id)
                changed = True
        if not self.eco:
            return "protect", None
        local = (self._sod0 + now) % DAY_S
        due = changed or (self._on and (now - self._last_plan_s >= REPLAN_S
                                        or abs(local - PUBLISH_HOUR * 3600) < self.sc.step_s / 2))
        if due and self._on and self._house_now is not None:
            self._replan(now)
        elif changed and not self._on:
            self._caps.clear()
            self._vals.clear()
        allowed: dict[str, float] = {}
        for cid in self._on:
            times = self._caps.get(cid)
            if times is None:
                continue  # no plan yet (no headroom) or the planner refused: no cap
            i = bisect.bisect_right(times, now) - 1
            allowed[cid] = self._vals[cid][i] if i >= 0 else 0.0
        for cid in self._cfg:
            if cid not in self._on:
                allowed[cid] = 0.0
        return "protect", allowed

    def observe(self, now: float, dt: float, chargers: Sequence[SimCharger]) -> None:
        q = int(max(0.0, now - dt) // QUARTER_S)
        rate = self._rates[min(q, len(self._rates) - 1)]
        for c in chargers:
            if c.power_w <= 0.0:
                continue
            ses = self._on.get(c.id)
            if ses is None:
                continue
            kwh = c.power_w * dt / 3.6e6
            self.energy[ses.id] += kwh
            self.cost[ses.id] += kwh * rate

    def report(self) -> dict[str, Any]:
        evs = {}
        for s in self.sessions:
            evs[s.id] = {"charger": s.charger, "need_kwh": round(s.need_kwh, 3),
                         "energy_kwh": round(self.energy[s.id], 3), "cost_nok": round(self.cost[s.id], 2),
                         "met": self.energy[s.id] >= s.need_kwh - MET_TOL_KWH}
        out: dict[str, Any] = {
            "eco": self.eco,
            "tariff": "spot (bundled NO1 week) + Elvia energy charge, NOK ex VAT",
            "ev_cost": evs,
            "cost_total_nok": round(sum(self.cost.values()), 2),
            "energy_priced_kwh": round(sum(self.energy.values()), 3),
            "departures_met": sum(1 for e in evs.values() if e["met"]),
            "departures": len(evs),
        }
        if self.eco:
            out["plans"] = self.plans
            out["plan_infeasible"] = self.infeasible[:20]
            out["plan_errors"] = self.plan_notes[:20]
        return out


def compare(sc: Scenario, sessions: Sequence[Session], prices: PriceSeries | None = None) -> dict[str, Any]:
    """The Smart eco run and the same scenario charging at once (no eco caps)."""
    eco = run(sc, policy=EcoPolicy(sc, sessions, prices, eco=True))
    now = run(sc, policy=EcoPolicy(sc, sessions, prices, eco=False))
    keep = ("trips", "energy_total_kwh", "cost_total_nok", "departures_met", "departures", "runtime_s")
    return {
        "scenario": sc.name,
        "eco": eco,
        "at_once": now,
        "summary": {
            "eco": {k: eco.get(k) for k in keep},
            "at_once": {k: now.get(k) for k in keep},
            "saving_nok": round(now["cost_total_nok"] - eco["cost_total_nok"], 2),
        },
    }


def _table(res: dict[str, Any]) -> str:
    eco, now = res["eco"], res["at_once"]
    lines = [f"{res['scenario']}: Smart eco against charging at once (spot + grid energy charge, NOK ex VAT)",
             f"{'ev':<22}{'need kWh':>9}{'eco kWh':>9}{'eco NOK':>9}{'met':>5}"
             f"{'now kWh':>9}{'now NOK':>9}{'met':>5}"]
    for ev, e in eco["ev_cost"].items():
        n = now["ev_cost"][ev]
        lines.append(f"{ev:<22}{e['need_kwh']:>9.2f}{e['energy_kwh']:>9.2f}{e['cost_nok']:>9.2f}"
                     f"{'yes' if e['met'] else 'NO':>5}{n['energy_kwh']:>9.2f}{n['cost_nok']:>9.2f}"
                     f"{'yes' if n['met'] else 'NO':>5}")
    for label, r in (("eco", eco), ("at once", now)):
        lines.append(f"{label:<8} total {r['energy_total_kwh']:.2f} kWh, {r['cost_total_nok']:.2f} NOK, "
                     f"departures met {r['departures_met']}/{r['departures']}, trips {r['trips']}, "
                     f"runtime {r['runtime_s']:.1f} s")
    saved = res["summary"]["saving_nok"]
    base = now["cost_total_nok"]
    lines.append(f"saving {saved:.2f} NOK ({100 * saved / base:.1f} %)" if base else f"saving {saved:.2f} NOK")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.eco_loop",
                                 description="closed loop with Smart eco against charging at once")
    ap.add_argument("scenario")
    ap.add_argument("--report", help="write the full report JSON here")
    args = ap.parse_args(argv)
    try:
        sc, sessions = load(args.scenario)
        t0 = time.perf_counter()
        res = compare(sc, sessions)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res["runtime_total_s"] = round(time.perf_counter() - t0, 1)
    print(_table(res))
    if args.report:
        Path(args.report).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
