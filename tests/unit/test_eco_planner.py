"""The Smart eco planner against exact optima found independently (subset enumeration, dynamic
programming over integer allocations, a minute-grid window scan), and the joint-fuse scenario."""

from __future__ import annotations

import itertools
import json
import math
from datetime import datetime, timedelta
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apm.core.eco.planner import (
    CapacityLimit,
    CarRequest,
    Charger,
    Plan,
    PlanError,
    PlanOptions,
    plan,
    plan_at_once,
)
from apm.core.eco.prices import OSLO, PriceSeries, PriceSlot, sample_week
from apm.core.eco.tariff import ELVIA
from tests.eco_serve import serve

T0 = datetime(2026, 1, 12, 18, 0, tzinfo=OSLO)  # a Monday evening
GRID = ELVIA.energy


def series(prices: list[float], minutes: int = 60, start: datetime = T0) -> PriceSeries:
    step = timedelta(minutes=minutes)
    return PriceSeries(
        "NO1", tuple(PriceSlot(start + i * step, start + (i + 1) * step, p) for i, p in enumerate(prices))
    )


def assert_within_budget(p: Plan, budget: list[float] | float | None, prices: PriceSeries) -> None:
    used: dict[datetime, float] = {}
    for cp in p.chargers:
        for s in cp.slots:
            assert s.current_a <= cp.charger.max_a + 1e-6
            assert s.end <= cp.departure
            used[s.start] = used.get(s.start, 0.0) + s.current_a
    for t, a in used.items():
        if budget is None:
            continue
        cap = budget if isinstance(budget, float | int) else budget[prices.slots.index(prices.at(t))]
        assert a <= cap + 1e-6


# --- one car: the fractional-knapsack optimum by enumerating slot subsets --------------------------------

chargers = st.builds(
    Charger,
    id=st.just("car"),
    max_a=st.sampled_from([6.0, 10.0, 16.0, 32.0]),
    phases=st.sampled_from([1, 3]),
    network=st.sampled_from(["TN", "IT"]),
)


@settings(max_examples=300, deadline=None)
@given(
    prices=st.lists(st.floats(-0.3, 3.0, allow_nan=False), min_size=1, max_size=7),
    minutes=st.sampled_from([15, 60]),
    budgets=st.one_of(st.none(), st.lists(st.integers(0, 40), min_size=7, max_size=7)),
    charger=chargers,
    lead=st.floats(0, 0.99),
    tail=st.floats(0, 0.99),
    fraction=st.floats(0, 1.2),
    with_grid=st.booleans(),
)
def test_single_car_cost_equals_subset_enumeration(
    prices, minutes, budgets, charger, lead, tail, fraction, with_grid
):
    ps = series(prices, minutes)
    step = timedelta(minutes=minutes)
    now = T0 + lead * step  # now and departure may fall inside slots
    departure = ps.end - tail * step
    if departure <= now:
        return
    budget = None if budgets is None else [float(b) for b in budgets[: len(prices)]]
    grid = GRID if with_grid else None
    # Independent model: each slot's usable hours, power and price.
    pieces = []
    for i, s in enumerate(ps):
        hours = max(0.0, (min(s.end, departure) - max(s.start, now)).total_seconds() / 3600)
        # A cell whose budget is under the car's minimum current is no use to it.
        amps = (
            charger.max_a if budget is None else min(charger.max_a, budget[i]) * (budget[i] >= charger.min_a)
        )
        price = s.nok_per_kwh + (grid.rate_at(s.start) if grid else 0.0)
        pieces.append((amps * hours * charger.kw_per_a, price))
    most = sum(e for e, _ in pieces)
    need = fraction * most
    result = plan(
        [CarRequest(charger, departure, need)],
        ps,
        now,
        PlanOptions(grid=grid, budget_a=(lambda t: budget[ps.slots.index(ps.at(t))]) if budget else None),
    )
    if need > most + 1e-6:
        # Not enough time: everything available, at once, and said so.
        assert not result.feasible
        assert "not enough time" in (result.chargers[0].reason or "")
        assert result.energy_kwh == pytest.approx(most, abs=1e-6)
        assert result.cost_nok == pytest.approx(sum(e * p for e, p in pieces), abs=1e-6)
        return
    best = math.inf
    n = len(pieces)
    for r in range(n + 1):
        for full in itertools.combinations(range(n), r):
            got = sum(pieces[i][0] for i in full)
            if got > need + 1e-9:
                continue
            cost = sum(pieces[i][0] * pieces[i][1] for i in full)
            rest = need - got
            if rest <= 1e-9:
                best = min(best, cost)
                continue
            for j in set(range(n)) - set(full):
                if pieces[j][0] >= rest - 1e-9:
                    best = min(best, cost + rest * pieces[j][1])
    assert result.feasible
    assert result.energy_kwh == pytest.approx(need, abs=1e-6)
    assert result.cost_nok == pytest.approx(best, abs=1e-5)
    assert_within_budget(result, budget, ps)


