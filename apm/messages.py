"""The balancer's conversation over MQTT, as the device's value classes: payloads in, values out.

`apm.topics` holds the wire form (`HeadroomPayload`, `ChargerStatePayload`, `SetpointPayload`); this
module turns them into and out of what the sans-IO cores take (`Headroom`, `ChargerState`), and adds the
fields that let a setpoint be traced back to the reading it answers:

    headroom  {..., "seq": 812, "reading_seq": 640}        seq: headroom messages sent by the device;
                                                            reading_seq: readings it had decoded by then
    setpoint  {..., "headroom_seq": 812, "headroom_ts": "...", "reading_seq": 640, "mode": "protect"}

A consumer that knows only `apm.topics` reads these payloads as before (unknown keys are ignored).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from apm.charger_state import MODES, ChargerState
from apm.headroom import Headroom
from apm.lines import ZERO, Network
from apm.topics import (
    ChargerStatePayload,
    HeadroomPayload,
    OutMessage,
    PayloadError,
    SetpointPayload,
    Topics,
    decode_json,
    encode_json,
    ts_seconds,
)

REPORT_AGE_S = 10.0  # a charger report's ts older than this (or later than its arrival) is not trusted


@dataclass(frozen=True, slots=True)
class HeadroomNote:
    """A headroom message as the balancer received it."""

    payload: HeadroomPayload
    seq: int | None
    reading_seq: int | None
    received_at: float  # the receiver's clock


def headroom_message(topics: Topics, h: Headroom, *, seq: int, reading_seq: int,
                     ttl_s: float | None = None) -> OutMessage:
    """The device's headroom message for ``h``, numbered."""
    payload = HeadroomPayload.make(*(_finite(a) for a in h.available_a), ts=h.at, stale=not h.fresh,
                                   age_s=round(h.age_s, 3), limit_a=h.limit_a, reason=h.reason)
    msg = topics.headroom_message(payload, ttl_s=ttl_s)
    body = {**payload.to_json_dict(), "seq": seq, "reading_seq": reading_seq}
    return dataclasses.replace(msg, payload=encode_json(body))


def read_headroom(payload: bytes, received_at: float) -> HeadroomNote:
    data = decode_json(payload)
    p = HeadroomPayload.from_json_dict(data)
    return HeadroomNote(p, _int_or_none(data.get("seq")), _int_or_none(data.get("reading_seq")), received_at)


def headroom_value(note: HeadroomNote, now: float, network: Network) -> Headroom:
    """The `Headroom` the balancer works with, in the receiver's clock.

    When the meter data was measured: the older of (arrival - age) and (its ts - age), so that neither a
    message delayed in a queue nor a device clock that runs ahead makes old data look fresh.
    """
    p = note.payload
    age = p.age_s or 0.0
    measured_at = note.received_at - age
    with contextlib.suppress(PayloadError):
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
                                    phases=state.phases_in_use, ts=ts, setpoint_a=state.setpoint_a)


def read_charger_state(charger_id: str, payload: bytes, received_at: float) -> ChargerState:
    """A charger's report as a `ChargerState`; `PayloadError` for a mode the device does not know.

    ``at`` is when the charger measured (its ``ts``) when that lies up to REPORT_AGE_S before the
    arrival, else the arrival: what our chargers drew must line up with what the meter measured at the
    same moment, not with when the report got through the broker. A ``ts`` from the future or from long
    ago says the two clocks disagree, and the arrival is the better guess.
    """
    p = ChargerStatePayload.decode(payload)
    if p.state not in MODES:
        raise PayloadError(f"charger state {p.state!r} is not one of {', '.join(MODES)}")
    at = received_at
    if p.ts is not None:
        ts = ts_seconds(p.ts)
        if 0.0 <= received_at - ts <= REPORT_AGE_S:
            at = ts
    return ChargerState(id=charger_id, mode=p.state, currents_a=p.currents(),  # type: ignore[arg-type]
                        phases_in_use=p.phases, setpoint_a=p.setpoint_a or 0.0, at=at)


def setpoint_message(topics: Topics, charger_id: str, current_a: float, reason: str, *, ts: float,
                     mode: str, headroom: HeadroomNote | None) -> OutMessage:
    payload = SetpointPayload.make(current_a, reason, ts=ts)
    msg = topics.setpoint_message(charger_id, payload)
    body: dict[str, Any] = {**payload.to_json_dict(), "mode": mode}
    if headroom is not None:
        body.update(headroom_seq=headroom.seq, headroom_ts=headroom.payload.ts,
                    reading_seq=headroom.reading_seq)
    return dataclasses.replace(msg, payload=encode_json(body))


def _finite(a: float | None) -> float | None:
    return None if a is None or not math.isfinite(a) else round(a, 3)


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
