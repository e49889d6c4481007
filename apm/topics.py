"""The device's MQTT topic tree and the JSON payload on each topic.

Everything lives under one root, ``apm/<serial>/``:

    topic                          payload                               qos retain  who publishes
    status                         "online" | "offline" (also the will)  1   yes     device
    reading/list1|list2|list3      Reading.to_json_dict()                0   yes     device
    headroom                       HeadroomPayload                       0   no      device
    energy/hourly                  Topics.energy_record(HourlyEnergy)    1   no      device (outbox)
    subscription                   SubscriptionState.to_status()         1   yes     device
    subscription/revocation        a signed revocation JWT (text)        1   yes     cloud (issuer)
    charger/<id>/state             ChargerStatePayload                   0   no      each charger
    charger/<id>/setpoint          SetpointPayload                       1   no      balancer
    eco/plan                       Plan.to_dict()                        1   yes     device

Why these flags: a reading is state (Home Assistant shows the last one at once) and carries the meter's
clock, so it may be retained; headroom, charger state and setpoints are commands or inputs to commands,
so they are never retained: a value that outlives its publisher must not steer a charger. Hourly
energy is QoS 1 and leaves the device through the persistent outbox (apm.outbox): none may be lost,
so it is delivered at least once and consumers drop duplicates by ``id``.

Payloads are JSON objects whose numeric field names carry their unit (``current_l1_a``, ``import_wh``);
the one exception is ``ts``, an ISO 8601 UTC time (`iso_ts`). Builders return `OutMessage` values
(topic, bytes, qos, retain) that `apm.mqtt_link.MqttLink.publish` sends as they are.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any, Final

from han.reading import Reading

ROOT: Final = "apm"
ONLINE: Final = "online"
OFFLINE: Final = "offline"
READING_LISTS: Final = (1, 2, 3)
LINE_FIELDS: Final = ("l1_a", "l2_a", "l3_a")
CHARGER_CURRENT_FIELDS: Final = ("current_l1_a", "current_l2_a", "current_l3_a")

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

# A topic level may not hold MQTT's separators or wildcards; NUL is forbidden in any MQTT string.
_BAD_LEVEL = re.compile(r"[/+#\x00]")


class TopicError(ValueError):
    """A serial or charger id that cannot be a topic level, or a topic outside the tree."""


class PayloadError(ValueError):
    """A payload that is not the JSON this topic carries; the message names what is wrong."""


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    qos: int
    retain: bool


DELIVERY: Final[Mapping[str, Delivery]] = {
    STATUS: Delivery(1, True),
    READING: Delivery(0, True),
    HEADROOM: Delivery(0, False),
    ENERGY_HOURLY: Delivery(1, False),
    SUBSCRIPTION: Delivery(1, True),
    # Retained: a device that was offline (or not yet started) when the payment bounced still learns it.
    SUBSCRIPTION_REVOCATION: Delivery(1, True),
    CHARGER_STATE: Delivery(0, False),
    CHARGER_SETPOINT: Delivery(1, False),
    ECO_PLAN: Delivery(1, True),
}


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
    """What `Topics.parse` found: the kind, and the charger id or list number where the kind has one."""

    kind: str
    charger: str | None = None
    list: int | None = None


def check_level(value: str, what: str) -> str:
    """``value`` if it can be one topic level (and a Home Assistant id part), else `TopicError`."""
    if not isinstance(value, str) or not value or _BAD_LEVEL.search(value):
        raise TopicError(f"{what} {value!r} cannot be an MQTT topic level (empty, or has '/', '+', '#' or NUL)")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Topics:
    """The topic tree of one device, ``apm/<serial>/...``."""

    serial: str

    def __post_init__(self) -> None:
        check_level(self.serial, "serial")

    @property
    def root(self) -> str:
        return f"{ROOT}/{self.serial}"

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    def reading(self, list_no: int) -> str:
        if list_no not in READING_LISTS:
            raise TopicError(f"list {list_no!r} is not 1, 2 or 3")
        return f"{self.root}/reading/list{list_no}"

    @property
    def headroom(self) -> str:
        return f"{self.root}/headroom"

    @property
    def energy_hourly(self) -> str:
        return f"{self.root}/energy/hourly"

    @property
    def subscription(self) -> str:
        return f"{self.root}/subscription"

    @property
    def subscription_revocation(self) -> str:
        return f"{self.root}/subscription/revocation"

    def charger_state(self, charger_id: str) -> str:
        return f"{self.root}/charger/{check_level(charger_id, 'charger id')}/state"

    def charger_setpoint(self, charger_id: str) -> str:
        return f"{self.root}/charger/{check_level(charger_id, 'charger id')}/setpoint"

    @property
    def eco_plan(self) -> str:
        return f"{self.root}/eco/plan"

    # Subscription filters.
    @property
    def all_readings(self) -> str:
        return f"{self.root}/reading/+"

    @property
    def all_charger_states(self) -> str:
        return f"{self.root}/charger/+/state"

    @property
    def all_charger_setpoints(self) -> str:
        return f"{self.root}/charger/+/setpoint"

    @property
    def everything(self) -> str:
        return f"{self.root}/#"

    def parse(self, topic: str) -> TopicRef | None:
        """The kind of a topic of this tree; None for a topic outside it or unknown within it."""
        prefix = self.root + "/"
        if not topic.startswith(prefix):
            return None
        rest = topic[len(prefix):].split("/")
        match rest:
            case ["status"]:
                return TopicRef(STATUS)
            case ["reading", name] if name in ("list1", "list2", "list3"):
                return TopicRef(READING, list=int(name[-1]))
            case ["headroom"]:
                return TopicRef(HEADROOM)
            case ["energy", "hourly"]:
                return TopicRef(ENERGY_HOURLY)
            case ["subscription"]:
                return TopicRef(SUBSCRIPTION)
            case ["subscription", "revocation"]:
                return TopicRef(SUBSCRIPTION_REVOCATION)
            case ["charger", cid, "state"] if cid:
                return TopicRef(CHARGER_STATE, charger=cid)
            case ["charger", cid, "setpoint"] if cid:
                return TopicRef(CHARGER_SETPOINT, charger=cid)
            case ["eco", "plan"]:
                return TopicRef(ECO_PLAN)
        return None

    # --- messages ------------------------------------------------------------------------------

    def status_message(self, online: bool) -> OutMessage:
        return _message(self.status, STATUS, (ONLINE if online else OFFLINE).encode())

    def reading_message(self, reading: Reading | Mapping[str, Any]) -> OutMessage:
        data = reading.to_json_dict() if isinstance(reading, Reading) else dict(reading)
        list_no = data.get("list")
        if list_no not in READING_LISTS:
            raise PayloadError(f"a reading needs 'list' 1, 2 or 3, not {list_no!r}")
        return _message(self.reading(list_no), READING, encode_json(data))

    def headroom_message(self, headroom: HeadroomPayload, ttl_s: float | None = None) -> OutMessage:
        return _message(self.headroom, HEADROOM, encode_json(headroom.to_json_dict()), ttl_s)

    def energy_record(self, record: Any) -> dict[str, Any]:
        """An hourly record (e.g. `apm.meter_state.HourlyEnergy`) as the JSON object the outbox keeps,
        with ``id`` = `energy_record_id` of its ``hour_start`` unless it has one."""
        data = to_json_obj(record)
        if not isinstance(data, dict):
            raise PayloadError("an hourly energy record is a JSON object")
        if "id" not in data:
            if not isinstance(data.get("hour_start"), str):
                raise PayloadError("an hourly energy record needs an 'id' or an 'hour_start' to make one from")
            data = {"id": energy_record_id(self.serial, data["hour_start"]), **data}
        return data

    def energy_message(self, record: Any) -> OutMessage:
        """An hourly energy record (any JSON object with a non-empty string ``id``)."""
        return _message(self.energy_hourly, ENERGY_HOURLY, encode_energy(record))

    def subscription_message(self, state: Any) -> OutMessage:
        return _message(self.subscription, SUBSCRIPTION, encode_json(state))

    def revocation_message(self, revocation: str) -> OutMessage:
        """A signed revocation (`apm.token.sign_revocation`), sent as the JWT text itself."""
        if not revocation or not revocation.isascii():
            raise PayloadError("a revocation is a non-empty ASCII JWT")
        return _message(self.subscription_revocation, SUBSCRIPTION_REVOCATION, revocation.encode("ascii"))

    def charger_state_message(self, charger_id: str, state: ChargerStatePayload) -> OutMessage:
        return _message(self.charger_state(charger_id), CHARGER_STATE, encode_json(state.to_json_dict()))

    def setpoint_message(self, charger_id: str, setpoint: SetpointPayload,
                         ttl_s: float | None = None) -> OutMessage:
        return _message(self.charger_setpoint(charger_id), CHARGER_SETPOINT,
                        encode_json(setpoint.to_json_dict()), ttl_s)

    def eco_plan_message(self, plan: Any) -> OutMessage:
        return _message(self.eco_plan, ECO_PLAN, encode_json(plan))


def _message(topic: str, kind: str, payload: bytes, ttl_s: float | None = None) -> OutMessage:
    d = DELIVERY[kind]
    return OutMessage(topic, payload, d.qos, d.retain, ttl_s)


# --- JSON ----------------------------------------------------------------------------------------


def to_json_obj(value: Any) -> Any:
    """A plain JSON value from a Mapping, a value with ``to_json_dict()`` or ``to_dict()``, or a dataclass.

    datetimes become ISO 8601 strings and enums their value, so the frozen dataclasses of the device
    core can be handed over as they are.
    """
    if isinstance(value, Mapping):
        return {str(k): to_json_obj(v) for k, v in value.items()}
    for method in ("to_json_dict", "to_dict"):
        fn = getattr(value, method, None)
        if callable(fn):
            return to_json_obj(fn())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json_obj(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json_obj(v) for v in value]
    if isinstance(value, datetime):
        return iso_ts(value) if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return to_json_obj(value.value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise PayloadError(f"{type(value).__name__} is not JSON")


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON. NaN and infinities are refused: they are not JSON and break consumers."""
    obj = to_json_obj(value)
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except ValueError as exc:
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


