"""Home Assistant MQTT discovery: the device's sensors appear in Home Assistant by themselves.

One retained config per sensor on ``homeassistant/sensor/<node>/<object>/config``; Home Assistant reads
the value from the JSON the device already publishes (``value_template``), and the sensor is
unavailable whenever the retained status is "offline" (the device's last will included).
`discovery_messages` returns them as `OutMessage` values for `MqttLink`'s ``birth`` (re-sent on
every connect, so a broker that lost its retained messages gets them back).

Sensors: power (import, export), current and voltage per line, energy totals (import, export;
``total_increasing``, for the energy dashboard), headroom per line, each charger's setpoint.

With the capacity guard on (``capacity=True``, `capacity_sensors`): the month's capacity step and the
counted peaks' average (kW, power) and the kWh still allowed this hour. Home Assistant allows no
``measurement`` state class on an ``energy`` sensor (a meter reading that only grows), so the kWh left
this hour, which falls through the hour and jumps back at its end, is an ``energy_storage`` sensor (a
budget that is drawn down), whose state class is ``measurement``.

Power comes from list 2 by default: every vendor sends list 2 (Kamstrup sends no list 1). Pass
``power_list=1`` for a meter known to send list 1 (Aidon, Kaifa: every 2 s).
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Sequence
from dataclasses import dataclass

from apm.io.mqtt.messages import OFFLINE, ONLINE, DiscoveryConfig, DiscoveryDevice, DiscoveryOrigin
from apm.io.mqtt.topics import DISCOVERY, DISCOVERY_PREFIX, SPECS, OutMessage, Topics, payload_bytes

MANUFACTURER = "apm-emulator project"
MODEL = "APM emulator"
# A value that is not refreshed within this long is shown as unavailable (HAN cable out, meter mute).
FRESH_FOR_S = 60

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def package_version() -> str:
    try:
        return importlib.metadata.version("apm-emulator")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    serial: str
    name: str | None = None  # None: "APM <serial>"
    model: str = MODEL
    manufacturer: str = MANUFACTURER
    sw_version: str | None = None  # None: this package's version

    def payload(self) -> DiscoveryDevice:
        return DiscoveryDevice(identifiers=[node_id(self.serial)], name=self.name or f"APM {self.serial}",
                               manufacturer=self.manufacturer, model=self.model, serial_number=self.serial,
                               sw_version=self.sw_version or package_version())


@dataclass(frozen=True, slots=True)
class Sensor:
    object_id: str  # [A-Za-z0-9_-], unique within the device
    name: str
    state_topic: str
    field: str  # the JSON field of the state topic's payload
    unit: str | None  # None: a text sensor (a charger's protocol)
    device_class: str | None  # None: none fits (a price per kWh is not "monetary": see `price_sensor`)
    state_class: str | None  # "measurement" | "total_increasing"; None: a text sensor
    expire_after_s: int | None = None
    precision: int | None = None  # suggested display precision


def node_id(serial: str) -> str:
    return "apm_" + _ID_UNSAFE.sub("_", serial)


def config_topic(serial: str, object_id: str, prefix: str = DISCOVERY_PREFIX, component: str = "sensor") -> str:
    return f"{prefix}/{component}/{node_id(serial)}/{object_id}/config"


def object_id_of(cid: str) -> str:
    """A charger id as part of a Home Assistant object id."""
    return _ID_UNSAFE.sub("_", cid)


def sensors(topics: Topics, *, chargers: Sequence[str] = (), lines: Sequence[int] = (1, 2, 3),
            power_list: int = 2) -> list[Sensor]:
    """The device's sensors; ``lines``: the grid lines the meter reports (``(1,)`` for 1-phase)."""
    if power_list not in (1, 2):
        raise ValueError(f"power_list {power_list!r} is not 1 or 2")
    if not lines or any(n not in (1, 2, 3) for n in lines):
        raise ValueError(f"lines {lines!r} must be some of 1, 2, 3")
    power = topics.reading(power_list)
    list2, list3 = topics.reading(2), topics.reading(3)
    out = [
        Sensor("power_import", "Power import", power, "active_import_w", "W", "power", "measurement",
               FRESH_FOR_S, 0),
        Sensor("power_export", "Power export", list2, "active_export_w", "W", "power", "measurement",
               FRESH_FOR_S, 0),
    ]
    for n in lines:
        out.append(Sensor(f"current_l{n}", f"Current L{n}", list2, f"current_l{n}_a", "A", "current",
                          "measurement", FRESH_FOR_S, 1))
    for n in lines:
        out.append(Sensor(f"voltage_l{n}", f"Voltage L{n}", list2, f"voltage_l{n}_v", "V", "voltage",
                          "measurement", FRESH_FOR_S, 0))
    out += [
        Sensor("energy_import", "Energy import", list3, "active_import_wh", "Wh", "energy", "total_increasing",
               None, 0),
        Sensor("energy_export", "Energy export", list3, "active_export_wh", "Wh", "energy", "total_increasing",
               None, 0),
    ]
    for n in lines:
        out.append(Sensor(f"headroom_l{n}", f"Headroom L{n}", topics.headroom, f"l{n}_a", "A", "current",
                          "measurement", FRESH_FOR_S, 1))
    seen: dict[str, str] = {}
    for cid in chargers:
        object_id = "setpoint_" + object_id_of(cid)
        if object_id in seen:
            raise ValueError(f"charger ids {seen[object_id]!r} and {cid!r} give the same Home Assistant id")
        seen[object_id] = cid
        out.append(Sensor(object_id, f"Charger {cid} setpoint", topics.charger_setpoint(cid), "current_a", "A",
                          "current", "measurement", None, 1))
    return out


