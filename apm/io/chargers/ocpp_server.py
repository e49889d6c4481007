"""The device as an OCPP 1.6J central system: real chargers connect to it and take its limits.

    chargers = {"garage": OcppCharger(password="s3cret-s3cret-16", safe_current_a=10)}
    async with OcppCentral(chargers, host="0.0.0.0", port=9000, on_report=balancer_input) as central:
        central.set_limit("garage", 16.0)        # never blocks: the charger's own task sends it
        central.links()["garage"].connected       # for `apm info`
        async for state in central.reports():     # or on_report=: ChargerState per MeterValues/Status
            ...

A charge point connects to ``ws://HOST:PORT/<chargePointId>`` with subprotocol ``ocpp1.6``. An id that
is not configured is refused (HTTP 404) before the websocket opens; a configured password asks for
HTTP basic auth (Security Profile 1: user = the id; HTTP 401 otherwise); ``ssl`` gives TLS (profile 2).

Per connection: on BootNotification (or ``boot_wait_s`` after connecting, for a charger that only
reconnects) the session reads GetConfiguration, sets MeterValueSampleInterval (and the sampled data),
clears our own old limit profile and puts the base profile at the safe current in place. Then it sends
the wanted limit, at once when it changes and every ``renew_s`` anyway (see apm/io/chargers/ocpp_policy.py for why:
the limits expire by themselves). The latest wish wins: `set_limit` only writes it down and wakes the
session, so a charger that answers slowly delays no one but itself. The `ocpp` library allows one call
at a time per charger, which is why each charger has one task that sends.

A frame that is not OCPP gets a CallError (FormationViolation) when its message id can be read, and
the connection and every other charger go on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import ssl as ssl_module
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

from ocpp.exceptions import FormatViolationError, OCPPError
from ocpp.messages import CallError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action, RegistrationStatus
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from apm.core.charger_state import ChargerState, Mode
from apm.core.lines import ZERO, Triple
from apm.io.chargers.ocpp_policy import (
    CONFIG_KEYS,
    LIMIT_PROFILE_ID,
    Capabilities,
    OcppCharger,
    ProfilePolicy,
    base_profile,
    iso,
    limit_profile,
    parse_configuration,
    parse_meter_values,
    phases_in_use,
    round_down,
    status_mode,
)
from apm.io.clock import Clock, RealClock
from apm.io.tasks import stop

log = logging.getLogger(__name__)

SUBPROTOCOL = Subprotocol("ocpp1.6")
SAMPLED_DATA = "Current.Import,Power.Active.Import,Energy.Active.Import.Register"
HEARTBEAT_S = 60


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """One charger's link as `apm info` shows it."""

    connected: bool = False
    last_report_at: float | None = None
    limit_a: float | None = None  # the last limit the charger accepted (None: only the base profile)
    limit_until: float | None = None  # when that limit runs out unless renewed
    wanted_a: float | None = None
    status: str | None = None  # the last StatusNotification
    vendor: str | None = None
    model: str | None = None
    unit: str = "A"
    smart_charging: bool | None = None
    base_profile: bool = False  # the safe profile was accepted
    power_w: float | None = None
    energy_wh: float | None = None
    rejected: int = 0  # SetChargingProfile answers other than Accepted, and timeouts


