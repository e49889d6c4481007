"""Which grid lines a charger loads, and how much.

One convention for the whole device and the simulator: per-line values are 3-tuples indexed
L1, L2, L3 = 0, 1, 2. Currents are magnitudes in amperes.

A charger measures the current on its own L1, L2, L3 terminals; ``rotation`` names the grid line each
terminal is wired to, so terminal k's current flows on line ``rotation[k]``. What a charging EV puts on
the terminals depends on the network (research notes 5.1):

- 3-phase charging: the same current on all three terminals, TN or IT.
- 1-phase on TN (230 V phase-neutral): terminal L1 only; the return is the neutral.
- 1-phase on IT (230 V line-to-line): the load sits between terminals L1 and L2, so both line conductors
  carry the full current.

On a single-phase supply (meter reports one current) there is one line, L1, and everything loads it.
"""

from __future__ import annotations

from collections.abc import Sequence

from apm.core.config import ChargerConfig, Network

__all__ = ["LINES", "LINE_INDEX", "ZERO", "Network", "Triple", "add", "charging_power_w", "fixed_shares",
           "rotation_index", "terminal_currents", "to_lines", "usage"]

Triple = tuple[float, float, float]

LINES = ("L1", "L2", "L3")
LINE_INDEX = {"L1": 0, "L2": 1, "L3": 2}
ZERO: Triple = (0.0, 0.0, 0.0)


def rotation_index(rotation: Sequence[str]) -> tuple[int, int, int]:
    """("L2", "L3", "L1") -> (1, 2, 0); raises ValueError when not a permutation of L1..L3."""
    if sorted(rotation) != list(LINES):
        raise ValueError(f"{list(rotation)!r} is not a permutation of L1, L2, L3")
    return (LINE_INDEX[rotation[0]], LINE_INDEX[rotation[1]], LINE_INDEX[rotation[2]])


def terminal_currents(network: Network, phases: int, current_a: float) -> Triple:
    """The current on a charger's L1/L2/L3 terminals when it draws ``current_a`` on ``phases`` phases."""
    if phases == 3:
        return (current_a, current_a, current_a)
    if network == "IT":
        return (current_a, current_a, 0.0)
    return (current_a, 0.0, 0.0)


def usage(network: Network, phases: int, rotation: Sequence[str], supply_phases: int = 3) -> Triple:
    """Amperes on each grid line per ampere of charging current (each entry 0 or 1)."""
    if supply_phases == 1:
        return (1.0, 0.0, 0.0)
    t = terminal_currents(network, phases, 1.0)
    r = rotation_index(rotation)
    out = [0.0, 0.0, 0.0]
    for k in range(3):
        out[r[k]] += t[k]
    return (out[0], out[1], out[2])


def fixed_shares(fixed_a: float, network: Network, chargers: Sequence[ChargerConfig]) -> dict[str, float]:
    """Each charger's failsafe current: its share of ``fixed_a`` when every charger falls back on its own.

    A charger that has lost the device cannot ask the others what they draw, so the shares are fixed in
    advance: a charger gets ``fixed_a`` divided by the number of chargers on the busiest line it loads
    (capped by its ``max_a``). On every line the shares then add up to at most ``fixed_a``, which the
    configuration keeps at or below the fuse less the margin, whatever the chargers draw at once."""
    uses = {c.id: usage(network, c.phases, c.rotation) for c in chargers}
    on_line = [sum(1 for u in uses.values() if u[k] > 0) for k in range(3)]
    return {c.id: min(c.max_a, fixed_a / max(on_line[k] for k in range(3) if uses[c.id][k] > 0))
            for c in chargers}


def to_lines(terminals: Triple, rotation: Sequence[str], supply_phases: int = 3) -> Triple:
    """Map a charger's terminal currents to grid line currents."""
    if supply_phases == 1:
        # One supply line: the charger's L1 terminal carries the whole single-phase current.
        return (terminals[0], 0.0, 0.0)
    r = rotation_index(rotation)
    out = [0.0, 0.0, 0.0]
    for k in range(3):
        out[r[k]] += terminals[k]
    return (out[0], out[1], out[2])


def add(a: Triple, b: Triple) -> Triple:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def charging_power_w(network: Network, phases: int, current_a: float, voltage_v: float = 230.0) -> float:
    """Active power of a resistive (PF 1) charging load.

    ``voltage_v`` is the phase-to-neutral voltage on TN and the line-to-line voltage on IT; both are
    230 V in Norway. A balanced 3-phase load on IT 3x230 V is sqrt(3) * U * I (12.7 kW at 32 A).
    """
    if phases == 3:
        return (3.0 if network == "TN" else 3.0 ** 0.5) * voltage_v * current_a
    return voltage_v * current_a
