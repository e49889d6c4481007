"""`apm sim run SCENARIO.toml`: the closed-loop simulation (a sub-command of `apm sim`).

    apm sim run sim/scenarios/winter-it-40a.toml --fast --report day.json --plot day.png
    apm sim run step.toml --speed 50 --report step.json       # through the pty, MQTT and the chargers
    apm sim run sim/scenarios/winter-tn-25a.toml --speed 100 --protocol ocpp   # every charger on OCPP 1.6J

Without ``--fast`` the loop runs through the real parts (sim/pipeline.py): the simulated meter's frames
on a pty, the device's serial reader, an MQTT broker (embedded amqtt unless ``--broker``), the
balancer service and the charger emulators, on a clock ``--speed`` times real time; ``--protocol``
puts every ``[[charger]]`` on one protocol (mqtt: the generic topics, ocpp: OCPP 1.6J charge points,
goe: go-e chargers on the broker) to compare the same day through each. ``--fast`` runs the
in-process loop of sim/closed_loop.py instead: the same scenario, the same report keys, a winter day in
seconds. Either way the report also holds the same day with the fixed current and no meter
(``fixed_<A>a``) unless ``--no-compare``.

Exit status: 0 the simulation ran (its report says whether a fuse tripped); 2 a bad scenario or option,
or no broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apm.cli.arguments import positive

PROG = "apm sim run"
PROTOCOLS = ("mqtt", "ocpp", "goe")  # sim.pipeline.PROTOCOLS, without importing the simulator for --help
DEFAULT_SPEED = 20.0


def register_run(sim_sub: argparse._SubParsersAction) -> None:
    p = sim_sub.add_parser(
        "run", help="closed-loop simulation: meter -> pty -> device -> MQTT -> balancer -> chargers -> meter",
        description=__doc__.split("\n\n", 1)[1].replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", metavar="SCENARIO.toml")
    p.add_argument("--report", metavar="OUT.json", help="write the report here (default: stdout)")
    p.add_argument("--plot", metavar="OUT.png",
                   help="line currents against the fuse, and the charger currents")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fast", action="store_true",
                      help="the in-process loop (no pty, no MQTT): a day in seconds")
    mode.add_argument("--speed", type=positive, default=DEFAULT_SPEED, metavar="N",
                      help=f"clock speed of the pipeline, N times real time (default {DEFAULT_SPEED:g})")
    p.add_argument("--broker", metavar="URL",
                   help="an external broker for the pipeline (default: embedded amqtt)")
    p.add_argument("--protocol", metavar="|".join(PROTOCOLS),
                   help="the pipeline's chargers all speak this protocol (default: each [[charger]]'s own)")
    p.add_argument("--duration", type=positive, metavar="S", help="simulate S seconds instead of duration_s")
    p.add_argument("--no-compare", action="store_true", help="skip the fixed-current comparison run")
    p.set_defaults(func=run)


# What matplotlib's savefig writes; checked before a run, not after it.
PLOT_FORMATS = ("avif", "eps", "gif", "jpeg", "jpg", "pdf", "pgf", "png", "ps", "raw", "rgba", "svg", "svgz",
                "tif", "tiff", "webp")


def _check_files(args: argparse.Namespace) -> str | None:
    """What is wrong with the scenario or the output paths, found before the run (which may be long)."""
    scenario = Path(args.scenario)
    if scenario.is_dir():
        return f"{scenario} is a directory, not a scenario file (SCENARIO.toml)"
    if scenario.is_file():
        try:
            scenario.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"{scenario} is not UTF-8 text (byte {exc.start}): not a scenario file"
        except OSError as exc:
            return f"cannot read {scenario}: {exc.strerror or exc}"
    for option, value in (("--report", args.report), ("--plot", args.plot)):
        if not value:
            continue
        path = Path(value)
        if path.is_dir():
            return f"{option} {value} is a directory; name a file"
        if not path.parent.is_dir():
            return f"{option} {value}: no such directory {path.parent}"
    if args.plot:
        suffix = Path(args.plot).suffix.lower().lstrip(".")
        if suffix not in PLOT_FORMATS:
            return f"--plot {args.plot}: {suffix or 'no'} suffix; use one of .{', .'.join(PLOT_FORMATS)}"
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            return "--plot needs matplotlib (pip install -e '.[plot]')"
    if args.protocol is not None:
        if args.protocol not in PROTOCOLS:
            return f"--protocol {args.protocol}: not a charger protocol; use one of {', '.join(PROTOCOLS)}"
        if args.fast:
            return "--protocol is for the pipeline; --fast sets chargers directly, with no protocol"
    return None


def run(args: argparse.Namespace) -> int:
    problem = _check_files(args)
    if problem:
        return _fail(problem)
    from sim.closed_loop import ScenarioError, Trace, compare, fixed_ratio, load_scenario, plot
    from sim.closed_loop import run as run_fast

    try:
        sc = load_scenario(args.scenario)
    except ScenarioError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot read {args.scenario}: {exc.strerror or exc}")
    if args.duration:
        sc = replace(sc, duration_s=args.duration, evs=tuple(
            e if e.depart_s <= args.duration else replace(e, depart_s=args.duration) for e in sc.evs))
    if args.protocol is not None:
        from sim.pipeline import with_protocol

        sc = with_protocol(sc, args.protocol)
    if args.broker:
        from apm.io.mqtt.link import BrokerAddress, LinkError

        try:
            BrokerAddress.parse(args.broker)
        except LinkError as exc:
            return _fail(str(exc))
    trace = Trace() if args.plot else None
    if args.fast:
        report = run_fast(sc, trace=trace) if args.no_compare else compare(sc, trace=trace)
    else:
        from sim.pipeline import PipelineError, run_pipeline

        try:
            report = asyncio.run(run_pipeline(sc, speed=args.speed, broker_url=args.broker, trace=trace))
        except PipelineError as exc:
            return _fail(str(exc))
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        if not args.no_compare:
            fixed = run_fast(sc, fixed=True)
            fixed["ratio"] = fixed_ratio(fixed, report)
            report[f"fixed_{sc.fixed_current_a:g}a"] = fixed
    _write(report, args.report)
    if args.plot and trace is not None:
        plot(sc, trace, args.plot)
    print(_headline(report, sc.start), file=sys.stderr)
    return 0


def _write(report: dict[str, Any], path: str | None) -> None:
    text = json.dumps(report, indent=2)
    if path:
        Path(path).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)


def _headline(r: dict[str, Any], start: datetime) -> str:
    """The summary line: energy against the fair oracle that knows every line current (the max one
    beside it), trips, the worst second and the seconds above In, setpoint changes."""
    how = "in-process loop" if "pipeline" not in r else f"pipeline at {r['pipeline']['speed']:g}x"
    ratio, most = r.get("ratio"), r.get("oracle_max_ratio")
    share = "" if ratio is None else f" ({ratio * 100:.1f} % of the fair oracle that knows every line"
    if share and most is not None:
        share += f", {most * 100:.1f} % of the max-energy one"
    peak = r.get("peak")
    worst = "" if peak is None else (
        f", peak {peak['x_in']:.2f} In on {peak['line']} at "
        f"{(start + timedelta(seconds=peak['at_s'])).strftime('%H:%M:%S')}, "
        f"{r['seconds_above_in_total']:g} s above In")
    lagged = ""
    p = r.get("pipeline")
    if p is not None and not p.get("faithful", True):
        lagged = (f"; LAGGED: the world fell up to {p['max_lag_sim_s']:g} simulated s behind the clock "
                  f"({p['late_steps']} late steps): a slower --speed gives the faithful day")
    return (f"{PROG}: {r['scenario']} ({how}): {r['energy_total_kwh']:.2f} kWh to the EVs"
            + (share + ")" if share else "") + f", {r['trips']} trip(s){worst}"
            + f", {r['setpoint_changes']} setpoint changes, {r['runtime_s']:.1f} s" + lagged)


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2
