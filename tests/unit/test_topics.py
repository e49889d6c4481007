from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apm import topics as tp
from han.reading import Reading

T = tp.Topics("APM000123")
# The unit a numeric JSON field name ends in (the one exception, "ts", is a time string).
UNIT_SUFFIX = re.compile(r"_(a|v|w|wh|var|varh|s|pct)$")


def test_tree_under_one_root() -> None:
    assert T.status == "apm/APM000123/status"
    assert [T.reading(n) for n in (1, 2, 3)] == [f"apm/APM000123/reading/list{n}" for n in (1, 2, 3)]
    assert T.headroom == "apm/APM000123/headroom"
    assert T.energy_hourly == "apm/APM000123/energy/hourly"
    assert T.subscription == "apm/APM000123/subscription"
    assert T.charger_state("garage") == "apm/APM000123/charger/garage/state"
    assert T.charger_setpoint("garage") == "apm/APM000123/charger/garage/setpoint"
    assert T.eco_plan == "apm/APM000123/eco/plan"
    assert T.all_charger_states == "apm/APM000123/charger/+/state"


def test_parse_names_every_topic_it_builds() -> None:
    assert T.parse(T.status) == tp.TopicRef(tp.STATUS)
    assert T.parse(T.reading(2)) == tp.TopicRef(tp.READING, list=2)
    assert T.parse(T.headroom) == tp.TopicRef(tp.HEADROOM)
    assert T.parse(T.energy_hourly) == tp.TopicRef(tp.ENERGY_HOURLY)
    assert T.parse(T.subscription) == tp.TopicRef(tp.SUBSCRIPTION)
    assert T.parse(T.charger_state("c-1")) == tp.TopicRef(tp.CHARGER_STATE, charger="c-1")
    assert T.parse(T.charger_setpoint("c-1")) == tp.TopicRef(tp.CHARGER_SETPOINT, charger="c-1")
    assert T.parse(T.eco_plan) == tp.TopicRef(tp.ECO_PLAN)
    for foreign in ("apm/OTHER/status", "apm/APM000123", "apm/APM000123/reading/list4",
                    "apm/APM000123/charger/x/y/state", "homeassistant/sensor/x/config"):
        assert T.parse(foreign) is None, foreign


@given(st.text(min_size=1, max_size=20).filter(lambda s: not any(c in s for c in "/+#\x00")))
def test_any_legal_charger_id_round_trips(cid: str) -> None:
    assert T.parse(T.setpoint_message(cid, tp.SetpointPayload.make(6, "x", ts=0)).topic).charger == cid


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "x\x00"])
def test_ids_that_cannot_be_a_topic_level_are_refused(bad: str) -> None:
    with pytest.raises(tp.TopicError):
        T.charger_state(bad)
    with pytest.raises(tp.TopicError):
        tp.Topics(bad)


def test_reading_message_is_the_schema_json_and_retained() -> None:
    r = Reading(meter="kaifa", list=2, current_l1_a=7.5, voltage_l1_v=230.1, estimated=("current_l2_a",))
    m = T.reading_message(r)
    assert (m.topic, m.qos, m.retain) == (T.reading(2), 0, True)
    assert json.loads(m.payload) == r.to_json_dict()
    assert tp.decode_reading(m.payload) == r
    assert T.reading_message(r.to_json_dict()) == m
    with pytest.raises(tp.PayloadError):
        T.reading_message({"meter": "kaifa", "list": 7})


def test_delivery_flags() -> None:
    h = T.headroom_message(tp.HeadroomPayload.make(10, 11, None, ts=0))
    assert (h.qos, h.retain) == (0, False)  # a command input must not outlive its publisher
    s = T.setpoint_message("c", tp.SetpointPayload.make(16, "share", ts=0), ttl_s=5)
    assert (s.qos, s.retain, s.ttl_s) == (1, False, 5)
    e = T.energy_message({"id": "x", "import_wh": 1})
    assert (e.topic, e.qos, e.retain) == (T.energy_hourly, 1, False)
    assert (T.status_message(True).payload, T.status_message(True).retain) == (b"online", True)
    assert tp.decode_status(T.status_message(False).payload) is False


def test_headroom_payload_round_trip_and_units() -> None:
    h = tp.HeadroomPayload.make(12.5, 3.0, None, ts=datetime(2024, 1, 15, 10, tzinfo=UTC), stale=True)
    d = json.loads(T.headroom_message(h).payload)
    assert d == {"l1_a": 12.5, "l2_a": 3.0, "l3_a": None, "ts": "2024-01-15T10:00:00.000Z", "stale": True}
    assert tp.HeadroomPayload.decode(json.dumps(d)) == h
    with pytest.raises(tp.PayloadError):
        tp.HeadroomPayload.decode(json.dumps({**d, "l1_a": "12"}))
    with pytest.raises(tp.PayloadError):
        tp.HeadroomPayload.decode(json.dumps({**d, "ts": "yesterday"}))