def capacity_sensors(topics: Topics) -> list[Sensor]:
    """The capacity guard's sensors, read from its retained ``capacity`` topic (refreshed every 30 s)."""
    t = topics.capacity
    return [
        Sensor("capacity_step", "Capacity step", t, "step_kw", "kW", "power", "measurement", None, 0),
        Sensor("capacity_peaks_average", "Capacity peaks average", t, "figure_kw", "kW", "power", "measurement",
               None, 2),
        Sensor("capacity_left_this_hour", "Energy left this hour", t, "hour_left_kwh", "kWh", "energy_storage",
               "measurement", FRESH_FOR_S * 5, 2),
    ]


def config_payload(sensor: Sensor, topics: Topics, device: DeviceInfo) -> DiscoveryConfig:
    return DiscoveryConfig(
        name=sensor.name,
        unique_id=f"{node_id(topics.serial)}_{sensor.object_id}",
        state_topic=sensor.state_topic,
        # A JSON null renders as "None", which Home Assistant shows as unknown.
        value_template=f"{{{{ value_json.{sensor.field} }}}}",
        unit_of_measurement=sensor.unit,
        device_class=sensor.device_class,
        state_class=sensor.state_class,
        availability_topic=topics.status,
        payload_available=ONLINE,
        payload_not_available=OFFLINE,
        device=device.payload(),
        origin=DiscoveryOrigin(name="apm-emulator", sw_version=device.sw_version or package_version()),
        expire_after=sensor.expire_after_s,
        suggested_display_precision=sensor.precision,
    )


def discovery_messages(topics: Topics, device: DeviceInfo | None = None, *, chargers: Sequence[str] = (),
                       lines: Sequence[int] = (1, 2, 3), power_list: int = 2,
                       prefix: str = DISCOVERY_PREFIX, capacity: bool = False) -> list[OutMessage]:
    """The retained config message of every sensor of `sensors` (and `capacity_sensors` with ``capacity``)."""
    device = device or DeviceInfo(topics.serial)
    spec = SPECS[DISCOVERY]
    found = sensors(topics, chargers=chargers, lines=lines, power_list=power_list)
    if capacity:
        found += capacity_sensors(topics)
    return [
        OutMessage(config_topic(topics.serial, s.object_id, prefix),
                   payload_bytes(spec, config_payload(s, topics, device)), spec.qos, spec.retain)
        for s in found
    ]



# --- owner settings as controls, and the sensors beside them (apm.services.controls) -----------------

# Home Assistant has no MQTT `time` entity (discovery lists none: home-assistant discussion #2348), so a
# departure is a `text` held to HH:MM by its pattern (the configuration's own, apm.core.config.HHMM).
SWITCH_ON, SWITCH_OFF = "ON", "OFF"  # Home Assistant's switch payloads (its defaults)


@dataclass(frozen=True, slots=True)
class Control:
    """One owner setting as a Home Assistant entity: ``component`` number | switch | select | text; the
    state is the JSON ``field`` of ``state_topic``, a new value goes to ``command_topic``."""

    component: str
    object_id: str
    name: str
    state_topic: str
    field: str
    command_topic: str
    unit: str | None = None
    device_class: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    options: tuple[str, ...] = ()
    pattern: str | None = None


