"""The oracles of the closed-loop report: what charging at exactly the remaining headroom every second
would have delivered, from exact household currents, with no delays, list intervals or rate limits.

Each `Oracle` charges its own copies of the scenario's EVs, within charger and EV limits and the 6 A
minimum; `Oracles` steps the three the report compares with (its keys are described in
sim/closed_loop.py): the headline one, which knows every line current and shares fairly; one that
also gives up fairness for power; and a diagnostic that applies the device's conservative bound on an
unreported I2 (what the headroom rule costs, not what the fuse allows).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from apm.core.balancer import BalancerSettings, priority_fill, water_fill
from apm.core.lines import Triple, charging_power_w, usage
from han.profiles import WIRE_FORMATS
from sim.ev import EV

if TYPE_CHECKING:
    from sim.closed_loop import Scenario


class Oracle:
    """Charges its own copies of the EVs at exactly the true headroom each step (see the module doc)."""

    def __init__(self, sc: Scenario, policy: str = "max") -> None:
        self.sc = sc
        self.policy = policy
        self.min_a = BalancerSettings.from_dict(sc.balancer).min_a
        self.evs = {e.id: e.make() for e in sc.evs}
        self.cfg = {c.id: c for c in sc.chargers}
        self._key: tuple[Any, ...] | None = None
        self._alloc: dict[str, float] = {}

    def step(self, now: float, dt: float, house: Triple) -> None:
        sc = self.sc
        caps: dict[str, float] = {}
        evs: dict[str, EV] = {}
        phases: dict[str, int] = {}
        for spec in sc.evs:
            if spec.arrive_s <= now < spec.depart_s:
                ev = self.evs[spec.id]
                lim = min(self.cfg[spec.charger].max_a, ev.limit_a())
                if lim >= self.min_a:
                    caps[spec.charger] = lim
                    evs[spec.charger] = ev
                    phases[spec.charger] = min(self.cfg[spec.charger].phases, ev.phases)
        if not caps:
            return
        n = 1 if sc.supply_phases == 1 else 3
        avail = tuple(sc.limit_a - house[i] if i < n else math.inf for i in range(3))
        key = (avail, tuple(sorted(caps.items())), tuple(sorted(phases.items())))
        if key != self._key:
            self._key = key
            use = {c: usage(sc.network, phases[c], self.cfg[c].rotation, sc.supply_phases) for c in caps}
            weight = {c: charging_power_w(sc.network, phases[c], 1.0) for c in caps}
            if self.policy == "fair":
                self._alloc = fair_allocation(caps, use, avail, self.min_a)
            else:
                self._alloc = best_allocation(caps, use, avail, weight, self.min_a)
        for c, a in self._alloc.items():
            if a <= 0.0:
                continue
            ev = evs[c]
            kwh = charging_power_w(sc.network, phases[c], a) * dt / 3.6e6
            ev.energy_kwh += kwh
            ev.soc = min(ev.target_soc, ev.soc + kwh * ev.efficiency / ev.battery_kwh)

    @property
    def energy_kwh(self) -> float:
        return sum(e.energy_kwh for e in self.evs.values())


def reports_i2(sc: Scenario) -> bool:
    """Whether the scenario's meter reports the L2 current (3-wire Aidon and Kamstrup do not)."""
    if sc.supply_phases != 3 or sc.network != "IT":
        return True
    return "current_l2_a" not in WIRE_FORMATS[sc.vendor].absent.get("3p-it", {})


def rule_house(sc: Scenario, h: Triple) -> Triple:
    """The household's current per line as the issue's headroom rule takes it: the measured lines as
    they are; an unreported I2 (IT) as the issue's conservative bound, Kirchhoff refined by our own
    chargers: house L2 <= house L1 + house L3. (The device may do better, e.g. with the two-wattmeter
    triangle of `apm.core.three_wire`; the oracle does not, since the issue's rule is this bound.)"""
    if reports_i2(sc):
        return h
    return (h[0], max(h[0] + h[2], h[1]), h[2])


class Oracles:
    """The three oracles of the report, stepped together."""

    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.measured = Oracle(sc, "fair")
        # the diagnostic differs only where the meter leaves I2 out; else it is the measured one
        self.conservative = Oracle(sc, "fair") if not reports_i2(sc) else None
        self.max = Oracle(sc, "max")

    def step(self, now: float, dt: float, house_lines: Triple) -> None:
        self.measured.step(now, dt, house_lines)
        if self.conservative is not None:
            self.conservative.step(now, dt, rule_house(self.sc, house_lines))
        self.max.step(now, dt, house_lines)

    def report(self, energy_kwh: float) -> dict[str, Any]:
        """``ratio`` (the headline: delivered / ``oracle_measured_energy_kwh``) and each oracle's energy
        and ratio (sim/closed_loop.py describes them)."""
        measured = self.measured.energy_kwh
        out: dict[str, Any] = {"ratio": round(energy_kwh / measured, 4) if measured else None}
        conservative = self.conservative or self.measured
        for key, o in (("oracle_measured", self.measured), ("oracle_max", self.max),
                       ("oracle_conservative_i2", conservative)):
            e = o.energy_kwh
            out[f"{key}_energy_kwh"] = round(e, 3)
            out[f"{key}_ratio"] = round(energy_kwh / e, 4) if e else None
        out["oracle_measured_energy_per_ev_kwh"] = {e: round(ev.energy_kwh, 3)
                                                    for e, ev in self.measured.evs.items()}
        return out


def fair_allocation(caps: dict[str, float], use: dict[str, Triple], avail: Sequence[float],
                    min_a: float) -> dict[str, float]:
    """The balancer's rule with perfect knowledge: water-filling, pausing the smallest share below min_a."""
    live = list(caps)
    while live:
        shares, _ = water_fill({c: caps[c] for c in live}, use, avail)
        low = [c for c in live if shares[c] < min_a - 1e-9]
        if not low:
            return shares
        live.remove(min(low, key=lambda c: (round(shares[c], 1), sum(use[c]))))
    return {}


def best_allocation(caps: dict[str, float], use: dict[str, Triple], avail: Sequence[float],
                    weight: dict[str, float], min_a: float) -> dict[str, float]:
    """The most power among the fair share (paused below min_a) and every priority order."""
    cands: list[dict[str, float]] = [fair_allocation(caps, use, avail, min_a)]
    cands.extend(priority_fill(order, caps, use, avail, min_a) for order in itertools.permutations(caps))
    return max(cands, key=lambda a: sum(weight[c] * x for c, x in a.items()))
