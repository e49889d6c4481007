"""The three Norwegian list layouts, as data read by one engine (after dsmr_parser's tables).

``identify(notification)`` looks at a decoded notification once per new layout and says which
value node feeds which ``Reading`` field with which scale; ``han.template`` then compiles that into
a struct that decodes every later frame of the same layout without walking it again.
"""

from __future__ import annotations

from dataclasses import dataclass

from han import axdr, obis
from han.apdu import Notification
from han.errors import UnsupportedList

AIDON_LIST_ID = "AIDON_V0001"
KAIFA_LIST_ID = "KFM_001"
KAMSTRUP_LIST_ID = "Kamstrup_V0001"
SUPPORTED_METERS = ("aidon", "kaifa", "kamstrup")

# Kamstrup sends no scalers: fixed scaling of Kamstrup HAN-NVE rev 3.1 §2.7.
KAMSTRUP_SCALE = {"a": 0.01, "a_ct": 0.001, "v": 1.0, "w": 1.0, "var": 1.0, "wh": 10.0, "varh": 10.0}
# Kaifa's positional list: mA, 0.1 V, W, var, Wh, varh.
KAIFA_SCALE = {"a": 0.001, "v": 0.1, "w": 1.0, "var": 1.0, "wh": 1.0, "varh": 1.0}

_KAIFA_L2_1P = ("list_id", "meter_id", "meter_type", "active_import_w", "active_export_w",
                "reactive_import_var", "reactive_export_var", "current_l1_a", "voltage_l1_v")
_KAIFA_L2_3P = ("list_id", "meter_id", "meter_type", "active_import_w", "active_export_w",
                "reactive_import_var", "reactive_export_var", "current_l1_a", "current_l2_a",
                "current_l3_a", "voltage_l1_v", "voltage_l2_v", "voltage_l3_v")
_KAIFA_ENERGY = ("meter_time", "active_import_wh", "active_export_wh", "reactive_import_varh",
                 "reactive_export_varh")
# Element count of the KFM_001 structure -> (list, fields in order).
KAIFA_LAYOUTS: dict[int, tuple[int, tuple[str, ...]]] = {
    9: (2, _KAIFA_L2_1P),
    13: (2, _KAIFA_L2_3P),
    14: (3, _KAIFA_L2_1P + _KAIFA_ENERGY),
    18: (3, _KAIFA_L2_3P + _KAIFA_ENERGY),
}
_NUMBER_TAGS = frozenset(t for t in axdr.FIXED if t not in (0x03, 0x17, 0x18))


def unit_suffix(field: str) -> str:
    return field.rsplit("_", 1)[1]


@dataclass(frozen=True, slots=True)
class Slot:
    """A value node that feeds ``field``: a number times ``scale``, a string, or a date-time."""

    node: axdr.Node
    field: str
    kind: str  # "num" | "str" | "time"
    scale: float = 1.0


@dataclass(frozen=True, slots=True)
class Layout:
    meter: str
    list: int
    slots: tuple[Slot, ...]
    constants: tuple[tuple[str, str], ...]  # fields fixed by the layout (list id, meter type)
    kaifa_three_wire: bool = False  # Kaifa IT meters: U2 = 0 and I2 = 0 are placeholders


def identify(note: Notification) -> Layout:
    body = note.body
    header_time = _header_time_slot(note)
    if body.tag == axdr.ARRAY:
        return _aidon(body)
    if body.tag == axdr.STRUCTURE and body.items:
        first = body.items[0]
        if first.tag == axdr.VISIBLE_STRING:
            return _kamstrup(body, header_time)
        if first.tag == axdr.OCTET_STRING or (len(body.items) == 1 and first.tag in _NUMBER_TAGS):
            return _kaifa(body, header_time)
    raise UnsupportedList(f"unknown layout: {_describe(body)}")


def _header_time_slot(note: Notification) -> Slot | None:
    if note.time_raw is None or len(note.time_raw) != 12:
        return None
    node = axdr.Node(axdr.OCTET_STRING, note.time_at - 2, note.time_at, 12, note.time_raw)
    return Slot(node, "meter_time", "time")


