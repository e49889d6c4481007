"""A charger (EVSE) emulator: applies its setpoint as the control pilot's offer, reports its state.

The charger offers min(setpoint, its max) to the EV (below 6 A it offers nothing: the EV pauses) and
measures the current on its own L1/L2/L3 terminals. Which terminals carry current follows from the
network and the phases in use (apm.core.lines.terminal_currents); which grid lines they are follows from
its ``rotation``. The MQTT layer will later carry ``set_setpoint`` and ``state`` over the broker;
here they are plain calls.
"""

from __future__ import annotations

from apm.core.charger_state import ChargerState, Mode
from apm.core.config import ChargerConfig
from apm.core.lines import ZERO, Network, Triple, charging_power_w, terminal_currents, to_lines
from sim.ev import EV


class SimCharger:
    def __init__(self, config: ChargerConfig, network: Network, supply_phases: int = 3) -> None:
        self.config = config
        self.id = config.id
        self.network: Network = network
        self.supply_phases = supply_phases
        self.setpoint_a = 0.0
        self.ev: EV | None = None
        self.terminals: Triple = ZERO
        self.lines: Triple = ZERO
        self.power_w = 0.0
        self.now = 0.0

    @property
    def phases_in_use(self) -> int:
        if self.ev is None:
            return self.config.phases
        return min(self.config.phases, self.ev.phases)

    def set_setpoint(self, now: float, setpoint_a: float) -> None:
        self.setpoint_a = max(0.0, setpoint_a)

    def plug(self, now: float, ev: EV) -> None:
        self.ev = ev
        ev.plug(now)

    def unplug(self, now: float) -> EV | None:
        ev, self.ev = self.ev, None
        self.terminals = self.lines = ZERO
        self.power_w = 0.0
        return ev

    def step(self, now: float) -> Triple:
        """Advance the EV to ``now``; return the current on each grid line."""
        self.now = now
        ev = self.ev
        if ev is None:
            return ZERO
        offer = min(self.setpoint_a, self.config.max_a)
        n = self.phases_in_use
        cur = ev.step(now, offer if offer >= ev.min_a else 0.0, self.network, n)
        if cur <= 0.0:
            self.terminals = self.lines = ZERO
            self.power_w = 0.0
            return ZERO
        self.terminals = terminal_currents(self.network, n, cur)
        self.lines = to_lines(self.terminals, self.config.rotation, self.supply_phases)
        self.power_w = charging_power_w(self.network, n, cur)
        return self.lines

    @property
    def mode(self) -> Mode:
        ev = self.ev
        if ev is None:
            return "disconnected"
        if ev.full:
            return "finished"
        return "charging" if ev.current_a > 0.0 else "connected"

    def state(self, now: float | None = None) -> ChargerState:
        mode = self.mode
        return ChargerState(
            id=self.id,
            mode=mode,
            currents_a=self.terminals,
            phases_in_use=self.phases_in_use if mode == "charging" else None,
            setpoint_a=self.setpoint_a,
            at=self.now if now is None else now,
        )
