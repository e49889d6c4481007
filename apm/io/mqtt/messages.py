"""Every MQTT payload the device sends or takes, declared once as a frozen msgspec Struct.

`apm.io.mqtt.topics` says which payload travels on which topic (with its QoS and retain flag); this module says
what each payload is, encodes and decodes it, and turns it into and out of the values the sans-IO core
works with (`Headroom`, `ChargerState`, `HourlyEnergy`, `Plan`).

Why msgspec: one declaration gives the validating decoder (types, bounds, the field path in every
error), the encoder and the JSON Schema (`docs/mqtt-payloads.schema.json`), and decoding is fast
enough for every reading. Rules of the wire format:

- numeric field names carry their unit (``current_l1_a``, ``import_wh``); ``ts`` is an ISO 8601 time
  with an offset (`iso_ts`: UTC with milliseconds);
- a key that has always been sent is always sent (``null`` when there is no value); an optional key
  is left out when it has no value;
- unknown keys are ignored, so a consumer that knows an older schema reads a newer payload.

`decode` never raises anything but `PayloadError`, whose message names the field (``at `$.ts```).
Before parsing it refuses a payload larger than MAX_PAYLOAD_BYTES (an eco plan: MAX_PLAN_BYTES) or
nested deeper than MAX_DEPTH (msgspec recurses on nesting: a 2 KB payload of 1,000 open brackets
raised RecursionError, out of any handler's except clause); numbers are finite and bounded (a
400-digit integer is refused, not carried along as a Python int).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeVar

import msgspec

from apm.core.charger_state import ChargerState
from apm.core.eco.planner import Plan, Strategy
from apm.core.headroom import Headroom
from apm.core.lines import ZERO, Network
from apm.core.meter_state import HourlyEnergy
from han.reading import Reading

if TYPE_CHECKING:  # apm.io.mqtt.topics imports this module: only the type is needed here
    from apm.io.mqtt.topics import OutMessage, Topics

log = logging.getLogger(__name__)

REPORT_AGE_S = 10.0  # a charger report's ts older than this (or later than its arrival) is not trusted

ONLINE: Final = "online"
OFFLINE: Final = "offline"

# An ISO 8601 time with an offset; `iso_ts` writes UTC with milliseconds, the eco plan Oslo time.
_TS_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$"
Ts = Annotated[str, msgspec.Meta(pattern=_TS_PATTERN, description="ISO 8601 time with an offset")]
# Bounds far beyond any installation (a 400 A fuse, a year of counts), tight enough that every number
# is an ordinary float or a 64-bit int.
Amperes = Annotated[float, msgspec.Meta(ge=0, le=10_000)]
SignedAmperes = Annotated[float, msgspec.Meta(ge=-10_000, le=10_000)]
NonNegative = Annotated[float, msgspec.Meta(ge=0, le=1e15)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_PLAN_BYTES = 1024 * 1024 - 1  # three chargers' plans with 15-minute slots over two days; not 1 MB
MAX_DEPTH = 16  # the deepest payload (an eco plan's slots) nests 4 levels

Status = Annotated[Literal["online", "offline"], msgspec.Meta(
    title="Status", description="Plain text, not JSON: the device's presence (also its MQTT will).")]
Revocation = Annotated[str, msgspec.Meta(
    title="Revocation", pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$",
    description="Plain text, not JSON: a signed revocation JWT (apm.core.token.sign_revocation).")]

Command = Annotated[str, msgspec.Meta(
    title="Command", max_length=64,
    description="Plain text, not JSON: a setting's new value as Home Assistant sends it: a number, "
                "ON or OFF, an option, HH:MM (apm.services.controls).")]


P = TypeVar("P", bound="Payload")


class PayloadError(ValueError):
    """A payload that is not what its topic carries; the message names the field and what is wrong."""


class Payload(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of the JSON payloads: every number must be finite (NaN and infinities are not JSON)."""

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            v = getattr(self, name)
            if isinstance(v, float) and not math.isfinite(v):
                raise PayloadError(f"{name} must be a finite number, not {v!r}")

    @classmethod
    def decode(cls: type[P], payload: bytes | bytearray | str) -> P:
        """The payload as this type, or `PayloadError` naming the field."""
        return decode(payload, cls)

    def to_json_dict(self) -> dict[str, Any]:
        """The payload as plain JSON values, with the keys the wire form has."""
        return msgspec.to_builtins(self)


