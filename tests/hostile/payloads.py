"""Hostile payloads for every topic the device and its chargers listen to (issue 13 items 3 and 4).

Each is what a neighbour on the broker, a broken client or a corrupted retained message could send:
deep nesting, huge and non-finite numbers, wrong types, zone-less and impossible times, unknown
charger ids, out-of-range currents, 1 MB, not UTF-8, not JSON at all.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

BIG = "1" + "0" * 400  # a 400-digit integer

GOOD_STATE: dict[str, Any] = {"state": "charging", "current_l1_a": 10.0, "current_l2_a": 10.0,
                              "current_l3_a": 10.0, "max_a": 32, "phases": 3}
GOOD_HEADROOM: dict[str, Any] = {"l1_a": 10.0, "l2_a": 10.0, "l3_a": 10.0, "ts": "2026-01-12T21:00:00.000Z",
                                 "stale": False}
GOOD_SETPOINT: dict[str, Any] = {"current_a": 10.0, "reason": "x", "ts": "2026-01-12T21:00:00.000Z"}
PLAN_SLOT = {"start": "2026-01-12T23:00:00", "end": "2026-01-13T00:00:00", "current_a": 16.0,  # naive
             "energy_kwh": 11.0, "spot_nok_per_kwh": 0.5, "grid_nok_per_kwh": 0.3, "cost_nok": 8.8}
NAIVE_PLAN: dict[str, Any] = {
    "created": "2026-01-12T22:00:00", "strategy": "cheapest", "area": "NO1", "feasible": True, "cost_nok": 1.0,
    "energy_kwh": 11.0, "prices_known_until": "2026-01-13T23:00:00", "notes": [], "capacity_cap_kw": None,
    "peak_hour_kwh": None, "capacity_excess_kwh": 0.0,
    "chargers": [{"charger": {"id": "a", "max_a": 32, "phases": 3, "network": "TN", "voltage_v": 230, "min_a": 6},
                  "departure": "2026-01-13T07:00:00", "energy_needed_kwh": 11, "energy_kwh": 11, "cost_nok": 1,
                  "spot_nok": 1, "grid_nok": 0, "feasible": True, "reason": None, "slots": [PLAN_SLOT]}],
}


def _with(base: dict[str, Any], key: str, raw: str) -> bytes:
    """``base`` with ``key`` set to the raw JSON text ``raw`` (a number json.dumps would not write)."""
    text = json.dumps({**base, key: "@@"})
    return text.replace('"@@"', raw).encode()


def corpus() -> list[tuple[str, bytes]]:
    """(name, payload): the hand-made hostile payloads, each sent to every topic."""
    out: list[tuple[str, bytes]] = [
        ("nested 1000 deep array", b"[" * 1000 + b"]" * 1000),
        ("nested 1000 deep object", b'{"a":' * 1000 + b"1" + b"}" * 1000),
        ("1 MB", b'{"pad":"' + b"x" * 1_000_000 + b'"}'),
        ("not JSON", b"\x00\xff\xfe garbage"),
        ("not UTF-8 JSON", b'{"state":"\xff\xfe"}'),
        ("a number", b"1"),
        ("null", b"null"),
        ("a list", b"[1, 2, 3]"),
        ("naive eco plan", json.dumps(NAIVE_PLAN).encode()),
        ("impossible time", _with(GOOD_HEADROOM, "ts", '"9999-99-99T99:99:99Z"')),
        ("year 1", _with(GOOD_STATE, "ts", '"0001-01-01T00:00:00+14:00"')),
        ("naive ts", _with(GOOD_STATE, "ts", '"2026-01-12T21:00:00"')),
        ("wrong type", _with(GOOD_STATE, "current_l1_a", '"ten"')),
        ("negative current", _with(GOOD_STATE, "current_l1_a", "-500")),
        ("huge current", _with(GOOD_STATE, "current_l2_a", "1e300")),
        ("out-of-range current", _with(GOOD_STATE, "current_l1_a", "400")),
        ("huge setpoint", _with(GOOD_SETPOINT, "current_a", "1e300")),
        ("negative setpoint", _with(GOOD_SETPOINT, "current_a", "-5")),
        ("huge headroom", _with(GOOD_HEADROOM, "l1_a", "400")),
    ]
    for name, base in (("state", GOOD_STATE), ("headroom", GOOD_HEADROOM), ("setpoint", GOOD_SETPOINT)):
        for key in base:
            out += [(f"{name}.{key} 400 digits", _with(base, key, BIG)),
                    (f"{name}.{key} NaN", _with(base, key, "NaN")),
                    (f"{name}.{key} inf", _with(base, key, "1e999"))]
    out.append(("headroom.seq 400 digits", _with(GOOD_HEADROOM, "seq", BIG)))
    return out


# --- hypothesis ---------------------------------------------------------------------------------------

_leaf = (st.none() | st.booleans() | st.integers(min_value=-(10**400), max_value=10**400)
         | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
         | st.sampled_from(["2026-01-12T21:00:00", "2026-01-12T21:00:00Z", "9999-12-31T23:59:59-23:59",
                            "charging", "disconnected", "a", "zz-unknown"]))
json_values = st.recursive(_leaf, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=12), kids, max_size=5), max_leaves=30)


def _encode(value: Any) -> bytes:
    # NaN, inf and 400-digit integers as JSON text (the standard library writes them; msgspec must refuse)
    return json.dumps(value, allow_nan=True).encode()


def _mutate(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    return st.builds(lambda k, v: _encode({**base, k: v}), st.sampled_from(sorted(base)), json_values)


payloads = st.one_of(
    json_values.map(_encode),
    _mutate(GOOD_STATE), _mutate(GOOD_HEADROOM), _mutate(GOOD_SETPOINT), _mutate(NAIVE_PLAN),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.binary(max_size=200),
    st.sampled_from([p for _, p in corpus()]),
)
