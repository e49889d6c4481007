"""The device's MQTT topics, in one table: topic -> payload type -> QoS -> retain -> who publishes.

Everything of one device lives under ``apm/<serial>/``; Home Assistant's discovery configs under
``homeassistant/``. `TABLE` is the one place a topic is declared; `Topics` builds and parses the
topics of one device from it, and its ``*_message`` methods return `OutMessage` values (topic, bytes,
QoS, retain) that `apm.io.mqtt.link.MqttLink.publish` sends as they are. The payloads themselves are
declared in `apm.io.mqtt.messages`; ``python -m apm.io.mqtt.topics --schema`` writes their JSON Schema
(docs/mqtt-payloads.schema.json) and ``--table`` the table of docs/mqtt.md.

Why these flags: a reading is state (Home Assistant shows the last one at once) and carries the meter's
clock, so it may be retained (a charger's charging session and its link too: what its EV took, how
the device reaches it, not inputs to anything); headroom, charger state and setpoints are commands or inputs to commands,
so they are never retained: a value that outlives its publisher must not steer a charger. Hourly
energy is QoS 1 and leaves the device through the persistent outbox (apm.io.storage.outbox): none may be lost,
so it is delivered at least once and consumers drop duplicates by ``id``. A revocation and the eco plan
are retained so that a device that was offline when they were sent still learns them; the capacity
guard's month is state, retained as a reading is.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from apm.core.meter_state import HourlyEnergy
from apm.io.mqtt.messages import (
    OFFLINE,
    ONLINE,
    CapacityPayload,
    ChargerLinkPayload,
    ChargerSettingsPayload,
    ChargerStatePayload,
    Command,
    DiscoveryConfig,
    EcoPlanPayload,
    EcoRequest,
    EnergyRecord,
    HeadroomPayload,
    HourEnergyPayload,
    PayloadError,
    PricePayload,
    Revocation,
    SessionPayload,
    SetpointPayload,
    SettingsPayload,
    Status,
    SubscriptionPayload,
    convert,
    encode,
    energy_record_id,
    iso_ts,
    parse_ts,
    ts_seconds,
)
from han.reading import Reading

__all__ = ["OFFLINE", "ONLINE", "PayloadError", "energy_record_id", "iso_ts", "parse_ts", "ts_seconds"]

ROOT: Final = "apm"
READING_LISTS: Final = (1, 2, 3)

# Topic kinds, as `Topics.parse` names them.
STATUS: Final = "status"
READING: Final = "reading"
HEADROOM: Final = "headroom"
ENERGY_HOURLY: Final = "energy/hourly"
SUBSCRIPTION: Final = "subscription"
SUBSCRIPTION_REVOCATION: Final = "subscription/revocation"
CHARGER_STATE: Final = "charger/state"
CHARGER_SETPOINT: Final = "charger/setpoint"
ECO_PLAN: Final = "eco/plan"
ECO_REQUEST: Final = "eco/request"
SETTINGS: Final = "settings"
SETTINGS_SET: Final = "settings/set"
CHARGER_SETTINGS: Final = "charger/settings"
CHARGER_SET: Final = "charger/set"
CHARGER_SESSION: Final = "charger/session"
CHARGER_LINK: Final = "charger/link"
PRICE: Final = "price"
ENERGY_HOUR: Final = "energy/hour"
CAPACITY: Final = "capacity"
DISCOVERY: Final = "discovery"

DISCOVERY_PREFIX: Final = "homeassistant"

# A topic level may not hold MQTT's separators or wildcards; NUL is forbidden in any MQTT string.
_BAD_LEVEL = re.compile(r"[/+#\x00]")


class TopicError(ValueError):
    """A serial or charger id that cannot be a topic level, or a topic outside the tree."""


@dataclasses.dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic: its pattern (``{serial}``, ``{list}``, ``{charger}`` ... are levels), the type its
    payload decodes to, how it is delivered, and who publishes it. ``text``: the payload is plain
    text, not JSON."""

    kind: str
    pattern: str
    payload: Any
    qos: int
    retain: bool
    publisher: str
    text: bool = False

    @property
    def payload_name(self) -> str:
        return _payload_name(self.payload)


