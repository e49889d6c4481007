from __future__ import annotations

import contextlib
import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apm.io.mqtt import messages as msg
from apm.io.mqtt import topics as tp
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
    assert msg.decode(m.payload, Reading) == r
    assert T.reading_message(r.to_json_dict()) == m
    with pytest.raises(tp.PayloadError):
        T.reading_message({"meter": "kaifa", "list": 7})
    with pytest.raises(tp.PayloadError):
        msg.decode(m.payload.replace(b'"list":2', b'"list":7'), Reading)


def test_delivery_flags_come_from_the_table() -> None:
    h = T.headroom_message(tp.HeadroomPayload.make(10, 11, None, ts=0))
    assert (h.qos, h.retain) == (0, False)  # a command input must not outlive its publisher
    s = T.setpoint_message("c", tp.SetpointPayload.make(16, "share", ts=0), ttl_s=5)
    assert (s.qos, s.retain, s.ttl_s) == (1, False, 5)
    online = T.message(tp.STATUS, "online")
    assert (online.topic, online.payload, online.qos, online.retain) == (T.status, b"online", 1, True)
    with pytest.raises(tp.PayloadError):
        T.message(tp.STATUS, "maybe")
    with pytest.raises(tp.PayloadError):  # a payload of another topic's type
        T.message(tp.HEADROOM, tp.SetpointPayload.make(16, "share", ts=0))
    for spec in tp.TABLE:
        assert spec.qos in (0, 1) and spec.kind in tp.SPECS
    assert {s.kind for s in tp.TABLE if s.retain} == {tp.STATUS, tp.READING, tp.SUBSCRIPTION,
                                                       tp.SUBSCRIPTION_REVOCATION, tp.ECO_PLAN, tp.DISCOVERY,
                                                       tp.SETTINGS, tp.CHARGER_SETTINGS, tp.PRICE,
                                                       tp.CHARGER_SESSION, tp.CHARGER_LINK, tp.CAPACITY}
    # Commands are inputs: a retained one would change the setting again at every reconnect.
    assert not tp.SPECS[tp.SETTINGS_SET].retain and not tp.SPECS[tp.CHARGER_SET].retain


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
            tp.ChargerStatePayload.decode(json.dumps(bad))
    p = tp.SetpointPayload.make(10, "load step on L2", ts=datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))))
    assert p.to_json_dict() == {"current_a": 10.0, "reason": "load step on L2", "ts": "2024-01-01T00:00:00.000Z",
                                "mode": None, "headroom_seq": None, "headroom_ts": None, "reading_seq": None}
    assert tp.SetpointPayload.decode(T.setpoint_message("c", p).payload) == p
    with pytest.raises(tp.PayloadError):
        tp.SetpointPayload.decode(json.dumps({**p.to_json_dict(), "current_a": -1}))


def test_numeric_fields_name_their_unit() -> None:
    payloads = [
        tp.HeadroomPayload.make(1, 2, 3, ts=0).to_json_dict(),
        tp.ChargerStatePayload.make("connected", (0, 0, 0), max_a=16, phases=1).to_json_dict(),
        tp.SetpointPayload.make(6, "min", ts=0).to_json_dict(),
    ]
    for d in payloads:
        for key, value in d.items():
            if isinstance(value, float | int) and not isinstance(value, bool) and key not in ("phases", "seq") \
                    and not key.endswith("_seq"):
                assert UNIT_SUFFIX.search(key), key


def test_energy_records_need_an_id() -> None:
    with pytest.raises(tp.PayloadError, match="id"):
        tp.encode_energy({"import_wh": 5})
    with pytest.raises(tp.PayloadError):
        msg.EnergyRecord.decode(b'{"id": ""}')
    rid = tp.energy_record_id("APM1", datetime(2024, 3, 1, 13, tzinfo=UTC))
    assert rid == "APM1/2024-03-01T13:00:00.000Z"


def test_json_helpers_refuse_what_is_not_json() -> None:
    with pytest.raises(tp.PayloadError):
        tp.encode_json({"x": math.nan})  # NaN is not JSON
    with pytest.raises(tp.PayloadError):
        tp.encode_json({"x": object()})
    with pytest.raises(tp.PayloadError):
        tp.decode_json(b"[1, 2]")
    with pytest.raises(tp.PayloadError):
        tp.decode_json(b"\xff")
    with pytest.raises(tp.PayloadError):
        tp.HeadroomPayload.make(math.nan, 1, 1, ts=0)  # a payload is never built with a NaN in it


