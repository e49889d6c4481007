"""The capacity-charge guard in the closed loop: a winter month with and without it.

The guard is the device's: `apm.core.capacity_guard.CapacityGuard`, owned by the run's
`apm.core.controller.Controller` (``sim.closed_loop.run(guard=...)``), fed by what the Controller gets
on the device: the simulated meter's frames decoded (list 1's import power every 2.5 s, list 3's hourly
energy) and the chargers' reports. Its caps reach the balancer inside ``Controller.decide``, in protect
mode, so the balancer still keeps the fuse. The sim only provides the world and judges it.

``CapacityPolicy`` is a ``sim.closed_loop.LoopPolicy`` that only measures and prices: it builds the
scenario's household a second time (same model, seed and days as sim.world.World, sampled at the same
instants: the same watts) to know each hour's exact energy, the household's part of it, and the cost.

Reported: the month's daily peaks, capacity figure, step and its price; each departure's need, the
energy delivered and whether it was met, and whether it *could* be met within the step (an upper
bound: the room each hour of the stay left above the household, at most the car's power); the cost
of all the energy (the household's too) at spot (the bundled NO1 week, repeated) + Elvia's energy
charge, and the capacity charge.

    python -m sim.capacity_loop sim/scenarios/capacity-month-tn.toml [--days N] [--report OUT.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apm.core.capacity_guard import CapacityGuard, guard_for
from apm.core.eco.capacity import CapacityGoal, MonthLog
from apm.core.eco.prices import PriceSeries, sample_week
from apm.core.eco.tariff import ELVIA, GridTariff, hour_of
from apm.core.headroom import Headroom
from apm.core.lines import charging_power_w
from sim.charger import SimCharger
from sim.closed_loop import Scenario, ScenarioError, run
from sim.eco_loop import MET_TOL_KWH, Session, load
from sim.household import make_household

WEEK = timedelta(days=7)


class WeekPrices:
    """The bundled price week repeated over any time (a month's prices from one week)."""

    def __init__(self, week: PriceSeries | None = None) -> None:
        self.week = week or sample_week()

    def at(self, t: datetime) -> float:
        t = t.astimezone(UTC)
        shift = math.floor((t - self.week.start) / WEEK)
        slot = self.week.at(t - shift * WEEK)
        assert slot is not None
        return slot.nok_per_kwh


class CapacityPolicy:
    """The judge of a run with the device's guard for ``goal`` (``self.guard``, for `run`) or, with
    ``goal=None``, of one without."""

    def __init__(self, sc: Scenario, sessions: Sequence[Session], goal: CapacityGoal | None,
                 tariff: GridTariff = ELVIA, prices: WeekPrices | None = None, min_a: float = 6.0) -> None:
        self.sc = sc
        self.sessions = tuple(sessions)
        self.goal = goal
        self.tariff = tariff
        self.prices = prices or WeekPrices()
        self.guard: CapacityGuard | None = guard_for(goal, sc.network, sc.chargers, min_a=min_a)
        opts = dict(sc.household)
        seed = int(opts.pop("seed", 1))
        days = int(math.ceil(sc.duration_s / 86400.0)) + 1  # as World sizes its household
        self.house = make_household(sc.network, model=opts.pop("model", None), trace=opts.pop("trace", None),
                                    seed=seed, days=days, **opts)
        self._evs = {e.id: e.make() for e in sc.evs}
        self._cfg = {c.id: c for c in sc.chargers}
        self._house_w = 0.0
        self._true: dict[int, float] = defaultdict(float)  # the judge's, exact: hour of the run -> kWh
        self._house: dict[int, float] = defaultdict(float)
        self._rates: dict[int, float] = {}
        self._current: dict[str, Session | None] = {}
        self.energy = {s.id: 0.0 for s in self.sessions}
        self.energy_nok = 0.0

    def _t(self, now: float) -> datetime:
        return self.sc.start + timedelta(seconds=now)

    # --- LoopPolicy --------------------------------------------------------------------------------

    def decide(self, now: float, headroom: Headroom | None) -> tuple[str, dict[str, float] | None]:
        self._house_w = self.house.sample(now).power_w  # the world's household at this step
        return "protect", None  # the guard's caps come from the Controller itself

    def observe(self, now: float, dt: float, chargers: Sequence[SimCharger]) -> None:
        chargers_w = sum(c.power_w for c in chargers)
        before = max(0.0, now - dt)
        kwh_house = self._house_w * dt / 3.6e6
        kwh_cars = chargers_w * dt / 3.6e6
        h = int(before // 3600)  # hours since the start (a whole local hour)
        self._true[h] += kwh_house + kwh_cars
        self._house[h] += kwh_house
        self.energy_nok += (kwh_house + kwh_cars) * self._rate(int(before // 900))
        if kwh_cars > 0:
            for c in chargers:
                ses = self._session_on(c.id, now)
                if ses is not None:
                    self.energy[ses.id] += c.power_w * dt / 3.6e6

    def _hour(self, h: int) -> datetime:
        return hour_of(self.sc.start) + timedelta(hours=h)

    def _rate(self, quarter: int) -> float:
        """Spot + grid energy charge in quarter ``quarter`` of the run (cached)."""
        rate = self._rates.get(quarter)
        if rate is None:
            t = self._t(quarter * 900.0)
            rate = self._rates[quarter] = self.prices.at(t) + self.tariff.energy.rate_at(t)
        return rate

    def _session_on(self, charger: str, now: float) -> Session | None:
        ses = self._current.get(charger)
        if ses is None or not ses.arrive_s <= now < ses.depart_s:
            ses = next((s for s in self.sessions if s.charger == charger and s.arrive_s <= now < s.depart_s),
                       None)
            self._current[charger] = ses
        return ses

    @property
    def true_hours(self) -> dict[datetime, float]:
        """The exact energy of every hour (household + our chargers), by UTC hour start."""
        return {self._hour(h): e for h, e in self._true.items()}

    @property
    def house_hours(self) -> dict[datetime, float]:
        return {self._hour(h): e for h, e in self._house.items()}

    # --- the report --------------------------------------------------------------------------------

    def _could_meet(self, ses: Session, step_kw: float) -> bool:
        """An upper bound: the room each hour of the stay leaves above the household within the step,
        at most the car's full power (other cars ignored)."""
        if self.goal is None:
            return True
        cfg, ev = self._cfg[ses.charger], self._evs[ses.id]
        car_kw = charging_power_w(self.sc.network, min(cfg.phases, ev.phases), min(cfg.max_a, ev.max_a)) / 1000
        room = 0.0
        t, end = ses.arrive_s, ses.depart_s
        while t < end:
            h = hour_of(self._t(t))
            nxt = min(end, t + 3600 - (self._t(t) - h).total_seconds())
            frac = (nxt - t) / 3600
            room += min(car_kw * frac, max(0.0, step_kw - self.house_hours.get(h, 0.0)) * frac)
            t = nxt
        return room >= ses.need_kwh - MET_TOL_KWH

    def report(self) -> dict[str, Any]:
        cap = self.tariff.capacity
        judge = MonthLog.of(self.sc.start)
        for h, kwh in self.true_hours.items():
            judge = judge.with_hour(h, kwh)
        figure = judge.figure_kw(cap.peaks_counted)
        step = cap.step_for(figure)
        step_kw = self.goal.step_kw if self.goal else math.inf
        evs = {}
        for s in self.sessions:
            met = self.energy[s.id] >= s.need_kwh - MET_TOL_KWH
            evs[s.id] = {"need_kwh": round(s.need_kwh, 3), "energy_kwh": round(self.energy[s.id], 3),
                         "met": met, "could_meet": self._could_meet(s, step_kw)}
        days = sorted(judge.daily_peaks().items())
        return {
            "guard": None if self.goal is None else {"step_kw": self.goal.step_kw, "margin_kwh": self.goal.margin_kwh},
            "capacity_figure_kw": round(figure, 3),
            "capacity_step": [step.lo_kw, None if math.isinf(step.hi_kw) else step.hi_kw],
            "capacity_nok_per_month": step.nok_per_month,
            "peaks_counted": [[d.isoformat(), round(k, 3)] for d, k in judge.counted_peaks(cap.peaks_counted)],
            "daily_peaks": [[d.isoformat(), round(k, 3)] for d, k in days],
            "max_hour_kwh": round(max(self.true_hours.values(), default=0.0), 3),
            "household_max_hour_kwh": round(max(self.house_hours.values(), default=0.0), 3),
            "energy_cost_nok": round(self.energy_nok, 2),
            "cost_total_nok": round(self.energy_nok + step.nok_per_month, 2),
            "ev_energy": evs,
            "departures": len(evs),
            "departures_met": sum(e["met"] for e in evs.values()),
            "departures_could_meet": sum(e["could_meet"] for e in evs.values()),
            "departures_missed_that_could_meet": sorted(k for k, e in evs.items() if e["could_meet"] and not e["met"]),
            "guard_steps_lowered": self.guard.lowered if self.guard else 0,
            "guard_steps_paused": self.guard.paused if self.guard else 0,
        }


def compare(sc: Scenario, sessions: Sequence[Session], step_kw: float = 5.0,
            margin_kwh: float = 0.05) -> dict[str, Any]:
    """The month with the guard at ``step_kw`` and without it (charging as the fuse allows)."""
    goal = CapacityGoal(step_kw, ELVIA.capacity, margin_kwh)
    policy = CapacityPolicy(sc, sessions, goal, min_a=sc.balancer_settings.min_a)
    guarded = run(sc, policy=policy, guard=policy.guard)
    free = run(sc, policy=CapacityPolicy(sc, sessions, None))
    keep = ("capacity_figure_kw", "capacity_nok_per_month", "energy_cost_nok", "cost_total_nok",
            "departures_met", "departures_could_meet", "departures", "trips", "runtime_s")
    return {
        "scenario": sc.name,
        "guard": guarded,
        "no_guard": free,
        "summary": {
            "guard": {k: guarded.get(k) for k in keep},
            "no_guard": {k: free.get(k) for k in keep},
            "saving_nok": round(free["cost_total_nok"] - guarded["cost_total_nok"], 2),
        },
    }


def shorten(sc: Scenario, sessions: Sequence[Session], days: float) -> tuple[Scenario, tuple[Session, ...]]:
    """The first ``days`` of a scenario, with the sessions that end by then."""
    end = days * 86400.0
    evs = tuple(e for e in sc.evs if e.depart_s <= end)
    keep = {e.id for e in evs}
    return (dataclasses.replace(sc, duration_s=end, evs=evs),
            tuple(s for s in sessions if s.id in keep))


def _table(res: dict[str, Any]) -> str:
    g, f = res["guard"], res["no_guard"]
    lines = [f"{res['scenario']}: capacity guard at {g['guard']['step_kw']:g} kW against none "
             "(spot NO1 week repeated + Elvia energy charge, NOK ex VAT)",
             f"{'':10}{'figure kW':>10}{'step':>10}{'cap NOK/mo':>11}{'energy NOK':>11}{'total NOK':>10}"
             f"{'met':>9}{'trips':>6}"]
    for label, r in (("guard", g), ("no guard", f)):
        lo, hi = r["capacity_step"]
        lines.append(f"{label:10}{r['capacity_figure_kw']:>10.2f}{f'{lo:g}-{hi:g}' if hi else f'>{lo:g}':>10}"
                     f"{r['capacity_nok_per_month']:>11.0f}{r['energy_cost_nok']:>11.2f}{r['cost_total_nok']:>10.2f}"
                     f"{r['departures_met']:>4}/{r['departures']:<4}{r['trips']:>6}")
    lines.append(f"guard: departures that could be met within the step {g['departures_could_meet']}, met "
                 f"{g['departures_met']}; missed though they could: {g['departures_missed_that_could_meet'] or 'none'}")
    lines.append(f"saving with the guard: {res['summary']['saving_nok']:.2f} NOK this month")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.capacity_loop",
                                 description="closed loop with the capacity-charge guard against none")
    ap.add_argument("scenario")
    ap.add_argument("--step-kw", type=float, default=5.0, help="the step to stay in (5)")
    ap.add_argument("--days", type=float, help="only the first DAYS of the scenario")
    ap.add_argument("--report", help="write the full report JSON here")
    args = ap.parse_args(argv)
    try:
        sc, sessions = load(args.scenario)
        if args.days:
            sc, sessions = shorten(sc, sessions, args.days)
        t0 = time.perf_counter()
        res = compare(sc, sessions, args.step_kw)
    except (ScenarioError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res["runtime_total_s"] = round(time.perf_counter() - t0, 1)
    print(_table(res))
    if args.report:
        Path(args.report).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