TABLE: Final[tuple[TopicSpec, ...]] = (
    TopicSpec(STATUS, "apm/{serial}/status", Status, 1, True, "device (and its last will)", text=True),
    TopicSpec(READING, "apm/{serial}/reading/list{list}", Reading, 0, True, "device"),
    TopicSpec(HEADROOM, "apm/{serial}/headroom", HeadroomPayload, 0, False, "device"),
    TopicSpec(ENERGY_HOURLY, "apm/{serial}/energy/hourly", EnergyRecord, 1, False, "device, from its outbox"),
    TopicSpec(SUBSCRIPTION, "apm/{serial}/subscription", SubscriptionPayload, 1, True, "device"),
    TopicSpec(SUBSCRIPTION_REVOCATION, "apm/{serial}/subscription/revocation", Revocation, 1, True,
              "cloud (the token issuer)", text=True),
    TopicSpec(CHARGER_STATE, "apm/{serial}/charger/{charger}/state", ChargerStatePayload, 0, False, "each charger"),
    TopicSpec(CHARGER_SETPOINT, "apm/{serial}/charger/{charger}/setpoint", SetpointPayload, 1, False, "balancer"),
    TopicSpec(ECO_PLAN, "apm/{serial}/eco/plan", EcoPlanPayload, 1, True, "eco service (empty: no plan)"),
    TopicSpec(ECO_REQUEST, "apm/{serial}/eco/request", EcoRequest, 1, False, "the user (an app, Home Assistant)"),
    TopicSpec(SETTINGS, "apm/{serial}/settings", SettingsPayload, 1, True, "device (its owner settings)"),
    TopicSpec(SETTINGS_SET, "apm/{serial}/settings/{setting}/set", Command, 1, False,
              "the owner (Home Assistant): eco_enabled, sharing", text=True),
    TopicSpec(CHARGER_SETTINGS, "apm/{serial}/charger/{charger}/settings", ChargerSettingsPayload, 1, True,
              "device (a charger's owner settings)"),
    TopicSpec(CHARGER_SET, "apm/{serial}/charger/{charger}/settings/{setting}/set", Command, 1, False,
              "the owner (Home Assistant): max_a, eco_departure, eco_energy_kwh", text=True),
    TopicSpec(CHARGER_SESSION, "apm/{serial}/charger/{charger}/session", SessionPayload, 0, True,
              "device (a charger's charging session: its energy, start and duration)"),
    TopicSpec(CHARGER_LINK, "apm/{serial}/charger/{charger}/link", ChargerLinkPayload, 0, True,
              "device (how it reaches a charger: protocol, connected, last report, limit; on change, else <= 10 s)"),
    TopicSpec(PRICE, "apm/{serial}/price", PricePayload, 0, True, "device (Smart eco's price feed)"),
    TopicSpec(ENERGY_HOUR, "apm/{serial}/energy/hour", HourEnergyPayload, 0, False, "device"),
    TopicSpec(CAPACITY, "apm/{serial}/capacity", CapacityPayload, 1, True,
              "device, with the capacity guard on (every 30 s and when an hour closes)"),
    TopicSpec(DISCOVERY, "homeassistant/{component}/{node}/{object}/config", DiscoveryConfig, 1, True, "device"),
)
SPECS: Final[Mapping[str, TopicSpec]] = {s.kind: s for s in TABLE}

# What a variable level may hold when a topic is parsed.
_LEVELS = {"list": "(?P<list>[123])", "charger": "(?P<charger>[^/+#\x00]+)", "node": "[^/+#\x00]+",
           "object": "[^/+#\x00]+", "component": "[a-z_]+", "setting": "(?P<setting>[a-z_]+)"}