# --- up to three cars on one fuse: dynamic programming over integer ampere-hours -----------------------
# With integer capacities, budgets and needs (in Ah), a min-cost flow has an integral optimum, so the
# best integer allocation found by exhaustive DP is the exact optimum of the continuous problem too.


def dp_optimum(caps, budget, need, price_per_ah, room=None):
    """Lexicographic best over integer allocations: most Ah delivered, then least Ah above the hourly
    room, then least cost. Returns (delivered, excess, cost)."""
    k_n, t_n = len(caps), len(budget)

    @cache
    def best(t: int, rem: tuple[int, ...]) -> tuple[int, int, float]:
        if t == t_n:
            return (0, 0, 0.0)
        out = None
        for x in itertools.product(*(range(min(caps[k][t], rem[k]) + 1) for k in range(k_n))):
            if sum(x) > budget[t]:
                continue
            sub = best(t + 1, tuple(r - xi for r, xi in zip(rem, x, strict=True)))
            excess = max(0, sum(x) - room[t]) if room is not None else 0
            cand = (
                sub[0] - sum(x),
                sub[1] + excess,
                sub[2] + sum(price_per_ah[k][t] * x[k] for k in range(k_n)),
            )
            if out is None or (cand[0], cand[1], cand[2] + 1e-12) < out:
                out = cand
        return out

    delivered, excess, cost = best(0, tuple(need))
    return -delivered, excess, cost


@st.composite
def fleets(draw, same_power: bool = False):
    t_n = draw(st.integers(1, 4))
    k_n = draw(st.integers(2, 3))
    kind = (draw(st.sampled_from([1, 3])), draw(st.sampled_from(["TN", "IT"])))
    cars = []
    for k in range(k_n):
        phases, network = (
            kind if same_power else (draw(st.sampled_from([1, 3])), draw(st.sampled_from(["TN", "IT"])))
        )
        charger = Charger(f"c{k}", float(draw(st.integers(1, 3))), phases, network, min_a=0.0)
        dep = draw(st.integers(1, t_n))
        need_ah = draw(st.integers(0, int(charger.max_a) * dep + 1))
        cars.append((charger, dep, need_ah))
    prices = draw(st.lists(st.floats(-0.2, 3.0, allow_nan=False), min_size=t_n, max_size=t_n))
    budget = draw(st.lists(st.integers(0, 7), min_size=t_n, max_size=t_n))
    return cars, prices, budget


