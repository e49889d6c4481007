"""Smart eco planner: which slots each car charges in, and at what current, before its departure.

The joint problem is a min-cost flow, solved exactly (apm.core.eco.flow). Time is cut into cells: the price
slots between now and the last departure, cut again at every departure and clock hour. Flow is charge
in ampere-hours: source -> car k (its need E_k / P_k, P_k = kW per A) -> cell c (at most I_k * hours, at
(spot + grid charge) * P_k NOK per Ah) -> sink (at most budget_c * hours, the shared current budget).
A flow of full value is a plan that meets every departure, and one exists exactly when any allocation
of currents can, since the constraints are the same; successive shortest paths find the cheapest one.
When there is none, the cheapest maximum flow is returned: a car that cannot be served in time charges
at full current in every slot it has ("at once") and is marked infeasible.

The budget is in amperes per line and a charger's current counts in full against it, whatever its
phases: the conservative reading for 1-phase cars whose phase is not known.

Capacity charge (optional): each clock hour's energy (household forecast + charging) should stay at or
under the month's step bound. Each hour's cell flows pass an hour node whose edge to the sink is free up
to the bound and costs a penalty M per Ah above it; M exceeds the total cost of any residual cycle, so
excess is minimised first and money second. With chargers of different kW per A the hour's room is
converted with the largest, which keeps the bound but may forgo a little room.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from apm.core.eco.capacity import CapacityGoal, MonthLog, hour_cap_kwh
from apm.core.eco.flow import FlowNetwork
from apm.core.eco.prices import OSLO, PriceSeries, local_iso
from apm.core.eco.tariff import EnergyCharge, hour_of

MAX_CHARGERS = 3
NETWORKS = ("TN", "IT")
TIE_NOK_PER_AH_HOUR = 1e-9  # among equal prices, charge later (closer to departure), as evcc does
KWH_TOL = 1e-6
AMP_TOL = 1e-6

Strategy = Literal["cheapest", "continuous", "at-once"]
PerTime = float | Callable[[datetime], float]


class PlanError(ValueError):
    """A request the planner cannot take: bad charger, departure in the past, no prices for now."""


@dataclass(frozen=True, slots=True)
class Charger:
    """One charger's power. ``voltage_v`` is phase-neutral on TN (230 V), line-line on IT (230 V)."""

    id: str
    max_a: float = 16.0
    phases: int = 3
    network: str = "TN"
    voltage_v: float = 230.0
    min_a: float = 6.0  # IEC 61851: the least current a car will charge at

    def __post_init__(self) -> None:
        if not self.id or any(c in self.id for c in ":/ "):
            raise PlanError(f"charger id {self.id!r} must be non-empty without ':', '/' or spaces")
        if self.phases not in (1, 3):
            raise PlanError(f"charger {self.id}: phases must be 1 or 3, not {self.phases}")
        if self.network not in NETWORKS:
            raise PlanError(f"charger {self.id}: network must be TN or IT, not {self.network!r}")
        if not (math.isfinite(self.max_a) and self.max_a > 0):
            raise PlanError(f"charger {self.id}: max current {self.max_a} A must be > 0")
        if not 0 <= self.min_a <= self.max_a:
            raise PlanError(f"charger {self.id}: min current {self.min_a} A must be within 0..{self.max_a}")
        if not self.voltage_v > 0:
            raise PlanError(f"charger {self.id}: voltage {self.voltage_v} V must be > 0")

    @property
    def kw_per_a(self) -> float:
        """kW per ampere: TN 3x230/400 V: 3*U_LN; IT 3x230 V: sqrt(3)*U_LL; 1-phase: U (LN on TN, LL on IT)."""
        if self.phases == 1:
            return self.voltage_v / 1000
        if self.network == "TN":
            return 3 * self.voltage_v / 1000
        return math.sqrt(3) * self.voltage_v / 1000

    @property
    def max_kw(self) -> float:
        return self.max_a * self.kw_per_a

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "max_a": self.max_a,
            "phases": self.phases,
            "network": self.network,
            "voltage_v": self.voltage_v,
            "min_a": self.min_a,
        }