@dataclasses.dataclass(frozen=True, slots=True)
class OutMessage:
    """One message to publish. ``ttl_s``: drop it, unsent, once it has waited this long (None: never)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    ttl_s: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TopicRef:
    """What `Topics.parse` found: the kind, and the charger id, list number or setting where the kind has one."""

    kind: str
    charger: str | None = None
    list: int | None = None
    setting: str | None = None


def check_level(value: str, what: str) -> str:
    """``value`` if it can be one topic level (and a Home Assistant id part), else `TopicError`."""
    if not isinstance(value, str) or not value or _BAD_LEVEL.search(value):
        raise TopicError(f"{what} {value!r} cannot be an MQTT topic level (empty, or has '/', '+', '#' or NUL)")
    return value


class Topics:
    """The topic tree of one device, ``apm/<serial>/...``, built from `TABLE`."""

    __slots__ = ("_parsers", "serial")

    def __init__(self, serial: str) -> None:
        self.serial = check_level(serial, "serial")
        root = f"{ROOT}/{{serial}}/"
        self._parsers = tuple(
            (re.compile(_regex(s.pattern.replace("{serial}", "\x01"), self.serial)), s.kind)
            for s in TABLE if s.pattern.startswith(root))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Topics) and other.serial == self.serial

    def __hash__(self) -> int:
        return hash(self.serial)

    def __repr__(self) -> str:
        return f"Topics({self.serial!r})"

    def topic(self, kind: str, *, charger: str | None = None, list_no: int | None = None,
              setting: str | None = None) -> str:
        """The topic of ``kind`` (a charger's topics need ``charger``, a reading ``list_no``, a command
        ``setting``)."""
        levels: dict[str, object] = {"serial": self.serial}
        if setting is not None:
            levels["setting"] = check_level(setting, "setting")
        if charger is not None:
            levels["charger"] = check_level(charger, "charger id")
        if list_no is not None:
            if list_no not in READING_LISTS:
                raise TopicError(f"list {list_no!r} is not 1, 2 or 3")
            levels["list"] = list_no
        try:
            return SPECS[kind].pattern.format(**levels)
        except KeyError as exc:
            raise TopicError(f"topic {kind!r} needs {exc.args[0]!r}") from None

    @property
    def root(self) -> str:
        return f"{ROOT}/{self.serial}"

    @property
    def status(self) -> str:
        return self.topic(STATUS)

    def reading(self, list_no: int) -> str:
        return self.topic(READING, list_no=list_no)

    @property
    def headroom(self) -> str:
        return self.topic(HEADROOM)

    @property
    def energy_hourly(self) -> str:
        return self.topic(ENERGY_HOURLY)

    @property
    def subscription(self) -> str:
        return self.topic(SUBSCRIPTION)

    @property
    def subscription_revocation(self) -> str:
        return self.topic(SUBSCRIPTION_REVOCATION)

    def charger_state(self, charger_id: str) -> str:
        return self.topic(CHARGER_STATE, charger=charger_id)

    def charger_setpoint(self, charger_id: str) -> str:
        return self.topic(CHARGER_SETPOINT, charger=charger_id)

    @property
    def eco_plan(self) -> str:
        return self.topic(ECO_PLAN)

    @property
    def eco_request(self) -> str:
        return self.topic(ECO_REQUEST)

    @property
    def settings(self) -> str:
        return self.topic(SETTINGS)

    def settings_set(self, setting: str) -> str:
        return self.topic(SETTINGS_SET, setting=setting)

    def charger_settings(self, charger_id: str) -> str:
        return self.topic(CHARGER_SETTINGS, charger=charger_id)

    def charger_set(self, charger_id: str, setting: str) -> str:
        return self.topic(CHARGER_SET, charger=charger_id, setting=setting)

    def charger_session(self, charger_id: str) -> str:
        return self.topic(CHARGER_SESSION, charger=charger_id)

    def charger_link(self, charger_id: str) -> str:
        return self.topic(CHARGER_LINK, charger=charger_id)

    @property
    def price(self) -> str:
        return self.topic(PRICE)

    @property
    def energy_hour(self) -> str:
        return self.topic(ENERGY_HOUR)

    @property
    def capacity(self) -> str:
        return self.topic(CAPACITY)

    # Subscription filters.
    @property
    def all_settings_sets(self) -> str:
        return f"{self.root}/settings/+/set"

    @property
    def all_charger_sets(self) -> str:
        return f"{self.root}/charger/+/settings/+/set"

    @property
    def all_charger_states(self) -> str:
        return f"{self.root}/charger/+/state"

    @property
    def all_charger_setpoints(self) -> str:
        return f"{self.root}/charger/+/setpoint"

    def parse(self, topic: str) -> TopicRef | None:
        """The kind of a topic of this tree; None for a topic outside it or unknown within it."""
        for regex, kind in self._parsers:
            m = regex.fullmatch(topic)
            if m is not None:
                groups = m.groupdict()
                list_no = groups.get("list")
                return TopicRef(kind, charger=groups.get("charger"), list=int(list_no) if list_no else None,
                                setting=groups.get("setting"))
        return None

    # --- messages ------------------------------------------------------------------------------

    def message(self, kind: str, payload: Any, *, ttl_s: float | None = None, charger: str | None = None,
                list_no: int | None = None) -> OutMessage:
        """``payload`` (of the kind's type) on the kind's topic, with its QoS and retain flag."""
        spec = SPECS[kind]
        return OutMessage(self.topic(kind, charger=charger, list_no=list_no), payload_bytes(spec, payload),
                          spec.qos, spec.retain, ttl_s)

    def reading_message(self, reading: Reading | Mapping[str, Any]) -> OutMessage:
        r = reading if isinstance(reading, Reading) else convert(reading, Reading)
        if r.list not in READING_LISTS:
            raise PayloadError(f"a reading needs 'list' 1, 2 or 3, not {r.list!r}")
        return self.message(READING, r, list_no=r.list)

    def headroom_message(self, headroom: HeadroomPayload, ttl_s: float | None = None) -> OutMessage:
        return self.message(HEADROOM, headroom, ttl_s=ttl_s)

    def energy_record(self, hour: HourlyEnergy) -> dict[str, Any]:
        """An hourly record as the plain JSON object the outbox keeps, with its stable ``id``."""
        return msgspec.to_builtins(EnergyRecord.of(self.serial, hour))

    def subscription_message(self, state: SubscriptionPayload | Mapping[str, Any]) -> OutMessage:
        p = state if isinstance(state, SubscriptionPayload) else convert(state, SubscriptionPayload)
        return self.message(SUBSCRIPTION, p)

    def revocation_message(self, revocation: str) -> OutMessage:
        """A signed revocation (`apm.core.token.sign_revocation`), sent as the JWT text itself."""
        return self.message(SUBSCRIPTION_REVOCATION, revocation)

    def charger_state_message(self, charger_id: str, state: ChargerStatePayload) -> OutMessage:
        return self.message(CHARGER_STATE, state, charger=charger_id)

    def setpoint_message(self, charger_id: str, setpoint: SetpointPayload,
                         ttl_s: float | None = None) -> OutMessage:
        return self.message(CHARGER_SETPOINT, setpoint, ttl_s=ttl_s, charger=charger_id)

    def eco_plan_message(self, plan: EcoPlanPayload | None) -> OutMessage:
        """The retained plan; None clears it (an empty retained payload)."""
        if plan is None:
            spec = SPECS[ECO_PLAN]
            return OutMessage(self.eco_plan, b"", spec.qos, spec.retain)
        return self.message(ECO_PLAN, plan)

    def eco_request_message(self, request: EcoRequest) -> OutMessage:
        return self.message(ECO_REQUEST, request)

    def capacity_message(self, status: CapacityPayload) -> OutMessage:
        return self.message(CAPACITY, status)


def payload_bytes(spec: TopicSpec, payload: Any) -> bytes:
    """The wire form of ``payload`` on ``spec``'s topic; `PayloadError` if it is not of the topic's type."""
    if spec.text:
        if not isinstance(payload, str):
            raise PayloadError(f"{spec.kind}: the payload is text, not {type(payload).__name__}")
        return convert(payload, spec.payload).encode("ascii")  # type: ignore[arg-type]
    if not isinstance(payload, spec.payload):
        raise PayloadError(f"{spec.kind}: the payload is a {spec.payload_name}, not {type(payload).__name__}")
    return encode(payload)


def _regex(pattern: str, serial: str) -> str:
    out = re.escape(pattern).replace("\x01", re.escape(serial))
    for name, rx in _LEVELS.items():
        out = out.replace(re.escape("{" + name + "}"), rx)
    return out


# --- plain JSON (the link's generic outbox and incoming messages) ------------------------------------


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON of a plain value. NaN and infinities are refused: they are not JSON."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"not JSON-safe: {exc}") from None


def decode_json(payload: bytes | bytearray | str) -> dict[str, Any]:
    """A JSON object from a payload, or `PayloadError`."""
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"a JSON object was expected, not {type(obj).__name__}")
    return obj


def encode_energy(record: Mapping[str, Any]) -> bytes:
    """An outbox record as the ``energy/hourly`` payload; `PayloadError` if it is not an `EnergyRecord`."""
    return encode(convert(record, EnergyRecord))


# --- documentation --------------------------------------------------------------------------------------


def _payload_name(kind: Any) -> str:
    if isinstance(kind, type):
        return kind.__name__
    meta = next((m for m in getattr(kind, "__metadata__", ()) if isinstance(m, msgspec.Meta)), None)
    return meta.title if meta is not None and meta.title else str(kind)


def schema() -> dict[str, Any]:
    """The JSON Schema of every payload in `TABLE` (docs/mqtt-payloads.schema.json)."""
    kinds = list(dict.fromkeys(s.payload for s in TABLE))
    inline, defs = msgspec.json.schema_components(kinds, ref_template="#/$defs/{name}")
    for kind, sch in zip(kinds, inline, strict=True):
        if "$ref" not in sch:  # the text payloads have no Struct of their own: name them here
            defs[_payload_name(kind)] = sch
    topics = [{"topic": s.pattern, "payload": {"$ref": f"#/$defs/{s.payload_name}"},
               "format": "text" if s.text else "json", "qos": s.qos, "retain": s.retain, "publisher": s.publisher}
              for s in TABLE]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "APM MQTT payloads",
        "description": "Generated by `python -m apm.io.mqtt.topics --schema` from apm/io/mqtt/messages.py; "
                       "x-topics is the topic table of apm/io/mqtt/topics.py.",
        "x-topics": topics,
        "$defs": dict(sorted(defs.items())),
    }


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=False) + "\n"


def markdown_table() -> str:
    """The topic table as docs/mqtt.md shows it."""
    rows = ["| topic | payload | QoS | retain | published by |", "|---|---|---|---|---|"]
    for s in TABLE:
        payload = s.payload_name + (" (text)" if s.text else "")
        rows.append(f"| `{s.pattern}` | {payload} | {s.qos} | {'yes' if s.retain else 'no'} | {s.publisher} |")
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--schema"]:
        sys.stdout.write(schema_text())
        return 0
    if args == ["--table"]:
        sys.stdout.write(markdown_table())
        return 0
    sys.stderr.write("usage: python -m apm.io.mqtt.topics --schema | --table\n")
    return 2

if __name__ == "__main__":
    raise SystemExit(main())
