"""A simulated OCPP 1.6J charge point: a `SimCharger` and its EV behind the real protocol.

    cp = SimOcppChargePoint(SimCharger(config, "TN"), "ws://127.0.0.1:9000", password="...")
    await cp.run()      # connects (again and again), boots, reports, obeys charging profiles

It behaves as a charger does on its own, with or without a central system:

- it keeps the charging profiles it is given (`ProfileStore`) and works out its limit from them, by
  purpose (ChargePointMaxProfile caps, a TxProfile overrides a TxDefaultProfile) and within a purpose
  by the highest stack level whose profile is valid now; a profile past its ``validTo``, or a schedule
  past its ``duration``, no longer counts, so an expired limit falls back to the one below by itself;
- without any profile it offers its own maximum;
- it sends StatusNotification when its status changes and MeterValues every MeterValueSampleInterval
  of its steps (Current.Import per phase, Power.Active.Import, Energy.Active.Import.Register);
- it keeps charging while the central system is gone and reconnects with backoff.

Who advances the EV: standalone (``steps=True``) the charge point steps its charger every second of
the clock; in the closed-loop simulation the world steps it and calls `after_step`. Times given to the
`SimCharger` are seconds since ``origin``; profile times are the clock's POSIX seconds.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection, connect

from apm.io.chargers.ocpp_policy import iso, parse_time
from apm.io.chargers.ocpp_server import SUBPROTOCOL
from apm.io.clock import Clock, RealClock
from apm.io.tasks import stop
from sim.charger import SimCharger

log = logging.getLogger(__name__)

PURPOSE_ORDER = ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")


@dataclass(frozen=True, slots=True)
class Profile:
    """A charging profile as the charge point keeps it (times in POSIX seconds)."""

    id: int
    connector_id: int
    stack_level: int
    purpose: str
    unit: str
    start: float | None
    periods: tuple[tuple[float, float, int | None], ...]  # (start_period, limit, number_phases)
    duration: float | None = None
    valid_from: float | None = None
    valid_to: float | None = None

    @classmethod
    def parse(cls, connector_id: int, p: dict[str, Any]) -> Profile:
        """From SetChargingProfile's ``cs_charging_profiles`` (snake_case, as the library hands it)."""
        s = p["charging_schedule"]
        periods = tuple((float(r["start_period"]), float(r["limit"]), r.get("number_phases"))
                        for r in s["charging_schedule_period"])
        return cls(
            id=int(p["charging_profile_id"]), connector_id=connector_id, stack_level=int(p["stack_level"]),
            purpose=str(p["charging_profile_purpose"]), unit=str(s["charging_rate_unit"]),
            start=parse_time(s["start_schedule"]) if s.get("start_schedule") else None,
            periods=tuple(sorted(periods)), duration=s.get("duration"),
            valid_from=parse_time(p["valid_from"]) if p.get("valid_from") else None,
            valid_to=parse_time(p["valid_to"]) if p.get("valid_to") else None,
        )

    def limit_at(self, now: float, voltage: float) -> float | None:
        """Amps per phase this profile allows at ``now``; None when it does not apply then."""
        if self.valid_from is not None and now < self.valid_from:
            return None
        if self.valid_to is not None and now >= self.valid_to:
            return None
        start = self.start if self.start is not None else now  # Relative: from now on
        offset = now - start
        if offset < 0 or (self.duration is not None and offset >= float(self.duration)):
            return None
        found: tuple[float, float, int | None] | None = None
        for row in self.periods:
            if row[0] <= offset:
                found = row
        if found is None:
            return None
        _, limit, phases = found
        if self.unit == "W":
            return limit / (voltage * (phases or 3))  # absent numberPhases means 3 (OCPP 1.6)
        return limit


