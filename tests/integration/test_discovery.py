from __future__ import annotations

import asyncio
import json
import re

import pytest

from apm.core.config import BrokerConfig
from apm.io.mqtt import discovery as ha
from apm.io.mqtt.link import Backoff, MqttLink
from apm.io.mqtt.topics import HeadroomPayload, SetpointPayload, Topics
from han.reading import Reading
from tests.mqtt_broker import Mosquitto, Observer

T = Topics("APM.000-9")
CHARGERS = ("garage", "carport.2")
CONFIG_TOPIC = re.compile(r"^homeassistant/sensor/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/config$")


def configs(**kw) -> dict[str, dict]:
    return {m.topic: json.loads(m.payload) for m in ha.discovery_messages(T, chargers=CHARGERS, **kw)}


def sample_payloads() -> dict[str, dict]:
    """What the device publishes on each state topic the sensors read."""
    full = dict(active_import_w=1800.0, active_export_w=0.0, current_l1_a=5.0, current_l2_a=4.0,
                current_l3_a=3.0, voltage_l1_v=230.0, voltage_l2_v=231.0, voltage_l3_v=229.0)
    out = {
        T.reading(1): Reading(meter="aidon", list=1, active_import_w=1800.0).to_json_dict(),
        T.reading(2): Reading(meter="aidon", list=2, **full).to_json_dict(),
        T.reading(3): Reading(meter="aidon", list=3, active_import_wh=1.2e6, active_export_wh=0.0,
                              **full).to_json_dict(),
        T.headroom: HeadroomPayload.make(10.0, 11.0, 12.0, ts=0).to_json_dict(),
    }
    for cid in CHARGERS:
        out[T.charger_setpoint(cid)] = SetpointPayload.make(16, "share", ts=0).to_json_dict()
    return out


def test_every_sensor_is_complete_and_reads_a_field_the_device_publishes() -> None:
    payloads = sample_payloads()
    found = configs()
    assert len(found) == 2 + 3 + 3 + 2 + 3 + len(CHARGERS)
    unique_ids = set()
    for topic, cfg in found.items():
        assert CONFIG_TOPIC.match(topic), topic
        assert cfg["availability_topic"] == T.status
        assert (cfg["payload_available"], cfg["payload_not_available"]) == ("online", "offline")
        assert cfg["device"]["identifiers"] == ["apm_APM_000-9"]
        assert cfg["device"]["manufacturer"] and cfg["device"]["model"] and cfg["device"]["sw_version"]
        assert cfg["state_class"] in ("measurement", "total_increasing")
        field = re.fullmatch(r"\{\{ value_json\.(\w+) \}\}", cfg["value_template"]).group(1)
        value = payloads[cfg["state_topic"]][field]
        assert isinstance(value, float), (topic, field)
        unique_ids.add(cfg["unique_id"])
    assert len(unique_ids) == len(found)


def test_device_classes_and_units() -> None:
    by_id = {cfg["unique_id"].removeprefix("apm_APM_000-9_"): cfg for cfg in configs().values()}
    expect = {
        "power_import": ("power", "W", "measurement"),
        "current_l2": ("current", "A", "measurement"),
        "voltage_l3": ("voltage", "V", "measurement"),
        "energy_import": ("energy", "Wh", "total_increasing"),
        "energy_export": ("energy", "Wh", "total_increasing"),
        "headroom_l1": ("current", "A", "measurement"),
        "setpoint_carport_2": ("current", "A", "measurement"),
    }
    for oid, (dc, unit, sc) in expect.items():
        cfg = by_id[oid]
        assert (cfg["device_class"], cfg["unit_of_measurement"], cfg["state_class"]) == (dc, unit, sc), oid
    assert by_id["power_import"]["state_topic"] == T.reading(2)  # every vendor sends list 2
    assert by_id["energy_import"]["state_topic"] == T.reading(3)
    assert by_id["setpoint_carport_2"]["state_topic"] == T.charger_setpoint("carport.2")
    assert "expire_after" not in by_id["energy_import"]  # hourly: it must not expire between lists
    assert by_id["current_l1"]["expire_after"] == ha.FRESH_FOR_S