def _describe(node: axdr.Node) -> str:
    kinds = ", ".join(axdr.type_name(i.tag) for i in node.items[:4])
    more = ", ..." if len(node.items) > 4 else ""
    return f"{axdr.type_name(node.tag)} of {len(node.items)} elements ({kinds}{more})"


def _text(node: axdr.Node) -> str:
    return bytes(node.value).decode("latin-1")  # type: ignore[arg-type]


def _shown(node: axdr.Node) -> str:
    """A string element for an error message: text when printable, else hex."""
    raw = bytes(node.value)  # type: ignore[arg-type]
    return repr(raw.decode("ascii")) if raw.isascii() and raw.decode("ascii").isprintable() else raw.hex(" ")


def _register_slot(field: str, value: axdr.Node, scale: float) -> Slot:
    if value.tag not in _NUMBER_TAGS:
        raise UnsupportedList(f"{field} sent as {axdr.type_name(value.tag)}, a number was expected")
    return Slot(value, field, "num", scale)


def _id_slot(field: str, value: axdr.Node) -> Slot:
    if value.tag not in (axdr.OCTET_STRING, axdr.VISIBLE_STRING):
        raise UnsupportedList(f"{field} sent as {axdr.type_name(value.tag)}, a string was expected")
    return Slot(value, field, "str")


def _time_slot(value: axdr.Node) -> Slot:
    if value.tag not in (axdr.OCTET_STRING, axdr.DATE_TIME) or value.size != 12:
        raise UnsupportedList(f"clock sent as {axdr.type_name(value.tag)} of {value.size} bytes")
    return Slot(value, "meter_time", "time")


def _aidon(body: axdr.Node) -> Layout:
    slots: list[Slot] = []
    list_id = meter_type = None
    for element in body.items:
        items = element.items
        if element.tag != axdr.STRUCTURE or len(items) not in (2, 3) or items[0].tag != axdr.OCTET_STRING:
            raise UnsupportedList(f"OBIS-tagged array with a {_describe(element)}")
        code = bytes(items[0].value)  # type: ignore[arg-type]
        value = items[1]
        if code == obis.LIST_VERSION:
            list_id = _text(value)
        elif code in obis.METER_TYPE:
            meter_type = _text(value)
        elif code in obis.METER_ID:
            slots.append(_id_slot("meter_id", value))
        elif code in obis.CLOCK:
            slots.append(_time_slot(value))
        elif code in obis.QUANTITY_BY_OBIS:
            field = obis.QUANTITY_BY_OBIS[code]
            scale = 1.0
            if len(items) == 3:
                scaler_unit = items[2].items
                if len(scaler_unit) != 2:
                    raise UnsupportedList(f"{field}: scaler-unit is not a pair")
                if scaler_unit[0].tag not in (0x0F, 0x10) or scaler_unit[1].tag != 0x16:
                    raise UnsupportedList(f"{field}: scaler-unit is not (integer, enum)")
                scaler, unit = scaler_unit[0].value, scaler_unit[1].value
                if unit != obis.UNIT_OF[field]:
                    raise UnsupportedList(f"{field} in unit code {unit}, {obis.UNIT_OF[field]} was expected")
                scale = 10.0 ** int(scaler)  # type: ignore[arg-type]
            slots.append(_register_slot(field, value, scale))
    fields = {s.field for s in slots}
    if list_id is None:
        # List 1 carries no list id: one register, active import power.
        if fields == {"active_import_w"} and len(body.items) == 1:
            return Layout("aidon", 1, tuple(slots), ())
        raise UnsupportedList(f"OBIS-tagged list without a list id ({len(body.items)} registers)")
    if list_id != AIDON_LIST_ID:
        raise UnsupportedList(f"list id {list_id!r} (not {AIDON_LIST_ID})")
    number = 3 if "active_import_wh" in fields or "meter_time" in fields else 2
    constants = [("list_id", list_id)] + ([("meter_type", meter_type)] if meter_type is not None else [])
    return Layout("aidon", number, tuple(slots), tuple(constants))