class ProfileStore:
    """The profiles a charge point holds, and the limit they make (sans-IO)."""

    def __init__(self, max_stack_level: int = 8, units: tuple[str, ...] = ("A", "W"),
                 purposes: tuple[str, ...] = PURPOSE_ORDER) -> None:
        self.max_stack_level = max_stack_level
        self.units = units
        self.purposes = purposes  # some chargers take no ChargePointMaxProfile
        self.profiles: dict[int, Profile] = {}

    def set(self, profile: Profile) -> str:
        """Store it (replacing one with the same id, or the same purpose and stack level): the status."""
        if (profile.stack_level > self.max_stack_level or profile.unit not in self.units
                or profile.purpose not in self.purposes):
            return "Rejected"
        if profile.purpose == "ChargePointMaxProfile" and profile.connector_id != 0:
            return "Rejected"
        for pid, old in list(self.profiles.items()):
            if pid == profile.id or (old.purpose == profile.purpose and old.stack_level == profile.stack_level
                                     and old.connector_id == profile.connector_id):
                del self.profiles[pid]
        self.profiles[profile.id] = profile
        return "Accepted"

    def clear(self, id: int | None = None, connector_id: int | None = None, purpose: str | None = None,
              stack_level: int | None = None) -> str:
        gone = [p.id for p in self.profiles.values()
                if (id is None or p.id == id) and (connector_id is None or p.connector_id == connector_id)
                and (purpose is None or p.purpose == purpose)
                and (stack_level is None or p.stack_level == stack_level)]
        for pid in gone:
            del self.profiles[pid]
        return "Accepted" if gone else "Unknown"

    def limit_a(self, now: float, voltage: float = 230.0) -> float | None:
        """The composite limit (A per phase) at ``now``; None when no profile applies."""
        by_purpose: dict[str, float] = {}
        for purpose in PURPOSE_ORDER:
            for p in sorted(self._of(purpose), key=lambda p: -p.stack_level):
                lim = p.limit_at(now, voltage)
                if lim is not None:
                    by_purpose[purpose] = lim
                    break
        tx = by_purpose.get("TxProfile", by_purpose.get("TxDefaultProfile"))
        caps = [x for x in (by_purpose.get("ChargePointMaxProfile"), tx) if x is not None]
        return min(caps) if caps else None

    def _of(self, purpose: str) -> Iterable[Profile]:
        return (p for p in self.profiles.values() if p.purpose == purpose)


class _ClientSide(ChargePoint):
    """The charge point's end of the websocket: answers the central system's calls."""

    def __init__(self, cp_id: str, ws: ClientConnection, owner: SimOcppChargePoint) -> None:
        super().__init__(cp_id, ws, response_timeout=10)
        self.owner = owner
        if not owner.validate:
            for route in self.route_map.values():
                route["_skip_schema_validation"] = True

    async def call(self, payload: Any, suppress: bool = True, unique_id: Any = None,
                   skip_schema_validation: bool = False) -> Any:
        return await super().call(payload, suppress, unique_id,
                                  skip_schema_validation or not self.owner.validate)

    @on(Action.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None, **_: Any) -> call_result.GetConfiguration:
        known = self.owner.configuration()
        keys = known.keys() if not key else [k for k in key if k in known]
        return call_result.GetConfiguration(
            configuration_key=[{"key": k, "readonly": k != "MeterValueSampleInterval", "value": known[k]}
                               for k in keys],
            unknown_key=[k for k in (key or []) if k not in known] or None)

    @on(Action.change_configuration)
    def on_change_configuration(self, key: str, value: str, **_: Any) -> call_result.ChangeConfiguration:
        return call_result.ChangeConfiguration(status=self.owner.change_configuration(key, value))

    @on(Action.set_charging_profile)
    def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any],
                                **_: Any) -> call_result.SetChargingProfile:
        owner = self.owner
        status = owner.store.set(Profile.parse(connector_id, cs_charging_profiles))
        owner.profiles_received += 1
        owner.tick()
        owner.changed.set()
        return call_result.SetChargingProfile(status=status)

    @on(Action.clear_charging_profile)
    def on_clear_charging_profile(self, id: int | None = None, connector_id: int | None = None,
                                  charging_profile_purpose: str | None = None, stack_level: int | None = None,
                                  **_: Any) -> call_result.ClearChargingProfile:
        status = self.owner.store.clear(id, connector_id, charging_profile_purpose, stack_level)
        self.owner.tick()
        return call_result.ClearChargingProfile(status=status)


