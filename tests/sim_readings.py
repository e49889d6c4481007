"""What the simulated meter (sim.meter) sends for one grid state: a test helper for the headroom tests."""

from __future__ import annotations

from datetime import datetime

from han.reading import Reading
from sim.frames import MeterSpec
from sim.grid import GridState
from sim.meter import Meter

# Half a minute past the hour: t = 10 s is a plain list 2 for every vendor (no hourly list near it).
START = datetime.fromisoformat("2025-01-15T00:00:30+01:00")


def list2_of(g: GridState, vendor: str, kind: str = "3p-it") -> list[Reading]:
    """The lists ``vendor``'s meter pushes at t = 10 s measuring the steady state ``g``, as decoded."""
    meter = Meter(MeterSpec(vendor, kind), START, currents=lambda t: g.lines, voltages=lambda t, i: g.voltages,
                  power=lambda t: g.power_w, reactive=lambda t: g.reactive_var)
    meter.pushes_between(0.0, 10.0)
    return [p.reading for p in meter.pushes_between(10.0, 10.001)]