def test_charger_state_and_setpoint_payloads() -> None:
    s = tp.ChargerStatePayload.make("charging", (16.0, 16.0, 0.0), max_a=32, phases=3, ts=1_700_000_000.25)
    d = s.to_json_dict()
    assert d == {"state": "charging", "current_l1_a": 16.0, "current_l2_a": 16.0, "current_l3_a": 0.0,
                 "max_a": 32, "phases": 3, "ts": "2023-11-14T22:13:20.250Z"}
    assert tp.ChargerStatePayload.decode(T.charger_state_message("c", s).payload) == s
    for bad in ({**d, "phases": 2}, {**d, "current_l2_a": None}, {**d, "state": 3}, {**d, "max_a": math.inf}):
        with pytest.raises(tp.PayloadError):
            tp.ChargerStatePayload.from_json_dict(bad)
    p = tp.SetpointPayload.make(10, "load step on L2", ts=datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))))
    assert p.to_json_dict() == {"current_a": 10.0, "reason": "load step on L2", "ts": "2024-01-01T00:00:00.000Z"}
    assert tp.SetpointPayload.decode(T.setpoint_message("c", p).payload) == p
    with pytest.raises(tp.PayloadError):
        tp.SetpointPayload.from_json_dict({**p.to_json_dict(), "current_a": -1})


def test_numeric_fields_name_their_unit() -> None:
    payloads = [
        tp.HeadroomPayload.make(1, 2, 3, ts=0).to_json_dict(),
        tp.ChargerStatePayload.make("idle", (0, 0, 0), max_a=16, phases=1).to_json_dict(),
        tp.SetpointPayload.make(6, "min", ts=0).to_json_dict(),
    ]
    for d in payloads:
        for key, value in d.items():
            if isinstance(value, float | int) and not isinstance(value, bool) and key != "phases":
                assert UNIT_SUFFIX.search(key), key


def test_energy_records_need_an_id() -> None:
    with pytest.raises(tp.PayloadError):
        T.energy_message({"import_wh": 5})
    with pytest.raises(tp.PayloadError):
        tp.decode_energy(b'{"id": ""}')
    rid = tp.energy_record_id("APM1", datetime(2024, 3, 1, 13, tzinfo=UTC))
    assert rid == "APM1/2024-03-01T13:00:00.000Z"
    assert tp.decode_energy(T.energy_message({"id": rid, "import_wh": 5.5}).payload)["import_wh"] == 5.5


def test_core_dataclasses_and_enums_become_plain_json() -> None:
    class Kind(enum.Enum):
        HOURLY = "hourly"

    @dataclass(frozen=True, slots=True)
    class Record:
        id: str
        start: datetime
        kind: Kind
        lines: tuple[float, ...]

    rec = Record("a", datetime(2024, 1, 1, tzinfo=UTC), Kind.HOURLY, (1.0, 2.0))
    assert json.loads(tp.encode_energy(rec)) == {"id": "a", "start": "2024-01-01T00:00:00.000Z",
                                                 "kind": "hourly", "lines": [1.0, 2.0]}
    with pytest.raises(tp.PayloadError):
        tp.encode_json({"x": math.nan})  # NaN is not JSON
    with pytest.raises(tp.PayloadError):
        tp.encode_json({"x": object()})
    with pytest.raises(tp.PayloadError):
        tp.decode_json(b"[1, 2]")
    with pytest.raises(tp.PayloadError):
        tp.decode_json(b"\xff")


def test_hourly_energy_of_the_core_becomes_a_record_with_a_stable_id() -> None:
    from apm.meter_state import HourlyEnergy

    hour = HourlyEnergy(hour_start="2024-01-15T10:00:00+01:00", hour_end="2024-01-15T11:00:00+01:00", hours=1,
                        import_wh=1834.0, export_wh=0.0, meter_id="7359992890941742")
    rec = T.energy_record(hour)
    assert rec["id"] == "APM000123/2024-01-15T10:00:00+01:00" == T.energy_record(hour)["id"]
    assert rec["import_wh"] == 1834.0 and rec["hours"] == 1
    assert json.loads(T.energy_message(rec).payload) == rec
    assert T.energy_record({"id": "mine", "import_wh": 1})["id"] == "mine"
    with pytest.raises(tp.PayloadError):
        T.energy_record({"import_wh": 1})


def test_optional_fields() -> None:
    h = tp.HeadroomPayload.make(4.0, None, -2.5, ts=10.0, stale=False, age_s=1.5, limit_a=23.0, reason="ok")
    assert tp.HeadroomPayload.decode(T.headroom_message(h).payload) == h
    assert "reason" not in tp.HeadroomPayload.make(1, 2, 3, ts=0).to_json_dict()
    c = tp.ChargerStatePayload.make("connected", (0, 0, 0), max_a=16, phases=None, setpoint_a=6.0)
    assert tp.ChargerStatePayload.decode(T.charger_state_message("c", c).payload) == c
    assert tp.ts_seconds(tp.iso_ts(1_700_000_000.5)) == 1_700_000_000.5
