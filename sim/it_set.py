"""The acceptance set of issue 15: generated households on IT and TN, and a table of how the device does.

A case is a network, a meter, a seed and a meter skew. The seed draws an evening (16:00-24:00, eight
hours: the household's peak and the EVs' arrival; shorter than a day so that the set runs in minutes)
of a synthetic home and two or three chargers:

- the household (`sim.household.SyntheticHome`): 4-10 panel heaters, outdoor -20..0 C, the base load's
  power factor 0.7-1.0 (the appliances keep theirs, 0.7-1.0), scaled so that the household alone
  peaks at 0.6-0.9 In on its worst line (measured on the same grid model, chargers off);
- the grid: both phase sequences; IT in the phasor model (the default with a synthetic home);
- two or three chargers (32 A, 3-phase wiring) with random rotations, one EV each: 1-phase or
  3-phase, 16 or 32 A, 40-100 kWh at 10-50 %, arriving 16:00-19:30 and staying.

Networks (`NETWORKS`): IT 40 A and 63 A with an Aidon (no I2) or a Kaifa, TN 25 A with a Kamstrup or
an Aidon. The targets are the issue's: delivered energy >= 0.90 of ``oracle_measured_energy_kwh``
(the fair oracle that knows every line current) on Aidon IT, >= 0.97 elsewhere, zero trips; with
``skew_s`` 1 and 2 (powers measured that long before the currents) >= 0.95 of the same case's energy
without skew and at most 1.5x its setpoint changes.

    python -m sim.it_set --table                        # every network, seeds 1-10, skews 0, 1, 2
    python -m sim.it_set --table --network it40-aidon --seeds 1-3 --skew 0
    python -m sim.it_set --write out/it-set --seeds 1-10   # the scenarios as TOML for `apm sim run`
    python -m sim.it_set --table --jobs 2 --json out/it-set.json

Each case runs the in-process closed loop (sim/closed_loop.py, no fixed-current comparison).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from sim.closed_loop import Scenario, run, scenario_from_dict
from sim.grid import DEFAULT_UNBALANCE, Grid
from sim.household import make_household

EVENING_START_S = 16 * 3600.0
EVENING_S = 8 * 3600.0
HOUSE_PEAK_RANGE = (0.6, 0.9)  # the household alone, x In on its worst line


@dataclass(frozen=True, slots=True)
class Network:
    network: str
    fuse_a: float
    vendor: str
    target: float  # the least energy / oracle_measured the issue asks for


NETWORKS: dict[str, Network] = {
    "it40-aidon": Network("IT", 40.0, "aidon", 0.90),
    "it40-kaifa": Network("IT", 40.0, "kaifa", 0.97),
    "it63-aidon": Network("IT", 63.0, "aidon", 0.90),
    "it63-kaifa": Network("IT", 63.0, "kaifa", 0.97),
    "tn25-kamstrup": Network("TN", 25.0, "kamstrup", 0.97),
    "tn25-aidon": Network("TN", 25.0, "aidon", 0.97),
}
SKEW_ENERGY = 0.95  # energy with skew >= this x the same case without
SKEW_CHANGES = 1.5  # setpoint changes with skew <= this x the same case's without
SKEWS = (0.0, 1.0, 2.0)


@dataclass(frozen=True, slots=True)
class Case:
    network: str  # a key of NETWORKS
    seed: int
    skew_s: float = 0.0

    @property
    def name(self) -> str:
        skew = f"-skew{self.skew_s:g}" if self.skew_s else ""
        return f"{self.network}-s{self.seed}{skew}"


def household_peak(network: str, house: dict[str, Any], model: str, sequence: int,
                   offset_s: float = EVENING_START_S, duration_s: float = EVENING_S) -> float:
    """The household alone: its largest line current (A) over the run, on the scenario's grid model."""
    opts = dict(house)
    h = make_household(network, model=opts.pop("model", None), trace=opts.pop("trace", None),  # type: ignore[arg-type]
                       seed=int(opts.pop("seed", 1)), days=2, **opts)
    grid = Grid(network, 3, model, sequence=sequence, unbalance=DEFAULT_UNBALANCE)  # type: ignore[arg-type]
    peak = 0.0
    for k in range(int(duration_s) + 1):
        peak = max(peak, max(grid.measure(h.sample(offset_s + k), ()).house_lines))
    return peak


