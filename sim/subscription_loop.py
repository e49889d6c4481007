"""The subscription lifecycle on the closed-loop simulation: the balancer follows the device's subscription.

`SubscriptionPolicy` is a `sim.closed_loop.LoopPolicy`: each step it evaluates the device's
subscription (``apm.core.subscription.evaluate``) at the calendar instant of the loop's ``now``
(``origin + now``; ``origin`` places a short loop window anywhere in a months-long lifecycle), with
the tokens and revocations the device had received by then (`DeviceInbox`), and gates the balancer
(``apm.core.subscription.gate``): a valid subscription and fresh HAN data -> "protect" (meter data, fuse
protection); anything else -> "fixed" (the chargers share the fixed current, the house ignored). It
records each change of state or mode and the time spent in each.

`run_lifecycle` drives a simulated cloud (``sim.cloud.Issuer``) over months: not yet subscribed,
subscribe, two monthly renewals, cancel (access until the next billing date), the billing date
passes, subscribe again, payment declined. For each phase it runs a short closed-loop window on a
scenario where the household plus a charger at the fixed current overloads a line
(``sim/scenarios/lifecycle.toml``) and gives one row: state, reason, mode, setpoints, max ratio, trips.

    python -m sim.subscription_loop [SCENARIO] [--report OUT.json]
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apm.core.balancer import BalancerSettings
from apm.core.config import DeviceConfig, GridConfig
from apm.core.headroom import Headroom
from apm.core.subscription import SubscriptionState, SubscriptionTracker, evaluate, gate
from apm.core.token import iso_z
from sim.charger import SimCharger
from sim.closed_loop import Scenario, ScenarioError, Trace, load_scenario, run
from sim.cloud import Installation, Issuer, add_months
from sim.household import make_household

DEFAULT_SCENARIO = Path(__file__).resolve().parent / "scenarios" / "lifecycle.toml"
DECLINE_AT = timedelta(minutes=5)  # where the decline falls in its own window


# --- what the device received --------------------------------------------------------------------


class DeviceInbox:
    """Tokens and revocations with the instant each reached the device (MQTT push from the cloud).

    The device uses the latest token received by ``t`` and every revocation received by ``t``.
    Deliveries must come in time order, as they do on the device.
    """

    def __init__(self, public_key: str) -> None:
        self.public_key = public_key
        self._token_at: list[datetime] = []
        self._tokens: list[str] = []
        self._revocation_at: list[datetime] = []
        self._revocations: list[str] = []

    def token(self, at: datetime, token: str) -> None:
        if self._token_at and at < self._token_at[-1]:
            raise ValueError("deliveries must come in time order")
        self._token_at.append(at)
        self._tokens.append(token)

    def revocation(self, at: datetime, revocation: str) -> None:
        if self._revocation_at and at < self._revocation_at[-1]:
            raise ValueError("deliveries must come in time order")
        self._revocation_at.append(at)
        self._revocations.append(revocation)

    def token_at(self, t: datetime) -> str | None:
        i = bisect.bisect_right(self._token_at, t)
        return self._tokens[i - 1] if i else None

    def revocations_at(self, t: datetime) -> tuple[str, ...]:
        return tuple(self._revocations[: bisect.bisect_right(self._revocation_at, t)])


def device_config(sc: Scenario, installation: Installation) -> DeviceConfig:
    """The device's configuration for the scenario's grid and chargers, on ``installation``."""
    return DeviceConfig(serial=installation.serial, installation_id=installation.installation_id,
                        installation_type=installation.installation_type, country=installation.country,
                        grid=GridConfig(network=sc.network, fuse_a=sc.fuse_a, safety_margin_a=sc.safety_margin_a),
                        chargers=sc.chargers, fixed_current_a=sc.fallback_a)


# --- the policy ----------------------------------------------------------------------------------


@dataclass(slots=True)
class SubscriptionPolicy:
    """The device's subscription gate on the closed loop (a `sim.closed_loop.LoopPolicy`)."""

    inbox: DeviceInbox
    config: DeviceConfig
    origin: datetime  # the calendar instant of the loop's t = 0
    meter: str | None = None  # the vendor the device detects on HAN (once it has a reading)
    stale_after_s: float = BalancerSettings().stale_after_s
    transitions: list[dict[str, Any]] = field(default_factory=list)
    time_in_state_s: dict[str, float] = field(default_factory=dict)
    time_in_mode_s: dict[str, float] = field(default_factory=dict)
    setpoints_a: dict[str, set[float]] = field(default_factory=dict)
    state: SubscriptionState | None = None
    mode: str | None = None
    _tracker: SubscriptionTracker = field(default_factory=SubscriptionTracker)
    _last_now: float | None = None

    def calendar(self, now: float) -> datetime:
        return self.origin + timedelta(seconds=now)

    def decide(self, now: float, headroom: Headroom | None) -> tuple[str, dict[str, float] | None]:
        t = self.calendar(now)
        han_fresh = headroom is not None and now - headroom.measured_at <= self.stale_after_s
        state = evaluate(t, token=self.inbox.token_at(t), public_key=self.inbox.public_key, config=self.config,
                         revocations=self.inbox.revocations_at(t), meter=self.meter if headroom else None)
        g = gate(state, han_fresh, self.config.fallback_a)
        mode = "protect" if g.fixed_current_a is None else "fixed"
        changed = self._tracker.update(state, t) is not None
        if changed or mode != self.mode:
            why = state.reason
            if state.valid and mode == "fixed":
                why += "; no fresh HAN data"  # the subscription is fine, the meter is not (yet)
            self.transitions.append({"t_s": now, "at": iso_z(t), "state": state.state.value, "reason": why,
                                     "mode": mode})
        # The time since the previous step belongs to what was decided then.
        if self.state is not None and self.mode is not None and self._last_now is not None:
            dt, s = now - self._last_now, self.state.state.value
            self.time_in_state_s[s] = self.time_in_state_s.get(s, 0.0) + dt
            self.time_in_mode_s[self.mode] = self.time_in_mode_s.get(self.mode, 0.0) + dt
        self.state, self.mode, self._last_now = state, mode, now
        return mode, None

    def observe(self, now: float, dt: float, chargers: Sequence[SimCharger]) -> None:
        if now <= 0.0:
            return  # the loop applies a step's setpoints after this call: at t = 0 none is set yet
        for c in chargers:
            self.setpoints_a.setdefault(c.id, set()).add(round(c.setpoint_a, 1))

    def report(self) -> dict[str, Any]:
        return {"subscription": {
            "transitions": self.transitions,
            "time_in_state_s": dict(sorted(self.time_in_state_s.items())),
            "time_in_mode_s": dict(sorted(self.time_in_mode_s.items())),
            "setpoints_a": {c: sorted(v) for c, v in sorted(self.setpoints_a.items())},
        }}