@dataclass(frozen=True, slots=True)
class CarRequest:
    charger: Charger
    departure: datetime
    energy_kwh: float

    def __post_init__(self) -> None:
        if self.departure.tzinfo is None or self.departure.utcoffset() is None:
            raise PlanError(f"departure {self.departure.isoformat()} must be timezone-aware")
        if not (math.isfinite(self.energy_kwh) and self.energy_kwh >= 0):
            raise PlanError(f"charger {self.charger.id}: energy {self.energy_kwh} kWh must be >= 0")

    @classmethod
    def for_hours(cls, charger: Charger, departure: datetime, hours: float) -> CarRequest:
        """The energy of ``hours`` at the charger's full power."""
        if not (math.isfinite(hours) and hours >= 0):
            raise PlanError(f"charger {charger.id}: hours {hours} must be >= 0")
        return cls(charger, departure, hours * charger.max_kw)


@dataclass(frozen=True, slots=True)
class CapacityLimit:
    """Keep each clock hour's energy at or under ``cap_kw`` (kWh/h) when the cars can still be served;
    `for_goal` takes the owner's step as the live guard does (tariff.CapacityCharge.cap_kw: the cap that
    keeps the month in the step it is in now)."""

    cap_kw: float  # may be inf (top step): then nothing is capped
    household_kw: PerTime = 0.0  # expected household load besides the chargers

    goal: CapacityGoal | None = None  # the owner's step this cap comes from (the guard's too)

    def __post_init__(self) -> None:
        if math.isnan(self.cap_kw) or self.cap_kw < 0:
            raise PlanError(f"capacity cap {self.cap_kw} kW must be >= 0")

    @classmethod
    def for_goal(cls, goal: CapacityGoal, log: MonthLog, now: datetime,
                 household_kw: PerTime = 0.0) -> CapacityLimit:
        """The cap the live guard holds this hour (apm.core.eco.capacity.hour_cap_kwh less its margin),
        for every hour of the plan: later days may only have more room while the hours stay under it."""
        cap = hour_cap_kwh(goal, log, now)
        return cls(max(0.0, cap - goal.margin_kwh), household_kw, goal)


@dataclass(frozen=True, slots=True)
class PlanOptions:
    grid: EnergyCharge | None = None  # None: spot price only
    budget_a: PerTime | None = None  # shared current budget per slot; None: no limit besides each max_a
    continuous: bool = False
    capacity: CapacityLimit | None = None


@dataclass(frozen=True, slots=True)
class SlotPlan:
    """One charger in one cell: the current to allow there and what it should bring."""

    start: datetime
    end: datetime
    current_a: float
    energy_kwh: float
    spot_nok_per_kwh: float
    grid_nok_per_kwh: float
    estimated: bool = False  # price is a forecast

    @property
    def cost_nok(self) -> float:
        return self.energy_kwh * (self.spot_nok_per_kwh + self.grid_nok_per_kwh)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": local_iso(self.start),
            "end": local_iso(self.end),
            "current_a": self.current_a,
            "energy_kwh": self.energy_kwh,
            "spot_nok_per_kwh": self.spot_nok_per_kwh,
            "grid_nok_per_kwh": self.grid_nok_per_kwh,
            "cost_nok": self.cost_nok,
            **({"estimated": True} if self.estimated else {}),
        }


@dataclass(frozen=True, slots=True)
class ChargerPlan:
    charger: Charger
    departure: datetime
    energy_needed_kwh: float
    slots: tuple[SlotPlan, ...]  # only cells with current > 0, in time order
    feasible: bool
    reason: str | None = None

    @property
    def energy_kwh(self) -> float:
        return sum(s.energy_kwh for s in self.slots)

    @property
    def cost_nok(self) -> float:
        return sum(s.cost_nok for s in self.slots)

    @property
    def spot_nok(self) -> float:
        return sum(s.energy_kwh * s.spot_nok_per_kwh for s in self.slots)

    @property
    def grid_nok(self) -> float:
        return sum(s.energy_kwh * s.grid_nok_per_kwh for s in self.slots)

    def slot_at(self, t: datetime) -> SlotPlan | None:
        return next((s for s in self.slots if s.start <= t < s.end), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "charger": self.charger.to_dict(),
            "departure": local_iso(self.departure),
            "energy_needed_kwh": self.energy_needed_kwh,
            "energy_kwh": self.energy_kwh,
            "cost_nok": self.cost_nok,
            "spot_nok": self.spot_nok,
            "grid_nok": self.grid_nok,
            "feasible": self.feasible,
            "reason": self.reason,
            "slots": [s.to_dict() for s in self.slots],
        }


