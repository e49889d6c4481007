"""Closed-loop simulation in one process, on a simulated clock (one step per simulated second).

    household + chargers -> grid lines -> fuse judge
                         -> meter (sim.meter: the vendor's frames on its schedule) -> han.HanReader
                         -> apm.core.controller.Controller (MeterState -> Headroom -> Balancer)
                         -> charger setpoints -> EVs -> back into the lines

Everything is sans-IO and driven by ``now``; no threads, no sleeping, so a winter day (86,400 steps)
runs in seconds. The pipeline (sim/pipeline.py) drives the same Controller through the device's pty
and MQTT edges instead of direct calls.

Scenario (TOML). Keys marked * are required; the rest have defaults:

    duration_s = 86400 *
    start = "2025-01-15T00:00:00+01:00"     # the meter clock at t = 0 (local midnight: the household's day)
    fixed_current_a = 32                    # the comparison run's current; the balancer's fallback is
                                            # the device's: at most fuse - margin (`Scenario.fallback_a`)
    [grid]  network = "IT" | "TN" *, fuse_a *, safety_margin_a = 2, curve = "C" | "B" | "gG",
            model = "magnitude" | "phasor" (default: phasor on IT, magnitude on TN; see sim/grid.py), phases = 3, sequence = "L1-L2-L3" | "L1-L3-L2",
            unbalance = [0.0, -0.004, 0.005] (phasor model: relative deviation of each star voltage)
    [meter] vendor = "aidon" | "kaifa" | "kamstrup", kind = "3p-it" | "3p-tn" | "1p" (as han.profiles),
            outages = [[start_s, end_s], ...], repeat_hourly = false, skew_s = 0 (powers measured that
            long before the currents)
    [household] model = "winter" | trace = "file.csv" (relative to the scenario; its columns and how it
            becomes loads: sim.household.TraceHome), seed = 1, pf (a trace's power factor where it
            has no pf column: 0.5..1, default 0.95; trace only),
            outdoor_c = -8, heaters = 6, scale = 1.0 (every load's power, a trace's currents),
            reactive = true (false: every load PF 1),
            thermostat_step_s = 1 (10: heater switches land on the meter's list-2 instants),
            base_pf = 0.9 (the standby and ventilation base load's), offset_s = 0 (the household's
            time of day at t = 0: 57600 starts the run at the household's 16:00)
    [[charger]] id *, max_a = 32, phases = 3, rotation = ["L1", "L2", "L3"]
    [[ev]]  charger *, phases = 1, max_a = 32, battery_kwh = 60, soc = 0.3, arrive_s = 0,
            depart_s = duration_s, id, target_soc = 1.0, response_s = 3, start_delay_s = 5,
            ramp_a_per_s = 3, efficiency = 0.9, taper_soc = 0.9
    [balancer] any apm.core.config.BalancerSettings field but fixed_current_a (the top-level one)
    [headroom] any apm.core.config.HeadroomSettings field (two_wattmeter defaults to off with the magnitude
            model on IT, which is not a physical world; a trace household gets the phasor model too)

The file is declared as msgspec Structs (`ScenarioFile` and the tables below it) with the bounds of
each key: the installation's keys are apm.core.config's own declarations (the grid's fuse and margin,
``ChargerConfig``, ``BalancerSettings``, ``HeadroomSettings``), so a scenario is refused for what
``apm flash write`` would refuse, and a `ScenarioError` names the key (``meter.outages[0]: ...``).

Report keys: ``trips`` (count) and ``trip_events``; per line ``max_ratio`` (I / In), ``seconds_above_in``
and ``band``; ``energy_kwh`` per EV, ``energy_total_kwh``, ``final_soc``; ``setpoint_changes``; ``stale_s``
(seconds on the fixed fallback); ``hourly_records`` and ``repeated_hourly_dropped``; ``readings`` per list;
``i2`` (IT without I2: how the headroom's estimate of the L2 line current compared with the true one
at each list: mean and largest excess, largest shortfall overall and per method, and how many lists
each bound was the tighter one); ``household_trace`` (a trace household: its ``rows`` and the
``clamped_rows`` whose IT line magnitudes no loads make, raised to ones that do: sim.household); and
three oracles. Each charges its own copies of the EVs every second at exactly the remaining
headroom, from the true household currents of that second (the grid model's, our chargers' current
added to them in phase), within charger and EV limits and the 6 A minimum, with no delays, no list
intervals and no rate limits. They differ in what they know and how they share:

- ``oracle_measured_energy_kwh`` (``oracle_measured_ratio``, and the headline ``ratio``): what the
  fuse allows, shared fairly. The remaining headroom is fuse - margin - household current per line,
  every line current known (also the L2 current an IT meter does not report), shared by max-min
  fairness (the balancer's own rule). The gap to it is what control and the unreported I2 cost.
- ``oracle_max_energy_kwh`` (beside it): knows every line and gives up fairness for power: the most
  power each second, of the fair share and every priority order (it favours 3-phase EVs on a shared
  line, since their ampere brings more power, and starves 1-phase ones).
- ``oracle_conservative_i2_energy_kwh``: a diagnostic, not a target. As the measured one, but on IT
  with a meter that does not report I2 (Aidon, Kamstrup) it takes the household's L2 current as the
  device's conservative bound, Kirchhoff refined by our own chargers: house L1 + house L3
  (`sim.oracle.rule_house`). Against it a device looks good exactly by being as cautious as that
  bound; the gap between it and the measured one is what the bound costs (none on TN or with Kaifa).

Each ``_ratio`` is the delivered energy over that oracle's. All are rules for each second, not
schedules over the day: when a battery fills, giving it the line first can deliver less in total
(the max oracle is below the fair one on the TN night alone). In the phasor world a line's current
is a phasor sum, smaller than the in-phase sum the oracles assume; a device that measures a line
can use that (house = I - own), so it may end slightly above them.

``compare`` adds the same day with ``fixed_current_a`` shared on each line and no meter (a fixed
installation: the comparison may use more than the device's own fallback, `Scenario.fallback_a`).

    python -m sim.closed_loop sim/scenarios/winter-it-40a.toml --report out.json --plot out.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from apm.core.balancer import Mode
from apm.core.capacity_guard import CapacityGuard
from apm.core.config import (
    MAX_CHARGERS,
    BalancerSettings,
    ChargerConfig,
    ConfigError,
    FixedAmps,
    FuseAmps,
    GridConfig,
    HeadroomSettings,
    MarginAmps,
    NetworkKey,
    check_balancer,
    check_balancer_table,
    check_charger_ids,
    convert,
)
from apm.core.controller import Controller
from apm.core.headroom import Headroom
from apm.core.lines import LINES, Network, Triple
from han import HanReader
from sim.charger import SimCharger
from sim.ev import EV
from sim.grid import DEFAULT_UNBALANCE
from sim.household import TraceHome
from sim.meter import scenario_meter
from sim.world import World


class ScenarioError(ValueError):
    """A scenario that does not load; ``path`` names the key (e.g. "grid.fuse_a"), "" for the file."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


