"""A commuter's week with and without Smart eco, replayed in closed loop over a price week.

Each evening the car arrives, the device plans with the prices it knows then (after 13:00 that is
tomorrow's too), and the balancer follows the plan minute by minute through ``schedule``; what the car
draws is priced at spot + grid energy charge. The capacity charge is shown as the step the week's three
highest daily hour peaks (household + car) would put the month in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from apm.core.eco.planner import CapacityLimit, CarRequest, Charger, Plan, PlanOptions, plan, plan_at_once
from apm.core.eco.prices import OSLO, PriceSeries, sample_week
from apm.core.eco.retail import SPOT, PriceModel, paid
from apm.core.eco.schedule import EcoSchedule, change_times
from apm.core.eco.tariff import ELVIA, GridTariff, hour_of


def winter_household_kw(t: datetime) -> float:
    """A Norwegian house with electric heating on a cold day (assumption, ~60 kWh/day): night 1.8 kW,
    morning 06-09 4.0, day 2.2, evening 16-21 4.5, late 2.8; weekends a later morning."""
    local = t.astimezone(OSLO)
    h = local.hour
    weekend = local.weekday() >= 5
    if h < 6:
        return 1.8
    if h < 9:
        return 2.6 if weekend else 4.0
    if h < 16:
        return 3.2 if weekend and h < 12 else 2.2
    if h < 21:
        return 4.5
    return 2.8


@dataclass(frozen=True, slots=True)
class Strategy:
    name: str
    options: PlanOptions | None  # None: charge at once


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    energy_kwh: float
    spot_nok: float
    grid_nok: float
    capacity_kw: float  # mean of the three highest daily hour peaks, household included
    capacity_nok_per_month: float
    nights_short: int  # nights the car left with less than it needed

    @property
    def energy_nok(self) -> float:
        return self.spot_nok + self.grid_nok


def strategies(tariff: GridTariff, household: Callable[[datetime], float], cap_kw: float) -> list[Strategy]:
    return [
        Strategy("at once", None),
        Strategy("smart, spot only (as Zaptec)", PlanOptions()),
        Strategy("smart, spot + grid energy", PlanOptions(grid=tariff.energy)),
        Strategy(
            "smart, + capacity step",
            PlanOptions(grid=tariff.energy, capacity=CapacityLimit(cap_kw, household)),
        ),
    ]


def commuter_week(
    prices: PriceSeries | None = None,
    tariff: GridTariff = ELVIA,
    charger: Charger | None = None,
    energy_kwh: float = 20.0,
    arrive: time = time(17, 0),
    leave: time = time(7, 30),
    household: Callable[[datetime], float] = winter_household_kw,
    model: PriceModel = SPOT,
) -> list[Outcome]:
    """Replay every night of the price series (arrival to next morning's departure); the energy is
    priced as ``model`` says (spot, Norgespris, strømstøtte), and the plans see those prices."""
    prices = paid(prices or sample_week(), model)
    charger = charger or Charger("car", 16.0, 3, "TN")
    first = prices.start.astimezone(OSLO).date()
    nights = []
    day = first
    while True:
        a = datetime.combine(day, arrive, OSLO)
        d = datetime.combine(day + timedelta(days=1), leave, OSLO)
        if d > prices.end:
            break
        if a >= prices.start:
            nights.append((a, d))
        day += timedelta(days=1)
    # Stay in the step the house reaches without the car: its upper bound is the hourly cap.
    home_hours = {
        hour_of(prices.start) + timedelta(hours=i): 0.0
        for i in range(int((prices.end - prices.start).total_seconds() // 3600))
    }
    for h in home_hours:
        home_hours[h] = sum(household(h + timedelta(minutes=15 * q)) for q in range(4)) / 4
    cap_kw = tariff.capacity.cap_kw(home_hours.items())
    out = []
    for strat in strategies(tariff, household, cap_kw):
        car_hours: dict[datetime, float] = defaultdict(float)
        spot = grid = energy = 0.0
        short = 0
        for a, d in nights:
            known = prices.window(prices.start, datetime.combine(d.date(), time(0), OSLO) + timedelta(days=1))
            req = [CarRequest(charger, d, energy_kwh)]
            p: Plan = plan(req, known, a, strat.options) if strat.options else plan_at_once(req, known, a)
            sched = EcoSchedule(p)
            got = 0.0
            # The balancer's current is constant between these times, so the replay is exact.
            moments = {a.astimezone(UTC), d.astimezone(UTC), *change_times(p, charger.id)}
            moments.update(s.start for s in prices.window(a, d) if a < s.start < d)
            times = sorted(x for x in moments if a <= x <= d)
            for t, nxt in zip(times, times[1:], strict=False):
                amps = sched.allowed_current(charger.id, t, charger.max_a)
                kwh = amps * charger.kw_per_a * (nxt - t).total_seconds() / 3600
                slot = prices.at(t)
                assert slot is not None
                spot += kwh * slot.nok_per_kwh
                grid += kwh * tariff.energy.rate_at(t)
                car_hours[hour_of(t)] += kwh
                got += kwh
            energy += got
            short += got < energy_kwh - 1e-3
        total = [(h, e + car_hours.get(h, 0.0)) for h, e in home_hours.items()]
        fig = tariff.capacity.month_figure(total)
        out.append(Outcome(strat.name, energy, spot, grid, fig, tariff.capacity.monthly_nok(fig), short))
    return out


def report(outcomes: list[Outcome], model: PriceModel = SPOT) -> str:
    base = outcomes[0]
    price = "energy NOK" if model.kind == "spot" else "price NOK"
    lines = [
        f"{'strategy':34} {'kWh':>7} {price.replace('energy', 'spot'):>9} {'grid NOK':>9} {'energy NOK':>10}"
        f" {'saved':>7} {'peak kW':>8} {'cap. NOK/mo':>11} short",
    ]
    for o in outcomes:
        saved = 100 * (1 - o.energy_nok / base.energy_nok) if base.energy_nok else 0.0
        lines.append(
            f"{o.name:34} {o.energy_kwh:7.2f} {o.spot_nok:9.2f} {o.grid_nok:9.2f} {o.energy_nok:10.2f}"
            f" {saved:6.1f}% {o.capacity_kw:8.2f} {o.capacity_nok_per_month:11.2f} {o.nights_short:5d}"
        )
    return "\n".join([*lines, *verdict(outcomes, model)])


def verdict(outcomes: list[Outcome], model: PriceModel = SPOT) -> list[str]:
    """What Smart eco saves against charging at once, in words: on the energy price, on the grid's
    energy charge, and on the capacity step (per month); says so when it saves nothing on energy."""
    at_once, best = outcomes[0], outcomes[-1]
    on_price = at_once.spot_nok - best.spot_nok
    on_grid = at_once.grid_nok - best.grid_nok
    on_capacity = at_once.capacity_nok_per_month - best.capacity_nok_per_month
    out = [f"prices: {model.label}"]
    if model.flat or abs(on_price) < 0.005:
        out.append("Smart eco saves nothing on the energy price: it is the same at every hour.")
    else:
        out.append(f"Smart eco saves {on_price:.2f} NOK on the energy price.")
    out.append(f"It saves {on_grid:.2f} NOK on the grid's day/night energy charge and keeps the month at"
               f" {best.capacity_kw:.2f} kW instead of {at_once.capacity_kw:.2f} kW: {on_capacity:.2f} NOK a"
               " month on the capacity step.")
    return out


if __name__ == "__main__":
    print(report(commuter_week()))
