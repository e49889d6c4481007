"""`apm eco`: Smart eco plans (cheapest slots before departure, all chargers on the fuse together)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime
from pathlib import Path

from apm.cli.support import TIME_HELP, parse_time
from apm.core.eco.capacity import CapacityGoal, MonthLog
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
from apm.core.eco.prices import AREAS, OSLO, PriceError, PriceSeries, load_file, sample_week
from apm.core.eco.retail import NORGESPRIS, SPOT, STROMSTOTTE, PriceModel, paid
from apm.core.eco.savings import commuter_week, report
from apm.core.eco.schedule import next_clock_time
from apm.core.eco.tariff import ELVIA, NO_GRID_CHARGE, TariffError
from apm.io.http.fallback import DEFAULT, price_source
from apm.io.http.prices import PriceApiError, PriceFeed
from apm.io.storage import paths

DEFAULT_CACHE = paths.price_cache()


class InputError(ValueError):
    pass


def _positive(kind: str, allow_zero: bool = False):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{kind} {text!r} is not a number") from None
        if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"{kind} {text!r} must be {'>= 0' if allow_zero else '> 0'}")
        return v

    return parse


def _phases(text: str) -> int:
    if text not in ("1", "3"):
        raise argparse.ArgumentTypeError(f"phases {text!r} must be 1 or 3")
    return int(text)


def _car(text: str) -> tuple[str, str, float, float, int]:
    """id:departure:kwh:max_a:phases; the departure (HH:MM or ISO) may itself hold colons."""
    parts = text.split(":")
    if len(parts) < 5:
        raise argparse.ArgumentTypeError(
            f"car {text!r}: expected id:departure:kwh:max_a:phases, e.g. c1:07:30:20:16:3"
        )
    cid, departure = parts[0], ":".join(parts[1:-3])
    if not cid:
        raise argparse.ArgumentTypeError(f"car {text!r}: empty id")
    kwh = _positive(f"car {cid} energy (kWh)", allow_zero=True)(parts[-3])
    max_a = _positive(f"car {cid} max current (A)")(parts[-2])
    try:
        phases = _phases(parts[-1])
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"car {cid}: {exc}") from None
    return cid, departure, kwh, max_a, phases


def register(sub) -> None:
    p = sub.add_parser("eco", help="Smart eco: plan charging in the cheapest slots before departure")
    actions = p.add_subparsers(dest="eco_command", metavar="ACTION")
    pl = actions.add_parser(
        "plan",
        help="plan one or more cars on one fuse and compare with charging at once",
        description="Times without a UTC offset are Oslo local time. Without --prices or --api the bundled"
        " NO1 sample week (2026-01-12..18) is used; pass --now inside it.",
    )
    pl.add_argument("--departure", help=f"HH:MM (the next such time after now) or a time ({TIME_HELP})")
    need = pl.add_mutually_exclusive_group()
    need.add_argument(
        "--energy-kwh", type=_positive("energy (kWh)", allow_zero=True), help="energy the car needs"
    )
    need.add_argument(
        "--hours", type=_positive("hours", allow_zero=True), help="hours of charging at full power"
    )
    pl.add_argument(
        "--max-a", type=_positive("max current (A)"), default=16.0, help="charger max current (16)"
    )
    pl.add_argument("--phases", type=_phases, default=3, help="1 or 3 (3)")
    pl.add_argument(
        "--network", choices=("TN", "IT"), default="TN", help="TN 230 V phase-neutral or IT 230 V line-line"
    )
    pl.add_argument("--voltage", type=_positive("voltage (V)"), default=230.0, help="230")
    pl.add_argument(
        "--car",
        type=_car,
        action="append",
        default=[],
        metavar="ID:DEPARTURE:KWH:MAX_A:PHASES",
        help="a car to plan jointly (repeat for up to three); replaces --departure/--energy-kwh",
    )
    pl.add_argument(
        "--budget-a", type=_positive("budget (A)", allow_zero=True), help="shared current budget per slot"
    )
    src = pl.add_mutually_exclusive_group()
    src.add_argument("--prices", type=Path, help="prices file (.csv or .json)")
    src.add_argument("--api", metavar="SERVICE", action="append", nargs="?", const=DEFAULT,
                     help="a day-ahead price service: hvakosterstrommen, nordpool, a URL (the host picks the "
                          "format) or NAME:URL; twice: the second asked when the first fails; alone without "
                          "a value: hvakosterstrommen.no, then Nord Pool")
    pl.add_argument("--area", choices=AREAS, default="NO1", help="price area (NO1)")
    pl.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"price cache folder ({DEFAULT_CACHE})")
    pl.add_argument("--now", metavar="TIME", help=f"time to plan from ({TIME_HELP}; default: the clock)")
    pl.add_argument("--continuous", action="store_true", help="one continuous charging window per car")
    pl.add_argument("--spot-only", action="store_true", help="ignore the grid energy charge (as Zaptec does)")
    cap = pl.add_mutually_exclusive_group()
    cap.add_argument(
        "--capacity-cap-kw",
        type=_positive("capacity cap (kW)"),
        help="keep each hour's energy (household + cars) at or under this, when avoidable",
    )
    cap.add_argument(
        "--capacity-step-kw",
        type=_positive("capacity step (kW)"),
        help="stay in this capacity step (an upper bound of the ladder: 2, 5, 10, ...), as the guard does"
        " for a month with no peaks yet",
    )
    pl.add_argument(
        "--household-kw",
        type=_positive("household load (kW)", allow_zero=True),
        default=0.0,
        help="expected household load",
    )
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.add_argument(
        "--show", action="store_true", help="print the plan the device publishes (needs --broker, --serial)"
    )
    pl.add_argument("--broker", metavar="URL", help="with --show: the device's MQTT broker (mqtt://host:port)")
    pl.add_argument("--serial", help="with --show: the device's serial number")
    pl.add_argument(
        "--timeout", type=_positive("timeout (s)"), default=5.0, help="with --show: seconds to wait (5)"
    )
    sv = actions.add_parser("savings", help="a commuter's week with and without Smart eco over a price week")
    sv.add_argument(
        "--prices", type=Path, help="price file covering whole days (default: the bundled NO1 week)"
    )
    sv.add_argument("--energy-kwh", type=_positive("energy (kWh)"), default=20.0, help="per night (20)")
    sv.add_argument("--max-a", type=_positive("max current (A)"), default=16.0)
    sv.add_argument("--phases", type=_phases, default=3)
    sv.add_argument("--network", choices=("TN", "IT"), default="TN")
    for q in (pl, sv):
        how = q.add_mutually_exclusive_group()
        how.add_argument("--norgespris", action="store_true",
                         help="the household pays Norgespris (a fixed 40 øre/kWh ex VAT) instead of spot")
        how.add_argument("--stromstotte", action="store_true",
                         help="spot with strømstøtte (the state pays 90 %% above 75 øre/kWh, hour by hour)")
        q.set_defaults(func=run)
    p.set_defaults(func=run, eco_parser=p)


def run(args: argparse.Namespace) -> int:
    try:
        if args.eco_command == "plan":
            return _run_plan(args)
        if args.eco_command == "savings":
            return _run_savings(args)
        args.eco_parser.print_help(sys.stderr)
        return 2
    except (InputError, PlanError, PriceError) as exc:
        print(f"apm eco {args.eco_command}: {exc}", file=sys.stderr)
        return 2
    except PriceApiError as exc:
        print(f"apm eco {args.eco_command}: price service: {exc}", file=sys.stderr)
        return 1


def _time(text: str, what: str) -> datetime:
    try:
        return parse_time(text, what)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _departure(text: str | None, now: datetime, who: str) -> datetime:
    if not text:
        raise InputError(f"{who}: --departure is required (HH:MM or ISO time)")
    if len(text) <= 5 and ":" in text:
        try:
            return next_clock_time(text, now)
        except ValueError:
            raise InputError(f"{who}: departure {text!r} is not HH:MM") from None
    d = _time(text, f"{who}: departure")
    if d <= now:
        raise InputError(f"{who}: departure {d.isoformat()} is not after now {now.isoformat()}")
    return d


def _requests(args: argparse.Namespace, now: datetime) -> list[CarRequest]:
    if args.car:
        if args.departure or args.energy_kwh is not None or args.hours is not None:
            raise InputError(
                "give either --car (one per car) or --departure with --energy-kwh/--hours, not both"
            )
        cars = []
        for cid, dep, kwh, max_a, phases in args.car:
            charger = Charger(cid, max_a, phases, args.network, args.voltage)
            cars.append(CarRequest(charger, _departure(dep, now, f"car {cid}"), kwh))
        return cars
    charger = Charger("car", args.max_a, args.phases, args.network, args.voltage)
    departure = _departure(args.departure, now, "car")
    if args.hours is not None:
        return [CarRequest.for_hours(charger, departure, args.hours)]
    if args.energy_kwh is None:
        raise InputError("give --energy-kwh or --hours")
    return [CarRequest(charger, departure, args.energy_kwh)]


def _prices(args: argparse.Namespace, now: datetime) -> PriceSeries:
    if args.prices:
        return load_file(args.prices, args.area)
    if args.api:
        import asyncio

        if len(args.api) > 2:
            raise InputError("--api: at most two price services (the second when the first fails)")
        try:
            source = price_source(args.area, args.api, args.cache)
        except ValueError as exc:
            raise InputError(f"--api: {exc}") from None
        update = asyncio.run(PriceFeed(source).update(now))
        if update.series is None:
            raise PriceApiError(f"no prices published for {now.astimezone(OSLO).date()} in {args.area}")
        return update.series
    if args.area != "NO1":
        raise InputError(f"the bundled sample week is NO1 only; give --prices or --api for {args.area}")
    week = sample_week()
    if week.at(now) is None:
        raise InputError(
            f"now ({now.isoformat()}) is outside the bundled sample week"
            f" {week.start.isoformat()} .. {week.end.isoformat()}: pass --now inside it, or --prices/--api"
        )
    return week


def _model(args: argparse.Namespace) -> PriceModel:
    if args.norgespris:
        return NORGESPRIS
    return STROMSTOTTE if args.stromstotte else SPOT


def _run_show(args: argparse.Namespace) -> int:
    import asyncio

    from apm.io.mqtt.link import LinkError
    from apm.io.mqtt.topics import TopicError, Topics
    from apm.services.eco import fetch_plan

    if not args.broker or not args.serial:
        raise InputError("--show needs --broker URL and --serial S")
    try:
        topic = Topics(args.serial).eco_plan
        payload = asyncio.run(fetch_plan(args.broker, args.serial, args.timeout))
    except (LinkError, TopicError) as exc:
        raise InputError(str(exc)) from None
    if payload is None:
        print(f"no plan published on {topic} (waited {args.timeout:g} s)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    shown = Plan.from_dict(payload)
    lines = [f"Smart eco plan on {topic} ({shown.strategy}), made {_hm(shown.created)};"
             f" expected cost {payload.get('expected_cost_nok', shown.cost_nok):.2f} NOK,"
             f" {shown.energy_kwh:.2f} kWh"]
    now_ids = set(payload.get("charge_now", ()))
    for c in shown.chargers:
        lines.append(
            f"  {c.charger.id}: {c.energy_needed_kwh:.2f} kWh by {_hm(c.departure)}, planned"
            f" {c.energy_kwh:.2f} kWh, {c.cost_nok:.2f} NOK" + ("  CHARGE NOW" if c.charger.id in now_ids else "")
            + ("" if c.feasible else f"  NOT FEASIBLE: {c.reason}")
        )
        for sl in c.slots:
            lines.append(f"    {_hm(sl.start)}-{sl.end.astimezone(OSLO):%H:%M} {sl.current_a:6.2f} A")
    lines += [f"  note: {n}" for n in shown.notes]
    print("\n".join(lines))
    return 0


def _run_plan(args: argparse.Namespace) -> int:
    if args.show:
        return _run_show(args)
    now = _time(args.now, "--now") if args.now else datetime.now(OSLO)
    requests = _requests(args, now)
    prices = paid(_prices(args, now), _model(args))
    capacity = CapacityLimit(args.capacity_cap_kw, args.household_kw) if args.capacity_cap_kw else None
    if args.capacity_step_kw:
        try:
            goal = CapacityGoal(args.capacity_step_kw)
        except TariffError as exc:
            raise InputError(f"--capacity-step-kw: {exc}") from None
        capacity = CapacityLimit.for_goal(goal, MonthLog.of(now), now, args.household_kw)
    options = PlanOptions(
        grid=NO_GRID_CHARGE if args.spot_only else ELVIA.energy,
        budget_a=args.budget_a,
        continuous=args.continuous,
        capacity=capacity,
    )
    smart = plan(requests, prices, now, options)
    at_once = plan_at_once(requests, prices, now, options)
    if args.json:
        doc = {
            "plan": smart.to_dict(),
            "at_once": {
                "cost_nok": at_once.cost_nok,
                "energy_kwh": at_once.energy_kwh,
                "feasible": at_once.feasible,
            },
            "saving_nok": at_once.cost_nok - smart.cost_nok,
        }
        print(json.dumps(doc, indent=2))
    else:
        print(_text(smart, at_once))
    for c in smart.chargers:
        if not c.feasible:
            print(f"warning: {c.charger.id}: {c.reason}", file=sys.stderr)
    return 0


def _hm(t: datetime) -> str:
    return t.astimezone(OSLO).strftime("%a %d.%m %H:%M")


def _text(smart: Plan, at_once: Plan) -> str:
    ids = smart.charger_ids
    lines = [
        f"Smart eco plan ({smart.strategy}), {smart.area}, from {_hm(smart.created)};"
        f" prices known until {_hm(smart.prices_known_until)}",
    ]
    for c in smart.chargers:
        lines.append(
            f"  {c.charger.id}: {c.energy_needed_kwh:.2f} kWh by {_hm(c.departure)}, {c.charger.max_a:g} A"
            f" {c.charger.phases}-phase {c.charger.network} ({c.charger.max_kw:.2f} kW)"
            + ("" if c.feasible else f"  NOT FEASIBLE: {c.reason}")
        )
    cells: dict[tuple[datetime, datetime], dict[str, float]] = {}
    prices: dict[tuple[datetime, datetime], tuple[float, float, bool]] = {}
    for c in smart.chargers:
        for s in c.slots:
            cells.setdefault((s.start, s.end), {})[c.charger.id] = s.current_a
            prices[s.start, s.end] = (s.spot_nok_per_kwh, s.grid_nok_per_kwh, s.estimated)
    lines.append("")
    lines.append(f"  {'slot':23} {'spot':>7} {'grid':>6} " + " ".join(f"{i + ' A':>8}" for i in ids))
    for key in sorted(cells):
        spot, grid, est = prices[key]
        a, b = key
        row = f"  {_hm(a)}-{b.astimezone(OSLO):%H:%M} {spot:7.3f} {grid:6.3f} "
        row += " ".join(f"{cells[key].get(i, 0.0):8.2f}" for i in ids) + (" (estimated price)" if est else "")
        lines.append(row)
    saving = at_once.cost_nok - smart.cost_nok
    pct = 100 * saving / at_once.cost_nok if at_once.cost_nok > 0 else 0.0
    lines += [
        "",
        f"  energy {smart.energy_kwh:.2f} kWh, cost {smart.cost_nok:.2f} NOK"
        f" (spot {sum(c.spot_nok for c in smart.chargers):.2f}, grid {sum(c.grid_nok for c in smart.chargers):.2f})",
        f"  charging at once: {at_once.energy_kwh:.2f} kWh, {at_once.cost_nok:.2f} NOK;"
        f" Smart eco saves {saving:.2f} NOK ({pct:.1f} %)",
    ]
    if smart.capacity_cap_kw is not None:
        lines.append(
            f"  capacity: peak hour {smart.peak_hour_kwh:.2f} kWh, cap {smart.capacity_cap_kw:g} kW,"
            f" above cap {smart.capacity_excess_kwh:.2f} kWh"
        )
    lines += [f"  note: {n}" for n in smart.notes]
    lines.append(f"  feasible: {'yes' if smart.feasible else 'NO'}")
    return "\n".join(lines)


def _run_savings(args: argparse.Namespace) -> int:
    prices = load_file(args.prices) if args.prices else sample_week()
    charger = Charger("car", args.max_a, args.phases, args.network)
    print(f"Commuter, arrive 17:00, leave 07:30, {args.energy_kwh:g} kWh/night, {charger.max_kw:.2f} kW;")
    model = _model(args)
    print(f"prices {prices.area} {_hm(prices.start)} .. {_hm(prices.end)} ({model.label}), grid tariff {ELVIA.name}")
    print(report(commuter_week(prices, ELVIA, charger, args.energy_kwh, model=model), model))
    return 0
