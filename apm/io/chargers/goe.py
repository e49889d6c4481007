"""go-e chargers (Gemini, V3, PRO) over MQTT: the charger connects to our broker, we write its keys.

    async with GoeAdapter({"garage": GoeCharger(serial="012345", safe_current_a=10)}, url) as goe:
        goe.set_limit("garage", 16.0)        # never blocks
        goe.links()["garage"].connected

A go-e publishes every key retained as ``go-eCharger/<serial>/<key>`` (JSON values) and takes
``<key>/set``: ``amp`` (A, whole amperes, 6..32), ``frc`` (0 neutral, 1 off, 2 on). ``nrg`` carries
voltages, currents and powers ([U1, U2, U3, UN, I1, I2, I3, P1, P2, P3, PN, Ptotal, ...]), ``car``
the state (1 idle, 2 charging, 3 waiting for the car, 4 complete, 5 error) and ``eto`` the energy
register (Wh; the session meter's source, apm.core.sessions).

A go-e keeps the last ``amp`` it got, for ever: it has no profile that runs out. So the failsafe is
ours, in three layers (`GoeControl`, sans-IO):

- **safe first**: a value above the safe current is only sent once the charger has echoed an ``amp`` at
  or above the safe one, and only while we hear the charger (any key within ``echo_timeout_s``);
  otherwise we send the safe value, not the balancer's (we "decay" toward safe while we cannot hear
  ourselves echoed). A value the charger has not echoed is sent again every ``resend_s``;
- **a pause parks amp at the safe value** (and sets frc = 1), so the value it keeps is the safe one;
- **the will**: each charger has its own MQTT connection whose will is ``amp/set`` = the safe value,
  so when the device dies (SIGKILL, power, network) and the broker stays up, the broker itself sends
  the charger back to the safe current. With the broker embedded in the device, the broker dies too
  and the go-e keeps the last value it got: use an external broker (mosquitto) for go-e chargers
  (tests/integration/test_goe_failsafe.py shows both). On the embedded broker a go-e logs in as its
  own ``goe:<serial>`` user (apm.io.mqtt.auth).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import aiomqtt

from apm.core.charger_state import ChargerState, Mode
from apm.core.lines import ZERO, Triple
from apm.io.chargers.ocpp_policy import phases_in_use
from apm.io.clock import Clock, RealClock
from apm.io.tasks import stop

log = logging.getLogger(__name__)

PREFIX = "go-eCharger"
CAR_MODE: dict[int, Mode] = {1: "disconnected", 2: "charging", 3: "connected", 4: "finished"}
FRC_NEUTRAL, FRC_OFF = 0, 1
MIN_A = 6


@dataclass(frozen=True, slots=True)
class GoeCharger:
    serial: str
    safe_current_a: float = 6.0
    max_a: float = 32.0
    echo_timeout_s: float = 30.0  # nothing heard from the charger for this long: send the safe value only
    resend_s: float = 30.0  # a value the charger has not echoed is sent again this often

    def __post_init__(self) -> None:
        if not MIN_A <= self.safe_current_a <= self.max_a:
            raise ValueError(f"go-e {self.serial}: need {MIN_A} <= safe_current_a <= max_a")


@dataclass(frozen=True, slots=True)
class GoeLink:
    """One go-e as `apm info` shows it."""

    connected: bool = False  # our MQTT connection for it is up
    last_report_at: float | None = None
    limit_a: float | None = None  # the amp the charger echoed (0 while frc = 1)
    wanted_a: float | None = None
    car: int | None = None


def topic(serial: str, key: str) -> str:
    return f"{PREFIX}/{serial}/{key}"


class GoeControl:
    """One go-e, sans-IO: what it said (`on_message`), what to send it (`commands`)."""

    def __init__(self, charger_id: str, charger: GoeCharger) -> None:
        self.id = charger_id
        self.charger = charger
        self.amp: int | None = None  # as echoed
        self.frc: int | None = None
        self.car: int | None = None
        self.currents: Triple = ZERO
        self.eto_wh: float | None = None  # ``eto``: the charger's energy register (API v2: Wh)
        self.echo_at: float | None = None
        self._sent: tuple[int, int] | None = None
        self._sent_at = -math.inf

    @property
    def subscription(self) -> str:
        return topic(self.charger.serial, "+")

    def will(self) -> tuple[str, bytes]:
        return topic(self.charger.serial, "amp/set"), self._safe_amp().encode()

    def _safe_amp(self) -> str:
        return str(int(math.floor(self.charger.safe_current_a)))

    def on_message(self, name: str, payload: bytes, now: float) -> ChargerState | None:
        """A key the charger published -> a ChargerState when it says something the balancer uses."""
        prefix = topic(self.charger.serial, "")
        if not name.startswith(prefix) or "/" in name[len(prefix):]:
            return None
        key = name[len(prefix):]
        try:
            value = json.loads(payload)
        except ValueError:
            return None
        self.echo_at = now  # we hear the charger (a go-e publishes nrg every few seconds)
        if key == "amp" and isinstance(value, int | float):
            self.amp = int(value)
        elif key == "frc" and isinstance(value, int):
            self.frc = value
        elif key == "car" and isinstance(value, int):
            self.car = value
        elif key == "eto" and isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            self.eto_wh = float(value)
        elif key == "nrg" and isinstance(value, list) and len(value) >= 7:
            try:
                self.currents = (float(value[4]), float(value[5]), float(value[6]))
            except (TypeError, ValueError):
                return None
        else:
            return None
        return self.state(now)

    def state(self, now: float) -> ChargerState:
        mode = CAR_MODE.get(self.car or 0, "disconnected")
        currents = self.currents if mode == "charging" else ZERO
        return ChargerState(id=self.id, mode=mode, currents_a=currents,
                            phases_in_use=phases_in_use(currents) if mode == "charging" else None,
                            setpoint_a=self.applied_a(), at=now, energy_wh=self.eto_wh)

    def applied_a(self) -> float:
        if self.frc == FRC_OFF:
            return 0.0
        return float(self.amp) if self.amp is not None else self.charger.safe_current_a

    def echo_fresh(self, now: float) -> bool:
        return self.echo_at is not None and now - self.echo_at <= self.charger.echo_timeout_s

    def commands(self, wanted_a: float | None, now: float) -> list[tuple[str, bytes]]:
        """What to publish now for the balancer's ``wanted_a`` (None: nothing asked yet: safe)."""
        c = self.charger
        safe = int(math.floor(c.safe_current_a))
        pause = wanted_a is not None and wanted_a < MIN_A
        target = safe if wanted_a is None or pause else int(math.floor(min(wanted_a, c.max_a)))
        amp = target
        if target > safe and not (self.echo_fresh(now) and self.amp is not None and self.amp >= safe):
            amp = safe  # safe first, and only while we hear ourselves echoed
        frc = FRC_OFF if pause else FRC_NEUTRAL
        echoed = self.amp == amp and self.frc == frc
        if self._sent == (amp, frc) and (echoed or now - self._sent_at < c.resend_s):
            return []  # no needless writes: a go-e may keep amp in flash
        self._sent, self._sent_at = (amp, frc), now
        # amp before frc when pausing: the value it keeps is the safe one before it stops charging.
        return [(topic(c.serial, "amp/set"), str(amp).encode()), (topic(c.serial, "frc/set"), str(frc).encode())]


