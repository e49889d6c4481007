"""Frame builder: a ``Reading`` to the exact bytes a Norwegian AMS meter pushes on its HAN port.

The decoder's half of each vendor profile (``han.profiles``: list layouts, scaling) and the sending
half next to it (``WIRE_FORMATS``: addresses, control byte, invoke id, header date-time form, value
types, how a meter kind leaves registers out) are one description read in two directions: ``han``
parses with it, this module builds with it, from the same A-XDR type table (``han.axdr``).

    spec = MeterSpec("aidon", "3p-it")
    frame = build(reading, spec)        # 7E A1 0B 41 08 83 13 ... 7E
    reported(reading, spec)             # what a decoder reads back from ``frame``
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from datetime import datetime

from han import axdr, obis
from han.apdu import DATA_NOTIFICATION, LLC
from han.cosem import datetime_bytes, datetime_iso
from han.hdlc import build_frame
from han.profiles import (
    HEADER_TIME_BARE,
    HEADER_TIME_NONE,
    HEADER_TIME_OCTET_STRING,
    LIST_FIELDS,
    METER_KINDS,
    NULL_PAD,
    OMIT,
    PUSH_SCHEDULES,
    SUPPORTED_METERS,
    WIRE_FORMATS,
    ZERO,
    Layout,
    WireFormat,
    kamstrup_ct_meter,
    unit_suffix,
)
from han.reading import Reading
from han.template import finish

# Identities of the simulated meters: the vendors' GS1 prefixes with made-up serials, and real
# model numbers (Aidon 6515/6534/6525, Kaifa MA105H2E/MA304H4/MA304H3E, Kamstrup 686/684).
DEFAULT_IDENTITY: dict[tuple[str, str], tuple[str, str]] = {
    ("aidon", "1p"): ("7359992900000101", "6515"),
    ("aidon", "3p-tn"): ("7359992900000303", "6534"),
    ("aidon", "3p-it"): ("7359992900000305", "6525"),
    ("kaifa", "1p"): ("6970631400000101", "MA105H2E"),
    ("kaifa", "3p-tn"): ("6970631400000303", "MA304H4"),
    ("kaifa", "3p-it"): ("6970631400000305", "MA304H3E"),
    ("kamstrup", "1p"): ("5706567200000101", "6861111BN242101040"),
    ("kamstrup", "3p-tn"): ("5706567200000303", "6841131BN243101040"),
    ("kamstrup", "3p-it"): ("5706567200000305", "6841131BN243101040"),
}
_HEADER_TIMES = (HEADER_TIME_NONE, HEADER_TIME_OCTET_STRING, HEADER_TIME_BARE)
_INTEGER, _ENUM = 0x0F, 0x16  # A-XDR types of a scaler-unit pair


@dataclass(frozen=True, slots=True)
class MeterSpec:
    """Which meter sends: vendor, kind, identity and the variants a reading does not tell."""

    vendor: str
    kind: str = "3p-tn"
    meter_id: str = ""  # "" = the default identity of this vendor and kind
    meter_type: str = ""
    omit_u2: bool = False  # some Aidon 3-wire meters leave out UL2 as well as IL2
    header_time: str = ""  # "" = the vendor's; Kamstrup's old firmware sends "octet-string" (09 0C)
    clock_status: int = 0x00  # COSEM clock status byte (0x80: daylight saving active)

    def __post_init__(self) -> None:
        if self.vendor not in SUPPORTED_METERS:
            raise ValueError(f"unknown vendor {self.vendor!r} ({', '.join(SUPPORTED_METERS)})")
        if self.kind not in METER_KINDS:
            raise ValueError(f"unknown meter kind {self.kind!r} ({', '.join(METER_KINDS)})")
        if self.omit_u2 and (self.vendor, self.kind) != ("aidon", "3p-it"):
            raise ValueError("only Aidon 3-wire (3p-it) meters leave out the L2 voltage")
        if self.header_time and self.header_time not in _HEADER_TIMES:
            raise ValueError(f"header date-time form {self.header_time!r} is not one of {_HEADER_TIMES}")
        meter_id, meter_type = DEFAULT_IDENTITY[(self.vendor, self.kind)]
        if not self.meter_id:
            object.__setattr__(self, "meter_id", meter_id)
        if not self.meter_type:
            object.__setattr__(self, "meter_type", meter_type)

    @property
    def wire(self) -> WireFormat:
        return WIRE_FORMATS[self.vendor]

    @property
    def lists(self) -> tuple[int, ...]:
        schedule = PUSH_SCHEDULES[self.vendor]
        lists = (schedule.fast_list, schedule.slow_list, schedule.hourly_list)
        return tuple(n for n in lists if n is not None)

    @property
    def absent(self) -> dict[str, str]:
        """Field -> how this meter leaves it out (OMIT, NULL_PAD or ZERO)."""
        out = dict(self.wire.absent[self.kind])
        if self.omit_u2:
            out["voltage_l2_v"] = OMIT
        return out

    @property
    def phases(self) -> int:
        return 1 if self.kind == "1p" else 3

    def scale(self, field: str) -> float:
        unit = unit_suffix(field)
        if self.vendor == "kamstrup" and unit == "a" and kamstrup_ct_meter(self.meter_type):
            return self.wire.scale["a_ct"]
        return self.wire.scale[unit]


def spec_for(reading: Reading, **variant) -> MeterSpec:
    """The meter a decoded reading came from, as far as the reading tells (see ``MeterSpec``)."""
    kind = "3p-tn"
    omit_u2 = False
    if reading.phases == 1:
        kind = "1p"
    elif reading.phases == 3:
        u2_missing = "voltage_l2_v" in reading.estimated
        if reading.meter == "kaifa":
            kind = "3p-it" if u2_missing else "3p-tn"
        else:
            kind = "3p-it" if reading.current_l2_a is None else "3p-tn"
            omit_u2 = reading.meter == "aidon" and u2_missing
    identity = {"meter_id": reading.meter_id or "", "meter_type": reading.meter_type or ""}
    return MeterSpec(reading.meter, kind, omit_u2=omit_u2, **identity | variant)


# --- building ----------------------------------------------------------------------------------


def count_of(value: float, scale: float) -> int:
    """The integer a meter sends for ``value`` (the decoder divides by 10**n the same way)."""
    return round(value * round(1 / scale)) if scale < 1 else round(value / scale)


def value_of(count: int, scale: float) -> float:
    return count / round(1 / scale) if scale < 1 else count * scale


def clock_bytes(iso: str, spec: MeterSpec) -> bytes:
    """The 12-byte COSEM date-time this vendor sends for a meter time given in ISO 8601."""
    when = datetime.fromisoformat(iso)
    raw = bytearray(datetime_bytes(when, with_offset=spec.wire.deviation, status=spec.clock_status))
    if raw[4] == 7:
        raw[4] = spec.wire.sunday
    return bytes(raw)


def build(reading: Reading, spec: MeterSpec) -> bytes:
    """The HDLC frame (flags and checks included) a ``spec`` meter sends for ``reading``."""
    wire = spec.wire
    return build_frame(build_info(reading, spec), wire.dest, wire.src, wire.control)


def build_info(reading: Reading, spec: MeterSpec) -> bytes:
    """The HDLC information field: LLC, DATA-NOTIFICATION header and the list."""
    wire = spec.wire
    if reading.meter != spec.vendor:
        raise ValueError(f"a {reading.meter} reading cannot be sent by a {spec.vendor} meter")
    if reading.list not in spec.lists:
        raise ValueError(f"{spec.vendor} meters push lists {spec.lists}, not list {reading.list}")
    header_time = spec.header_time or wire.header_time
    head = LLC + bytes((DATA_NOTIFICATION,)) + wire.invoke_id.to_bytes(4, "big")
    if header_time == HEADER_TIME_NONE:
        head += b"\x00"  # the optional date-time is absent
    else:
        clock = clock_bytes(_meter_time(reading), spec)
        # An octet string of 12 bytes, or (Kamstrup) its length without the tag.
        head += (axdr.encode(axdr.OCTET_STRING, clock) if header_time == HEADER_TIME_OCTET_STRING
                 else bytes((len(clock),)) + clock)
    return head + _body(reading, spec)


def _meter_time(reading: Reading) -> str:
    if reading.meter_time is None:
        raise ValueError(f"{reading.meter} list {reading.list} carries the meter time; the reading has none")
    return reading.meter_time


def _body(reading: Reading, spec: MeterSpec) -> bytes:
    wire = spec.wire
    absent = spec.absent
    items: list[bytes] = []
    for field in LIST_FIELDS[reading.list]:
        how = absent.get(field)
        if how == OMIT:
            continue
        if how == NULL_PAD:
            items += (axdr.encode(axdr.NULL), axdr.encode(axdr.NULL))  # null-data for the OBIS code and value
            continue
        value = _encoded_value(field, reading, spec, zero=how == ZERO)
        if not wire.obis_tagged:
            items.append(value)
            continue
        if field in wire.identity_obis:
            code = wire.identity_obis[field]
            tagged = [value] if code is None else [axdr.encode(axdr.OCTET_STRING, code), value]
        else:
            tagged = [axdr.encode(axdr.OCTET_STRING, obis.register_code(field, wire.group_b)), value]
            if wire.in_band_scaler:
                scaler = round(math.log10(wire.scale[unit_suffix(field)]))
                tagged.append(axdr.structure(axdr.encode(_INTEGER, scaler), axdr.encode(_ENUM, obis.UNIT_OF[field])))
        # Aidon: an array of one structure per register; Kamstrup: one flat structure of pairs.
        items += [axdr.structure(*tagged)] if wire.container == axdr.ARRAY else tagged
    return axdr.encode_container(wire.container, items)


def _encoded_value(field: str, reading: Reading, spec: MeterSpec, zero: bool) -> bytes:
    wire = spec.wire
    if field == "list_id":
        return axdr.encode(wire.string_tag, wire.list_id)
    if field in ("meter_id", "meter_type"):
        return axdr.encode(wire.string_tag, getattr(reading, field) or getattr(spec, field))
    if field == "meter_time":
        return axdr.encode(axdr.OCTET_STRING, clock_bytes(_meter_time(reading), spec))
    value = getattr(reading, field)
    if field in reading.estimated:
        zero = True  # computed by a decoder, so not measured: what meters send for that is 0
    if value is None and (zero or not wire.obis_tagged):
        value = 0  # a positional list has no way to leave a value out
    if value is None:
        raise ValueError(f"a {spec.vendor} {spec.kind} meter sends {field}; the reading has none")
    tag = wire.value_tags[unit_suffix(field)]
    count = 0 if zero else count_of(value, spec.scale(field))
    try:
        return axdr.encode(tag, count)
    except struct.error as exc:  # out of the type's range
        raise ValueError(f"{field} = {value} does not fit a {axdr.type_name(tag)} ({exc})") from None


# --- what a decoder reads back -----------------------------------------------------------------


def reported(reading: Reading, spec: MeterSpec) -> Reading:
    """The reading a decoder gets from ``build(reading, spec)``: values at the meter's resolution,
    what the kind does not send left out, and the decoder's normalisation (phases, estimates)."""
    wire = spec.wire
    absent = spec.absent
    fields: dict = {}
    for field in LIST_FIELDS[reading.list]:
        how = absent.get(field)
        if how in (OMIT, NULL_PAD):
            continue
        if field == "list_id":
            fields[field] = wire.list_id
        elif field in ("meter_id", "meter_type"):
            fields[field] = getattr(reading, field) or getattr(spec, field)
        elif field == "meter_time":
            fields[field] = datetime_iso(clock_bytes(_meter_time(reading), spec))
        else:
            value = getattr(reading, field)
            if how == ZERO or value is None or field in reading.estimated:
                value = 0
            scale = spec.scale(field)
            fields[field] = value_of(count_of(value, scale), scale)
    if (spec.header_time or wire.header_time) != HEADER_TIME_NONE:
        fields["meter_time"] = datetime_iso(clock_bytes(_meter_time(reading), spec))
    if reading.list == 1:
        fields.pop("meter_type", None)
    layout = Layout(spec.vendor, reading.list, (), (), three_wire=spec.kind == "3p-it")
    return finish(layout, fields)