@dataclass(frozen=True, slots=True)
class ChargerLimits:
    """What a charger's controls take: its max current and eco energy bounds (from the config schema)."""

    id: str
    min_a: float
    max_a: float
    min_kwh: float
    max_kwh: float


def controls(topics: Topics, chargers: Sequence[ChargerLimits], *, sharing: Sequence[str],
             departure_pattern: str) -> list[Control]:
    out = [
        Control("switch", "eco_enabled", "Smart eco", topics.settings, "eco_enabled",
                topics.settings_set("eco_enabled")),
        Control("select", "sharing", "Charger sharing", topics.settings, "sharing", topics.settings_set("sharing"),
                options=tuple(sharing)),
    ]
    for c in chargers:
        oid, st = object_id_of(c.id), topics.charger_settings(c.id)
        out += [
            Control("number", f"max_a_{oid}", f"Charger {c.id} max current", st, "max_a",
                    topics.charger_set(c.id, "max_a"), "A", "current", c.min_a, c.max_a, 1.0),
            Control("number", f"eco_energy_{oid}", f"Charger {c.id} eco energy", st, "eco_energy_kwh",
                    topics.charger_set(c.id, "eco_energy_kwh"), "kWh", "energy", c.min_kwh, c.max_kwh, 1.0),
            Control("text", f"eco_departure_{oid}", f"Charger {c.id} eco departure", st, "eco_departure",
                    topics.charger_set(c.id, "eco_departure"), pattern=departure_pattern),
        ]
    return out


def control_payload(c: Control, topics: Topics, device: DeviceInfo) -> DiscoveryConfig:
    template = f"{{{{ value_json.{c.field} }}}}"
    extra: dict[str, object] = {}
    if c.component == "switch":
        template = f"{{{{ '{SWITCH_ON}' if value_json.{c.field} else '{SWITCH_OFF}' }}}}"
        extra = {"payload_on": SWITCH_ON, "payload_off": SWITCH_OFF, "state_on": SWITCH_ON, "state_off": SWITCH_OFF}
    elif c.component == "number":
        extra = {"min": c.minimum, "max": c.maximum, "step": c.step, "mode": "box"}
    elif c.component == "select":
        extra = {"options": list(c.options)}
    elif c.component == "text":
        extra = {"pattern": c.pattern, "min": 5, "max": 5, "mode": "text"}
    return DiscoveryConfig(
        name=c.name, unique_id=f"{node_id(topics.serial)}_{c.object_id}", state_topic=c.state_topic,
        value_template=template, command_topic=c.command_topic, unit_of_measurement=c.unit,
        device_class=c.device_class, entity_category="config", availability_topic=topics.status,
        payload_available=ONLINE, payload_not_available=OFFLINE, device=device.payload(),
        origin=DiscoveryOrigin(name="apm-emulator", sw_version=device.sw_version or package_version()),
        **extra)  # type: ignore[arg-type]


def price_sensor(topics: Topics) -> Sensor:
    """The electricity price now. Not ``monetary``: Home Assistant keeps that class for amounts in a
    currency (unit an ISO 4217 code, state_class total or none), and a price per kWh is neither."""
    return Sensor("price", "Electricity price", topics.price, "nok_per_kwh", "NOK/kWh", None, "measurement",
                  None, 3)


def hour_energy_sensor(topics: Topics) -> Sensor:
    """Energy imported this clock hour: ``total_increasing`` (its fall to 0 at the hour is a new cycle),
    unavailable when it was not refreshed for two minutes (meter silent)."""
    return Sensor("energy_this_hour", "Energy this hour", topics.energy_hour, "import_kwh", "kWh", "energy",
                  "total_increasing", 2 * FRESH_FOR_S, 3)


