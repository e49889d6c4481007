"""Per-layout fast path: a decoded layout compiled into one ``struct`` over the whole payload.

Meters repeat a handful of layouts, and only values change between frames of one layout. So the
payload is split into skeleton runs (tags, lengths, OBIS codes, scalers, list id, meter type) and
value slots; one ``unpack_from`` reads both, the skeleton is compared with the compiled one, and
the values are scaled. A frame whose skeleton differs is not this layout and falls back to the
generic walk. Cost: one unpack, one tuple comparison and one pass over the slots per frame.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from operator import itemgetter

from han.cosem import datetime_iso
from han.errors import ImplausibleReading
from han.plausibility import RANGES, out_of_range
from han.profiles import Layout
from han.reading import Reading

# Quantities the CT ratio multiplies (voltages are measured directly).
_CT_SCALED = ("_a", "_w", "_var", "_wh", "_varh")


def estimate_l2_voltage(u1: float, u3: float) -> float:
    """Line-to-line voltages of a symmetric 3-wire system are 60 degrees apart (law of cosines)."""
    return round(math.sqrt(u1 * u1 + u3 * u3 - u1 * u3), 1)


def _getter(indices: list[int]) -> Callable[[tuple], tuple]:
    if len(indices) == 1:
        i = indices[0]
        return lambda t: (t[i],)
    return itemgetter(*indices)


class Template:
    __slots__ = ("layout", "size", "_struct", "_skeleton", "_skeleton_of", "_values_of", "_plan",
                 "_constants")

    def __init__(self, info: bytes, layout: Layout, ct_ratio: float = 1.0) -> None:
        self.layout = layout
        self.size = len(info)
        fmt = [">"]
        skeleton_idx: list[int] = []
        value_idx: list[int] = []
        skeleton: list[bytes] = []
        pos = 0
        plan = []
        for slot in sorted(layout.slots, key=lambda s: s.node.vat):
            node = slot.node
            if node.vat > pos:
                skeleton_idx.append(len(fmt) - 1)
                skeleton.append(bytes(info[pos : node.vat]))
                fmt.append(f"{node.vat - pos}s")
            value_idx.append(len(fmt) - 1)
            fmt.append(node.code)
            pos = node.vat + node.size
            # Divide by 10**n rather than multiply by 10**-n: 2306 * 0.1 prints as 230.60000000000002.
            mul, div = (slot.scale, 1) if slot.scale >= 1 else (1.0, round(1 / slot.scale))
            if slot.kind == "num" and ct_ratio != 1.0 and slot.field.endswith(_CT_SCALED):
                mul *= ct_ratio
            low, high = RANGES.get(slot.field, (-math.inf, math.inf))
            plan.append((slot.field, slot.kind, mul, div, low, high))
        if pos < len(info):
            skeleton_idx.append(len(fmt) - 1)
            skeleton.append(bytes(info[pos:]))
            fmt.append(f"{len(info) - pos}s")
        self._struct = struct.Struct("".join(fmt))
        self._skeleton = tuple(skeleton)
        self._skeleton_of = _getter(skeleton_idx) if skeleton_idx else (lambda t: ())
        self._values_of = _getter(value_idx)
        self._plan = tuple(plan)
        self._constants = dict(layout.constants)

    def apply(self, info: bytes) -> Reading | None:
        """The reading, or None when ``info`` is not of this layout; raises ``ImplausibleReading``
        for a value outside its physical range."""
        if len(info) != self.size:
            return None
        raw = self._struct.unpack_from(info)
        if self._skeleton_of(raw) != self._skeleton:
            return None
        fields: dict = dict(self._constants)
        for (field, kind, mul, div, low, high), value in zip(self._plan, self._values_of(raw), strict=True):
            if kind == "num":
                number = value * mul / div
                if not low <= number <= high:
                    raise ImplausibleReading(out_of_range(field, number) or field)
                fields[field] = number
            elif kind == "str":
                fields[field] = value.decode("latin-1")
            else:
                fields[field] = datetime_iso(value)
        return finish(self.layout, fields)


def finish(layout: Layout, fields: dict) -> Reading:
    """Apply the rules that make a list a normalised reading: missing values, phases, estimates."""
    if layout.list == 1:
        return Reading(meter=layout.meter, list=1, **fields)
    if (layout.three_wire and fields.get("voltage_l2_v") == 0 and fields.get("voltage_l1_v")
            and fields.get("voltage_l3_v")):
        # 3-wire meters (Kaifa MA304H3E/T3) send U2 = 0 for "not measured"; I2 = 0 with I1 != I3
        # is a placeholder too, since on three wires |I2| >= ||I1| - |I3||. On a 4-wire meter a
        # zero stays a zero: a lost phase must not be hidden behind an estimate.
        fields["voltage_l2_v"] = None
        if fields.get("current_l2_a") == 0 and fields.get("current_l1_a") != fields.get("current_l3_a"):
            fields["current_l2_a"] = None
    get = fields.get  # explicit tests, not any() over a generator: this runs for every frame
    three = (get("current_l2_a") is not None or get("current_l3_a") is not None
             or get("voltage_l2_v") is not None or get("voltage_l3_v") is not None)
    estimated: tuple[str, ...] = ()
    if three and fields.get("voltage_l2_v") is None:
        u1, u3 = fields.get("voltage_l1_v"), fields.get("voltage_l3_v")
        if u1 and u3:
            fields["voltage_l2_v"] = estimate_l2_voltage(u1, u3)
            estimated = ("voltage_l2_v",)
    return Reading(meter=layout.meter, list=layout.list, phases=3 if three else 1, estimated=estimated,
                   **fields)
