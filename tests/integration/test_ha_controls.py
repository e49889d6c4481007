"""Home Assistant's controls and new sensors: discovery valid by Home Assistant's own rules, commands over a
real mosquitto changing the running device and its flash image through the one settings path, bad values
refused with a log line; Smart eco's daily requests."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from apm.core import config as cfg
from apm.core.eco.planner import Charger
from apm.core.eco.prices import OSLO, sample_week
from apm.io.mqtt import discovery as ha
from apm.io.mqtt.topics import Topics
from apm.io.storage.flash import Flash
from apm.services.balancer import BalancerService
from apm.services.controls import HaControls, charger_limits, command_change
from apm.services.device import Device
from apm.services.eco import EcoPlanner, daily_defaults
from apm.services.settings import Settings, SettingsError
from tests.mqtt_broker import Mosquitto, Observer

pytestmark = pytest.mark.timeout(90)

SERIAL = "APMHA01"
T = Topics(SERIAL)
CHARGERS = ("garage", "carport.2")

# --- Home Assistant's rules, as a table (homeassistant/components/sensor/const.py: DEVICE_CLASS_UNITS,
# DEVICE_CLASS_STATE_CLASSES; number/const.py for the number's units) --------------------------------

ANY = None
SENSOR_RULES: dict[str | None, tuple[frozenset[str] | None, frozenset[str | None]]] = {
    "power": (frozenset({"mW", "W", "kW", "MW", "GW", "TW", "BTU/h"}), frozenset({"measurement"})),
    "current": (frozenset({"A", "mA"}), frozenset({"measurement"})),
    "voltage": (frozenset({"µV", "mV", "V", "kV", "MV"}), frozenset({"measurement"})),
    "energy": (frozenset({"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal", "Mcal",
                          "Gcal"}), frozenset({"total", "total_increasing"})),
    # An amount of money: the unit an ISO 4217 currency, never a measurement (a price per kWh is not one).
    "monetary": (frozenset({"NOK", "SEK", "DKK", "EUR", "USD"}), frozenset({"total", None})),
    None: (ANY, frozenset({"measurement", "total", "total_increasing", None})),
}
BINARY_CLASSES = frozenset({None, "connectivity", "plug", "power", "problem", "running", "battery_charging"})
NUMBER_UNITS = {"current": frozenset({"A", "mA"}), "energy": SENSOR_RULES["energy"][0]}
COMMON = ("name", "unique_id", "state_topic", "value_template", "availability_topic", "device", "origin")


def ha_problems(component: str, c: dict[str, Any]) -> list[str]:
    """Why Home Assistant would refuse or warn about this discovery config (empty: it takes it)."""
    out = [f"{k} missing" for k in COMMON if not c.get(k)]
    dc, unit = c.get("device_class"), c.get("unit_of_measurement")
    if component == "sensor":
        if dc not in SENSOR_RULES:
            return [*out, f"unknown sensor device_class {dc!r}"]
        units, classes = SENSOR_RULES[dc]
        if units is not None and unit not in units:
            out.append(f"unit {unit!r} is not one of {dc}'s")
        if c.get("state_class") not in classes:
            out.append(f"state_class {c.get('state_class')!r} is impossible for device_class {dc!r}")
    elif component == "binary_sensor":
        out += _binary_problems(c)
    else:
        out += [f"{k} missing" for k in ("command_topic",) if not c.get(k)]
        if "state_class" in c:
            out.append(f"a {component} has no state_class")
    if component == "number":
        if dc is not None and unit not in NUMBER_UNITS.get(dc, frozenset()):
            out.append(f"unit {unit!r} is not one of number {dc}'s")
        if not (c.get("min") is not None and c.get("max") is not None and c["min"] < c["max"] and c.get("step", 0) > 0):
            out.append("a number needs min < max and step > 0")
    if component == "switch" and {c.get("payload_on"), c.get("payload_off")} != {c.get("state_on"),
                                                                                     c.get("state_off")}:
        out.append("the switch's states are not its payloads")
    if component == "select" and not c.get("options"):
        out.append("a select needs options")
    if component == "text":
        re.compile(c.get("pattern") or "")
        if not 0 <= c.get("min", 0) <= c.get("max", 255) <= 255:
            out.append("a text's min/max are 0..255")
    return out


def _binary_problems(c: dict[str, Any]) -> list[str]:
    """binary_sensor/__init__.py: a BinarySensorDeviceClass, no unit or state class; ON/OFF payloads."""
    out = [] if c.get("device_class") in BINARY_CLASSES else [f"unknown binary_sensor device_class {c.get('device_class')!r}"]
    out += [f"a binary_sensor has no {k}" for k in ("unit_of_measurement", "state_class") if k in c]
    if not (c.get("payload_on") and c.get("payload_off")):
        out.append("a binary_sensor needs payload_on and payload_off")
    return out


def all_configs() -> dict[str, dict[str, Any]]:
    config = _config()
    msgs = ha.discovery_messages(T, chargers=CHARGERS) + ha.controls_messages(
        T, charger_limits(config), sharing=("fair", "max_energy"), departure_pattern=cfg.HHMM, price=True)
    return {m.topic: json.loads(m.payload) for m in msgs}


def test_every_entity_follows_home_assistants_rules() -> None:
    found = all_configs()
    kinds: dict[str, int] = {}
    for topic, c in found.items():
        component = topic.split("/")[1]
        kinds[component] = kinds.get(component, 0) + 1
        assert ha_problems(component, c) == [], topic
    assert len({c["unique_id"] for c in found.values()}) == len(found)
    # The new entities: per charger a max current, an eco energy and a departure; Smart eco; sharing; the
    # price and this hour's energy.
    assert (kinds["number"], kinds["text"], kinds["switch"], kinds["select"]) == (2 * len(CHARGERS), len(CHARGERS), 1, 1)
    by_id = {c["unique_id"].removeprefix("apm_APMHA01_"): c for c in found.values()}
    price, hour = by_id["price"], by_id["energy_this_hour"]
    assert (price["unit_of_measurement"], price.get("device_class"), price["state_class"]) == \
        ("NOK/kWh", None, "measurement")
    assert (hour["unit_of_measurement"], hour["device_class"], hour["state_class"]) == \
        ("kWh", "energy", "total_increasing")
    garage = by_id["max_a_garage"]
    assert (garage["min"], garage["max"], garage["command_topic"]) == (6, 80, "apm/APMHA01/charger/garage/settings/max_a/set")
    assert re.fullmatch(by_id["eco_departure_garage"]["pattern"], "07:30")
    assert not re.fullmatch(by_id["eco_departure_garage"]["pattern"], "24:00")
    assert by_id["sharing"]["options"] == ["fair", "max_energy"]
    assert by_id["eco_enabled"]["entity_category"] == "config"


def test_the_rules_catch_what_home_assistant_refuses() -> None:
    """The validator is not a rubber stamp: a monetary price per kWh, a measured energy, a number without bounds."""
    base = {k: "x" for k in COMMON}
    assert ha_problems("sensor", {**base, "device_class": "monetary", "unit_of_measurement": "NOK/kWh",
                                  "state_class": "measurement"})
    assert ha_problems("sensor", {**base, "device_class": "energy", "unit_of_measurement": "kWh",
                                  "state_class": "measurement"})
    assert ha_problems("number", {**base, "command_topic": "c", "device_class": "current",
                                  "unit_of_measurement": "A"})
    assert ha_problems("switch", {**base, "command_topic": "c", "payload_on": "ON", "payload_off": "OFF"})


@pytest.mark.parametrize(("setting", "payload", "charger", "want"), [
    ("max_a", b"16", "garage", {"chargers": {"garage": {"max_a": 16.0}}}),
    ("max_a", b" 10.5\n", "garage", {"chargers": {"garage": {"max_a": 10.5}}}),
    ("eco_energy_kwh", b"30", "garage", {"chargers": {"garage": {"eco_energy_kwh": 30.0}}}),
    ("eco_departure", b"06:45", "garage", {"chargers": {"garage": {"eco_departure": "06:45"}}}),
    ("eco_enabled", b"ON", None, {"eco": {"enabled": True}}),
    ("eco_enabled", b"OFF", None, {"eco": {"enabled": False}}),
    ("sharing", b"max_energy", None, {"balancer": {"sharing": "max_energy"}}),
    ("max_a", b"sixteen", "garage", "not a number"),
    ("max_a", b"nan", "garage", "not a number"),
    ("max_a", b"inf", "garage", "not a number"),
    ("max_a", b"\xff\xfe", "garage", "not UTF-8"),
    ("max_a", b"1" * 65, "garage", "at most"),
    ("max_a", b"", "garage", "not a value"),
    ("eco_departure", b"07:00\x00", "garage", "not a value"),
    ("eco_enabled", b"on please", None, "not ON or OFF"),
    ("fuse_a", b"63", None, "not a setting"),
    ("rotation", b"L1", "garage", "not a charger setting"),
])
def test_a_command_becomes_a_change_or_a_reason(setting: str, payload: bytes, charger: str | None, want: Any) -> None:
    if isinstance(want, str):
        with pytest.raises(SettingsError, match=want):
            command_change(setting, payload, charger)
    else:
        assert command_change(setting, payload, charger) == want


# --- Smart eco's daily requests -------------------------------------------------------------------------

NOW = datetime.fromisoformat("2026-01-12T17:00:00+01:00")


def test_eco_on_makes_daily_requests_and_off_clears_them() -> None:
    week = sample_week()
    planner = EcoPlanner({c: Charger(c, 16, 3, "TN") for c in CHARGERS}, lambda _now: week)
    config = _config(eco=True)
    defaults = daily_defaults(config)
    assert defaults == {"garage": ("06:30", 30.0), "carport.2": ("07:00", 20.0)}
    plan = planner.set_defaults(defaults, NOW)
    assert plan is not None and set(plan.plan().charger_ids) == set(CHARGERS)
    assert planner.requests["garage"].departure == datetime(2026, 1, 13, 6, 30, tzinfo=OSLO)
    assert planner.requests["garage"].energy_kwh == 30.0
    # A request of the owner's own goes first; after its departure the daily one comes back.
    planner.handle({"charger": "garage", "departure": "2026-01-12T22:00:00+01:00", "energy_kwh": 5}, NOW)
    assert planner.requests["garage"].energy_kwh == 5
    later = datetime.fromisoformat("2026-01-12T22:30:00+01:00")
    planner.replan(later)
    assert (planner.requests["garage"].energy_kwh, planner.requests["garage"].departure.hour) == (30.0, 6)
    # Past the morning's departure: the next day's.
    morning = datetime.fromisoformat("2026-01-13T06:45:00+01:00")
    planner.replan(morning)
    assert planner.requests["garage"].departure == datetime(2026, 1, 14, 6, 30, tzinfo=OSLO)
    # Off: no request left (the eco/request one too), the plan cleared: the chargers charge at once.
    assert planner.set_defaults(None, morning) is None
    assert planner.requests == {} and planner.plan is None
    assert daily_defaults(_config(eco=False)) is None


# --- over mosquitto -------------------------------------------------------------------------------------


def _config(eco: bool = False) -> cfg.DeviceConfig:
    return cfg.from_dict({"serial": SERIAL, "grid": {"fuse_a": 32},
                          "chargers": [{"id": "garage", "max_a": 32, "eco_departure": "06:30", "eco_energy_kwh": 30},
                                       {"id": "carport.2", "max_a": 16, "phases": 1}],
                          "eco": {"enabled": eco}})


def _stored(image: Path) -> cfg.DeviceConfig:
    config = Flash(image).read().config
    assert config is not None
    return config


def test_commands_from_home_assistant_change_the_device(mosquitto: Mosquitto, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    image = tmp_path / "flash.img"
    Flash(image).write_config(_config())
    caplog.set_level(logging.INFO)

    async def main() -> None:
        config = _stored(image)
        async with (Device(config, url=mosquitto.url) as device,
                    BalancerService.beside(device, url=mosquitto.url) as balancer):
            settings = Settings(device, balancer, image=image)
            async with (HaControls(settings, device, url=mosquitto.url) as controls,
                        Observer(mosquitto.url, "apm/#", "homeassistant/#", client_id="ha") as ha_client):
                task = asyncio.create_task(controls.run())
                try:
                    await _drive(ha_client, controls, device, balancer, image, caplog)
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


async def _send(ha_client: Observer, controls: HaControls, topic: str, payload: bytes, *, ok: bool) -> None:
    """Publish as Home Assistant does, and wait until the device has taken or refused it."""
    before = controls.applied if ok else controls.refused
    assert ha_client.client is not None
    await ha_client.client.publish(topic, payload, qos=1)
    deadline = asyncio.get_running_loop().time() + 10
    while (controls.applied if ok else controls.refused) == before:
        assert asyncio.get_running_loop().time() < deadline, f"{topic} {payload!r} was never handled"
        await asyncio.sleep(0.01)  # polling the counter, not a sync point: the deadline bounds it


def _state(ha_client: Observer, topic: str) -> dict[str, Any]:
    last = ha_client.last(topic)
    assert last is not None, topic
    return json.loads(last)


async def _drive(ha_client: Observer, controls: HaControls, device: Device, balancer: BalancerService,
                 image: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Discovery and the settings in force, retained, before any command.
    await ha_client.wait_until(lambda: ha_client.last(T.charger_settings("garage")) is not None
                               and ha_client.last("homeassistant/switch/apm_APMHA01/eco_enabled/config") is not None)
    assert _state(ha_client, T.charger_settings("garage")) == {"max_a": 32.0, "eco_departure": "06:30",
                                                                "eco_energy_kwh": 30.0}
    assert _state(ha_client, T.settings) == {"eco_enabled": False, "sharing": "fair"}

    await _send(ha_client, controls, T.charger_set("garage", "max_a"), b"16", ok=True)
    assert device.controller.max_a["garage"] == 16 == balancer.config.chargers[0].max_a
    assert _stored(image).chargers[0].max_a == 16
    await ha_client.wait_until(lambda: _state(ha_client, T.charger_settings("garage"))["max_a"] == 16)

    await _send(ha_client, controls, T.settings_set("sharing"), b"max_energy", ok=True)
    assert device.controller.settings.sharing == balancer.balancer.settings.sharing == "max_energy"
    assert _stored(image).balancer.sharing == "max_energy"

    await _send(ha_client, controls, T.settings_set("eco_enabled"), b"ON", ok=True)
    await _send(ha_client, controls, T.charger_set("carport.2", "eco_departure"), b"05:15", ok=True)
    await _send(ha_client, controls, T.charger_set("carport.2", "eco_energy_kwh"), b"12", ok=True)
    stored = _stored(image)
    assert stored.eco.enabled and (stored.chargers[1].eco_departure, stored.chargers[1].eco_energy_kwh) == ("05:15", 12)
    assert device.config == stored
    await ha_client.wait_until(lambda: _state(ha_client, T.settings)["eco_enabled"] is True)

    # Bad values: each refused with a log line; nothing changes, in the device or in the image.
    before = _stored(image)
    bad = [(T.charger_set("garage", "max_a"), b"abc"), (T.charger_set("garage", "max_a"), b"5"),
           (T.charger_set("garage", "max_a"), b"500"), (T.charger_set("garage", "max_a"), b"NaN"),
           (T.charger_set("garage", "eco_energy_kwh"), b"0"), (T.charger_set("garage", "eco_departure"), b"25:00"),
           (T.charger_set("garage", "eco_departure"), b"7:00; rm -rf /"), (T.settings_set("eco_enabled"), b"MAYBE"),
           (T.settings_set("sharing"), b"cheapest"), (T.settings_set("fuse_a"), b"63"),
           (T.charger_set("nope", "max_a"), b"16"), (T.charger_set("garage", "max_a"), b"\xff\x00\xfe"),
           (T.charger_set("garage", "rotation"), b"L3")]
    for topic, payload in bad:
        n = len(caplog.records)
        await _send(ha_client, controls, topic, payload, ok=False)
        lines = [r.getMessage() for r in caplog.records[n:] if r.levelno >= logging.WARNING]
        assert len(lines) == 1 and "\n" not in lines[0], (topic, payload, lines)
    assert _stored(image) == before == device.config
    assert device.controller.max_a["garage"] == 16

    await _sensors(ha_client, device)


async def _sensors(ha_client: Observer, device: Device) -> None:
    """This hour's energy, integrated from the meter's power as the readings come: 3.6 kW for 20 s is
    0.02 kWh; at the next hour it starts again from 0."""
    from han.reading import Reading

    hour = (int(device.clock.now()) // 3600) * 3600  # the hour now began
    for t in (hour - 30, hour - 20, hour - 10):
        device.on_reading(t, Reading(meter="aidon", list=1, active_import_w=3600.0))
    await ha_client.wait_until(lambda: ha_client.last(T.energy_hour) is not None
                               and _state(ha_client, T.energy_hour)["import_kwh"] == pytest.approx(0.02))
    assert _state(ha_client, T.energy_hour)["hour_start"].startswith(
        datetime.fromtimestamp(hour - 3600, UTC).strftime("%Y-%m-%dT%H:00:00"))
    device.on_reading(hour + 10, Reading(meter="aidon", list=1, active_import_w=3600.0))
    await ha_client.wait_until(lambda: _state(ha_client, T.energy_hour)["import_kwh"] == pytest.approx(0.01))
    assert _state(ha_client, T.energy_hour)["hour_start"].startswith(
        datetime.fromtimestamp(hour, UTC).strftime("%Y-%m-%dT%H:00:00"))