def case_dict(case: Case) -> dict[str, Any]:
    """The case's scenario file (the tables of a TOML scenario)."""
    net = NETWORKS[case.network]
    # one stream per (network, seed): the same seed draws the same household on both meters of a network
    rng = random.Random(f"{net.network}{net.fuse_a:g}-{case.seed}")
    sequence = rng.choice(("L1-L2-L3", "L1-L3-L2"))
    house: dict[str, Any] = {"model": "winter", "seed": rng.randrange(1, 2**31 - 1),
                             "heaters": rng.randint(4, 10), "outdoor_c": round(rng.uniform(-20.0, 0.0), 1),
                             "base_pf": round(rng.uniform(0.7, 1.0), 2), "offset_s": EVENING_START_S}
    house["scale"] = _house_scale(net, house, sequence, rng.uniform(*HOUSE_PEAK_RANGE))
    lines = ["L1", "L2", "L3"]
    chargers, evs = [], []
    for i in range(rng.choice((2, 3))):
        cid = "abc"[i]
        rotation = lines[:]
        rng.shuffle(rotation)
        chargers.append({"id": cid, "max_a": 32.0, "phases": 3, "rotation": rotation})
        phases = rng.choice((1, 3))
        evs.append({"id": f"ev-{cid}", "charger": cid, "phases": phases, "max_a": float(rng.choice((16, 32))),
                    "battery_kwh": float(rng.randint(40, 100)), "soc": round(rng.uniform(0.1, 0.5), 2),
                    "arrive_s": float(rng.randrange(0, int(3.5 * 3600), 60))})
    return {
        "name": case.name, "duration_s": EVENING_S, "start": "2025-01-15T16:00:00+01:00",
        "grid": {"network": net.network, "fuse_a": net.fuse_a, "safety_margin_a": 2.0, "curve": "C",
                 "sequence": sequence},
        "meter": {"vendor": net.vendor, "kind": f"3p-{net.network.lower()}", "skew_s": case.skew_s},
        "household": house, "charger": chargers, "ev": evs,
    }


def _house_scale(net: Network, house: dict[str, Any], sequence: str, target: float) -> float:
    """The household's ``scale`` for a peak of ``target`` x In, and never above the set's 0.9 In."""
    model = "phasor" if net.network == "IT" else "magnitude"
    seq = 1 if sequence == "L1-L2-L3" else -1
    scale = 1.0
    for _ in range(6):  # the peak is nearly proportional to the scale (the water heater's runs are not)
        peak = household_peak(net.network, {**house, "scale": scale}, model, seq)
        ratio = peak / net.fuse_a
        if ratio <= HOUSE_PEAK_RANGE[1] and abs(ratio - target) < 0.02:
            break
        scale = round(scale * target / ratio, 4)
    if peak / net.fuse_a > HOUSE_PEAK_RANGE[1]:
        raise AssertionError(f"{net}: household scale {scale} peaks at {peak / net.fuse_a:.3f} In")
    return scale


def scenario(case: Case) -> Scenario:
    return scenario_from_dict(case_dict(case), name=case.name)


def cases(networks: Iterable[str], seeds: Iterable[int], skews: Iterable[float] = SKEWS) -> list[Case]:
    return [Case(n, s, k) for n in networks for s in seeds for k in skews]


def peak(report: dict[str, Any]) -> tuple[float, str, float | None]:
    """(x In, line, at_s) of the run's largest line current."""
    line, ratio = max(report["max_ratio"].items(), key=lambda kv: kv[1])
    at = report.get("peak", {}).get("at_s")
    return ratio, line, at


def run_case(case: Case) -> dict[str, Any]:
    """One row of the table: the run's figures and the case's targets."""
    r = run(scenario(case))
    ratio, line, at = peak(r)
    return {"case": case.name, "network": case.network, "seed": case.seed, "skew_s": case.skew_s,
            "energy_kwh": r["energy_total_kwh"], "ratio": r["oracle_measured_ratio"],
            "max_ratio": r["oracle_max_ratio"], "conservative_ratio": r.get("oracle_conservative_i2_ratio",
                                                                             r.get("oracle_ratio")),
            "trips": r["trips"], "peak_in": ratio, "peak_line": line, "peak_at_s": at,
            "seconds_above_in": sum(r["seconds_above_in"].values()),
            "setpoint_changes": r["setpoint_changes"], "target": NETWORKS[case.network].target,
            "runtime_s": r["runtime_s"]}