# --- the balancer's conversation -------------------------------------------------------------------


class HeadroomPayload(Payload, frozen=True, kw_only=True, omit_defaults=True):
    """Amperes our chargers may still draw on each grid line (null: the supply has no such line).

    ``stale``: the meter data it rests on is too old, so use the safe fixed current. ``age_s``,
    ``limit_a`` (fuse less margin) and ``reason`` are for people and logs. ``seq`` counts the headroom
    messages the device sent, ``reading_seq`` the readings it had decoded by then: a setpoint names
    both, so the latency from the meter to a charger can be traced.
    """

    l1_a: SignedAmperes | None
    l2_a: SignedAmperes | None
    l3_a: SignedAmperes | None
    ts: Ts
    stale: bool
    age_s: NonNegative | None = None
    limit_a: SignedAmperes | None = None
    reason: str | None = None
    seq: Count | None = None
    reading_seq: Count | None = None

    @classmethod
    def make(cls, l1_a: float | None, l2_a: float | None, l3_a: float | None, *,
             ts: datetime | float | str, stale: bool = False, age_s: float | None = None,
             limit_a: float | None = None, reason: str | None = None, seq: int | None = None,
             reading_seq: int | None = None) -> HeadroomPayload:
        return cls(l1_a=l1_a, l2_a=l2_a, l3_a=l3_a, ts=_ts(ts), stale=stale, age_s=age_s, limit_a=limit_a,
                   reason=reason, seq=seq, reading_seq=reading_seq)

    def lines(self) -> tuple[float | None, float | None, float | None]:
        return (self.l1_a, self.l2_a, self.l3_a)


class ChargerStatePayload(Payload, frozen=True, kw_only=True, omit_defaults=True):
    """What a charger reports: its mode, the current on its own L1..L3 terminals, its limits.

    ``phases``: the phases the EV draws on (null: not known yet); ``setpoint_a``: the setpoint the
    charger applies now; ``energy_wh``: its own energy register, if it has one (the session's energy).
    """

    state: Literal["disconnected", "connected", "charging", "finished"]
    current_l1_a: SignedAmperes
    current_l2_a: SignedAmperes
    current_l3_a: SignedAmperes
    max_a: Amperes
    phases: Literal[1, 3] | None
    ts: Ts | None = None
    setpoint_a: Amperes | None = None
    energy_wh: NonNegative | None = None

    @classmethod
    def make(cls, state: str, currents_a: tuple[float, float, float], *, max_a: float, phases: int | None,
             ts: datetime | float | str | None = None, setpoint_a: float | None = None,
             energy_wh: float | None = None) -> ChargerStatePayload:
        a, b, c = currents_a
        return cls(state=state, current_l1_a=a, current_l2_a=b, current_l3_a=c,  # type: ignore[arg-type]
                   max_a=max_a, phases=phases, ts=None if ts is None else _ts(ts),  # type: ignore[arg-type]
                   setpoint_a=setpoint_a, energy_wh=energy_wh)

    def currents(self) -> tuple[float, float, float]:
        return (self.current_l1_a, self.current_l2_a, self.current_l3_a)


# Every key always sent (null when unknown): consumers index them directly.
class SetpointPayload(Payload, frozen=True, kw_only=True, omit_defaults=False):
    """The balancer's order to one charger: offer ``current_a`` per phase (0: pause).

    ``mode`` is how the balancer decided ("protect", "fixed", "fixed: stale meter data" ...);
    ``headroom_seq``/``headroom_ts``/``reading_seq`` name the headroom message it answers (null when
    it had none).
    """

    current_a: Amperes
    reason: str
    ts: Ts
    mode: str | None = None
    headroom_seq: Count | None = None
    headroom_ts: Ts | None = None
    reading_seq: Count | None = None

    @classmethod
    def make(cls, current_a: float, reason: str, *, ts: datetime | float | str, mode: str | None = None,
             headroom_seq: int | None = None, headroom_ts: str | None = None,
             reading_seq: int | None = None) -> SetpointPayload:
        return cls(current_a=float(current_a), reason=reason, ts=_ts(ts), mode=mode, headroom_seq=headroom_seq,
                   headroom_ts=headroom_ts, reading_seq=reading_seq)