class _Side(ChargePoint):
    """Our end of one charger's websocket: answers its requests, hands what it reports to the session."""

    def __init__(self, charger_id: str, ws: ServerConnection, session: _Session, timeout_s: float) -> None:
        super().__init__(charger_id, ws, response_timeout=timeout_s)
        self.session = session

    async def route_message(self, raw_msg: str | bytes) -> None:
        try:
            frame = json.loads(raw_msg)
        except (ValueError, UnicodeDecodeError):
            frame = None
        if not (isinstance(frame, list) and len(frame) >= 3 and frame[0] in (2, 3, 4)):
            await self._refuse(frame, raw_msg)
            return
        await super().route_message(raw_msg)

    async def _refuse(self, frame: Any, raw_msg: str | bytes) -> None:
        self.session.central.malformed += 1
        log.warning("ocpp %s: not an OCPP frame: %.100r", self.id, raw_msg)
        if isinstance(frame, list) and len(frame) >= 2 and isinstance(frame[1], str):
            error = FormatViolationError(description="not an OCPP-J frame")
            await self._send(CallError(frame[1], error.code, error.description, {}).to_json())

    @on(Action.boot_notification)
    def on_boot(self, charge_point_vendor: str, charge_point_model: str, **_: Any) -> call_result.BootNotification:
        self.session.booted(charge_point_vendor, charge_point_model)
        return call_result.BootNotification(current_time=iso(self.session.central.clock.now()),
                                            interval=HEARTBEAT_S, status=RegistrationStatus.accepted)

    @on(Action.heartbeat)
    def on_heartbeat(self, **_: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=iso(self.session.central.clock.now()))

    @on(Action.status_notification)
    def on_status(self, connector_id: int, status: str, **_: Any) -> call_result.StatusNotification:
        self.session.status(connector_id, status)
        return call_result.StatusNotification()

    @on(Action.meter_values)
    def on_meter_values(self, connector_id: int, meter_value: list[dict[str, Any]],
                        **_: Any) -> call_result.MeterValues:
        self.session.meter(connector_id, meter_value)
        return call_result.MeterValues()

    # A charger needs these answered to charge at all; authorisation is not the device's business.
    @on(Action.authorize)
    def on_authorize(self, **_: Any) -> call_result.Authorize:
        return call_result.Authorize(id_tag_info={"status": "Accepted"})

    @on(Action.start_transaction)
    def on_start(self, **_: Any) -> call_result.StartTransaction:
        self.session.central.transactions += 1
        return call_result.StartTransaction(transaction_id=self.session.central.transactions,
                                            id_tag_info={"status": "Accepted"})

    @on(Action.stop_transaction)
    def on_stop(self, **_: Any) -> call_result.StopTransaction:
        return call_result.StopTransaction(id_tag_info={"status": "Accepted"})

    @on(Action.data_transfer)
    def on_data_transfer(self, **_: Any) -> call_result.DataTransfer:
        return call_result.DataTransfer(status="UnknownVendorId")

    @on(Action.firmware_status_notification)
    def on_firmware_status(self, **_: Any) -> call_result.FirmwareStatusNotification:
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status(self, **_: Any) -> call_result.DiagnosticsStatusNotification:
        return call_result.DiagnosticsStatusNotification()