# [[ev]] keys besides id, charger, arrive_s, depart_s: the EV's own parameters (sim.ev.EV)
EV_PARAMS = tuple(f.name for f in dataclasses.fields(EV) if not f.name.startswith("_")
                  and f.name not in ("id", "current_a", "energy_kwh"))


@dataclass(frozen=True, slots=True)
class EVSpec:
    id: str
    charger: str
    arrive_s: float = 0.0
    depart_s: float = math.inf
    params: tuple[tuple[str, Any], ...] = ()  # EV parameters given in the scenario

    def make(self) -> EV:
        return EV(self.id, **dict(self.params))


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    duration_s: float
    network: Network
    fuse_a: float
    safety_margin_a: float = 2.0
    curve: str = "C"
    grid_model: str = "magnitude"
    supply_phases: int = 3
    sequence: int = 1
    unbalance: tuple[float, float, float] = DEFAULT_UNBALANCE
    vendor: str = "aidon"
    outages: tuple[tuple[float, float], ...] = ()
    repeat_hourly: bool = False
    skew_s: float = 0.0
    household: dict[str, Any] = field(default_factory=dict)
    house_offset_s: float = 0.0  # the household's time of day at t = 0 (s after its midnight)
    chargers: tuple[ChargerConfig, ...] = ()
    evs: tuple[EVSpec, ...] = ()
    balancer: dict[str, Any] = field(default_factory=dict)
    headroom: dict[str, Any] = field(default_factory=dict)
    fixed_current_a: float = 32.0
    start: datetime = datetime.fromisoformat("2025-01-15T00:00:00+01:00")
    step_s: float = 1.0

    @property
    def limit_a(self) -> float:
        return self.fuse_a - self.safety_margin_a

    @property
    def fallback_a(self) -> float:
        """The balancer's fixed current: the scenario's ``fixed_current_a`` where the device would accept
        it, else fuse - margin (a scenario may compare against an unsafe fixed installation on purpose:
        ``fixed_current_a`` is that comparison's current, the device never falls back to more)."""
        return min(self.fixed_current_a, self.limit_a)

    @property
    def balancer_settings(self) -> BalancerSettings:
        """The balancer's settings: ``balancer`` (the overrides) with the fixed current `fallback_a`."""
        return BalancerSettings.from_dict({**self.balancer, "fixed_current_a": self.fallback_a})

    @property
    def headroom_settings(self) -> HeadroomSettings:
        return HeadroomSettings.from_dict(self.headroom)