# --- energy and subscription -----------------------------------------------------------------------


class EnergyRecord(Payload, frozen=True, kw_only=True, omit_defaults=True):
    """Energy imported and exported between two hourly lists (`apm.core.meter_state.HourlyEnergy`).

    ``id`` is stable for an hour (`energy_record_id`): the record is delivered at least once and
    consumers drop duplicates by it. ``hour_start``/``hour_end`` carry the meter's clock (with its
    offset when it sends one); ``hours`` is more than 1 when hourly lists were missed in between.
    """

    id: Annotated[str, msgspec.Meta(min_length=1)]
    hour_start: str
    hour_end: str
    hours: Annotated[int, msgspec.Meta(ge=1)]
    import_wh: NonNegative
    export_wh: NonNegative
    meter_id: str | None

    @classmethod
    def of(cls, serial: str, hour: HourlyEnergy) -> EnergyRecord:
        return cls(id=energy_record_id(serial, hour.hour_start), hour_start=hour.hour_start,
                   hour_end=hour.hour_end, hours=hour.hours, import_wh=hour.import_wh, export_wh=hour.export_wh,
                   meter_id=hour.meter_id)


# Every key always sent (null when unknown), as SubscriptionState.to_status always did.
class SubscriptionPayload(Payload, frozen=True, kw_only=True, omit_defaults=False):
    """The subscription's state as the device last evaluated it (`apm.core.subscription`), retained.

    ``features``: what the token grants; ``granted``: the features the device uses now.
    """

    state: Literal["none", "valid", "expiring", "expired", "revoked", "ineligible"]
    reason: str
    valid_until: Ts | None = None
    plan: str | None = None
    features: list[str] = msgspec.field(default_factory=list)
    token_id: str | None = None
    at: Ts | None = None
    previous: str | None = None
    granted: list[str] | None = None  # None: not said, every feature the token grants


# --- Smart eco ---------------------------------------------------------------------------------------


class EcoRequest(Payload, frozen=True, kw_only=True, omit_defaults=True):
    """A departure request for one charger (`apm.services.eco`); ``{"charger": id, "clear": true}`` drops it.

    Exactly one of ``energy_kwh`` and ``hours`` (at the charger's full power). A ``departure`` without
    an offset is Europe/Oslo time. ``charge_now``: full current until the car leaves.
    """

    charger: str
    departure: str | None = None
    energy_kwh: NonNegative | None = None
    hours: NonNegative | None = None
    charge_now: bool = False
    clear: bool = False


class EcoCharger(Payload, frozen=True, kw_only=True, omit_defaults=True):
    id: str
    max_a: Amperes
    phases: Literal[1, 3]
    network: str
    voltage_v: NonNegative
    min_a: Amperes


class EcoSlot(Payload, frozen=True, kw_only=True, omit_defaults=True):
    start: Ts
    end: Ts
    current_a: Amperes
    energy_kwh: NonNegative
    spot_nok_per_kwh: float
    grid_nok_per_kwh: float
    cost_nok: float
    estimated: bool = False  # the price is a forecast


class EcoChargerPlan(Payload, frozen=True, kw_only=True, omit_defaults=False):
    charger: EcoCharger
    departure: Ts
    energy_needed_kwh: NonNegative
    energy_kwh: NonNegative
    cost_nok: float
    spot_nok: float
    grid_nok: float
    feasible: bool
    reason: str | None
    slots: list[EcoSlot]