# --- the lifecycle -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Phase:
    """A point of the lifecycle and the closed-loop window that shows it."""

    name: str
    window_start: datetime
    expect_mode: str  # what the balancer should do in the window (after the first reading)


@dataclass(frozen=True, slots=True)
class PhaseResult:
    phase: Phase
    state: SubscriptionState  # at the end of the window
    report: dict[str, Any]  # the closed-loop report, with the policy's "subscription" part
    loaded_setpoints_a: dict[str, list[float]]  # per charger, while house + fixed current overloads a line

    def row(self) -> dict[str, Any]:
        r, sub = self.report, self.report["subscription"]
        modes: list[str] = []  # in the order they came, e.g. ["protect", "fixed"]
        for t in sub["transitions"]:
            if not modes or modes[-1] != t["mode"]:
                modes.append(t["mode"])
        return {
            "phase": self.phase.name,
            "window_start": iso_z(self.phase.window_start),
            "state": self.state.state.value,
            "reason": self.state.reason,
            "mode": " -> ".join(modes) if modes else None,
            "expected_mode": self.phase.expect_mode,
            "time_in_mode_s": sub["time_in_mode_s"],
            "time_in_state_s": sub["time_in_state_s"],
            "setpoints_a": sub["setpoints_a"],
            "loaded_setpoints_a": self.loaded_setpoints_a,
            "max_ratio": r["max_ratio"],
            "seconds_above_in": r["seconds_above_in"],
            "trips": r["trips"],
            "transitions": sub["transitions"],
        }


def default_installation(sc: Scenario) -> Installation:
    return Installation("inst-lifecycle", "APM-LIFECYCLE", chargers=len(sc.chargers), meter=sc.vendor)


def lifecycle(issuer: Issuer, installation: Installation, t0: datetime,
              lead: timedelta = timedelta(hours=1)) -> tuple[DeviceInbox, list[Phase]]:
    """Drive the cloud through the lifecycle from ``t0``; each window starts ``lead`` after its event.

    Renewals are monthly at the billing date; the cloud pushes each new token at once.
    """
    inbox = DeviceInbox(issuer.public_key_pem)
    serial = installation.serial
    phases = [Phase("not subscribed", t0 - timedelta(days=1), "fixed")]

    issuer.subscribe(installation, t0)
    inbox.token(t0, issuer.issue(serial, t0))
    phases.append(Phase("subscribed", t0 + lead, "protect"))

    for n in (1, 2):
        billing = add_months(t0, n)
        issuer.advance(billing)  # renewal: the next month is charged
        inbox.token(billing, issuer.issue(serial, billing))
        phases.append(Phase(f"renewal {n}", billing + lead, "protect"))

    cancelled = add_months(t0, 2) + timedelta(days=5)
    issuer.cancel(serial, cancelled)
    end = add_months(t0, 3)  # the next billing date: access ends there
    phases.append(Phase("cancelled, before the billing date", cancelled + lead, "protect"))
    phases.append(Phase("cancelled, just before the billing date", end - lead - timedelta(minutes=30),
                        "protect"))
    issuer.advance(end)
    phases.append(Phase("cancelled, billing date passed", end + lead, "fixed"))

    again = end + timedelta(days=17, hours=9, minutes=30)
    issuer.subscribe(installation, again)
    inbox.token(again, issuer.issue(serial, again))
    phases.append(Phase("subscribed again", again + lead, "protect"))

    declined = again + timedelta(days=8)
    inbox.revocation(declined, issuer.decline(serial, declined))
    # A window around the moment the revocation arrives (5 min in, the house loaded): protection ends
    # at that second.
    phases.append(Phase("payment declined: the moment", declined - DECLINE_AT, "protect, then fixed"))
    phases.append(Phase("payment declined", declined + lead, "fixed"))
    return inbox, phases


