"""A stand-in AMS meter for the in-process loop: produces `Reading`s on the vendor's schedule.

No bytes, no HAN framing: it hands over what the decoder would have produced. The simulated meter
that writes real frames to a pty replaces it behind the same call, ``readings_at(now)``.

Schedule (NVE lists, research notes 1.6), times counted from the start of the simulation:

- list 1 (active import power only) every 2.5 s, except where a list 2 or 3 is due; Kamstrup sends none;
- list 2 (powers, currents, voltages) every 10 s;
- list 3 (list 2 + meter clock + energy counters) on every full hour of the meter's clock.

Like the real meters on IT (three wires) it does not report I2. Resolution as the vendors send it:
Aidon 0.1 A, Kamstrup 0.01 A, Kaifa 0.001 A; power in W, energy in Wh (Aidon and Kamstrup 10 Wh).
Faults to test the device: ``outages`` (no lists at all between two times) and ``repeat_hourly``
(every hourly list sent twice, a known Aidon fault).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from apm.lines import Network, Triple
from han.reading import Reading

VENDORS = ("aidon", "kaifa", "kamstrup")
_LIST_ID = {"aidon": "AIDON_V0001", "kaifa": "KFM_001", "kamstrup": "Kamstrup_V0001"}
_TYPE = {"aidon": "6525", "kaifa": "MA304H3E", "kamstrup": "6861111"}
_AMP_STEP = {"aidon": 0.1, "kaifa": 0.001, "kamstrup": 0.01}
_WH_STEP = {"aidon": 10.0, "kaifa": 1.0, "kamstrup": 10.0}


@dataclass(frozen=True, slots=True)
class Measurement:
    lines: Triple  # A per line
    power_w: float  # active import


class LoopMeter:
    def __init__(
        self,
        measure: Callable[[float], Measurement],
        *,
        vendor: str = "aidon",
        network: Network = "IT",
        phases: int = 3,
        start: datetime | None = None,
        meter_id: str = "7359992890000000",
        list1_s: float = 2.5,
        list2_s: float = 10.0,
        outages: Sequence[tuple[float, float]] = (),
        repeat_hourly: bool = False,
        import_wh: float = 12_345_670.0,
    ) -> None:
        if vendor not in VENDORS:
            raise ValueError(f"meter vendor {vendor!r} is not one of {', '.join(VENDORS)}")
        if phases not in (1, 3):
            raise ValueError("meter phases must be 1 or 3")
        self.measure = measure
        self.vendor = vendor
        self.network: Network = network
        self.phases = phases
        self.start = start or datetime.fromisoformat("2025-01-15T00:00:00+01:00")
        self.meter_id = meter_id
        self.list1_s = list1_s if vendor != "kamstrup" else 0.0
        self.list2_s = list2_s
        self.outages = [(float(a), float(b)) for a, b in outages]
        self.repeat_hourly = repeat_hourly
        self.import_wh = import_wh
        self._last: float | None = None
        self._repeat: tuple[float, Reading] | None = None
        # seconds from the start to the meter's next full hour
        s0 = self.start
        self._hour0 = (3600 - (s0.minute * 60 + s0.second + s0.microsecond / 1e6)) % 3600
        self.sent = 0

    def _silent(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.outages)

    def readings_at(self, now: float) -> list[Reading]:
        """The lists due in (previous call, now], measured at ``now``."""
        m = self.measure(now)
        last = self._last
        self._last = now
        if last is None:
            last = now - 1e-9
        else:
            self.import_wh += m.power_w * (now - last) / 3600.0
        out: list[Reading] = []
        if self._repeat is not None and self._repeat[0] <= now:
            out.append(self._repeat[1])
            self._repeat = None
        for t, lst in self._due(last, now):
            if self._silent(t):
                continue
            r = self._reading(lst, t, m)
            out.append(r)
            if lst == 3 and self.repeat_hourly:
                self._repeat = (t + 2.0, r)
        self.sent += len(out)
        return out

    def _due(self, a: float, b: float) -> list[tuple[float, int]]:
        due: dict[float, int] = {}
        p2 = self.list2_s
        for k in range(math.floor(a / p2) + 1, math.floor(b / p2) + 1):
            due[k * p2] = 2
        if self.list1_s > 0:
            p1 = self.list1_s
            for k in range(math.floor(a / p1) + 1, math.floor(b / p1) + 1):
                due.setdefault(k * p1, 1)
        h0 = self._hour0
        k0 = math.floor((a - h0) / 3600.0) + 1
        k1 = math.floor((b - h0) / 3600.0)
        for k in range(k0, k1 + 1):
            t = h0 + 3600.0 * k
            # the hourly list takes the place of the list 2 due in the same 10 s
            for t2 in [x for x, lst in due.items() if lst == 2 and abs(x - t) < p2]:
                del due[t2]
            due[t] = 3
        return sorted(due.items())

    def _reading(self, lst: int, t: float, m: Measurement) -> Reading:
        v = self.vendor
        power = float(round(m.power_w))
        if lst == 1:
            return Reading(meter=v, list=1, active_import_w=power)
        amp = _AMP_STEP[v]

        def q(x: float) -> float:
            return round(round(x / amp) * amp, 3)

        l1, l2, l3 = m.lines
        volts = [round(231.0 - 0.05 * x, 1) for x in m.lines]
        three = self.phases == 3
        fields = dict(
            meter=v,
            list=lst,
            list_id=_LIST_ID[v],
            meter_id=self.meter_id,
            meter_type=_TYPE[v],
            phases=self.phases,
            active_import_w=power,
            active_export_w=0.0,
            reactive_import_var=0.0,
            reactive_export_var=0.0,
            current_l1_a=q(l1),
            current_l2_a=q(l2) if three and self.network == "TN" else None,
            current_l3_a=q(l3) if three else None,
            voltage_l1_v=volts[0],
            voltage_l2_v=volts[1] if three else None,
            voltage_l3_v=volts[2] if three else None,
        )
        if lst == 3:
            step = _WH_STEP[v]
            clock = self.start + timedelta(seconds=round(t))
            fields.update(
                meter_time=clock.isoformat(),
                active_import_wh=math.floor(self.import_wh / step) * step,
                active_export_wh=0.0,
                reactive_import_varh=0.0,
                reactive_export_varh=0.0,
            )
        return Reading(**fields)  # type: ignore[arg-type]