def test_options() -> None:
    one_phase = configs(lines=(1,), power_list=1)
    assert not [t for t in one_phase if "_l2" in t or "_l3" in t]
    power = next(c for c in one_phase.values() if c["unique_id"].endswith("power_import"))
    assert power["state_topic"] == T.reading(1)
    with pytest.raises(ValueError):
        ha.sensors(T, power_list=3)
    with pytest.raises(ValueError):
        ha.sensors(T, chargers=["a.b", "a_b"])  # same Home Assistant id


def test_configs_appear_retained_on_the_broker(mosquitto: Mosquitto) -> None:
    birth = ha.discovery_messages(T, chargers=CHARGERS)

    async def main() -> None:
        link = MqttLink.for_device(T, BrokerConfig(url=mosquitto.url), birth=birth, backoff=Backoff(0.05, 0.2))
        async with link:
            assert await link.wait_connected(5)
            # Home Assistant (re)starting later still finds every config, retained.
            async with Observer(mosquitto.url, "homeassistant/#", T.status) as hass:
                await hass.wait_until(lambda: all(hass.last(m.topic) for m in birth) and hass.last(T.status))
                for m in birth:
                    assert hass.last(m.topic) == m.payload
                assert all(retain for _, _, retain in hass.messages)
                assert hass.last(T.status) == b"online"

    asyncio.run(asyncio.wait_for(main(), 20))


def test_capacity_sensors_read_the_retained_capacity_topic_with_valid_classes() -> None:
    from apm.io.mqtt.messages import CapacityPayload

    found = {c["unique_id"].removeprefix("apm_APM_000-9_"): c for c in configs(capacity=True).values()}
    assert len(found) == len(configs()) + 3
    payload = json.loads(T.capacity_message(CapacityPayload.of({
        "month": "2026-01", "peaks": [{"day": "2026-01-05", "kwh": 4.8}], "figure_kw": 4.8,
        "step": {"from_kw": 2.0, "to_kw": 5.0, "nok_per_month": 200.0}, "goal_kw": 5.0, "hour_cap_kwh": 5.0,
        "hour_used_kwh": 1.25, "hour_left_kwh": 3.75, "chargers_kw": 3.1, "caps_a": {"garage": 6.5}},
        "2026-01-05T10:00:00.000Z")).payload)
    # Home Assistant's pairs: power in kW as a measurement; an energy sensor may not be a measurement, so
    # the kWh left this hour (falling, then back up at the hour) is energy_storage, whose class that is.
    expect = {"capacity_step": ("power", "kW", "measurement", 5.0),
              "capacity_peaks_average": ("power", "kW", "measurement", 4.8),
              "capacity_left_this_hour": ("energy_storage", "kWh", "measurement", 3.75)}
    for oid, (dc, unit, sc, value) in expect.items():
        cfg = found[oid]
        assert (cfg["device_class"], cfg["unit_of_measurement"], cfg["state_class"]) == (dc, unit, sc), oid
        assert cfg["state_topic"] == T.capacity
        field = re.fullmatch(r"\{\{ value_json\.(\w+) \}\}", cfg["value_template"]).group(1)
        assert payload[field] == value, oid
    assert T.capacity_message(CapacityPayload.of({
        "month": "2026-01", "peaks": [], "figure_kw": 0.0, "step": {"from_kw": 0.0, "to_kw": 2.0,
        "nok_per_month": 120.0}, "goal_kw": 5.0, "hour_cap_kwh": 5.0, "hour_used_kwh": 0.0,
        "hour_left_kwh": 5.0}, "2026-01-01T00:00:00.000Z")).retain