# --- loading ---------------------------------------------------------------------------------------
#
# The scenario file is declared as msgspec Structs: the installation's keys reuse apm.core.config's
# declarations (GridConfig's fields, ChargerConfig, BalancerSettings, HeadroomSettings, with their
# bounds and cross-field checks); the simulated world's keys have their own Structs below.

YEAR_S = 366 * 86400.0
Seconds = Annotated[float, Meta(ge=0.0, le=YEAR_S)]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
# A star voltage's relative deviation in the phasor model: +-10 % is beyond any supply standard.
Unbalance = Annotated[float, Meta(ge=-0.1, le=0.1)]
_SEQUENCES = {"L1-L2-L3": 1, "L1-L3-L2": -1}


class ScenarioGrid(Struct, frozen=True, forbid_unknown_fields=True):
    """``[grid]``: the device's GridConfig keys (ct_ratio aside) and the simulated grid's."""

    network: NetworkKey
    fuse_a: FuseAmps
    safety_margin_a: MarginAmps = 2.0
    curve: Literal["C", "B", "gG"] = "C"  # sim.fuse.CURVES
    model: Literal["magnitude", "phasor"] | None = None  # None: phasor on IT, magnitude on TN
    phases: Literal[1, 3] | None = None  # None: 1 with a 1p meter, else 3
    sequence: Literal["L1-L2-L3", "L1-L3-L2"] = "L1-L2-L3"
    unbalance: tuple[Unbalance, Unbalance, Unbalance] = DEFAULT_UNBALANCE

    def __post_init__(self) -> None:
        self.config  # noqa: B018 (GridConfig's own checks: the margin must leave some of the fuse)

    @property
    def config(self) -> GridConfig:
        return GridConfig(network=self.network, fuse_a=self.fuse_a, safety_margin_a=self.safety_margin_a)


class ScenarioMeter(Struct, frozen=True, forbid_unknown_fields=True):
    vendor: Literal["aidon", "kaifa", "kamstrup"] = "aidon"  # han.profiles.SUPPORTED_METERS
    kind: Literal["1p", "3p-tn", "3p-it"] | None = None  # None: the network's 3-phase kind
    outages: tuple[tuple[Seconds, Seconds], ...] = ()  # [start_s, end_s] without lists
    repeat_hourly: bool = False
    skew_s: Annotated[float, Meta(ge=0.0, le=60.0)] = 0.0  # powers measured that long before the currents

    def __post_init__(self) -> None:
        for i, (start, end) in enumerate(self.outages):
            if end <= start:
                raise ConfigError(f"outages[{i}]", f"ends ({end:g} s) before it starts ({start:g} s)")
            if i == 0:
                continue
            p_start, p_end = self.outages[i - 1]
            if start < p_start:
                raise ConfigError(f"outages[{i}]", f"starts ({start:g} s) before outages[{i - 1}] "
                                                   f"({p_start:g} s): list them in order")
            if start < p_end:
                raise ConfigError(f"outages[{i}]", f"overlaps outages[{i - 1}] (which ends at {p_end:g} s)")