def controls_messages(topics: Topics, chargers: Sequence[ChargerLimits], *, sharing: Sequence[str],
                      departure_pattern: str, price: bool, device: DeviceInfo | None = None,
                      prefix: str = DISCOVERY_PREFIX) -> list[OutMessage]:
    """The retained configs of the owner's controls, the hour's energy and (``price``) the price sensor."""
    device = device or DeviceInfo(topics.serial)
    spec = SPECS[DISCOVERY]
    out = [OutMessage(config_topic(topics.serial, c.object_id, prefix, c.component),
                      payload_bytes(spec, control_payload(c, topics, device)), spec.qos, spec.retain)
           for c in controls(topics, chargers, sharing=sharing, departure_pattern=departure_pattern)]
    for s in [hour_energy_sensor(topics), *([price_sensor(topics)] if price else [])]:
        out.append(OutMessage(config_topic(topics.serial, s.object_id, prefix),
                              payload_bytes(spec, config_payload(s, topics, device)), spec.qos, spec.retain))
    return out


# --- each charger's charging session (apm.core.sessions) ----------------------------------------------


def session_sensors(topics: Topics, chargers: Sequence[str]) -> list[Sensor]:
    """Per charger the energy of its charging session (the open one, else the last): ``total_increasing``,
    whose fall to 0 when the next EV is plugged in Home Assistant takes as a new cycle. No expiry: the
    last session's energy stays true while no EV is there and nothing is reported."""
    return [Sensor("session_energy_" + object_id_of(cid), f"Charger {cid} session energy",
                   topics.charger_session(cid), "energy_kwh", "kWh", "energy", "total_increasing", None, 2)
            for cid in chargers]


def session_messages(topics: Topics, chargers: Sequence[str], device: DeviceInfo | None = None,
                     prefix: str = DISCOVERY_PREFIX) -> list[OutMessage]:
    """The retained config of every charger's session energy sensor."""
    device = device or DeviceInfo(topics.serial)
    spec = SPECS[DISCOVERY]
    return [OutMessage(config_topic(topics.serial, s.object_id, prefix),
                       payload_bytes(spec, config_payload(s, topics, device)), spec.qos, spec.retain)
            for s in session_sensors(topics, chargers)]


# --- how the device reaches each charger (charger/<id>/link, apm.services.links) -------------------------


def link_sensors(topics: Topics, chargers: Sequence[str]) -> list[Sensor]:
    """Per charger the current limit it was given (A) and its protocol (a text sensor: no unit, no class)."""
    out: list[Sensor] = []
    for cid in chargers:
        oid, t = object_id_of(cid), topics.charger_link(cid)
        out += [Sensor("limit_" + oid, f"Charger {cid} limit", t, "limit_a", "A", "current", "measurement", None, 1),
                Sensor("protocol_" + oid, f"Charger {cid} protocol", t, "protocol", None, None, None)]
    return out


def connected_payload(topics: Topics, cid: str, device: DeviceInfo) -> DiscoveryConfig:
    """A charger's connection as a ``connectivity`` binary sensor; a generic MQTT charger's ``connected``
    is null (the broker holds its session), which renders "None": Home Assistant shows unknown."""
    template = (f"{{% if value_json.connected is none %}}None{{% elif value_json.connected %}}{SWITCH_ON}"
                f"{{% else %}}{SWITCH_OFF}{{% endif %}}")
    return DiscoveryConfig(
        name=f"Charger {cid} connected", unique_id=f"{node_id(topics.serial)}_connected_{object_id_of(cid)}",
        state_topic=topics.charger_link(cid), value_template=template, device_class="connectivity",
        payload_on=SWITCH_ON, payload_off=SWITCH_OFF, entity_category="diagnostic",
        availability_topic=topics.status, payload_available=ONLINE, payload_not_available=OFFLINE,
        device=device.payload(), origin=DiscoveryOrigin(name="apm-emulator",
                                                        sw_version=device.sw_version or package_version()))


def link_messages(topics: Topics, chargers: Sequence[str], device: DeviceInfo | None = None,
                  prefix: str = DISCOVERY_PREFIX) -> list[OutMessage]:
    """The retained configs of every charger's connection (binary sensor), limit and protocol (sensors)."""
    device = device or DeviceInfo(topics.serial)
    spec = SPECS[DISCOVERY]
    out = [OutMessage(config_topic(topics.serial, "connected_" + object_id_of(cid), prefix, "binary_sensor"),
                      payload_bytes(spec, connected_payload(topics, cid, device)), spec.qos, spec.retain)
           for cid in chargers]
    return out + [OutMessage(config_topic(topics.serial, s.object_id, prefix),
                             payload_bytes(spec, config_payload(s, topics, device)), spec.qos, spec.retain)
                  for s in link_sensors(topics, chargers)]