class SimOcppChargePoint:
    """A `SimCharger` speaking OCPP 1.6J to ``url``/<id> (the charger's id unless ``cp_id`` is given)."""

    def __init__(
        self,
        charger: SimCharger,
        url: str,
        *,
        cp_id: str | None = None,
        password: str | None = None,
        clock: Clock | None = None,
        origin: float = 0.0,
        steps: bool = True,
        meter_interval_s: int = 60,
        max_stack_level: int = 8,
        units: tuple[str, ...] = ("A", "W"),
        purposes: tuple[str, ...] = PURPOSE_ORDER,
        voltage: float = 230.0,
        ssl: Any = None,
        reconnect_s: float = 1.0,
        validate: bool = True,
    ) -> None:
        self.charger = charger
        self.id = cp_id or charger.id
        self.url = url.rstrip("/") + "/" + self.id
        self.password = password
        self.clock = clock or RealClock()
        self.origin = origin
        self.steps = steps
        self.meter_interval_s = meter_interval_s
        self.voltage = voltage
        self.ssl = ssl
        self.reconnect_s = reconnect_s
        # False: this side checks no JSON schema (the library does it in a worker thread per message,
        # a thread hop each); the central system still checks all it sends and receives. The pipeline
        # at high speed, where the device's side is the one under test.
        self.validate = validate
        self.store = ProfileStore(max_stack_level, units, purposes)
        self.profiles_received = 0
        self.boots = 0
        self.limit_a: float = charger.config.max_a  # what the profiles allow now
        self.status: str = "Available"
        self.energy_wh = 0.0
        self.side: _ClientSide | None = None
        self.connected = asyncio.Event()
        self.changed = asyncio.Event()  # set whenever the limit or the status changes
        self._outbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=100)
        self._stepped_at: float | None = None
        self._metered_at: float | None = None
        self._sent_status: str | None = None
        self._transaction: int | None = None

    # -- configuration the central system reads and writes --------------------------------------
    def configuration(self) -> dict[str, str]:
        units = ",".join({"A": "Current", "W": "Power"}[u] for u in self.store.units)
        return {"SupportedFeatureProfiles": "Core,SmartCharging,RemoteTrigger",
                "ChargeProfileMaxStackLevel": str(self.store.max_stack_level),
                "ChargingScheduleAllowedChargingRateUnit": units,
                "MeterValueSampleInterval": str(self.meter_interval_s),
                "MeterValuesSampledData": "Energy.Active.Import.Register"}

    def change_configuration(self, key: str, value: str) -> str:
        if key == "MeterValueSampleInterval":
            try:
                self.meter_interval_s = max(1, int(value))
            except ValueError:
                return "Rejected"
            return "Accepted"
        return "Accepted" if key == "MeterValuesSampledData" else "NotSupported"

    # -- the charger's own logic (sans-IO, called from the loops or by the world) ----------------
    def t(self) -> float:
        return self.clock.now() - self.origin

    def tick(self) -> None:
        """Re-evaluate the profiles at the clock's now, apply the limit, queue a StatusNotification
        when the status changed."""
        now = self.clock.now()
        lim = self.store.limit_a(now, self.voltage)
        limit = self.charger.config.max_a if lim is None else min(lim, self.charger.config.max_a)
        if limit != self.limit_a or limit != self.charger.setpoint_a:
            self.limit_a = limit
            self.charger.set_setpoint(self.t(), limit)
            self.changed.set()
        status = self._status()
        if status != self._sent_status:
            self._transitions(status)
            self._sent_status = self.status = status
            self._queue(call.StatusNotification(connector_id=1, error_code="NoError", status=status,
                                                timestamp=iso(now)))
            self.changed.set()

    def _status(self) -> str:
        mode = self.charger.mode
        if mode == "disconnected":
            return "Available"
        if mode == "charging":
            return "Charging"
        if mode == "finished":
            return "SuspendedEV"
        return "SuspendedEVSE" if self.limit_a < 6.0 else "Preparing"

    def _transitions(self, status: str) -> None:
        now = iso(self.clock.now())
        if self._sent_status in (None, "Available") and status != "Available":
            self._queue(call.StartTransaction(connector_id=1, id_tag="sim", meter_start=int(self.energy_wh),
                                              timestamp=now))
        elif status == "Available" and self._sent_status not in (None, "Available"):
            self._queue(call.StopTransaction(meter_stop=int(self.energy_wh), timestamp=now,
                                             transaction_id=self._transaction or 0))

    def step(self) -> None:
        """Advance the EV to the clock's now (standalone), then `after_step`."""
        self.charger.step(self.t())
        self.after_step()

    def after_step(self) -> None:
        """After the EV moved: count energy, re-evaluate the profiles, and send MeterValues when due."""
        t = self.t()
        if self._stepped_at is not None and t > self._stepped_at:
            self.energy_wh += self.charger.power_w * (t - self._stepped_at) / 3600.0
        self._stepped_at = t
        self.tick()
        if self._metered_at is None or t - self._metered_at >= self.meter_interval_s - 1e-6:
            self._metered_at = t
            self.send_meter_values()

    def meter_values(self) -> call.MeterValues:
        c = self.charger
        samples: list[dict[str, Any]] = [
            {"value": f"{a:.1f}", "measurand": "Current.Import", "phase": ph, "unit": "A"}
            for ph, a in zip(("L1", "L2", "L3"), c.terminals, strict=True)]
        samples.append({"value": f"{c.power_w:.0f}", "measurand": "Power.Active.Import", "unit": "W"})
        samples.append({"value": f"{self.energy_wh:.0f}", "measurand": "Energy.Active.Import.Register",
                        "unit": "Wh"})
        return call.MeterValues(connector_id=1, transaction_id=self._transaction,
                                meter_value=[{"timestamp": iso(self.clock.now()), "sampled_value": samples}])

    def send_meter_values(self) -> None:
        """Queue a MeterValues now (the meter loop does so every MeterValueSampleInterval)."""
        self._queue(self.meter_values())

    def _queue(self, payload: Any) -> None:
        if self._outbox.full():
            self._outbox.get_nowait()  # offline for long: the oldest report is worth least
        self._outbox.put_nowait(payload)

    # -- I/O ---------------------------------------------------------------------------------------
    async def run(self) -> None:
        loops = [self._connection()]
        if self.steps:
            loops.append(self._physics())
        await asyncio.gather(*loops)

    async def _physics(self) -> None:
        next_at = self.clock.now()
        while True:
            next_at += 1.0
            await self.clock.sleep_until(next_at)
            self.step()

    async def _connection(self) -> None:
        headers = {}
        if self.password is not None:
            token = base64.b64encode(f"{self.id}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        while True:
            try:
                async with connect(self.url, subprotocols=[SUBPROTOCOL], additional_headers=headers,
                                   ssl=self.ssl, open_timeout=10) as ws:
                    await self._session(ws)
            except Exception as exc:  # refused, reset, closed, timed out: all the same, try again later
                log.info("sim ocpp %s: connection lost: %s", self.id, exc)
            finally:
                self.side = None
                self.connected.clear()
                self.changed.set()
            await asyncio.sleep(self.reconnect_s)

    async def _session(self, ws: ClientConnection) -> None:
        side = _ClientSide(self.id, ws, self)
        reader = asyncio.create_task(side.start())
        try:
            boot = await side.call(call.BootNotification(charge_point_model="SimCharger",
                                                         charge_point_vendor="apm-sim"))
            self.boots += 1
            if boot.status != "Accepted":
                raise ConnectionError(f"boot {boot.status}")
            self.side = side
            self.connected.set()
            self.changed.set()
            self._sent_status = None  # tell the new central system where we stand
            self.tick()
            sender = asyncio.create_task(self._send(side))
            try:
                done, _ = await asyncio.wait([reader, sender], return_when=asyncio.FIRST_COMPLETED)
            finally:
                await stop(sender)
            for task in done:
                task.result()
        finally:
            await stop(reader)

    async def _send(self, side: _ClientSide) -> None:
        while True:
            payload = await self._outbox.get()
            got = await side.call(payload)
            if isinstance(payload, call.StartTransaction) and got is not None:
                self._transaction = got.transaction_id

    # -- test helpers ----------------------------------------------------------------------------
    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        """Until ``predicate(self)`` holds (re-checked on every change); TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()