@dataclass(frozen=True, slots=True)
class Plan:
    created: datetime
    strategy: Strategy
    area: str
    chargers: tuple[ChargerPlan, ...]
    prices_known_until: datetime
    notes: tuple[str, ...] = ()
    capacity_cap_kw: float | None = None
    peak_hour_kwh: float | None = None  # highest clock-hour energy, household included (capacity only)
    capacity_excess_kwh: float = 0.0  # summed energy above the cap over the plan's hours

    @property
    def feasible(self) -> bool:
        return all(c.feasible for c in self.chargers)

    @property
    def cost_nok(self) -> float:
        return sum(c.cost_nok for c in self.chargers)

    @property
    def energy_kwh(self) -> float:
        return sum(c.energy_kwh for c in self.chargers)

    @property
    def charger_ids(self) -> tuple[str, ...]:
        return tuple(c.charger.id for c in self.chargers)

    def charger(self, charger_id: str) -> ChargerPlan:
        for c in self.chargers:
            if c.charger.id == charger_id:
                return c
        raise KeyError(f"no charger {charger_id!r} in this plan (has {', '.join(self.charger_ids)})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "created": local_iso(self.created),
            "strategy": self.strategy,
            "area": self.area,
            "feasible": self.feasible,
            "cost_nok": self.cost_nok,
            "energy_kwh": self.energy_kwh,
            "prices_known_until": local_iso(self.prices_known_until),
            "notes": list(self.notes),
            "capacity_cap_kw": self.capacity_cap_kw,
            "peak_hour_kwh": self.peak_hour_kwh,
            "capacity_excess_kwh": self.capacity_excess_kwh,
            "chargers": [c.to_dict() for c in self.chargers],
        }

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        t = datetime.fromisoformat
        chargers = tuple(
            ChargerPlan(
                charger=Charger(**c["charger"]),
                departure=t(c["departure"]),
                energy_needed_kwh=c["energy_needed_kwh"],
                slots=tuple(
                    SlotPlan(
                        t(s["start"]),
                        t(s["end"]),
                        s["current_a"],
                        s["energy_kwh"],
                        s["spot_nok_per_kwh"],
                        s["grid_nok_per_kwh"],
                        s.get("estimated", False),
                    )
                    for s in c["slots"]
                ),
                feasible=c["feasible"],
                reason=c["reason"],
            )
            for c in d["chargers"]
        )
        return cls(
            created=t(d["created"]),
            strategy=d["strategy"],
            area=d["area"],
            chargers=chargers,
            prices_known_until=t(d["prices_known_until"]),
            notes=tuple(d.get("notes", ())),
            capacity_cap_kw=d.get("capacity_cap_kw"),
            peak_hour_kwh=d.get("peak_hour_kwh"),
            capacity_excess_kwh=d.get("capacity_excess_kwh", 0.0),
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------------------------------------------
# Cells: the time grid the plan is made on.


@dataclass(frozen=True, slots=True)
class Cell:
    start: datetime
    end: datetime
    spot: float
    grid: float
    estimated: bool
    budget_a: float

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600

    @property
    def price(self) -> float:
        return self.spot + self.grid


def _value(v: PerTime | None, t: datetime, default: float) -> float:
    if v is None:
        return default
    return float(v(t)) if callable(v) else float(v)


@dataclass(frozen=True, slots=True)
class Problem:
    """A validated request on its cell grid (exposed for tests and the savings replay)."""

    requests: tuple[CarRequest, ...]
    cells: tuple[Cell, ...]
    prices: PriceSeries
    now: datetime
    options: PlanOptions
    notes: tuple[str, ...] = field(default=())

    def open_cells(self, k: int) -> list[int]:
        """Cells before car k's departure."""
        dep = self.requests[k].departure
        return [c for c, cell in enumerate(self.cells) if cell.end <= dep]


def problem(
    requests: Sequence[CarRequest], prices: PriceSeries, now: datetime, options: PlanOptions | None = None
) -> Problem:
    options = options or PlanOptions()
    requests = tuple(requests)
    if not requests:
        raise PlanError("no car to plan for")
    if len(requests) > MAX_CHARGERS:
        raise PlanError(f"{len(requests)} cars: at most {MAX_CHARGERS} chargers are planned together")
    ids = [r.charger.id for r in requests]
    if len(set(ids)) != len(ids):
        raise PlanError(f"charger ids must differ: {', '.join(ids)}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise PlanError(f"now {now.isoformat()} must be timezone-aware")
    for r in requests:
        if r.departure.timestamp() <= now.timestamp():
            raise PlanError(
                f"charger {r.charger.id}: departure {local_iso(r.departure)} is not after now {local_iso(now)}"
            )
    if prices.at(now) is None:
        raise PlanError(
            f"no price for now ({local_iso(now)}): prices cover {local_iso(prices.start)} .. {local_iso(prices.end)}"
        )
    # The cell grid is in UTC: Python does wall-clock arithmetic on two times of one zoneinfo zone.
    start = now.astimezone(UTC)
    horizon = max(r.departure for r in requests).astimezone(UTC)
    notes: list[str] = []
    if prices.end < horizon:
        notes.append(
            f"prices after {local_iso(prices.known_until)} are estimated from the day before;"
            " re-plan when the next day's prices arrive (about 13:00)"
        )
        prices = prices.extended_until(horizon)
    elif prices.known_until < horizon:
        notes.append(f"prices after {local_iso(prices.known_until)} are estimates")
    cuts = {start, horizon, *(r.departure.astimezone(UTC) for r in requests)}
    for s in prices.window(start, horizon):
        cuts.update((s.start, s.end))
    h = hour_of(start) + timedelta(hours=1)
    while h < horizon:
        cuts.add(h)
        h += timedelta(hours=1)
    edges = sorted(c for c in cuts if start <= c <= horizon)
    unlimited = sum(r.charger.max_a for r in requests)
    cells = []
    grid = options.grid
    for a, b in zip(edges, edges[1:], strict=False):
        slot = prices.at(a)
        assert slot is not None  # the series is contiguous from before now to the horizon
        budget = _value(options.budget_a, a, unlimited)
        if not (math.isfinite(budget) and budget >= 0):
            raise PlanError(f"current budget {budget} A at {local_iso(a)} must be >= 0")
        cells.append(Cell(a, b, slot.nok_per_kwh, grid.rate_at(a) if grid else 0.0, slot.estimated, budget))
    return Problem(requests, tuple(cells), prices, now, options, tuple(notes))


# ---------------------------------------------------------------------------------------------------
# Solvers. Each returns currents[k][c] in amperes.


def _household_kwh(pb: Problem) -> dict[datetime, float]:
    """Expected household energy in each clock hour the plan touches (the whole hour)."""
    cap = pb.options.capacity
    assert cap is not None
    out: dict[datetime, float] = {}
    for cell in pb.cells:
        h = hour_of(cell.start)
        if h not in out:
            out[h] = sum(_value(cap.household_kw, h + timedelta(minutes=15 * q), 0.0) for q in range(4)) / 4
    return out


def _hour_room_kwh(pb: Problem) -> dict[datetime, float]:
    """Energy each clock hour may still take for charging under the capacity cap (inf: no cap)."""
    cap = pb.options.capacity
    assert cap is not None
    return {h: cap.cap_kw - e for h, e in _household_kwh(pb).items()}


def _flow_currents(pb: Problem) -> list[list[float]]:
    cars, cells = pb.requests, pb.cells
    k_n, c_n = len(cars), len(cells)
    hours = sorted({hour_of(c.start) for c in cells}) if pb.options.capacity else []
    hour_ix = {h: i for i, h in enumerate(hours)}
    s, t = 0, 1
    car_node = [2 + k for k in range(k_n)]
    cell_node = [2 + k_n + c for c in range(c_n)]
    hour_node = [2 + k_n + c_n + i for i in range(len(hours))]
    net = FlowNetwork(2 + k_n + c_n + len(hours))
    ce: dict[tuple[int, int], int] = {}
    abs_cost = 0.0
    for k, r in enumerate(cars):
        p = r.charger.kw_per_a
        net.add_edge(s, car_node[k], r.energy_kwh / p, 0.0)
        for c in pb.open_cells(k):
            cell = cells[c]
            if cell.budget_a < r.charger.min_a:
                continue  # the car cannot charge on less than its minimum current
            lead = (r.departure - cell.start).total_seconds() / 3600
            cost = cell.price * p + TIE_NOK_PER_AH_HOUR * lead
            ce[k, c] = net.add_edge(car_node[k], cell_node[c], r.charger.max_a * cell.hours, cost)
            abs_cost += abs(cost)
    if pb.options.capacity:
        room = _hour_room_kwh(pb)
        penalty = 2 * abs_cost + 1.0
        p_ref = max(r.charger.kw_per_a for r in cars)
        for c, cell in enumerate(cells):
            net.add_edge(
                cell_node[c], hour_node[hour_ix[hour_of(cell.start)]], cell.budget_a * cell.hours, 0.0
            )
        for h, i in hour_ix.items():
            net.add_edge(hour_node[i], t, max(0.0, room[h]) / p_ref, 0.0)
            net.add_edge(hour_node[i], t, math.inf, penalty)
    else:
        for c, cell in enumerate(cells):
            net.add_edge(cell_node[c], t, cell.budget_a * cell.hours, 0.0)
    net.min_cost_flow(s, t, sum(r.energy_kwh / r.charger.kw_per_a for r in cars))
    currents = [[0.0] * c_n for _ in range(k_n)]
    for (k, c), e in ce.items():
        a = net.flow(e) / cells[c].hours
        currents[k][c] = a if a > AMP_TOL else 0.0
    return currents


def _lift_small_currents(pb: Problem, currents: list[list[float]]) -> None:
    """Cost-neutral exchanges that remove currents under a car's minimum (which it cannot draw).

    For car k at x < min_a in cell c, find a car j and a cell c2 both can use: k changes by d in c
    and by -d' in c2 (the same Ah), j the reverse, with d = min_a - x (lift k to its minimum) or
    d = -x (k leaves c to j). Every cell's total current and every car's energy stay the same; the
    cost changes by d*h_c*(P_k - P_j)*(price_c - price_c2), so only exchanges that leave it unchanged
    are made (the plan stays optimal). Each exchange removes one small current and makes none, so
    this ends. Small currents left over are served by the schedule as the minimum over part of the
    slot (exact for a car alone in its cell)."""
    cars, cells = pb.requests, pb.cells
    tol = AMP_TOL
    open_ = [set(pb.open_cells(k)) for k in range(len(cars))]

    def ok(k: int, a: float) -> bool:
        return -tol <= a <= cars[k].charger.max_a + tol and (a <= tol or a >= cars[k].charger.min_a - tol)

    def small(k: int, c: int) -> bool:
        return tol < currents[k][c] < cars[k].charger.min_a - tol

    def exchange(k: int, c: int) -> bool:
        pk = cars[k].charger.kw_per_a
        for d in (cars[k].charger.min_a - currents[k][c], -currents[k][c]):
            for j in range(len(cars)):
                pj = cars[j].charger.kw_per_a
                if j == k or c not in open_[j] or not ok(j, currents[j][c] - d):
                    continue
                if pb.options.capacity and abs(pk - pj) > 1e-12:
                    continue  # would move energy between hours
                for c2 in sorted(open_[k] & open_[j] - {c}):
                    d2 = d * cells[c].hours / cells[c2].hours
                    if not (ok(k, currents[k][c2] - d2) and ok(j, currents[j][c2] + d2)):
                        continue
                    if abs(d * cells[c].hours * (pk - pj) * (cells[c].price - cells[c2].price)) > 1e-9:
                        continue
                    for car, cell, delta in ((k, c, d), (j, c, -d), (k, c2, -d2), (j, c2, d2)):
                        currents[car][cell] = max(0.0, currents[car][cell] + delta)
                    return True
        return False

    for k in range(len(cars)):
        for c in range(len(cells)):
            if small(k, c):
                exchange(k, c)


def _hour_totals(pb: Problem, currents: list[list[float]]) -> dict[datetime, float]:
    """Charging energy per clock hour."""
    tot: dict[datetime, float] = defaultdict(float)
    for k, r in enumerate(pb.requests):
        for c, cell in enumerate(pb.cells):
            tot[hour_of(cell.start)] += currents[k][c] * r.charger.kw_per_a * cell.hours
    return tot


def _excess(totals: dict[datetime, float], room: dict[datetime, float]) -> float:
    return sum(max(0.0, e - room[h]) for h, e in totals.items())


def _window(pb: Problem, k: int, avail_a: list[float], base: dict[datetime, float]) -> list[float] | None:
    """Car k's cheapest single window, charging at ``avail_a`` throughout except one partial cell at
    one end. Cost is piecewise linear in the window's start, with breaks where either end meets a cell
    edge, so the best window has its start or its end on a cell edge: both families are tried."""
    r, cells = pb.requests[k], pb.cells
    p = r.charger.kw_per_a
    open_ = pb.open_cells(k)
    need = r.energy_kwh
    room = _hour_room_kwh(pb) if pb.options.capacity else None
    best: tuple[tuple[float, float, float], list[float]] | None = None

    def fill(order: list[int]) -> list[float] | None:
        cur = [0.0] * len(cells)
        left = need
        for c in order:
            if left <= KWH_TOL:
                break
            e = avail_a[c] * p * cells[c].hours
            take = min(e, left)
            if take > 0:
                cur[c] = take / (p * cells[c].hours)
            left -= take
        return cur if left <= KWH_TOL else None

    if need <= KWH_TOL:
        return [0.0] * len(cells)
    candidates = [fill(open_[i:]) for i in range(len(open_))] + [
        fill(open_[: j + 1][::-1]) for j in range(len(open_))
    ]
    for cur in candidates:
        if cur is None:
            continue
        cost = sum(cur[c] * p * cells[c].hours * cells[c].price for c in open_)
        excess = 0.0
        if room is not None:
            add: dict[datetime, float] = defaultdict(float)
            for c in open_:
                add[hour_of(cells[c].start)] += cur[c] * p * cells[c].hours
            excess = sum(
                max(0.0, base.get(h, 0.0) + e - room[h]) - max(0.0, base.get(h, 0.0) - room[h])
                for h, e in add.items()
            )
        first = next(c for c in open_ if cur[c] > 0)
        key = (round(excess, 9), round(cost, 9), -cells[first].start.timestamp())
        if best is None or key < best[0]:
            best = (key, cur)
    return best[1] if best else None


def _continuous_currents(pb: Problem) -> list[list[float]] | None:
    """One window per car, earliest departure first, each within what the earlier cars leave of the
    budget. Exact for one car; for several a heuristic (None if a car finds no window)."""
    cells = pb.cells
    left = [c.budget_a for c in cells]
    base: dict[datetime, float] = defaultdict(float)
    currents: list[list[float]] = [[0.0] * len(cells) for _ in pb.requests]
    for k in sorted(range(len(pb.requests)), key=lambda k: pb.requests[k].departure):
        r = pb.requests[k]
        avail = [min(r.charger.max_a, left[c]) for c in range(len(cells))]
        cur = _window(pb, k, avail, base)
        if cur is None:
            return None
        currents[k] = cur
        for c, a in enumerate(cur):
            left[c] -= a
            base[hour_of(cells[c].start)] += a * r.charger.kw_per_a * cells[c].hours
    return currents


def _at_once_currents(pb: Problem) -> list[list[float]]:
    """What a plain balancer does: every car from now at full current until it has its energy, the budget
    shared equally (water-filling) when it is short."""
    cars, cells = pb.requests, pb.cells
    need = [r.energy_kwh for r in cars]
    currents = [[0.0] * len(cells) for _ in cars]
    for c, cell in enumerate(cells):
        want = {}
        for k, r in enumerate(cars):
            if cell.end <= r.departure and need[k] > KWH_TOL:
                want[k] = min(r.charger.max_a, need[k] / (r.charger.kw_per_a * cell.hours))
        for k, a in water_fill(want, cell.budget_a).items():
            currents[k][c] = a
            need[k] -= a * cars[k].charger.kw_per_a * cell.hours
    return currents


def water_fill(want: dict[Any, float], budget: float) -> dict[Any, float]:
    """Share ``budget`` amperes: equal shares, no one above what it wants, leftovers to the others."""
    out = {}
    left = max(0.0, budget)
    order = sorted(want, key=lambda k: want[k])
    for i, k in enumerate(order):
        share = left / (len(order) - i)
        out[k] = min(want[k], share)
        left -= out[k]
    return out


# ---------------------------------------------------------------------------------------------------
# Public entry points.


def plan(
    requests: Sequence[CarRequest], prices: PriceSeries, now: datetime, options: PlanOptions | None = None
) -> Plan:
    """The cheapest plan that meets every departure (or, if none can, the most energy at least cost)."""
    pb = problem(requests, prices, now, options)
    notes = list(pb.notes)
    strategy: Strategy = "cheapest"
    currents = None
    if pb.options.continuous:
        currents = _continuous_currents(pb)
        if currents is not None:
            strategy = "continuous"
        elif len(pb.requests) > 1:
            notes.append("no continuous windows fit every car in time: planned without that constraint")
    if currents is None:
        currents = _flow_currents(pb)
        _lift_small_currents(pb, currents)
    return _build(pb, strategy, currents, notes)


def plan_at_once(
    requests: Sequence[CarRequest], prices: PriceSeries, now: datetime, options: PlanOptions | None = None
) -> Plan:
    """Charging at once (no Smart eco), as the reference for savings."""
    pb = problem(requests, prices, now, options)
    return _build(pb, "at-once", _at_once_currents(pb), list(pb.notes))


def max_energy_kwh(pb: Problem, k: int) -> float:
    """The most car k could take before departure with the whole budget to itself."""
    r, cells = pb.requests[k], pb.cells
    amps_hours = sum(
        min(r.charger.max_a, cells[c].budget_a) * cells[c].hours
        for c in pb.open_cells(k)
        if cells[c].budget_a >= r.charger.min_a
    )
    return amps_hours * r.charger.kw_per_a


def _build(pb: Problem, strategy: Strategy, currents: list[list[float]], notes: list[str]) -> Plan:
    chargers = []
    for k, r in enumerate(pb.requests):
        p = r.charger.kw_per_a
        slots = tuple(
            SlotPlan(cell.start, cell.end, a, a * p * cell.hours, cell.spot, cell.grid, cell.estimated)
            for cell, a in zip(pb.cells, currents[k], strict=True)
            if a > 0
        )
        got = sum(s.energy_kwh for s in slots)
        feasible = got >= r.energy_kwh - KWH_TOL * max(1.0, r.energy_kwh)
        reason = None
        if not feasible:
            most = max_energy_kwh(pb, k)
            by = r.departure.astimezone(OSLO).isoformat(timespec="minutes")
            if most < r.energy_kwh - KWH_TOL:
                reason = (
                    f"not enough time: needs {r.energy_kwh:.2f} kWh before {by}, at most {most:.2f} kWh"
                    " can be charged by then; charging at once"
                )
            else:
                reason = (
                    f"the shared current budget cannot serve every car in time: {got:.2f} of"
                    f" {r.energy_kwh:.2f} kWh before {by}"
                )
        chargers.append(ChargerPlan(r.charger, r.departure, r.energy_kwh, slots, feasible, reason))
    cap = pb.options.capacity
    peak = None
    excess = 0.0
    if cap:
        room = _hour_room_kwh(pb)
        totals = _hour_totals(pb, currents)
        excess = _excess(totals, room)
        household = _household_kwh(pb)
        peak = max(household[h] + totals.get(h, 0.0) for h in household)
    return Plan(
        created=pb.now,
        strategy=strategy,
        area=pb.prices.area,
        chargers=tuple(chargers),
        prices_known_until=pb.prices.known_until,
        notes=tuple(notes),
        capacity_cap_kw=cap.cap_kw if cap and math.isfinite(cap.cap_kw) else None,
        peak_hour_kwh=peak,
        capacity_excess_kwh=excess,
    )