def test_hourly_energy_of_the_core_becomes_a_record_with_a_stable_id() -> None:
    from apm.core.meter_state import HourlyEnergy

    hour = HourlyEnergy(hour_start="2024-01-15T10:00:00+01:00", hour_end="2024-01-15T11:00:00+01:00", hours=1,
                        import_wh=1834.0, export_wh=0.0, meter_id="7359992890941742")
    rec = T.energy_record(hour)
    assert rec["id"] == "APM000123/2024-01-15T10:00:00+01:00" == T.energy_record(hour)["id"]
    assert rec == {"id": rec["id"], "hour_start": hour.hour_start, "hour_end": hour.hour_end, "hours": 1,
                   "import_wh": 1834.0, "export_wh": 0.0, "meter_id": "7359992890941742"}
    assert json.loads(tp.encode_energy(rec)) == rec


@pytest.mark.parametrize(("kind", "payload", "where"), [
    (tp.HeadroomPayload, b'{"l1_a": 1, "l2_a": null, "l3_a": null, "ts": "yesterday", "stale": false}', "$.ts"),
    (tp.ChargerStatePayload, b'{"state": "charging", "current_l1_a": "6", "current_l2_a": 0, "current_l3_a": 0,'
                             b' "max_a": 16, "phases": 3}', "$.current_l1_a"),
    (tp.SetpointPayload, b'{"current_a": -1, "reason": "x", "ts": "2024-01-01T00:00:00Z"}', "$.current_a"),
    (msg.EcoRequest, b'{"charger": "a", "hours": -2}', "$.hours"),
    (msg.SubscriptionPayload, b'{"state": "maybe", "reason": ""}', "$.state"),
    (msg.EcoPlanPayload, b'{"created": 1}', "$.created"),
    (msg.EnergyRecord, b'not json', "malformed"),
    (Reading, b'{"meter": "kaifa", "list": "2"}', "$.list"),
])
def test_decoding_raises_only_payload_error_naming_the_field(kind: type, payload: bytes, where: str) -> None:
    with pytest.raises(tp.PayloadError) as info:
        msg.decode(payload, kind)
    assert where in str(info.value)


@given(st.binary(max_size=64))
def test_no_bytes_make_decode_raise_anything_but_payload_error(data: bytes) -> None:
    for spec in tp.TABLE:
        with contextlib.suppress(tp.PayloadError):
            msg.decode(data, spec.payload)


def test_optional_fields() -> None:
    h = tp.HeadroomPayload.make(4.0, None, -2.5, ts=10.0, stale=False, age_s=1.5, limit_a=23.0, reason="ok")
    assert tp.HeadroomPayload.decode(T.headroom_message(h).payload) == h
    assert "reason" not in tp.HeadroomPayload.make(1, 2, 3, ts=0).to_json_dict()
    c = tp.ChargerStatePayload.make("connected", (0, 0, 0), max_a=16, phases=None, setpoint_a=6.0)
    assert json.loads(T.charger_state_message("c", c).payload)["phases"] is None  # always sent, null
    assert tp.ChargerStatePayload.decode(T.charger_state_message("c", c).payload) == c
    assert tp.ts_seconds(tp.iso_ts(1_700_000_000.5)) == 1_700_000_000.5


# --- the published schema ---------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_committed_schema_and_table_are_what_the_code_declares() -> None:
    committed = (DOCS / "mqtt-payloads.schema.json").read_text(encoding="utf-8")
    assert committed == tp.schema_text(), "run: python -m apm.io.mqtt.topics --schema > docs/mqtt-payloads.schema.json"
    assert tp.markdown_table() in (DOCS / "mqtt.md").read_text(encoding="utf-8"), \
        "paste `python -m apm.io.mqtt.topics --table` into docs/mqtt.md"


def test_what_the_device_sends_validates_against_the_published_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = json.loads((DOCS / "mqtt-payloads.schema.json").read_text(encoding="utf-8"))

    def check(name: str, payload: bytes) -> None:
        jsonschema.validate(json.loads(payload), {"$ref": f"#/$defs/{name}", "$defs": doc["$defs"]})

    check("Reading", T.reading_message(Reading(meter="aidon", list=3, active_import_wh=5.0)).payload)
    check("HeadroomPayload", T.headroom_message(tp.HeadroomPayload.make(1, None, 2.5, ts=0, seq=3)).payload)
    check("SetpointPayload", T.setpoint_message("c", tp.SetpointPayload.make(6, "min", ts=0)).payload)
    check("ChargerStatePayload", T.charger_state_message(
        "c", tp.ChargerStatePayload.make("charging", (6, 6, 6), max_a=16, phases=3, ts=0)).payload)
    with pytest.raises(jsonschema.ValidationError):
        check("SetpointPayload", b'{"current_a": -1, "reason": "x", "ts": "2024-01-01T00:00:00Z"}')
    assert [t["topic"] for t in doc["x-topics"]] == [s.pattern for s in tp.TABLE]