def decode_status(payload: bytes | str) -> bool:
    """True for "online", False for "offline"."""
    text = payload.decode(errors="replace") if isinstance(payload, bytes | bytearray) else payload
    if text == ONLINE:
        return True
    if text == OFFLINE:
        return False
    raise PayloadError(f"status {text!r} is neither {ONLINE!r} nor {OFFLINE!r}")


def decode_reading(payload: bytes | str) -> Reading:
    data = decode_json(payload)
    if data.get("list") not in READING_LISTS or not isinstance(data.get("meter"), str):
        raise PayloadError("a reading needs 'meter' (string) and 'list' (1, 2 or 3)")
    return Reading.from_json_dict(data)


def encode_energy(record: Any) -> bytes:
    data = to_json_obj(record)
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
        raise PayloadError("an hourly energy record needs a non-empty string 'id' (consumers deduplicate by it)")
    return encode_json(data)


def decode_energy(payload: bytes | str) -> dict[str, Any]:
    data = decode_json(payload)
    if not isinstance(data.get("id"), str) or not data["id"]:
        raise PayloadError("an hourly energy record needs a non-empty string 'id'")
    return data


def energy_record_id(serial: str, hour_start: datetime | str) -> str:
    """A stable id for the record of the hour starting at ``hour_start``: the same hour, the same id."""
    start = iso_ts(hour_start) if isinstance(hour_start, datetime) else hour_start
    return f"{serial}/{start}"