def loaded_steps(sc: Scenario) -> list[int]:
    """Steps where the household plus the fixed current on a line would exceed the fuse rating."""
    opts = dict(sc.household)
    house = make_household(sc.network, model=opts.pop("model", None), trace=opts.pop("trace", None),
                           seed=int(opts.pop("seed", 1)), days=int(sc.duration_s // 86400) + 2, **opts)
    steps = int(round(sc.duration_s / sc.step_s))
    return [k for k in range(steps + 1)
            if max(house.sample(k * sc.step_s).lines) + sc.fallback_a > sc.fuse_a]


def run_phase(sc: Scenario, phase: Phase, inbox: DeviceInbox, config: DeviceConfig,
              loaded: Sequence[int], settle_s: float = 30.0) -> PhaseResult:
    settings = BalancerSettings.from_dict(sc.balancer)
    policy = SubscriptionPolicy(inbox, config, origin=phase.window_start, meter=sc.vendor,
                                stale_after_s=settings.stale_after_s)
    trace = Trace()
    report = run(sc, trace=trace, policy=policy)
    assert policy.state is not None
    # Setpoints while the house is loaded, after the balancer had a list or two to react to the step.
    first = loaded[0] if loaded else 0
    settled = [k for k in loaded if k * sc.step_s >= first * sc.step_s + settle_s]
    seen = {cid: sorted({round(sp[k], 1) for k in settled}) for cid, sp in trace.setpoints.items()}
    return PhaseResult(phase, policy.state, report, seen)


def run_lifecycle(sc: Scenario, issuer: Issuer, installation: Installation | None = None,
                  t0: datetime | None = None) -> list[PhaseResult]:
    """The whole lifecycle, one closed-loop window of ``sc`` per phase."""
    installation = installation or default_installation(sc)
    t0 = t0 or sc.start
    inbox, phases = lifecycle(issuer, installation, t0)
    config = device_config(sc, installation)
    loaded = loaded_steps(sc)
    return [run_phase(sc, p, inbox, config, loaded) for p in phases]


# --- command line --------------------------------------------------------------------------------


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = ("phase", "state", "mode", "setpoints A", "loaded A", "max I/In", "s > In", "trips", "reason")
    lines = []
    for r in rows:
        worst = max(r["max_ratio"], key=lambda n: r["max_ratio"][n])
        sp = ";".join(f"{c}:{min(v):g}-{max(v):g}" for c, v in r["setpoints_a"].items() if v)
        lsp = ";".join(f"{c}:{','.join(f'{x:g}' for x in v)}" for c, v in r["loaded_setpoints_a"].items())
        lines.append((r["phase"], r["state"], r["mode"] or "-", sp, lsp,
                      f"{r['max_ratio'][worst]:.2f} {worst}", f"{r['seconds_above_in'][worst]:g}",
                      str(r["trips"]), r["reason"]))
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*x) for x in lines)])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.subscription_loop",
                                 description="the subscription lifecycle on the closed-loop simulation")
    ap.add_argument("scenario", nargs="?", default=str(DEFAULT_SCENARIO))
    ap.add_argument("--report", help="write the rows (JSON) here")
    args = ap.parse_args(argv)
    try:
        sc = load_scenario(args.scenario)
        if not sc.chargers or not sc.evs:
            raise ScenarioError(f"{args.scenario}: the lifecycle needs a charger and an EV")
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        issuer = Issuer.keygen(Path(tmp) / "cloud.json")
        results = run_lifecycle(sc, issuer)
    rows = [r.row() for r in results]
    print(table(rows))
    if args.report:
        doc = {"scenario": sc.name, "fixed_current_a": sc.fallback_a, "fuse_a": sc.fuse_a,
               "window_s": sc.duration_s, "phases": rows}
        try:
            Path(args.report).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write the report: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