class GoeAdapter:
    """The device's go-e edge: one MQTT connection per charger (for its own will), one task each."""

    def __init__(self, chargers: Mapping[str, GoeCharger], url: str, *,
                 on_report: Callable[[ChargerState], None] | None = None,
                 clock: Clock | None = None, tick_s: float = 1.0,
                 client_prefix: str = "apm-goe", username: str | None = None,
                 password: str | None = None) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.controls = {cid: GoeControl(cid, ch) for cid, ch in chargers.items()}
        self.on_report = on_report
        self.now = (clock or RealClock()).now
        self.tick_s = tick_s
        self.client_prefix = client_prefix
        self.login = {"username": username, "password": password}  # the device's own, on a broker with logins
        self._wanted: dict[str, float | None] = {}
        self._wake = {cid: asyncio.Event() for cid in chargers}
        self._links = {cid: GoeLink() for cid in chargers}
        self._tasks: list[asyncio.Task[None]] = []

    def set_limit(self, charger_id: str, amps: float) -> None:
        """The balancer's setpoint (A per phase; below 6 A pauses). Returns at once."""
        if charger_id not in self.controls:
            raise KeyError(charger_id)
        self._wanted[charger_id] = max(0.0, float(amps))
        self._links[charger_id] = replace(self._links[charger_id], wanted_a=self._wanted[charger_id])
        self._wake[charger_id].set()

    def links(self) -> dict[str, GoeLink]:
        return dict(self._links)

    async def __aenter__(self) -> GoeAdapter:
        self._tasks = [asyncio.create_task(self._run(cid), name=f"goe-{cid}") for cid in self.controls]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop(*self._tasks)

    async def _run(self, cid: str) -> None:
        control = self.controls[cid]
        will_topic, will_payload = control.will()
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=f"{self.client_prefix}-{cid}",
                                          will=aiomqtt.Will(will_topic, will_payload, qos=1),
                                          timeout=10, keepalive=10, **self.login) as client:
                    await client.subscribe(control.subscription, qos=0)
                    self._links[cid] = replace(self._links[cid], connected=True)
                    await self._serve(cid, client)
            except aiomqtt.MqttError as exc:
                log.info("go-e %s: broker link lost: %s", cid, exc)
            finally:
                self._links[cid] = replace(self._links[cid], connected=False)
            await asyncio.sleep(1.0)

    async def _serve(self, cid: str, client: aiomqtt.Client) -> None:
        sender = asyncio.create_task(self._send(cid, client))
        try:
            async for m in client.messages:
                state = self.controls[cid].on_message(str(m.topic), bytes(m.payload), self.now())
                if state is not None:
                    self._links[cid] = replace(self._links[cid], last_report_at=state.at,
                                               limit_a=state.setpoint_a, car=self.controls[cid].car)
                    self._wake[cid].set()  # an echo may allow the next step up
                    if self.on_report is not None:
                        self.on_report(state)
        finally:
            await stop(sender)

    async def _send(self, cid: str, client: aiomqtt.Client) -> None:
        control = self.controls[cid]
        while True:
            for name, payload in control.commands(self._wanted.get(cid), self.now()):
                await client.publish(name, payload, qos=1)
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that meets a wake-up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick_s):
                    await self._wake[cid].wait()
            self._wake[cid].clear()