def iso_ts(t: datetime | float) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. 2024-01-15T10:00:00.250Z; a float is a POSIX time."""
    if isinstance(t, datetime):
        if t.tzinfo is None:
            raise PayloadError(f"{t.isoformat()} has no time zone")
        dt = t.astimezone(UTC)
    else:
        dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def ts_seconds(text: str) -> float:
    """A ``ts`` as POSIX seconds, to compare with a clock (the inverse of `iso_ts` on a float)."""
    return parse_ts(text).timestamp()


def parse_ts(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except (TypeError, ValueError):
        raise PayloadError(f"ts {text!r} is not an ISO 8601 time") from None
    if dt.tzinfo is None:
        raise PayloadError(f"ts {text!r} has no time zone")
    return dt


def _ts(value: datetime | float | str) -> str:
    return value if isinstance(value, str) else iso_ts(value)


def _number(data: Mapping[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PayloadError(f"{key!r} must be a number, not {value!r}")
    return float(value)


def _number_or_none(data: Mapping[str, Any], key: str) -> float | None:
    return None if data.get(key) is None else _number(data, key)


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise PayloadError(f"{key!r} must be a string, not {value!r}")
    return value


def _text_or_none(data: Mapping[str, Any], key: str) -> str | None:
    return None if data.get(key) is None else _text(data, key)


def _ts_field(data: Mapping[str, Any]) -> str:
    ts = _text(data, "ts")
    parse_ts(ts)
    return ts


# --- typed payloads of the balancer's conversation -----------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class HeadroomPayload:
    """Amperes our chargers may still draw on each grid line (None: the supply has no such line).

    ``stale``: the meter data it rests on is too old, so use the safe fixed current. ``age_s`` (age of
    that data), ``limit_a`` (fuse less margin) and ``reason`` are optional, for people and logs.
    From `apm.headroom.Headroom` h: ``make(*h.available_a, ts=..., stale=not h.fresh, age_s=h.age_s,
    limit_a=h.limit_a, reason=h.reason)``.
    """

    l1_a: float | None
    l2_a: float | None
    l3_a: float | None
    ts: str
    stale: bool = False
    age_s: float | None = None
    limit_a: float | None = None
    reason: str | None = None

    @classmethod
    def make(cls, l1_a: float | None, l2_a: float | None, l3_a: float | None, *,
             ts: datetime | float | str, stale: bool = False, age_s: float | None = None,
             limit_a: float | None = None, reason: str | None = None) -> HeadroomPayload:
        return cls(l1_a, l2_a, l3_a, _ts(ts), stale, age_s, limit_a, reason)

    def lines(self) -> tuple[float | None, float | None, float | None]:
        return (self.l1_a, self.l2_a, self.l3_a)

    def to_json_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"l1_a": self.l1_a, "l2_a": self.l2_a, "l3_a": self.l3_a, "ts": self.ts,
                             "stale": self.stale}
        return _with_optional(d, age_s=self.age_s, limit_a=self.limit_a, reason=self.reason)

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> HeadroomPayload:
        a, b, c = (_number_or_none(data, k) for k in LINE_FIELDS)
        stale = data.get("stale", False)
        if not isinstance(stale, bool):
            raise PayloadError(f"'stale' must be true or false, not {stale!r}")
        return cls(a, b, c, _ts_field(data), stale, _number_or_none(data, "age_s"),
                   _number_or_none(data, "limit_a"), _text_or_none(data, "reason"))

    @classmethod
    def decode(cls, payload: bytes | str) -> HeadroomPayload:
        return cls.from_json_dict(decode_json(payload))


@dataclasses.dataclass(frozen=True, slots=True)
class ChargerStatePayload:
    """What a charger reports: its state, the current on its own L1..L3 terminals, its limits.

    ``state`` is a mode name; `apm.charger_state` uses "disconnected", "connected", "charging",
    "finished". ``phases``: the phases the EV draws on (1 or 3; None: not known yet).
    ``setpoint_a``: the setpoint the charger applies now (optional).
    """

    state: str
    current_l1_a: float
    current_l2_a: float
    current_l3_a: float
    max_a: float
    phases: int | None
    ts: str | None = None
    setpoint_a: float | None = None

    @classmethod
    def make(cls, state: str, currents_a: tuple[float, float, float], *, max_a: float, phases: int | None,
             ts: datetime | float | str | None = None, setpoint_a: float | None = None) -> ChargerStatePayload:
        return cls(state, *currents_a, max_a=max_a, phases=phases, ts=None if ts is None else _ts(ts),
                   setpoint_a=setpoint_a)

    def currents(self) -> tuple[float, float, float]:
        return (self.current_l1_a, self.current_l2_a, self.current_l3_a)

    def to_json_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"state": self.state}
        d.update(zip(CHARGER_CURRENT_FIELDS, self.currents(), strict=True))
        d.update(max_a=self.max_a, phases=self.phases)
        return _with_optional(d, setpoint_a=self.setpoint_a, ts=self.ts)

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> ChargerStatePayload:
        currents = [_number(data, k) for k in CHARGER_CURRENT_FIELDS]
        phases = data.get("phases")
        if phases is not None and (isinstance(phases, bool) or phases not in (1, 3)):
            raise PayloadError(f"'phases' must be 1, 3 or null, not {phases!r}")
        ts = _ts_field(data) if data.get("ts") is not None else None
        return cls(_text(data, "state"), *currents, max_a=_number(data, "max_a"),
                   phases=None if phases is None else int(phases), ts=ts,
                   setpoint_a=_number_or_none(data, "setpoint_a"))

    @classmethod
    def decode(cls, payload: bytes | str) -> ChargerStatePayload:
        return cls.from_json_dict(decode_json(payload))


@dataclasses.dataclass(frozen=True, slots=True)
class SetpointPayload:
    """The balancer's order to one charger: offer ``current_a`` per phase (0: pause)."""

    current_a: float
    reason: str
    ts: str

    @classmethod
    def make(cls, current_a: float, reason: str, *, ts: datetime | float | str) -> SetpointPayload:
        return cls(float(current_a), reason, _ts(ts))

    def to_json_dict(self) -> dict[str, Any]:
        return {"current_a": self.current_a, "reason": self.reason, "ts": self.ts}

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> SetpointPayload:
        current = _number(data, "current_a")
        if current < 0:
            raise PayloadError(f"'current_a' must not be negative, not {current!r}")
        return cls(current, _text(data, "reason"), _ts_field(data))

    @classmethod
    def decode(cls, payload: bytes | str) -> SetpointPayload:
        return cls.from_json_dict(decode_json(payload))


def _with_optional(d: dict[str, Any], **optional: Any) -> dict[str, Any]:
    d.update((k, v) for k, v in optional.items() if v is not None)
    return d