class EcoPlanPayload(Payload, frozen=True, kw_only=True, omit_defaults=False):
    """The plan over every open request (`apm.core.eco.planner.Plan.to_dict()`), retained; an empty payload
    clears it. ``charge_now``: chargers under a manual override; ``expected_cost_nok``: the plan's
    cost, spot price plus the grid's energy charge."""

    created: Ts
    strategy: Strategy
    area: str
    feasible: bool
    cost_nok: float
    energy_kwh: NonNegative
    prices_known_until: Ts
    notes: list[str]
    capacity_cap_kw: float | None
    peak_hour_kwh: float | None
    capacity_excess_kwh: float
    chargers: list[EcoChargerPlan]
    charge_now: list[str] = msgspec.field(default_factory=list)
    expected_cost_nok: float | None = None

    @classmethod
    def of(cls, plan: Plan, charge_now: list[str]) -> EcoPlanPayload:
        body = {**plan.to_dict(), "charge_now": sorted(charge_now), "expected_cost_nok": round(plan.cost_nok, 4)}
        return convert(body, cls)

    def plan(self) -> Plan:
        return Plan.from_dict(msgspec.to_builtins(self))


# --- Home Assistant discovery ----------------------------------------------------------------------


class DiscoveryDevice(Payload, frozen=True, kw_only=True, omit_defaults=True):
    identifiers: list[str]
    name: str
    manufacturer: str
    model: str
    serial_number: str
    sw_version: str


class DiscoveryOrigin(Payload, frozen=True, kw_only=True, omit_defaults=True):
    name: str
    sw_version: str


class CapacityPeak(msgspec.Struct, frozen=True, kw_only=True):
    day: Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")]
    kwh: NonNegative


# Every key always sent (null when unknown): Home Assistant's templates read them by name.
class CapacityPayload(Payload, frozen=True, kw_only=True, omit_defaults=False):
    """This month's capacity step as the guard sees it (`apm.core.capacity_guard`), retained and
    refreshed within the hour: the daily peaks that count (highest first), their mean (``figure_kw``),
    the step that puts the month in (``step_kw``: its upper bound, null for the open top step), the
    owner's goal, and this hour's cap, use and what is left of it (kWh, household included); the
    chargers' power the guard allows for the rest of the hour and its cap on each charger (A)."""

    month: Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}$")]
    peaks: list[CapacityPeak]
    figure_kw: NonNegative
    step_from_kw: NonNegative
    step_kw: NonNegative | None
    step_nok_per_month: NonNegative
    goal_kw: NonNegative
    hour_cap_kwh: NonNegative | None
    hour_used_kwh: NonNegative
    hour_left_kwh: NonNegative | None
    chargers_kw: NonNegative | None = None
    caps_a: dict[str, Amperes] = msgspec.field(default_factory=dict)
    at: Ts

    @classmethod
    def of(cls, status: Mapping[str, Any], at: str) -> CapacityPayload:
        """From `apm.core.capacity_guard.CapacityGuard.to_dict`."""
        step = status["step"]
        return cls(month=status["month"], peaks=[CapacityPeak(day=p["day"], kwh=p["kwh"]) for p in status["peaks"]],
                   figure_kw=status["figure_kw"], step_from_kw=step["from_kw"], step_kw=step["to_kw"],
                   step_nok_per_month=step["nok_per_month"], goal_kw=status["goal_kw"],
                   hour_cap_kwh=status["hour_cap_kwh"], hour_used_kwh=status["hour_used_kwh"],
                   hour_left_kwh=status["hour_left_kwh"], chargers_kw=status.get("chargers_kw"),
                   caps_a=dict(status.get("caps_a") or {}), at=at)


