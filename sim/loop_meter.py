"""A stand-in AMS meter for the in-process loop: produces `Reading`s on the vendor's schedule.

No bytes, no HAN framing: it hands over what the decoder would have produced. The simulated meter
that writes real frames to a pty replaces it behind the same call, ``readings_at(now)``.

Schedule (NVE lists, research notes 1.6), times counted from the start of the simulation:

- list 1 (active import power only) every 2.5 s, except where a list 2 or 3 is due; Kamstrup sends none;
- list 2 (powers, currents, voltages) every 10 s;
- list 3 (list 2 + meter clock + energy counters) on every full hour of the meter's clock.

What it reports is what the measurement gives it: line currents, active and reactive power (import
and export split by sign) and voltages (`sim.grid.GridState`: on IT the line-to-line U12, U13, U23,
which is what all 3-wire vendors send). Like the real meters on IT (three wires), Aidon and Kamstrup
do not report I2; Kaifa (MA304H3E) does, but sends U2 = 0, which the decoder replaces by an estimate
from a symmetric supply (`han.template.estimate_l2_voltage`, marked in ``Reading.estimated``): the
reading here is what the decoder would hand over. Resolution as the vendors send it: Aidon 0.1 A and
0.1 V, Kamstrup 0.01 A and 1 V, Kaifa 0.001 A and 0.1 V; power in W and var, energy in Wh (Aidon and
Kamstrup 10 Wh).

Faults to test the device: ``outages`` (no lists at all between two times), ``repeat_hourly`` (every
hourly list sent twice, a known Aidon fault) and ``skew_s`` (the powers in a list are measured that
many seconds before its currents and voltages: a meter's values are not sampled at one instant).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from apm.lines import Network, Triple
from han.reading import Reading
from han.template import estimate_l2_voltage

VENDORS = ("aidon", "kaifa", "kamstrup")
_LIST_ID = {"aidon": "AIDON_V0001", "kaifa": "KFM_001", "kamstrup": "Kamstrup_V0001"}
_TYPE = {"aidon": "6525", "kaifa": "MA304H3E", "kamstrup": "6861111"}
_AMP_STEP = {"aidon": 0.1, "kaifa": 0.001, "kamstrup": 0.01}
_WH_STEP = {"aidon": 10.0, "kaifa": 1.0, "kamstrup": 10.0}
_VOLT_STEP = {"aidon": 0.1, "kaifa": 0.1, "kamstrup": 1.0}


@dataclass(frozen=True, slots=True)
class Measurement:
    lines: Triple  # A per line
    power_w: float  # active power, import > 0
    reactive_var: float = 0.0  # inductive > 0
    voltages: Triple | None = None  # as reported (IT: U12, U13, U23); None: 231 V less a sag


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
        skew_s: float = 0.0,
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
        self.export_wh = 0.0
        self.reactive_wh = [0.0, 0.0]  # varh imported, exported
        if skew_s < 0:
            raise ValueError("skew_s must be >= 0")
        self.skew_s = skew_s
        self._history: deque[tuple[float, Measurement]] = deque()
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
            h = (now - last) / 3600.0
            self.import_wh += max(0.0, m.power_w) * h
            self.export_wh += max(0.0, -m.power_w) * h
            self.reactive_wh[0 if m.reactive_var >= 0 else 1] += abs(m.reactive_var) * h
        if self.skew_s > 0:
            hist = self._history
            hist.append((now, m))
            while len(hist) > 1 and hist[1][0] <= now - self.skew_s:
                hist.popleft()
            # the powers as they were skew_s ago, with the currents and voltages of now
            old = hist[0][1]
            m = Measurement(m.lines, old.power_w, old.reactive_var, m.voltages)
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
        p = float(round(m.power_w))
        imp, exp = max(0.0, p), max(0.0, -p)
        if lst == 1:
            return Reading(meter=v, list=1, active_import_w=imp)
        amp = _AMP_STEP[v]
        vstep = _VOLT_STEP[v]

        def q(x: float) -> float:
            return round(round(x / amp) * amp, 3)

        def qv(x: float) -> float:
            return round(round(x / vstep) * vstep, 1)

        l1, l2, l3 = m.lines
        volts = [qv(231.0 - 0.05 * x) for x in m.lines] if m.voltages is None else [qv(x) for x in m.voltages]
        three = self.phases == 3
        it = three and self.network == "IT"
        i1, i3 = q(l1), q(l3)
        i2: float | None = q(l2) if three else None
        estimated: tuple[str, ...] = ()
        u2: float | None = volts[1] if three else None
        if it and v != "kaifa":
            i2 = None  # two-element metering: no I2
        elif it:
            # Kaifa MA304H3E: U2 = 0 on the wire, estimated by the decoder; an I2 of 0 with I1 != I3 is
            # a placeholder the decoder drops (han.template.finish)
            u2 = estimate_l2_voltage(volts[0], volts[2])
            estimated = ("voltage_l2_v",)
            if i2 == 0 and i1 != i3:
                i2 = None
        var = float(round(m.reactive_var))
        fields = dict(
            meter=v,
            list=lst,
            list_id=_LIST_ID[v],
            meter_id=self.meter_id,
            meter_type=_TYPE[v],
            phases=self.phases,
            active_import_w=imp,
            active_export_w=exp,
            reactive_import_var=max(0.0, var),
            reactive_export_var=max(0.0, -var),
            current_l1_a=i1,
            current_l2_a=i2,
            current_l3_a=i3 if three else None,
            voltage_l1_v=volts[0],
            voltage_l2_v=u2,
            voltage_l3_v=volts[2] if three else None,
            estimated=estimated,
        )
        if lst == 3:
            step = _WH_STEP[v]
            clock = self.start + timedelta(seconds=round(t))
            fields.update(
                meter_time=clock.isoformat(),
                active_import_wh=math.floor(self.import_wh / step) * step,
                active_export_wh=math.floor(self.export_wh / step) * step,
                reactive_import_varh=math.floor(self.reactive_wh[0] / step) * step,
                reactive_export_varh=math.floor(self.reactive_wh[1] / step) * step,
            )
        return Reading(**fields)  # type: ignore[arg-type]