class ScenarioHousehold(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """``[household]``: sim.household.make_household's options (its defaults)."""

    model: Literal["winter", "norwegian-winter"] | None = None
    trace: Annotated[str, Meta(min_length=1)] | None = None  # a CSV, relative to the scenario
    seed: Annotated[int, Meta(ge=0, le=2**31 - 1)] = 1
    pf: Annotated[float, Meta(ge=0.5, le=1.0)] | None = None  # a trace's (None: sim.household.DEFAULT_TRACE_PF)
    outdoor_c: Annotated[float, Meta(ge=-50.0, le=40.0)] = -8.0
    heaters: Annotated[int, Meta(ge=0, le=50)] = 6
    scale: Annotated[float, Meta(ge=0.0, le=20.0)] = 1.0
    reactive: bool = True
    thermostat_step_s: Annotated[float, Meta(ge=0.1, le=3600.0)] = 1.0
    base_pf: Annotated[float, Meta(ge=0.5, le=1.0)] = 0.9
    offset_s: Annotated[float, Meta(ge=0.0, lt=86400.0)] = 0.0  # the household's time of day at t = 0

    def __post_init__(self) -> None:
        if self.pf is not None and self.trace is None:
            raise ConfigError("pf", "is a trace's power factor (the synthetic home's appliances have "
                                    "their own, and base_pf)")


class ScenarioEV(Struct, frozen=True, forbid_unknown_fields=True):
    """``[[ev]]``: when it is on which charger, and the EV's own parameters (sim.ev.EV: unset ones
    keep EV's defaults)."""

    charger: str
    id: str | None = None
    arrive_s: Annotated[float, Meta(ge=0.0, lt=YEAR_S)] = 0.0
    depart_s: Annotated[float, Meta(gt=0.0, le=YEAR_S)] | None = None  # None: the end of the scenario
    phases: Literal[1, 3] | UnsetType = UNSET
    max_a: Annotated[float, Meta(ge=6.0, le=80.0)] | UnsetType = UNSET
    battery_kwh: Annotated[float, Meta(ge=1.0, le=500.0)] | UnsetType = UNSET
    soc: Fraction | UnsetType = UNSET
    target_soc: Fraction | UnsetType = UNSET
    efficiency: Annotated[float, Meta(ge=0.1, le=1.0)] | UnsetType = UNSET
    response_s: Annotated[float, Meta(ge=0.0, le=600.0)] | UnsetType = UNSET
    start_delay_s: Annotated[float, Meta(ge=0.0, le=600.0)] | UnsetType = UNSET
    ramp_a_per_s: Annotated[float, Meta(ge=0.01, le=100.0)] | UnsetType = UNSET
    taper_soc: Fraction | UnsetType = UNSET
    min_a: Annotated[float, Meta(ge=1.0, le=32.0)] | UnsetType = UNSET

    def params(self) -> tuple[tuple[str, Any], ...]:
        return tuple(sorted((k, getattr(self, k)) for k in EV_PARAMS if getattr(self, k) is not UNSET))


class ScenarioFile(Struct, frozen=True, forbid_unknown_fields=True):
    """A scenario file as written; `scenario_from_dict` makes the `Scenario` the loop runs."""

    duration_s: Annotated[float, Meta(ge=1.0, le=YEAR_S)]
    grid: ScenarioGrid
    start: datetime = datetime.fromisoformat("2025-01-15T00:00:00+01:00")
    fixed_current_a: FixedAmps = 32.0
    step_s: Annotated[float, Meta(ge=0.01, le=60.0)] = 1.0
    name: str | None = None
    meter: ScenarioMeter = msgspec.field(default_factory=ScenarioMeter)
    household: ScenarioHousehold = msgspec.field(default_factory=ScenarioHousehold)
    charger: Annotated[tuple[ChargerConfig, ...], Meta(max_length=MAX_CHARGERS)] = ()
    ev: tuple[ScenarioEV, ...] = ()
    balancer: BalancerSettings = msgspec.field(default_factory=BalancerSettings)
    headroom: HeadroomSettings = msgspec.field(default_factory=HeadroomSettings)

    def __post_init__(self) -> None:
        check_charger_ids(self.charger, "charger")
        check_balancer(self.balancer, self.grid.config, self.charger, "charger")
        self._check_meter()
        self._check_evs()

    @property
    def kind(self) -> str:
        return self.meter.kind or f"3p-{self.grid.network.lower()}"

    @property
    def model(self) -> str:
        if self.grid.model is not None:
            return self.grid.model
        return "phasor" if self.grid.network == "IT" else "magnitude"

    def _check_meter(self) -> None:
        if self.kind != "1p" and self.kind != f"3p-{self.grid.network.lower()}":
            raise ConfigError("meter.kind", f"a {self.kind} meter on an {self.grid.network} network")
        for i, (_, end) in enumerate(self.meter.outages):
            if end > self.duration_s:
                raise ConfigError(f"meter.outages[{i}]", f"ends ({end:g} s) after the scenario "
                                                        f"(duration_s = {self.duration_s:g})")

    def _check_evs(self) -> None:
        ids = {c.id for c in self.charger}
        seen: list[EVSpec] = []
        for i, e in enumerate(self.ev):
            if e.charger not in ids:
                raise ConfigError(f"ev[{i}].charger", f"{e.charger!r} is not a charger id")
            spec = self.ev_spec(i)
            if spec.depart_s <= spec.arrive_s:
                raise ConfigError(f"ev[{i}].depart_s", f"{spec.depart_s:g} s is not after arrive_s")
            try:
                spec.make()
            except ValueError as exc:  # EV's own checks, between its parameters
                raise ConfigError(f"ev[{i}]", str(exc)) from None
            for other in seen:
                if other.charger == spec.charger and other.arrive_s < spec.depart_s and spec.arrive_s < other.depart_s:
                    raise ConfigError(f"ev[{i}]", f"overlaps {other.id} on charger {spec.charger}")
            seen.append(spec)

    def ev_spec(self, i: int) -> EVSpec:
        e = self.ev[i]
        depart = self.duration_s if e.depart_s is None else e.depart_s
        return EVSpec(e.id or f"{e.charger}-ev{i + 1}", e.charger, e.arrive_s, depart, e.params())


def read_toml(path: Path) -> dict[str, Any]:
    """A scenario file's tables, or a ScenarioError that names the file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    return scenario_from_dict(read_toml(path), name=path.stem, base=path.parent)


def scenario_from_dict(data: dict[str, Any], name: str = "scenario", base: Path | None = None) -> Scenario:
    """The `Scenario` of a scenario file's tables; a `ScenarioError` names the key (``grid.fuse_a: ...``)."""
    try:
        check_balancer_table(data)
        f = convert(data, ScenarioFile)
    except ConfigError as exc:
        raise ScenarioError(str(exc), exc.path) from None
    house = msgspec.to_builtins(f.household)
    house_offset_s = float(house.pop("offset_s", 0.0))
    if "trace" in house and base is not None:
        house["trace"] = str((base / house["trace"]).resolve())
    headroom = msgspec.to_builtins(f.headroom)
    if f.grid.network == "IT" and f.model == "magnitude":
        # the magnitude model's P and I1, I3 do not fit the two-wattmeter bound
        headroom.setdefault("two_wattmeter", False)
    g = f.grid
    return Scenario(
        name=f.name or name, duration_s=f.duration_s, network=g.network, fuse_a=g.fuse_a,
        safety_margin_a=g.safety_margin_a, curve=g.curve, grid_model=f.model,
        supply_phases=g.phases or (1 if f.kind == "1p" else 3), sequence=_SEQUENCES[g.sequence],
        unbalance=g.unbalance, vendor=f.meter.vendor, outages=f.meter.outages,
        repeat_hourly=f.meter.repeat_hourly, skew_s=f.meter.skew_s, household=house,
        house_offset_s=house_offset_s, chargers=f.charger,
        evs=tuple(f.ev_spec(i) for i in range(len(f.ev))), balancer=msgspec.to_builtins(f.balancer),
        headroom=headroom, fixed_current_a=f.fixed_current_a, start=f.start, step_s=f.step_s,
    )


# --- the loop --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _I2Stats:
    """The headroom's L2 estimate (IT without I2) against the true L2 current at each per-phase list."""

    n: int = 0
    over_sum: float = 0.0
    over_max: float = 0.0
    under_max: float = 0.0
    methods: dict[str, int] = field(default_factory=dict)
    shortfall: dict[str, float] = field(default_factory=dict)  # largest, per method

    def add(self, estimate: float, true: float, method: str | None) -> None:
        self.n += 1
        d = estimate - true
        self.over_sum += d
        self.over_max = max(self.over_max, d)
        self.under_max = max(self.under_max, -d)
        m = method or "?"
        self.methods[m] = self.methods.get(m, 0) + 1
        self.shortfall[m] = max(self.shortfall.get(m, 0.0), -d)

    def report(self) -> dict[str, Any]:
        return {"lists": self.n, "mean_excess_a": round(self.over_sum / self.n, 3),
                "max_excess_a": round(self.over_max, 3), "max_shortfall_a": round(self.under_max, 3),
                "method": dict(sorted(self.methods.items())),
                "max_shortfall_by_method_a": {k: round(v, 3) for k, v in sorted(self.shortfall.items())}}



@dataclass(slots=True)
class Trace:
    """Per-step record for plots (only when asked for)."""

    t: list[float] = field(default_factory=list)
    lines: list[Triple] = field(default_factory=list)
    house: list[Triple] = field(default_factory=list)  # the household alone
    chargers: dict[str, list[float]] = field(default_factory=dict)
    setpoints: dict[str, list[float]] = field(default_factory=dict)


class LoopPolicy(Protocol):
    """What the device decides besides the balancer itself: the subscription gate and eco caps.

    ``decide`` is asked every step before the balancer runs; ``observe`` is told what each
    charger drew (terminal amps) over the step, e.g. to price the energy. ``report`` adds keys.
    """

    def decide(self, now: float, headroom: Headroom | None) -> tuple[str, dict[str, float] | None]: ...

    def observe(self, now: float, dt: float, chargers: Sequence[SimCharger]) -> None: ...

    def report(self) -> dict[str, Any]: ...


def run(sc: Scenario, *, fixed: bool = False, trace: Trace | None = None,
        policy: LoopPolicy | None = None, guard: CapacityGuard | None = None) -> dict[str, Any]:
    """Simulate ``sc``; ``fixed``: the comparison without a meter, all chargers sharing
    ``fixed_current_a`` per line. ``policy`` gates the mode and caps chargers (subscription,
    Smart eco). ``guard``: the device's capacity-charge guard, owned by the Controller as on the device
    (it sees the meter's clock: ``sc.start`` + now). Returns the report dict.

    The product decides: the scenario's meter (`sim.meter`, the vendor's frames on its schedule)
    is decoded by `han.HanReader`, and `apm.core.controller.Controller` does the rest, as on the device."""
    t0 = time.perf_counter()
    world = World(sc, trace=trace, oracles=not fixed, history_s=_history_steps(sc))
    chargers = world.charger_list
    by_id = world.chargers
    controller = loop_controller(sc, fixed=fixed)
    controller.set_capacity(guard)
    loop = None if fixed else _MeterLoop(sc, world, controller)
    mode: Mode = "fixed" if fixed else "protect"
    dt = sc.step_s
    steps = int(round(sc.duration_s / dt))
    for k in range(steps + 1):
        now = k * dt
        world.step(k)
        controller.on_charger_states(now, [c.state(now) for c in chargers])
        if loop is not None:
            loop.step(now)
        step_mode, allowed = (mode, None) if policy is None else policy.decide(now, controller.headroom)
        now_dt = sc.start + timedelta(seconds=now) if guard is not None else None
        decision = controller.decide(now, now_dt, mode=step_mode, allowed_a=allowed)  # type: ignore[arg-type]
        if policy is not None:
            policy.observe(now, dt, chargers)
        for sp in decision.setpoints:
            by_id[sp.charger].set_setpoint(now, sp.current_a)
        world.record()
    return _report(sc, fixed, world, controller, loop, policy, time.perf_counter() - t0)


def loop_controller(sc: Scenario, *, fixed: bool = False) -> Controller:
    """The device's `Controller` for the scenario's installation (what `sim.pipeline.device_config`
    gives the device: it falls back to at most fuse - margin). ``fixed``: the comparison without a meter,
    which shares the scenario's ``fixed_current_a`` as it is (the winter TN day compares with 32 A)."""
    grid = GridConfig(network=sc.network, fuse_a=sc.fuse_a, safety_margin_a=sc.safety_margin_a)
    settings = sc.balancer_settings
    if fixed:
        settings = msgspec.structs.replace(settings, fixed_current_a=sc.fixed_current_a)
    return Controller(grid, sc.chargers, settings=settings, headroom=sc.headroom_settings)


def _history_steps(sc: Scenario) -> int:
    """Steps of line currents the world keeps: the meter samples every whole second it has not yet
    sampled when it next pushes (at most a list interval and a skew back)."""
    return int(math.ceil(_METER_LOOKBACK_S / sc.step_s)) + 2


_METER_LOOKBACK_S = 64.0


class _MeterLoop:
    """The scenario's meter in the in-process loop: frames between two steps, decoded, to the controller."""

    def __init__(self, sc: Scenario, world: World, controller: Controller) -> None:
        self.meter = scenario_meter(sc, world)
        self.reader = HanReader()
        self.controller = controller
        self.world = world
        self.i2 = _I2Stats()
        self.cursor = 0.0

    def step(self, now: float) -> None:
        # the meter samples each second as the world reaches it, so its history is the world's
        self.meter.sample(math.floor(now))
        pushes = self.meter.pushes_between(self.cursor, now + 1e-6)
        self.cursor = now + 1e-6
        per_phase = False
        for push in pushes:
            for r in self.reader.feed(push.frame):
                # stamped when the meter measured, as the device stamps it (arrival less line time)
                self.controller.on_reading(push.t, r)
                per_phase |= r.list != 1
        h = self.controller.headroom
        if per_phase and h is not None and h.i2_a is not None:
            g = self.world.state
            assert g is not None
            self.i2.add(h.i2_a, g.lines[1], h.i2_method)


def _report(sc: Scenario, fixed: bool, world: World, controller: Controller, loop: _MeterLoop | None,
            policy: LoopPolicy | None, runtime_s: float) -> dict[str, Any]:
    report: dict[str, Any] = {"scenario": sc.name, "mode": "fixed" if fixed else "protect",
                              "network": sc.network, "fuse_a": sc.fuse_a, "duration_s": sc.duration_s}
    report.update(world.fuse_report())
    evs = world.evs
    report["energy_kwh"] = {e: round(ev.energy_kwh, 3) for e, ev in evs.items()}
    report["energy_total_kwh"] = round(sum(ev.energy_kwh for ev in evs.values()), 3)
    report["final_soc"] = {e: round(ev.soc, 4) for e, ev in evs.items()}
    status = controller.status()
    report["setpoint_changes"] = status.setpoint_changes
    if world.oracles is not None:
        report.update(world.oracles.report(report["energy_total_kwh"]))
        report["stale_s"] = status.stale_s
        report["hourly_records"] = status.hourly_records
        report["repeated_hourly_dropped"] = status.repeated_hourly_dropped
        report["readings"] = {f"list{k}": v for k, v in status.counts.items()}
        if loop is not None and loop.i2.n:
            report["i2"] = loop.i2.report()
    if isinstance(world.household, TraceHome):  # rows whose magnitudes no loads make (IT), clamped up
        report["household_trace"] = {"rows": world.household.rows, "clamped_rows": world.household.clamped}
    if policy is not None:
        report.update(policy.report())
    report["runtime_s"] = round(runtime_s, 2)
    return report


def compare(sc: Scenario, trace: Trace | None = None) -> dict[str, Any]:
    """The balanced run's report with the fixed-current comparison under ``fixed_<A>a``."""
    report = run(sc, trace=trace)
    fixed = run(sc, fixed=True)
    fixed["ratio"] = fixed_ratio(fixed, report)
    report[f"fixed_{sc.fixed_current_a:g}a"] = fixed
    return report


def fixed_ratio(fixed: dict[str, Any], report: dict[str, Any]) -> float | None:
    """The fixed-current day's energy over the balanced run's headline oracle (``oracle_measured``)."""
    e = report.get("oracle_measured_energy_kwh")
    return round(fixed["energy_total_kwh"] / e, 4) if e else None


PLOT_ZOOM_S = 900.0  # each side of the worst second in the zoomed panel


def worst_second(sc: Scenario, trace: Trace) -> tuple[int, int] | None:
    """(index into the trace, line) of the largest line current / In; None for an empty trace."""
    if not trace.lines:
        return None
    k = max(range(len(trace.lines)), key=lambda j: max(trace.lines[j]))
    return k, max(range(3), key=lambda i: trace.lines[k][i])


def plot(sc: Scenario, trace: Trace, out: str | Path) -> None:
    """Per line the total current and the household's alone against the fuse; the chargers; and the
    worst second (largest line current / In) marked on every panel and zoomed in the last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [t / 3600.0 for t in trace.t]
    fig = plt.figure(figsize=(14, 14))
    axes = [fig.add_subplot(5, 1, 1)]
    axes += [fig.add_subplot(5, 1, i, sharex=axes[0]) for i in range(2, 5)]
    worst = worst_second(sc, trace)
    for i, name in enumerate(LINES):
        ax = axes[i]
        ax.plot(hours, [x[i] for x in trace.lines], lw=0.6, label=f"{name} total")
        if trace.house:
            ax.plot(hours, [x[i] for x in trace.house], lw=0.6, color="green", alpha=0.8,
                    label=f"{name} household alone")
        _fuse_lines(ax, sc)
        ax.set_ylabel("A")
        ax.legend(loc="upper left", fontsize=7)
    ax = axes[3]
    for cid, xs in trace.chargers.items():
        ax.plot(hours, xs, lw=0.7, label=f"{cid} draw")
        ax.plot(hours, trace.setpoints[cid], lw=0.5, ls=":", label=f"{cid} setpoint")
    ax.set_ylabel("A")
    ax.set_xlabel("hour")
    ax.legend(loc="upper left", fontsize=7)
    title = f"{sc.name}: {sc.network} {sc.fuse_a:g} A"
    if worst is not None:
        k, line = worst
        x_in = trace.lines[k][line] / sc.fuse_a
        for a in axes[:4]:
            a.axvline(hours[k], color="purple", lw=0.8, ls="--")
        axes[line].plot([hours[k]], [trace.lines[k][line]], "o", color="purple", ms=5,
                        label=f"worst second: {x_in:.2f} In")
        axes[line].legend(loc="upper left", fontsize=7)
        _zoom(fig.add_subplot(5, 1, 5), sc, trace, k, line)
        title += f"; worst second {x_in:.2f} In on {LINES[line]} at {hours[k]:.3f} h"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _fuse_lines(ax: Any, sc: Scenario) -> None:
    ax.axhline(sc.fuse_a, color="red", lw=1, label=f"fuse {sc.fuse_a:g} A")
    ax.axhline(sc.limit_a, color="orange", lw=0.8, ls="--", label=f"limit {sc.limit_a:g} A")


def _zoom(ax: Any, sc: Scenario, trace: Trace, k: int, line: int) -> None:
    """The worst second's line, PLOT_ZOOM_S either side, in minutes from it."""
    t0 = trace.t[k]
    js = [j for j, t in enumerate(trace.t) if abs(t - t0) <= PLOT_ZOOM_S]
    minutes = [(trace.t[j] - t0) / 60.0 for j in js]
    name = LINES[line]
    ax.plot(minutes, [trace.lines[j][line] for j in js], lw=0.9, label=f"{name} total")
    if trace.house:
        ax.plot(minutes, [trace.house[j][line] for j in js], lw=0.9, color="green",
                label=f"{name} household alone")
    for cid, xs in trace.chargers.items():
        ax.plot(minutes, [xs[j] for j in js], lw=0.6, ls=":", label=f"{cid} draw")
    _fuse_lines(ax, sc)
    ax.plot([0.0], [trace.lines[k][line]], "o", color="purple", ms=5)
    ax.set_xlabel(f"minutes from the worst second (t = {t0:g} s)")
    ax.set_ylabel("A")
    ax.set_title(f"zoom: {name} around its worst second, {trace.lines[k][line] / sc.fuse_a:.2f} In", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.closed_loop", description="closed-loop APM simulation")
    ap.add_argument("scenario")
    ap.add_argument("--report", help="write the report JSON here")
    ap.add_argument("--plot", help="write a PNG of line currents and charger currents here")
    ap.add_argument("--no-compare", action="store_true", help="skip the fixed-current comparison run")
    args = ap.parse_args(argv)
    try:
        sc = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    trace = Trace() if args.plot else None
    report = run(sc, trace=trace) if args.no_compare else compare(sc, trace=trace)
    text = json.dumps(report, indent=2)
    if args.report:
        Path(args.report).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    if args.plot and trace is not None:
        plot(sc, trace, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