class DiscoveryConfig(Payload, frozen=True, kw_only=True, omit_defaults=True):
    """One Home Assistant entity (`apm.io.mqtt.discovery`), retained on
    ``homeassistant/<component>/<node>/<object>/config``: a sensor, or a control (number, switch, select,
    text) with the ``command_topic`` Home Assistant sends its new value to."""

    name: str
    unique_id: str
    state_topic: str
    value_template: str
    availability_topic: str
    payload_available: str
    payload_not_available: str
    device: DiscoveryDevice
    origin: DiscoveryOrigin
    unit_of_measurement: str | None = None
    device_class: str | None = None
    state_class: str | None = None
    expire_after: int | None = None
    suggested_display_precision: int | None = None
    # Controls.
    command_topic: str | None = None
    min: float | None = None  # number; text: the least length
    max: float | None = None
    step: float | None = None
    mode: str | None = None  # number: box | slider; text: text
    options: list[str] | None = None  # select
    pattern: str | None = None  # text: a regex the value must match
    payload_on: str | None = None  # switch, binary_sensor
    payload_off: str | None = None
    state_on: str | None = None
    state_off: str | None = None
    entity_category: str | None = None  # "config": a setting; "diagnostic": a charger's connection
    icon: str | None = None


# --- owner settings, price and the hour's energy (apm.services.controls) ------------------------------


class SettingsPayload(Payload, frozen=True, kw_only=True, omit_defaults=False):
    """The device-wide owner settings in force, retained."""

    eco_enabled: bool
    sharing: Literal["fair", "max_energy"]


class ChargerSettingsPayload(Payload, frozen=True, kw_only=True, omit_defaults=False):
    """One charger's owner settings in force, retained."""

    max_a: NonNegative
    eco_departure: str  # HH:MM local time
    eco_energy_kwh: NonNegative


class PricePayload(Payload, frozen=True, kw_only=True, omit_defaults=False):
    """The electricity price now, from Smart eco's price feed (spot, NOK/kWh), retained."""

    nok_per_kwh: float
    start: Ts  # the start of the price's interval
    end: Ts


class SessionPayload(Payload, frozen=True, kw_only=True, omit_defaults=False):
    """A charger's charging session, the open one else the last (`apm.core.sessions`), retained: the
    energy since the EV was plugged in, from the charger's own register (``source`` "charger") or
    integrated from its reported currents ("integrated"); ``ended_at`` null while the EV is there."""

    energy_kwh: NonNegative
    started_at: Ts
    ended_at: Ts | None
    duration_s: NonNegative
    source: Literal["charger", "integrated"]


class ChargerLinkPayload(Payload, frozen=True, kw_only=True, omit_defaults=False):
    """How the device reaches a charger, retained: its ``protocol``; ``connected`` (null for a generic MQTT
    charger, whose session the broker holds, not the device); its last report (null: none yet) and the
    current limit it was given (A; null: none yet)."""

    protocol: Literal["ocpp", "goe", "mqtt"]
    connected: bool | None
    last_report_at: Ts | None
    limit_a: Amperes | None


class HourEnergyPayload(Payload, frozen=True, kw_only=True, omit_defaults=False):
    """Energy imported in the clock hour so far (kWh), integrated from the meter's power; 0 at each hour."""

    hour_start: Ts
    import_kwh: NonNegative
    ts: Ts


# --- encoding and decoding ---------------------------------------------------------------------------

T = TypeVar("T")
_encoder = msgspec.json.Encoder()


def encode(value: Payload | Reading) -> bytes:
    """Compact UTF-8 JSON of one payload (a `Reading` is the reading topics' payload as it is)."""
    return _encoder.encode(value)


def decode(payload: bytes | bytearray | str, kind: type[T]) -> T:
    """The payload as ``kind``, or `PayloadError` naming the field (``... - at `$.ts```)."""
    check_shape(payload, MAX_PLAN_BYTES if kind is EcoPlanPayload else MAX_PAYLOAD_BYTES, _name(kind))
    try:
        value = msgspec.json.decode(payload, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PayloadError(f"{_name(kind)}: {exc}") from None
    except RecursionError:  # the depth check makes this unreachable; kept as the last line
        raise PayloadError(f"{_name(kind)}: nested too deeply") from None
    if isinstance(value, Reading) and value.list not in (1, 2, 3):
        raise PayloadError(f"Reading: list {value.list!r} is not 1, 2 or 3 - at `$.list`")
    return value


# A JSON string (skipped: brackets inside it do not nest) or a bracket.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def check_shape(payload: bytes | bytearray | str, max_bytes: int = MAX_PAYLOAD_BYTES, what: str = "payload",
                max_depth: int = MAX_DEPTH) -> None:
    """`PayloadError` for a payload larger than ``max_bytes`` or nested deeper than ``max_depth``,
    found before any parser sees it."""
    data = payload.encode("utf-8", "replace") if isinstance(payload, str) else bytes(payload)
    if len(data) > max_bytes:
        raise PayloadError(f"{what}: {len(data)} bytes, more than the {max_bytes} a payload may have")
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return  # cannot nest deeper (the usual case: no scan)
    depth = 0
    for m in _TOKENS.finditer(data):
        c = m.group()
        if c in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                raise PayloadError(f"{what}: nested deeper than {max_depth} levels")
        elif c in (b"]", b"}"):
            depth -= 1


