"""What a charger reports about itself: the balancer's second input, next to the meter's headroom."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from apm.core.lines import ZERO, Triple

# The charger's operating mode, after Zaptec's ChargerOperationMode (1 disconnected, 2 requesting,
# 3 charging, 5 finished): "connected" is an EV that wants current but draws none (waiting for a
# setpoint of at least 6 A, or ramping up), "finished" an EV that is full or has stopped on its own.
Mode = Literal["disconnected", "connected", "charging", "finished"]
MODES: tuple[str, ...] = ("disconnected", "connected", "charging", "finished")


@dataclass(frozen=True, slots=True)
class ChargerState:
    id: str
    mode: Mode = "disconnected"
    # Current on the charger's own L1, L2, L3 terminals (its rotation maps them to grid lines).
    currents_a: Triple = ZERO
    # Phases the EV draws on (1 or 3) while it charges; None when not known.
    phases_in_use: int | None = None
    # The setpoint the charger applies now (what it last accepted).
    setpoint_a: float = 0.0
    at: float = 0.0  # the clock time of this report (seconds)
    # The charger's own energy register (Wh, never falling while it runs), None when it reports none:
    # OCPP Energy.Active.Import.Register, a go-e's ``eto``. The session meter prefers it (apm.core.sessions).
    energy_wh: float | None = None

    @property
    def wants_current(self) -> bool:
        return self.mode in ("connected", "charging")

    @property
    def draw_a(self) -> float:
        """The charging current: the largest terminal current."""
        c = self.currents_a
        return max(c[0], c[1], c[2])