def _kamstrup(body: axdr.Node, header_time: Slot | None) -> Layout:
    list_id = _text(body.items[0])
    if list_id != KAMSTRUP_LIST_ID:
        raise UnsupportedList(f"list id {_shown(body.items[0])} (not {KAMSTRUP_LIST_ID})")
    pairs = body.items[1:]
    if len(pairs) % 2:
        raise UnsupportedList(f"Kamstrup list with an odd number ({len(pairs)}) of OBIS/value elements")
    meter_type = None
    registers: list[tuple[str, axdr.Node]] = []
    slots: list[Slot] = []
    clock: Slot | None = None
    for code_node, value in zip(pairs[::2], pairs[1::2], strict=True):
        if code_node.tag == axdr.NULL:
            if value.tag != axdr.NULL:
                raise UnsupportedList("Kamstrup value without an OBIS code")
            continue  # single-phase meters pad absent registers with null-data
        if code_node.tag != axdr.OCTET_STRING or code_node.size != 6:
            raise UnsupportedList(f"Kamstrup element {axdr.type_name(code_node.tag)} where an OBIS code belongs")
        code = bytes(code_node.value)  # type: ignore[arg-type]
        if code in obis.METER_TYPE:
            meter_type = _text(value)
        elif code in obis.METER_ID:
            slots.append(_id_slot("meter_id", value))
        elif code in obis.CLOCK:
            clock = _time_slot(value)
        elif code in obis.QUANTITY_BY_OBIS:
            registers.append((obis.QUANTITY_BY_OBIS[code], value))
    ct_meter = meter_type is not None and meter_type.startswith("685")
    for field, value in registers:
        unit = unit_suffix(field)
        scale = KAMSTRUP_SCALE["a_ct" if unit == "a" and ct_meter else unit]
        slots.append(_register_slot(field, value, scale))
    time_slot = header_time or clock
    if time_slot is not None:
        slots.append(time_slot)
    fields = {s.field for s in slots}
    number = 3 if "active_import_wh" in fields or clock is not None else 2
    constants = [("list_id", list_id)] + ([("meter_type", meter_type)] if meter_type is not None else [])
    return Layout("kamstrup", number, tuple(slots), tuple(constants))


def _kaifa(body: axdr.Node, header_time: Slot | None) -> Layout:
    items = body.items
    if len(items) == 1:
        slots = [_register_slot("active_import_w", items[0], KAIFA_SCALE["w"])]
        if header_time is not None:
            slots.append(header_time)
        return Layout("kaifa", 1, tuple(slots), ())
    list_id = _text(items[0])
    if list_id != KAIFA_LIST_ID:
        raise UnsupportedList(f"list id {_shown(items[0])} (not {KAIFA_LIST_ID})")
    if len(items) not in KAIFA_LAYOUTS:
        raise UnsupportedList(f"{KAIFA_LIST_ID} list of {len(items)} elements (9, 13, 14 or 18 expected)")
    number, fields = KAIFA_LAYOUTS[len(items)]
    slots = []
    constants = [("list_id", list_id)]
    for field, value in zip(fields, items, strict=True):
        if field == "list_id":
            continue
        if field == "meter_type":
            if value.tag != axdr.OCTET_STRING:
                raise UnsupportedList(f"meter type sent as {axdr.type_name(value.tag)}")
            constants.append((field, _text(value)))
        elif field == "meter_id":
            slots.append(_id_slot(field, value))
        elif field == "meter_time":
            if header_time is None:
                slots.append(_time_slot(value))
        else:
            if value.tag != 0x06:
                # KFM_001 sends every quantity as double-long-unsigned; other types mean another list.
                raise UnsupportedList(f"{field} sent as {axdr.type_name(value.tag)} in a {KAIFA_LIST_ID} list")
            slots.append(_register_slot(field, value, KAIFA_SCALE[unit_suffix(field)]))
    if header_time is not None:
        slots.append(header_time)
    return Layout("kaifa", number, tuple(slots), tuple(constants), kaifa_three_wire=True)
