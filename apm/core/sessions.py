"""Each charger's charging session: the energy its EV has taken since it was plugged in. Sans-IO.

    meter = SessionMeter("TN", config.chargers)
    session = meter.on_report(charger_state, voltages=(231.0, 229.5, 230.2))   # every report
    meter.session("garage")       # the open session, else the last one (None before the first EV)

A session starts with the first report of an EV (a mode other than "disconnected") after none, and
ends with the report that says it left; the last one is kept (its energy, start and duration) until
the next EV arrives. A device that starts with an EV already plugged in starts the session then.

Where the energy comes from (``Session.source``):

- "charger": the charger's own energy register (OCPP Energy.Active.Import.Register, a go-e's ``eto``),
  its rise since the session began. Preferred: the charger meters what went into the car, across any
  gap in its reports. Energy integrated before its first register value in the session is kept.
- "integrated": the charging power from the reported currents (`apm.core.lines.charging_power_w`:
  3-phase is 3 U I on TN and sqrt(3) U I on IT, 1-phase is U I, across two lines on IT) and the
  voltages the meter reports (230 V where it reports none), held from one report to the next.

A report's power is held for at most ``max_hold_s`` (a charger's report interval): a charger that falls
silent longer is not known to draw anything, and holding its last power across a long gap (a dropped
link, a charger that rebooted) would count energy the car may never have taken. What was not counted is
``Session.unmetered_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from apm.core.charger_state import ChargerState
from apm.core.config import ChargerConfig, Network
from apm.core.lines import LINE_INDEX, charging_power_w

__all__ = ["MAX_HOLD_S", "NOMINAL_V", "Session", "SessionMeter", "Source", "charging_power"]

Source = Literal["charger", "integrated"]

# OCPP chargers are asked for MeterValues every 10 s (ocpp_policy.meter_interval_s), a go-e publishes
# nrg every few seconds: half as much again is slack for a late report, not a silent charger.
MAX_HOLD_S = 15.0
NOMINAL_V = 230.0  # Norway: phase-to-neutral on TN, line-to-line on IT
# A reported voltage outside this is a meter that is wrong or not a voltage of this network: not used.
PLAUSIBLE_V = (180.0, 270.0)
DRAWING_A = 1.0  # a terminal current below this is noise, not a phase the EV draws on


@dataclass(frozen=True, slots=True)
class Session:
    """One EV's stay at a charger. Times are clock seconds; ``ended_at`` None while it goes on."""

    charger: str
    started_at: float
    last_report_at: float
    energy_wh: float = 0.0
    source: Source = "integrated"
    ended_at: float | None = None
    unmetered_s: float = 0.0  # charging seconds past ``max_hold_s`` without a report (not integrated)

    @property
    def active(self) -> bool:
        return self.ended_at is None

    @property
    def energy_kwh(self) -> float:
        return self.energy_wh / 1000.0

    def duration_s(self, now: float) -> float:
        """How long the EV has been (or was) plugged in."""
        end = self.ended_at if self.ended_at is not None else max(now, self.last_report_at)
        return max(0.0, end - self.started_at)


@dataclass(slots=True)
class _Track:
    """A session's running sums (mutable; `Session` is what leaves)."""

    session: Session
    integrated_wh: float = 0.0
    power_w: float = 0.0  # at the last report, held until the next for at most max_hold_s
    register_wh: float | None = None  # the last register value in this session
    before_register_wh: float = 0.0  # integrated before the register's first value in this session
    register_rise_wh: float = 0.0


def _voltage(values: Sequence[float | None]) -> float:
    """The mean of the plausible voltages, else the nominal one."""
    ok = [v for v in values if v is not None and PLAUSIBLE_V[0] <= v <= PLAUSIBLE_V[1]]
    return sum(ok) / len(ok) if ok else NOMINAL_V


def charging_power(network: Network, charger: ChargerConfig | None, state: ChargerState,
                   voltages: Sequence[float | None] = ()) -> float:
    """The active power (W, PF 1) a charging EV draws as its charger reports it; 0 unless charging.

    ``voltages``: the meter's per-line voltages (L1, L2, L3; None or missing: not reported). On TN a
    1-phase EV sits on the grid line its charger's L1 terminal is wired to, so that line's voltage; on
    IT the meter's voltages are line-to-line already, and their mean is the one to use."""
    if state.mode != "charging":
        return 0.0
    c = state.currents_a
    phases = state.phases_in_use or (3 if min(c) >= DRAWING_A else 1)
    if phases == 3:
        current = (c[0] + c[1] + c[2]) / 3.0
        volts = _voltage(voltages)
    else:
        current = state.draw_a
        line = LINE_INDEX[charger.rotation[0]] if charger is not None else 0
        on_line = [voltages[line]] if network == "TN" and line < len(voltages) else []
        volts = _voltage(on_line) if on_line and on_line[0] is not None else _voltage(voltages)
    return charging_power_w(network, phases, max(0.0, current), volts)


class SessionMeter:
    """Every charger's session, from the reports the device already gets (module doc)."""

    def __init__(self, network: Network, chargers: Sequence[ChargerConfig], *,
                 max_hold_s: float = MAX_HOLD_S) -> None:
        if max_hold_s <= 0:
            raise ValueError(f"max_hold_s {max_hold_s!r} must be positive")
        self.network = network
        self.chargers = {c.id: c for c in chargers}
        self.max_hold_s = max_hold_s
        self._tracks: dict[str, _Track] = {}

    def session(self, charger_id: str) -> Session | None:
        t = self._tracks.get(charger_id)
        return t.session if t is not None else None

    @property
    def sessions(self) -> dict[str, Session]:
        return {cid: t.session for cid, t in self._tracks.items()}

    def on_report(self, state: ChargerState, voltages: Sequence[float | None] = ()) -> Session | None:
        """One charger report (in time order; an older one than the last is ignored): the charger's
        session as it stands after it, None while no EV has been seen."""
        t = self._tracks.get(state.id)
        if t is not None and state.at < t.session.last_report_at:
            return t.session  # out of order: the interval it belongs to is counted already
        plugged = state.mode != "disconnected"
        if t is None or not t.session.active:
            if not plugged:
                return t.session if t is not None else None
            t = self._tracks[state.id] = _Track(Session(state.id, state.at, state.at))
        self._integrate(t, state.at)
        self._register(t, state.energy_wh)
        t.power_w = charging_power(self.network, self.chargers.get(state.id), state, voltages) if plugged else 0.0
        s = t.session
        energy: float = t.integrated_wh
        source: Source = "integrated"
        if t.register_wh is not None:
            energy, source = t.before_register_wh + t.register_rise_wh, "charger"
        t.session = replace(s, last_report_at=state.at, energy_wh=energy, source=source,
                            ended_at=None if plugged else state.at)
        return t.session

    def _integrate(self, t: _Track, at: float) -> None:
        dt = at - t.session.last_report_at
        held = min(dt, self.max_hold_s)
        t.integrated_wh += t.power_w * held / 3600.0
        if t.power_w > 0 and dt > held:
            t.session = replace(t.session, unmetered_s=t.session.unmetered_s + dt - held)

    def _register(self, t: _Track, value: float | None) -> None:
        if value is None:
            return
        if t.register_wh is None:
            t.before_register_wh = t.integrated_wh
        elif value >= t.register_wh:
            t.register_rise_wh += value - t.register_wh
        # A register that fell (the charger was reset or replaced) counts from its new value on.
        t.register_wh = value