def convert(data: Mapping[str, Any], kind: type[T]) -> T:
    """A plain mapping (a record from the outbox, a dict built in code) as ``kind``, validated as `decode` does."""
    try:
        value = msgspec.convert(data, type=kind)
    except msgspec.ValidationError as exc:
        raise PayloadError(f"{_name(kind)}: {exc}") from None
    if isinstance(value, Reading) and value.list not in (1, 2, 3):
        raise PayloadError(f"Reading: list {value.list!r} is not 1, 2 or 3 - at `$.list`")
    return value


def _name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


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


def parse_ts(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except (TypeError, ValueError):
        raise PayloadError(f"ts {text!r} is not an ISO 8601 time") from None
    if dt.tzinfo is None:
        raise PayloadError(f"ts {text!r} has no time zone")
    return dt


def ts_seconds(text: str) -> float:
    """A ``ts`` as POSIX seconds, to compare with a clock (the inverse of `iso_ts` on a float)."""
    try:
        return parse_ts(text).timestamp()
    except (OverflowError, ValueError, OSError) as exc:  # year 1 with a +hh:mm offset, ...
        raise PayloadError(f"ts {text!r} is out of range: {exc}") from None


def _ts(value: datetime | float | str) -> str:
    return value if isinstance(value, str) else iso_ts(value)


# --- payloads to and from the core's values -----------------------------------------------------------


def headroom_payload(h: Headroom, *, seq: int | None = None, reading_seq: int | None = None) -> HeadroomPayload:
    """The device's headroom message body for ``h``."""
    a, b, c = (_finite(x) for x in h.available_a)
    return HeadroomPayload.make(a, b, c, ts=h.at, stale=not h.fresh, age_s=round(h.age_s, 3),
                                limit_a=h.limit_a, reason=h.reason, seq=seq, reading_seq=reading_seq)


def headroom_message(topics: Topics, h: Headroom, *, seq: int, reading_seq: int,
                     ttl_s: float | None = None) -> OutMessage:
    """The device's headroom message for ``h``, numbered."""
    return topics.headroom_message(headroom_payload(h, seq=seq, reading_seq=reading_seq), ttl_s=ttl_s)


class HeadroomNote(msgspec.Struct, frozen=True):
    """A headroom message as the balancer received it."""

    payload: HeadroomPayload
    received_at: float  # the receiver's clock

    @property
    def seq(self) -> int | None:
        return self.payload.seq

    @property
    def reading_seq(self) -> int | None:
        return self.payload.reading_seq


def read_headroom(payload: bytes, received_at: float) -> HeadroomNote:
    return HeadroomNote(decode(payload, HeadroomPayload), received_at)


def headroom_value(note: HeadroomNote, now: float, network: Network) -> Headroom:
    """The `Headroom` the balancer works with, in the receiver's clock.

    When the meter data was measured: the older of (arrival - age) and (its ts - age), so that neither a
    message delayed in a queue nor a device clock that runs ahead makes old data look fresh.
    """
    p = note.payload
    age = p.age_s or 0.0
    measured_at = note.received_at - age
    with contextlib.suppress(PayloadError):  # the pattern lets a 13th month through
        measured_at = min(measured_at, ts_seconds(p.ts) - age)
    supply = 1 if p.l2_a is None and p.l3_a is None else 3
    return Headroom(
        at=note.received_at,
        measured_at=measured_at,
        network=network,
        supply_phases=supply,
        limit_a=p.limit_a if p.limit_a is not None else math.nan,
        available_a=p.lines(),
        measured_a=(None, None, None),
        house_a=(None, None, None),
        own_a=ZERO,
        rise_a=0.0,
        age_s=now - measured_at,
        fresh=not p.stale,
        reason=p.reason or "",
    )


def charger_state_payload(state: ChargerState, max_a: float, ts: float) -> ChargerStatePayload:
    c = state.currents_a
    return ChargerStatePayload.make(state.mode, (round(c[0], 2), round(c[1], 2), round(c[2], 2)), max_a=max_a,
                                    phases=state.phases_in_use, ts=ts, setpoint_a=state.setpoint_a,
                                    energy_wh=state.energy_wh)


def read_charger_state(charger_id: str, payload: bytes, received_at: float) -> ChargerState:
    """A charger's report as a `ChargerState`.

    ``at`` is when the charger measured (its ``ts``) when that lies up to REPORT_AGE_S before the
    arrival, else the arrival: what our chargers drew must line up with what the meter measured at the
    same moment, not with when the report got through the broker. A ``ts`` from the future or from long
    ago says the two clocks disagree, and the arrival is the better guess.
    """
    p = decode(payload, ChargerStatePayload)
    at = received_at
    if p.ts is not None:
        ts = ts_seconds(p.ts)
        if 0.0 <= received_at - ts <= REPORT_AGE_S:
            at = ts
    return ChargerState(id=charger_id, mode=p.state, currents_a=p.currents(),
                        phases_in_use=p.phases, setpoint_a=p.setpoint_a or 0.0, at=at, energy_wh=p.energy_wh)


def setpoint_message(topics: Topics, charger_id: str, current_a: float, reason: str, *, ts: float,
                     mode: str, headroom: HeadroomNote | None) -> OutMessage:
    h = headroom.payload if headroom is not None else None
    payload = SetpointPayload.make(current_a, reason, ts=ts, mode=mode,
                                   headroom_seq=h.seq if h else None, headroom_ts=h.ts if h else None,
                                   reading_seq=h.reading_seq if h else None)
    return topics.setpoint_message(charger_id, payload)


def read_subscription(payload: bytes) -> SubscriptionPayload:
    return decode(payload, SubscriptionPayload)


def read_eco_plan(payload: bytes) -> EcoPlanPayload | None:
    """The retained plan; None for the empty payload that clears it."""
    return None if not payload.strip() else decode(payload, EcoPlanPayload)


def _finite(a: float | None) -> float | None:
    return None if a is None or not math.isfinite(a) else round(a, 3)


# --- rejections ----------------------------------------------------------------------------------------

UNKNOWN_IDS_LOGGED = 32  # unknown charger ids named in the log (each once); beyond, only counted


class Rejections:
    """Messages refused by a listener: counted per topic kind, each logged (unknown charger ids once
    each), so that hostile traffic is visible without ever ending the listener."""

    def __init__(self, topics: Topics, who: str) -> None:
        self.topics = topics
        self.who = who
        self.count = 0
        self.by_kind: dict[str, int] = {}
        self.unknown_ids: set[str] = set()
        self.unknown = 0

    def reject(self, topic: str, why: str, *, exc_info: bool = False) -> None:
        self.count += 1
        ref = self.topics.parse(topic)
        kind = ref.kind if ref is not None else "other"
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        log.warning("%s: rejected a message on %s: %s", self.who, topic[:200], why[:300], exc_info=exc_info)

    def unknown_charger(self, charger: str) -> None:
        self.unknown += 1
        if charger not in self.unknown_ids and len(self.unknown_ids) < UNKNOWN_IDS_LOGGED:
            self.unknown_ids.add(charger)
            log.warning("%s: ignoring charger %r: not one of this installation's chargers (said once)",
                        self.who, charger[:100])
