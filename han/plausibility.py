"""Plausibility before use: the reader hands out only readings a real meter could have sent.

A CRC only proves the bytes arrived as the meter framed them; buggy firmware and corrupted memory
still send 88 kA or 4 GW. Two checks, both sans-IO: every quantity within a physical range (checked
in ``han.template`` per value, on the fast path), and energy counters that only grow (per meter).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from han.errors import ImplausibleReading
from han.reading import QUANTITIES, Reading

# Physical ranges after scaling and the CT ratio. A HAN meter sits on a low-voltage network, which
# ends at 1000 V AC by definition: voltages 0..1000 V (0 is a lost phase). The largest LV supplies
# (3150 kVA transformers, about 4.5 kA at 400 V; CT meters up to 5000/5) stay below 10 kA, and
# currents are signed (Aidon sends export as a negative current). Powers are split into import and
# export, so never negative, and at most three phases at the voltage and current limits: 30 MW (var
# likewise). Counters start at 0 and reach at most 1e13 Wh, 30 MW for about 40 years. The shared
# vectors stay far inside (at most 45 A, 250 V, 12.6 kW, 155 MWh).
MAX_VOLTAGE_V = 1000.0
MAX_CURRENT_A = 10_000.0
MAX_POWER_W = 3 * MAX_VOLTAGE_V * MAX_CURRENT_A
MAX_ENERGY_WH = 1e13
_BY_UNIT = {
    "v": (0.0, MAX_VOLTAGE_V),
    "a": (-MAX_CURRENT_A, MAX_CURRENT_A),
    "w": (0.0, MAX_POWER_W),
    "var": (0.0, MAX_POWER_W),
    "wh": (0.0, MAX_ENERGY_WH),
    "varh": (0.0, MAX_ENERGY_WH),
}
RANGES: dict[str, tuple[float, float]] = {q: _BY_UNIT[q.rsplit("_", 1)[1]] for q in QUANTITIES}
COUNTERS = ("active_import_wh", "active_export_wh", "reactive_import_varh", "reactive_export_varh")
# A counter may read one resolution step lower than before (a meter rounds its register); the
# coarsest resolution the vendors use is 10 Wh, Aidon's in-band scaler could make it 100 Wh.
COUNTER_STEP_WH = 100.0
_MAX_METERS = 16  # counters remembered per stream: one meter, plus room for a corrupted meter id


def out_of_range(field: str, value: float) -> str | None:
    """Why ``value`` cannot be a real ``field``, or None."""
    low, high = RANGES[field]
    if low <= value <= high:  # also false for NaN
        return None
    return f"{field} = {value:g} is outside the physical range {low:g}..{high:g}"


def check_ranges(reading: Reading) -> None:
    """Raise ``ImplausibleReading`` for a quantity outside its range (the template checks the same
    per value; this is the whole-reading form, for readings built elsewhere and for tests)."""
    for field in QUANTITIES:
        value = getattr(reading, field)
        if value is not None and (why := out_of_range(field, value)):
            raise ImplausibleReading(why)


class CounterGuard:
    """Energy counters only grow, and no faster than the largest power allows. A list whose counter
    went back by more than a rounding step, or grew faster, is refused. When the next list of that
    meter agrees with the refused one rather than with the reference, the reference was the wrong
    one (a corrupted value that was in range, or a meter that was reset), and the stream re-anchors
    there instead of refusing every later list. When the meter's clock went back (captures joined
    into one file, a clock reset, the end of summer time) there is no order to check, and the list
    becomes the reference; without a clock only the going back is checked."""

    def __init__(self, ct_ratio: float = 1.0) -> None:
        self.step = COUNTER_STEP_WH * ct_ratio
        self._reference: OrderedDict[str, _Counters] = OrderedDict()
        self._suspect: dict[str, _Counters] = {}

    def check(self, reading: Reading) -> None:
        values = (reading.active_import_wh, reading.active_export_wh, reading.reactive_import_varh,
                  reading.reactive_export_varh)
        if values == (None, None, None, None):
            return
        now = _Counters(_wall_clock(reading.meter_time), values)
        key = f"{reading.meter}/{reading.meter_id}"
        reference = self._reference.get(key)
        why = None if reference is None else self._implausible_step(reference, now)
        if why is not None:
            suspect = self._suspect.pop(key, None)
            if suspect is None or self._implausible_step(suspect, now) is not None:
                self._suspect[key] = now
                raise ImplausibleReading(why)
        self._suspect.pop(key, None)
        self._reference[key] = now
        self._reference.move_to_end(key)
        if len(self._reference) > _MAX_METERS:
            old, _ = self._reference.popitem(last=False)
            self._suspect.pop(old, None)

    def _implausible_step(self, before: _Counters, now: _Counters) -> str | None:
        hours = None
        if before.time is not None and now.time is not None:
            if now.time < before.time:
                return None
            hours = (now.time - before.time).total_seconds() / 3600
        for field, old, new in zip(COUNTERS, before.values, now.values, strict=True):
            if old is None or new is None:
                continue
            if new < old - self.step:
                return f"{field} went back from {old:g} to {new:g}"
            if hours is not None and new > old + self.step + MAX_POWER_W * hours:
                return f"{field} grew from {old:g} to {new:g} in {hours:g} h, faster than {MAX_POWER_W:g} W"
        return None


@dataclass(frozen=True, slots=True)
class _Counters:
    time: datetime | None  # the meter's wall clock (its offset left out, as meters differ in sending it)
    values: tuple[float | None, ...]


def _wall_clock(meter_time: str | None) -> datetime | None:
    if not meter_time:
        return None
    try:
        return datetime.fromisoformat(meter_time[:19])
    except ValueError:  # a date the calendar lacks (31 February, year 0): no clock to go by
        return None