@settings(max_examples=300, deadline=None)
@given(fleet=fleets())
def test_joint_plan_equals_exact_optimum(fleet):
    cars, prices, budget = fleet
    ps = series(prices)
    requests = [CarRequest(c, T0 + timedelta(hours=dep), need * c.kw_per_a) for c, dep, need in cars]
    result = plan(
        requests,
        ps,
        T0,
        PlanOptions(grid=GRID, budget_a=lambda t: budget[int((t - T0).total_seconds() // 3600)]),
    )
    caps = [[int(c.max_a) if t < dep else 0 for t in range(len(prices))] for c, dep, _ in cars]
    price_ah = [
        [(prices[t] + GRID.rate_at(T0 + timedelta(hours=t))) * c.kw_per_a for t in range(len(prices))]
        for c, _, _ in cars
    ]
    delivered, _, cost = dp_optimum(caps, budget, [n for _, _, n in cars], price_ah)
    got_ah = sum(cp.energy_kwh / cp.charger.kw_per_a for cp in result.chargers)
    assert got_ah == pytest.approx(delivered, abs=1e-6)
    assert result.feasible == (delivered == sum(n for _, _, n in cars))
    assert result.cost_nok == pytest.approx(cost, abs=1e-5)
    assert_within_budget(result, [float(b) for b in budget], ps)


@settings(max_examples=80, deadline=None)
@given(fleet=fleets(same_power=True), rooms=st.lists(st.integers(0, 6), min_size=4, max_size=4))
def test_joint_plan_with_capacity_cap_equals_exact_optimum(fleet, rooms):
    cars, prices, budget = fleet
    p = cars[0][0].kw_per_a
    ps = series(prices)

    def hour(t: datetime) -> int:
        return int((t - T0).total_seconds() // 3600)

    # The household leaves rooms[h] Ah of charging under the cap in hour h.
    capacity = CapacityLimit(100.0, lambda t: 100.0 - rooms[min(hour(t), 3)] * p)
    requests = [CarRequest(c, T0 + timedelta(hours=dep), need * c.kw_per_a) for c, dep, need in cars]
    result = plan(requests, ps, T0, PlanOptions(budget_a=lambda t: budget[hour(t)], capacity=capacity))
    caps = [[int(c.max_a) if t < dep else 0 for t in range(len(prices))] for c, dep, _ in cars]
    price_ah = [[prices[t] * p for t in range(len(prices))] for _ in cars]
    delivered, excess, cost = dp_optimum(caps, budget, [n for _, _, n in cars], price_ah, rooms)
    assert sum(cp.energy_kwh for cp in result.chargers) == pytest.approx(delivered * p, abs=1e-6)
    assert result.capacity_excess_kwh == pytest.approx(excess * p, abs=1e-6)
    assert result.cost_nok == pytest.approx(cost, abs=1e-5)


# --- one continuous window: a scan of every start and end on a one-minute grid ---------------------------


def window_cost(ps: PriceSeries, start: datetime, end: datetime, kw: float, need: float, backward: bool):
    """Cost of charging ``need`` at ``kw`` from ``start`` onwards (or up to ``end`` backwards)."""
    if end <= start:
        return None
    slots = list(ps.window(start, end))
    left, cost = need, 0.0
    for s in reversed(slots) if backward else slots:
        hours = (min(s.end, end) - max(s.start, start)).total_seconds() / 3600
        take = min(left, kw * hours)
        cost += take * s.nok_per_kwh
        left -= take
        if left <= 1e-12:
            return cost
    return None


@settings(max_examples=80, deadline=None)
@given(
    prices=st.lists(st.floats(0.0, 3.0, allow_nan=False), min_size=2, max_size=12),
    fraction=st.floats(0.01, 1.0),
)
def test_continuous_window_equals_minute_scan(prices, fraction):
    ps = series(prices, 15)
    charger = Charger("car", 16.0, 3, "TN")
    need = fraction * charger.max_kw * len(prices) / 4
    result = plan([CarRequest(charger, ps.end, need)], ps, T0, PlanOptions(continuous=True))
    assert result.strategy == "continuous"
    best = math.inf
    minute = timedelta(minutes=1)
    for m in range(len(prices) * 15 + 1):
        t = T0 + m * minute
        for c in (
            window_cost(ps, t, ps.end, charger.max_kw, need, False),
            window_cost(ps, T0, t, charger.max_kw, need, True),
        ):
            if c is not None:
                best = min(best, c)
    assert result.cost_nok == pytest.approx(best, abs=1e-6)
    assert result.energy_kwh == pytest.approx(need, abs=1e-6)
    # One window: used cells are adjacent, and all but the first or last run at full current.
    slots = result.chargers[0].slots
    assert all(a.end == b.start for a, b in itertools.pairwise(slots))
    assert all(s.current_a == pytest.approx(16.0) for s in slots[1:-1])
    if len(slots) > 1:
        assert slots[0].current_a == pytest.approx(16.0) or slots[-1].current_a == pytest.approx(16.0)


def test_continuous_window_costs_at_least_the_free_choice():
    w = sample_week()
    now = datetime(2026, 1, 13, 17, 0, tzinfo=OSLO)
    req = [CarRequest(Charger("car"), datetime(2026, 1, 14, 7, 30, tzinfo=OSLO), 20.0)]
    free = plan(req, w, now)
    window = plan(req, w, now, PlanOptions(continuous=True))
    assert window.strategy == "continuous" and free.strategy == "cheapest"
    assert window.cost_nok >= free.cost_nok - 1e-9
    assert window.cost_nok < plan_at_once(req, w, now).cost_nok


# --- the fuse: independent plans against the joint plan ---------------------------------------------------


def test_independent_plans_miss_a_departure_the_joint_plan_meets():
    # Two 11 kW cars on one fuse with 20 A to spare: cheap 01-04, dear evening. Car A leaves at 05:00,
    # car B at 07:00; each needs 3 hours at 16 A.
    prices = [1.6, 1.5, 1.4, 1.2, 1.0, 0.9, 0.8, 0.3, 0.25, 0.2, 0.6, 0.7, 0.9]  # 18:00 .. 07:00
    ps = series(prices)
    a = Charger("A", 16.0, 3, "TN")
    b = Charger("B", 16.0, 3, "TN")
    need = 3 * a.max_kw
    ra = CarRequest(a, T0 + timedelta(hours=11), need)
    rb = CarRequest(b, T0 + timedelta(hours=13), need)
    budget = 20.0

    # Each car planned alone (as per-car planners do) picks 01-04; on the fuse they get 10 A each there.
    alone = [plan([r], ps, T0) for r in (ra, rb)]
    assert all(p.feasible for p in alone)
    got = serve(alone, budget)
    assert got["A"] < need - 1 and got["B"] < need - 1

    joint = plan([ra, rb], ps, T0, PlanOptions(budget_a=budget))
    assert joint.feasible
    assert_within_budget(joint, budget, ps)
    assert joint.charger("A").energy_kwh == pytest.approx(need)
    assert joint.charger("B").energy_kwh == pytest.approx(need)
    served = serve([joint], budget)
    assert served["A"] == pytest.approx(need, rel=1e-6)
    assert served["B"] == pytest.approx(need, rel=1e-6)
    # And it is the cheapest way to do so: the DP optimum in units of 4 Ah (all capacities are
    # multiples of 4, so the optimum is integral in those units).
    caps = [[4 if t < 11 else 0 for t in range(13)], [4] * 13]
    price_4ah = [[4 * x * a.kw_per_a for x in prices]] * 2
    _, _, cost = dp_optimum(caps, [5] * 13, [12, 12], price_4ah)
    assert joint.cost_nok == pytest.approx(cost)


def test_joint_plan_says_which_car_cannot_be_served():
    ps = series([1.0] * 4)
    a = CarRequest(Charger("A", 16.0, 3, "TN"), T0 + timedelta(hours=2), 30.0)
    b = CarRequest(Charger("B", 16.0, 3, "TN"), T0 + timedelta(hours=4), 20.0)
    p = plan([a, b], ps, T0, PlanOptions(budget_a=16.0))
    # A could take 22.08 kWh at most in its 2 hours; B gets its 20 kWh in the 2 hours after.
    assert not p.feasible
    assert p.charger("B").feasible
    assert p.energy_kwh == pytest.approx(2 * 11.04 + 20.0)
    assert "not enough time" in p.charger("A").reason
    assert p.charger("A").energy_kwh == pytest.approx(22.08)


# --- capacity charge ---------------------------------------------------------------------------------------


def test_capacity_cap_spreads_charging_when_it_can():
    # One cheap hour would take the whole 11 kWh; the cap (5 kWh/h, household 1 kW) leaves 4 kWh/h.
    ps = series([2.0, 2.0, 0.1, 0.5, 0.6, 2.0])
    req = [CarRequest(Charger("car", 16.0, 3, "TN"), ps.end, 11.0)]
    plain = plan(req, ps, T0)
    assert max(s.energy_kwh for s in plain.chargers[0].slots) == pytest.approx(11.0)
    capped = plan(req, ps, T0, PlanOptions(capacity=CapacityLimit(5.0, 1.0)))
    assert capped.feasible
    assert capped.capacity_excess_kwh == pytest.approx(0.0, abs=1e-9)
    assert capped.peak_hour_kwh == pytest.approx(5.0)
    assert [round(s.energy_kwh, 6) for s in capped.chargers[0].slots] == [4.0, 4.0, 3.0]
    assert capped.cost_nok == pytest.approx(4 * 0.1 + 4 * 0.5 + 3 * 0.6)
    assert capped.cost_nok > plain.cost_nok


def test_capacity_cap_gives_way_to_the_departure():
    # Only 2 hours to go: meeting the departure beats the step; the excess is the least possible.
    ps = series([1.0, 1.0])
    req = [CarRequest(Charger("car", 16.0, 3, "TN"), ps.end, 20.0)]
    p = plan(req, ps, T0, PlanOptions(capacity=CapacityLimit(5.0, 1.0)))
    assert p.feasible
    assert p.capacity_excess_kwh == pytest.approx(20.0 - 2 * 4.0)


# --- the rest ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phases", "network", "amps", "kw"),
    [
        (3, "TN", 16, 11.04),
        (3, "IT", 16, 6.3739),
        (1, "TN", 32, 7.36),
        (1, "IT", 32, 7.36),
        (3, "IT", 32, 12.7479),
    ],
)
def test_charger_power(phases, network, amps, kw):
    assert Charger("c", amps, phases, network).max_kw == pytest.approx(kw, abs=1e-4)


def test_hours_mode_and_partial_slot():
    ps = series([0.5, 0.1, 0.3, 0.9])
    charger = Charger("car", 16.0, 3, "IT")
    p = plan([CarRequest.for_hours(charger, ps.end, 1.5)], ps, T0)
    slots = p.chargers[0].slots
    assert [(s.start.astimezone(OSLO).hour, round(s.current_a, 6)) for s in slots] == [(19, 16.0), (20, 8.0)]
    assert p.energy_kwh == pytest.approx(1.5 * charger.max_kw)


def test_unknown_tomorrow_is_estimated_and_said():
    w = sample_week()
    today = w.window(w.start, datetime(2026, 1, 13, tzinfo=OSLO))
    now = datetime(2026, 1, 12, 10, 0, tzinfo=OSLO)
    p = plan([CarRequest(Charger("car"), datetime(2026, 1, 13, 7, 0, tzinfo=OSLO), 20.0)], today, now)
    assert p.feasible
    assert p.prices_known_until == today.end
    assert any("estimated" in n for n in p.notes)
    assert any(s.estimated for s in p.chargers[0].slots)  # the night is cheapest, and not yet published


def test_plan_json_round_trip():
    w = sample_week()
    now = datetime(2026, 1, 14, 16, 40, tzinfo=OSLO)
    reqs = [
        CarRequest(Charger("a", 16.0, 3, "TN"), datetime(2026, 1, 15, 7, 30, tzinfo=OSLO), 25.0),
        CarRequest(Charger("b", 32.0, 1, "TN"), datetime(2026, 1, 15, 6, 0, tzinfo=OSLO), 15.0),
    ]
    p = plan(reqs, w, now, PlanOptions(grid=GRID, budget_a=25.0, capacity=CapacityLimit(15.0, 3.0)))
    again = Plan.from_json(p.to_json(allow_nan=False))
    assert again == p
    top_step = plan(reqs, w, now, PlanOptions(capacity=CapacityLimit(math.inf, 3.0)))
    assert top_step.capacity_cap_kw is None and top_step.capacity_excess_kwh == 0.0
    json.loads(top_step.to_json(allow_nan=False))
    assert p.to_dict()["chargers"][0]["slots"][0]["current_a"] > 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: plan([CarRequest(Charger("a"), T0, 1.0)], series([1.0]), T0), "not after now"),
        (
            lambda: plan(
                [CarRequest(Charger(c), T0 + timedelta(hours=1), 1.0) for c in "abcd"], series([1.0]), T0
            ),
            "at most 3",
        ),
        (
            lambda: plan([CarRequest(Charger("a"), T0 + timedelta(hours=1), 1.0)] * 2, series([1.0]), T0),
            "ids must differ",
        ),
        (
            lambda: plan(
                [CarRequest(Charger("a"), T0 + timedelta(hours=9), 1.0)],
                series([1.0]),
                T0 - timedelta(hours=1),
            ),
            "no price for now",
        ),
        (lambda: Charger("a", phases=2), "phases must be 1 or 3"),
        (lambda: Charger("a", network="TT"), "network must be TN or IT"),
        (lambda: Charger("a:b"), "without ':'"),
        (lambda: CarRequest(Charger("a"), T0, -1.0), "must be >= 0"),
        (
            lambda: plan(
                [CarRequest(Charger("a"), T0 + timedelta(hours=1), 1.0)],
                series([1.0]),
                T0,
                PlanOptions(budget_a=-1.0),
            ),
            "budget",
        ),
    ],
)
def test_bad_requests_are_refused_precisely(make, message):
    with pytest.raises(PlanError, match=message):
        make()


