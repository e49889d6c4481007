"""OBIS codes of the Norwegian HAN lists (NVE/NEK OBIS list information), named after Reading fields.

Aidon and Kaifa use value group B = 0, Kamstrup B = 1; both are listed so a table lookup decides.
"""

from __future__ import annotations

from han.cosem import obis

LIST_VERSION = obis("1-1:0.2.129.255")
CLOCK = (obis("0-0:1.0.0.255"), obis("0-1:1.0.0.255"))
METER_ID = (obis("0-0:96.1.0.255"), obis("1-1:0.0.5.255"))
METER_TYPE = (obis("0-0:96.1.7.255"), obis("1-1:96.1.1.255"))

# C.D.E of the measured quantities -> (Reading field, COSEM unit code the in-band scaler-unit must carry)
_QUANTITIES = {
    (1, 7, 0): ("active_import_w", 27),
    (2, 7, 0): ("active_export_w", 27),
    (3, 7, 0): ("reactive_import_var", 29),
    (4, 7, 0): ("reactive_export_var", 29),
    (31, 7, 0): ("current_l1_a", 33),
    (51, 7, 0): ("current_l2_a", 33),
    (71, 7, 0): ("current_l3_a", 33),
    (32, 7, 0): ("voltage_l1_v", 35),
    (52, 7, 0): ("voltage_l2_v", 35),
    (72, 7, 0): ("voltage_l3_v", 35),
    (1, 8, 0): ("active_import_wh", 30),
    (2, 8, 0): ("active_export_wh", 30),
    (3, 8, 0): ("reactive_import_varh", 32),
    (4, 8, 0): ("reactive_export_varh", 32),
}

# 6-byte OBIS -> field name, for registers of value groups A=1, B=0 or 1, F=255.
QUANTITY_BY_OBIS: dict[bytes, str] = {
    bytes((1, b, c, d, e, 255)): name for (c, d, e), (name, _) in _QUANTITIES.items() for b in (0, 1)
}
UNIT_OF: dict[str, int] = {name: unit for (name, unit) in _QUANTITIES.values()}
FIELD_OBIS: dict[str, tuple[int, int, int]] = {name: cde for cde, (name, _) in _QUANTITIES.items()}


def register_code(field: str, group_b: int) -> bytes:
    """The OBIS code a vendor tags a measured quantity with (A = 1, its value group B, F = 255)."""
    c, d, e = FIELD_OBIS[field]
    return bytes((1, group_b, c, d, e, 255))