def judge(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with their verdicts: ``ok`` (trips, ratio) and for skewed cases against the same case
    without skew: ``skew_energy`` and ``skew_changes`` ratios."""
    base = {(r["network"], r["seed"]): r for r in rows if not r["skew_s"]}
    out = []
    for r in rows:
        r = dict(r)
        fails = []
        if r["trips"]:
            fails.append("trips")
        if r["ratio"] is not None and r["ratio"] < r["target"]:
            fails.append(f"ratio<{r['target']:g}")
        b = base.get((r["network"], r["seed"]))
        if r["skew_s"] and b is not None:
            r["skew_energy"] = round(r["energy_kwh"] / b["energy_kwh"], 4) if b["energy_kwh"] else None
            r["skew_changes"] = round(r["setpoint_changes"] / max(1, b["setpoint_changes"]), 2)
            if r["skew_energy"] is not None and r["skew_energy"] < SKEW_ENERGY:
                fails.append(f"energy<{SKEW_ENERGY:g}x")
            if r["skew_changes"] > SKEW_CHANGES:
                fails.append(f"changes>{SKEW_CHANGES:g}x")
        r["fails"] = fails
        out.append(r)
    return out


def table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of judged rows."""
    head = ("| case | vs measured | vs max | trips | peak (x In, line, at) | s > In | setpoint changes "
            "| skew: energy, changes | verdict |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        at = "" if r["peak_at_s"] is None else f" {_clock(r['peak_at_s'])}"
        skew = "" if "skew_energy" not in r else f"{r['skew_energy']:.2f}, {r['skew_changes']:.2f}x"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        mx = "-" if r["max_ratio"] is None else f"{r['max_ratio']:.3f}"
        lines.append(f"| {r['case']} | {ratio} | {mx} | {r['trips']} | {r['peak_in']:.3f} {r['peak_line']}{at} "
                     f"| {r['seconds_above_in']:g} | {r['setpoint_changes']} | {skew} "
                     f"| {'ok' if not r['fails'] else ', '.join(r['fails'])} |")
    return "\n".join(lines)


def _clock(t: float) -> str:
    s = int(EVENING_START_S + t) % 86400
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def run_cases(cs: Sequence[Case], jobs: int = 1, progress: bool = False) -> list[dict[str, Any]]:
    """The cases' rows, in order; ``progress``: a line on stderr as each ends."""
    def done(row: dict[str, Any]) -> dict[str, Any]:
        if progress:
            print(f"{row['case']}: {row['ratio']} of measured, {row['trips']} trips, {row['runtime_s']} s",
                  file=sys.stderr, flush=True)
        return row

    if jobs <= 1:
        return [done(run_case(c)) for c in cs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs) as pool:
        return [done(r) for r in pool.map(run_case, cs)]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.it_set", description=__doc__.split("\n\n")[0])
    ap.add_argument("--network", action="append", choices=sorted(NETWORKS),
                    help="a network of the set (repeat; default: all)")
    ap.add_argument("--seeds", default="1-10", help="seeds, e.g. 1-10 or 1,4,7 (default 1-10)")
    ap.add_argument("--skew", action="append", type=float, help="meter skew_s (repeat; default 0, 1, 2)")
    ap.add_argument("--table", action="store_true", help="run the cases and print a Markdown table")
    ap.add_argument("--json", metavar="OUT.json", help="run the cases and write their rows here")
    ap.add_argument("--write", metavar="DIR", help="write the cases' scenarios as TOML files into DIR")
    ap.add_argument("--jobs", type=int, default=1, help="processes to run cases in (default 1)")
    args = ap.parse_args(argv)
    cs = cases(args.network or list(NETWORKS), _seeds(args.seeds), args.skew or SKEWS)
    if args.write:
        out = Path(args.write)
        out.mkdir(parents=True, exist_ok=True)
        for c in cs:
            (out / f"{c.name}.toml").write_text(tomli_w.dumps(case_dict(c)), encoding="utf-8")
        print(f"{len(cs)} scenarios in {out}", file=sys.stderr)
    if not (args.table or args.json):
        return 0
    t0 = time.perf_counter()
    rows = judge(run_cases(cs, args.jobs, progress=True))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    if args.table:
        print(table(rows))
    bad = sum(1 for r in rows if r["fails"])
    print(f"{len(rows)} cases, {bad} below target, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