class _Session:
    """One connected charger: its reports in, its profiles out."""

    def __init__(self, central: OcppCentral, charger_id: str, ws: ServerConnection) -> None:
        self.central = central
        self.id = charger_id
        self.charger = central.chargers[charger_id]
        self.ws = ws
        self.side = _Side(charger_id, ws, self, central.response_timeout_s)
        self.caps = Capabilities()
        self.purpose = central.policy.purpose
        self.boot = asyncio.Event()
        self.wake = asyncio.Event()
        self.mode: Mode = "disconnected"
        self.currents: Triple = ZERO
        self.energy_wh: float | None = None  # the charger's Energy.Active.Import.Register, as last sampled

    # -- reports in -------------------------------------------------------------------------------
    def booted(self, vendor: str, model: str) -> None:
        self.central._update(self.id, vendor=vendor, model=model)
        self.boot.set()  # a charger that boots again has lost its profiles, maybe: set them up again

    def status(self, connector_id: int, status: str) -> None:
        if connector_id == 0 and status not in ("Unavailable", "Faulted"):
            return  # connector 0 is the box itself; the car is on connector 1
        self.mode = status_mode(status)
        if self.mode != "charging":
            self.currents = ZERO
        self.central._update(self.id, status=status)
        self.report()

    def meter(self, connector_id: int, meter_value: list[dict[str, Any]]) -> None:
        sample = parse_meter_values(meter_value)
        if sample.currents_a is not None:
            self.currents = sample.currents_a
        changes: dict[str, Any] = {}
        if sample.power_w is not None:
            changes["power_w"] = sample.power_w
        if sample.energy_wh is not None:
            changes["energy_wh"] = self.energy_wh = sample.energy_wh
        self.central._update(self.id, **changes)
        self.report()

    def report(self) -> None:
        c = self.central
        now = c.clock.now()
        link = c._links[self.id]
        applied = self.charger.safe_current_a
        if link.limit_a is not None and link.limit_until is not None and now < link.limit_until:
            applied = link.limit_a
        state = ChargerState(id=self.id, mode=self.mode, currents_a=self.currents,
                             phases_in_use=phases_in_use(self.currents) if self.mode == "charging" else None,
                             setpoint_a=applied, at=now, energy_wh=self.energy_wh)
        c._update(self.id, last_report_at=now)
        c._emit(state)

    # -- profiles out -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Until the socket goes (the reader raises ConnectionClosed), or the control task fails: then
        the connection is closed, and the charger's reconnect starts a clean session."""
        reader = asyncio.create_task(self.side.start(), name=f"ocpp-reader-{self.id}")
        control = asyncio.create_task(self._control(), name=f"ocpp-control-{self.id}")
        try:
            done, _ = await asyncio.wait([reader, control], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            await stop(reader, control)
            await self.ws.close(1011, "session ended")

    async def _control(self) -> None:
        c = self.central
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that meets a wake-up.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(c.boot_wait_s):
                await self.boot.wait()
        while True:
            self.boot.clear()
            await self._setup()
            while not self.boot.is_set():
                await self._send_limit()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(c.clock.wall(c.policy.renew_s)):
                        await self._woken()

    async def _woken(self) -> None:
        done = asyncio.ensure_future(self.wake.wait())
        booted = asyncio.ensure_future(self.boot.wait())
        try:
            await asyncio.wait([done, booted], return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            booted.cancel()
        self.wake.clear()

    async def _call(self, payload: Any) -> Any:
        """One call; None for a CallError or no answer in time (logged: the charger is slow or odd)."""
        try:
            return await self.side.call(payload, suppress=False)
        except (OCPPError, TimeoutError) as exc:
            log.warning("ocpp %s: %s: %s", self.id, type(payload).__name__, exc)
            return None

    async def _setup(self) -> None:
        c = self.central
        got = await self._call(call.GetConfiguration(key=list(CONFIG_KEYS)))
        self.caps = parse_configuration(got.configuration_key or []) if got is not None else Capabilities()
        if self.caps.smart_charging is False:
            log.warning("ocpp %s: the charger does not list SmartCharging: limits may be refused", self.id)
        c._update(self.id, unit=self.caps.unit, smart_charging=self.caps.smart_charging)
        if self.caps.meter_interval_s != c.policy.meter_interval_s:
            await self._call(call.ChangeConfiguration(key="MeterValueSampleInterval",
                                                      value=str(c.policy.meter_interval_s)))
        await self._call(call.ChangeConfiguration(key="MeterValuesSampledData", value=SAMPLED_DATA))
        await self._call(call.ClearChargingProfile(id=LIMIT_PROFILE_ID))
        ok = await self._set_profile(base_profile(self.charger, self._policy(), self.caps, c.clock.now()))
        if not ok and self.purpose == "ChargePointMaxProfile":
            # Some chargers take only Tx*Profiles (Home Assistant's integration falls back the same way).
            self.purpose = "TxDefaultProfile"
            ok = await self._set_profile(base_profile(self.charger, self._policy(), self.caps, c.clock.now()))
        if not ok:
            log.error("ocpp %s: the charger refused the safe base profile: no failsafe without the device",
                      self.id)
        c._update(self.id, base_profile=ok)

    def _policy(self) -> ProfilePolicy:
        p = self.central.policy
        return p if p.purpose == self.purpose else replace(p, purpose=self.purpose)

    async def _set_profile(self, profile: dict[str, Any]) -> bool:
        got = await self._call(call.SetChargingProfile(connector_id=0, cs_charging_profiles=profile))
        return got is not None and got.status == "Accepted"

    async def _send_limit(self) -> None:
        c = self.central
        wanted = c._wanted.get(self.id)
        if wanted is None:
            return
        now = c.clock.now()
        ok = await self._set_profile(limit_profile(wanted, self.charger, self._policy(), self.caps, now))
        link = c._links[self.id]
        if ok:
            c._update(self.id, limit_a=round_down(wanted), limit_until=now + c.policy.validity_s)
        else:
            c._update(self.id, rejected=link.rejected + 1)


class OcppCentral:
    """The central system: one websocket server, one `_Session` per connected charger."""

    def __init__(
        self,
        chargers: Mapping[str, OcppCharger],
        host: str = "0.0.0.0",
        port: int = 9000,
        *,
        ssl: ssl_module.SSLContext | None = None,
        policy: ProfilePolicy | None = None,
        clock: Clock | None = None,
        on_report: Callable[[ChargerState], None] | None = None,
        boot_wait_s: float = 5.0,
        response_timeout_s: float = 10.0,
        queue_size: int = 1000,
    ) -> None:
        self.chargers = dict(chargers)
        self.host = host
        self.port = port
        self.ssl = ssl
        self.policy = policy or ProfilePolicy()
        self.clock = clock or RealClock()
        self.on_report = on_report
        self.boot_wait_s = boot_wait_s
        self.response_timeout_s = response_timeout_s
        self.transactions = 0
        self.malformed = 0
        self.refused = 0
        self._links = {cid: LinkInfo() for cid in self.chargers}
        self._wanted: dict[str, float | None] = {}
        self._sessions: dict[str, _Session] = {}
        self._queue: asyncio.Queue[ChargerState] = asyncio.Queue(maxsize=queue_size)
        self._server: Server | None = None
        self.changed = asyncio.Event()  # set on every change of a link (for a live view, and tests)

    # -- the device's API -------------------------------------------------------------------------
    def set_limit(self, charger_id: str, amps: float) -> None:
        """The balancer's setpoint (A per phase; 0 pauses). Returns at once; KeyError for an unknown id."""
        if charger_id not in self.chargers:
            raise KeyError(charger_id)
        amps = max(0.0, float(amps))
        if self._wanted.get(charger_id) == amps:
            return  # the session renews it on its own
        self._wanted[charger_id] = amps
        self._update(charger_id, wanted_a=amps)
        session = self._sessions.get(charger_id)
        if session is not None:
            session.wake.set()

    def links(self) -> dict[str, LinkInfo]:
        return dict(self._links)

    async def reports(self) -> AsyncIterator[ChargerState]:
        while True:
            yield await self._queue.get()

    # -- lifecycle --------------------------------------------------------------------------------
    async def __aenter__(self) -> OcppCentral:
        self._server = await serve(self._handle, self.host, self.port, ssl=self.ssl,
                                   subprotocols=[SUBPROTOCOL],
                                   process_request=self._check)
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def crash(self) -> None:
        """Stop as a SIGKILL or a pulled plug would: every TCP connection dropped without a close frame,
        nothing sent (for tests of the chargers' failsafe)."""
        if self._server is None:
            return
        self._server.close(close_connections=False)
        for session in list(self._sessions.values()):
            session.ws.transport.abort()
        self._server = None

    @property
    def url(self) -> str:
        return f"{'wss' if self.ssl else 'ws'}://{self.host}:{self.port}"

    # -- internals --------------------------------------------------------------------------------
    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse before the websocket opens: an unknown id (404) or a wrong password (401)."""
        cid = charger_id_of(request.path)
        if cid not in self.chargers:
            self.refused += 1
            log.warning("ocpp: refused unknown charge point %r", cid)
            return connection.respond(HTTPStatus.NOT_FOUND, "unknown charge point\n")
        password = self.chargers[cid].password
        if password is not None and not basic_auth_ok(request.headers.get("Authorization"), cid, password):
            self.refused += 1
            log.warning("ocpp: refused charge point %r: wrong or missing password", cid)
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "authorization required\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="apm", charset="UTF-8"'
            return response
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        cid = charger_id_of(ws.request.path if ws.request else "")
        if ws.subprotocol != SUBPROTOCOL:
            await ws.close(1002, "subprotocol ocpp1.6 required")
            return
        old = self._sessions.get(cid)
        if old is not None:  # the charger came back before we noticed it had gone
            await old.ws.close(1000, "replaced by a new connection")
        session = _Session(self, cid, ws)
        self._sessions[cid] = session
        self._update(cid, connected=True)
        log.info("ocpp %s: connected from %s", cid, ws.remote_address)
        try:
            await session.run()
        except Exception as exc:  # ConnectionClosed and kin: the charger is gone, the others go on
            log.info("ocpp %s: disconnected: %s", cid, exc)
        finally:
            if self._sessions.get(cid) is session:
                del self._sessions[cid]
                self._update(cid, connected=False)

    def _update(self, cid: str, **changes: Any) -> None:
        self._links[cid] = replace(self._links[cid], **changes)
        self.changed.set()

    async def wait_for(self, predicate: Callable[[OcppCentral], bool], timeout: float = 10.0) -> None:
        """Until ``predicate(self)`` holds, re-checked on every link change; TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()

    def _emit(self, state: ChargerState) -> None:
        if self.on_report is not None:
            try:
                self.on_report(state)
            except Exception:
                log.exception("ocpp: on_report failed")
        if self._queue.full():  # a consumer that fell behind gets the newest reports
            self._queue.get_nowait()
        self._queue.put_nowait(state)


def charger_id_of(path: str) -> str:
    """``/ocpp/garage?x=1`` -> ``garage``: the last path segment, URL-decoded."""
    segments = [s for s in urlsplit(path).path.split("/") if s]
    return unquote(segments[-1]) if segments else ""


def basic_auth_ok(header: str | None, user: str, password: str) -> bool:
    """HTTP basic auth as OCPP Security Profile 1 uses it (user = the chargePointId).

    OCPP 1.6's AuthorizationKey is 16 to 20 bytes, set on the charger as hex digits, and the password
    on the wire is those bytes; many chargers send the text as typed instead. Both are accepted."""
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True)
    except binascii.Error:
        return False
    got_user, sep, got_password = raw.partition(b":")
    if not sep:
        return False
    accepted = [password.encode()]
    with contextlib.suppress(ValueError):
        accepted.append(bytes.fromhex(password))
    user_ok = hmac.compare_digest(got_user, user.encode())
    return any(hmac.compare_digest(got_password, p) for p in accepted) and user_ok
