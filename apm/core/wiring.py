"""Installation advice the device can give from what it sees: the network, the meter's lists and how
the chargers are wired.

On IT (3x230 V, three wires) a two-element meter (Aidon 6525, Kamstrup on IT) does not report the L2
current; the headroom bounds it conservatively (`apm.core.headroom`, `apm.core.three_wire`), and that bound is
far above the true current while our own chargers draw. A 1-phase EV on IT draws between the
charger's L1 and L2 terminals: when these are wired to grid L1 and L3, the lines the meter measures,
it never waits for the bound on L2. On the winter IT day of the simulator (sim/scenarios/
winter-it-40a.toml) rotating the 1-phase car's charger that way delivers 41 % more energy (84.9 kWh
against 119.5 kWh, zero trips either way). Rotating a charger's phases is an installer's routine
(chargers are rotated to spread 1-phase cars over the lines anyway).
"""

from __future__ import annotations

from collections.abc import Sequence

from apm.core.config import ChargerConfig
from apm.core.lines import LINES, Network, usage
from han.reading import Reading

# Charger L1, L2, L3 terminals on grid L1, L3, L2: a 1-phase EV then loads L1 and L3 only.
MEASURED_PAIR_ROTATION = ("L1", "L3", "L2")


def unreported_i2(network: Network, reading: Reading) -> bool:
    """A three-phase IT list without the L2 current (a two-element meter)."""
    return network == "IT" and reading.phases == 3 and reading.list != 1 and reading.current_l2_a is None


def wiring_advice(network: Network, chargers: Sequence[ChargerConfig], reading: Reading) -> tuple[str, ...]:
    """One line of advice per charger whose 1-phase EVs would load the unreported L2 line; () when
    the meter reports every line (or ``reading`` is a list without currents)."""
    if not unreported_i2(network, reading):
        return ()
    out = []
    for c in chargers:
        lines = [LINES[i] for i, x in enumerate(usage(network, 1, c.rotation)) if x > 0.0]
        if "L2" not in lines:
            continue
        out.append(
            f"charger {c.id}: a 1-phase EV draws between grid {lines[0]} and {lines[1]}, and this "
            f"{reading.meter} meter does not report the L2 current, so its headroom rests on a "
            f"conservative bound; wired with rotation {', '.join(MEASURED_PAIR_ROTATION)} it would "
            "load only the lines the meter measures")
    return tuple(out)