def test_at_once_charges_from_now():
    ps = series([3.0, 0.1, 0.1])
    req = [CarRequest(Charger("car", 16.0, 3, "TN"), ps.end, 11.04)]
    now_plan = plan_at_once(req, ps, T0)
    assert [s.start for s in now_plan.chargers[0].slots] == [T0]
    assert now_plan.cost_nok == pytest.approx(11.04 * 3.0)
    assert plan(req, ps, T0).cost_nok == pytest.approx(11.04 * 0.1)


@settings(max_examples=150, deadline=None)
@given(
    prices=st.lists(st.floats(0.0, 3.0, allow_nan=False), min_size=2, max_size=8),
    budgets=st.lists(st.one_of(st.just(0), st.integers(6, 40)), min_size=8, max_size=8),
    maxes=st.lists(st.sampled_from([10.0, 16.0, 32.0]), min_size=2, max_size=3),
    deps=st.lists(st.integers(1, 8), min_size=3, max_size=3),
    fractions=st.lists(st.floats(0, 1), min_size=3, max_size=3),
)
def test_lifting_small_currents_keeps_the_optimum(prices, budgets, maxes, deps, fractions):
    """Currents under 6 A are exchanged away only where that costs nothing: the same cost as the plan
    of cars that could draw any current, within budget, every car its energy."""
    ps = series(prices)

    def requests(min_a: float) -> list[CarRequest]:
        out = []
        for k, m in enumerate(maxes):
            c = Charger(f"c{k}", m, 3, "TN", min_a=min_a)
            dep = min(deps[k], len(prices))
            room = sum(min(m, budgets[t]) for t in range(dep)) * c.kw_per_a
            out.append(CarRequest(c, T0 + timedelta(hours=dep), fractions[k] * room / len(maxes)))
        return out

    options = PlanOptions(budget_a=lambda t: float(budgets[int((t - T0).total_seconds() // 3600)]))
    free = plan(requests(0.0), ps, T0, options)
    real = plan(requests(6.0), ps, T0, options)
    assert real.feasible == free.feasible
    assert real.cost_nok == pytest.approx(free.cost_nok, abs=1e-6)
    for a, b in zip(real.chargers, free.chargers, strict=True):
        assert a.energy_kwh == pytest.approx(b.energy_kwh, abs=1e-6)
    assert_within_budget(real, [float(b) for b in budgets], ps)
