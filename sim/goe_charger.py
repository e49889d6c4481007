"""A simulated go-e charger on MQTT: a `SimCharger` and its EV behind go-e's topics.

    goe = SimGoeCharger(SimCharger(config, "TN"), serial="012345", url=broker_url)
    await goe.run()

Like a real go-e it publishes its keys retained as ``go-eCharger/<serial>/<key>`` (``amp``, ``frc``,
``car``, ``nrg``; JSON values) every ``publish_every_s`` and at once when one changes, takes
``amp/set`` (whole amperes, clamped to 6..its max) and ``frc/set`` (0 neutral, 1 off, 2 on), and keeps
the last value it got for as long as it runs: there is no timeout in a go-e, so it does whatever
``amp`` it was last told, also when the device that told it is gone.

Who advances the EV: standalone (``steps=True``) it steps its charger every second of the clock; in
the closed-loop simulation the world steps it and calls `after_step`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from apm.io.chargers.goe import FRC_OFF, MIN_A, PREFIX
from apm.io.clock import Clock, RealClock
from sim.charger import SimCharger

log = logging.getLogger(__name__)

CAR = {"disconnected": 1, "charging": 2, "connected": 3, "finished": 4}


class SimGoeCharger:
    def __init__(self, charger: SimCharger, serial: str, url: str, *, clock: Clock | None = None,
                 origin: float = 0.0, steps: bool = True, publish_every_s: float = 5.0,
                 amp: int | None = None, voltage: float = 230.0, username: str | None = None,
                 password: str | None = None) -> None:
        self.charger = charger
        self.serial = serial
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.clock = clock or RealClock()
        self.origin = origin
        self.steps = steps
        self.publish_every_s = publish_every_s
        self.voltage = voltage
        self.username, self.password = username, password  # as typed into the go-e app's MQTT URL
        self.amp = int(charger.config.max_a if amp is None else amp)  # kept until told otherwise
        self.frc = 0
        self.received: list[tuple[str, Any]] = []  # every accepted write, in order (for tests)
        self.changed = asyncio.Event()
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._published: dict[str, Any] = {}
        self.apply()

    def t(self) -> float:
        return self.clock.now() - self.origin

    # -- the charger's own logic (sans-IO) ---------------------------------------------------------
    def write(self, key: str, payload: bytes) -> bool:
        """A ``<key>/set``; False when go-e would refuse it."""
        try:
            value = json.loads(payload)
        except ValueError:
            return False
        if key == "amp" and isinstance(value, int | float) and not isinstance(value, bool):
            self.amp = int(max(MIN_A, min(self.charger.config.max_a, value)))
        elif key == "frc" and value in (0, 1, 2):
            self.frc = int(value)
        else:
            return False
        self.received.append((key, value))
        self.apply()
        self.changed.set()
        return True

    def apply(self) -> None:
        offer = 0.0 if self.frc == FRC_OFF else float(self.amp)
        if offer != self.charger.setpoint_a:
            self.charger.set_setpoint(self.t(), offer)

    def keys(self) -> dict[str, Any]:
        c = self.charger
        i1, i2, i3 = c.terminals
        p = [round(self.voltage * i) for i in (i1, i2, i3)]
        nrg = [self.voltage, self.voltage, self.voltage, 0, round(i1, 1), round(i2, 1), round(i3, 1),
               p[0], p[1], p[2], 0, round(c.power_w), 1, 1, 1, 0]
        return {"amp": self.amp, "frc": self.frc, "car": CAR[c.mode], "nrg": nrg}

    def step(self) -> None:
        self.charger.step(self.t())
        self.after_step()

    def after_step(self) -> None:
        self.publish(changed_only=True)

    # -- I/O ---------------------------------------------------------------------------------------
    def publish(self, changed_only: bool = False) -> None:
        client = self._client
        if client is None:
            return
        for key, value in self.keys().items():
            if changed_only and self._published.get(key) == value:
                continue
            self._published[key] = value
            asyncio.ensure_future(self._publish(client, f"{PREFIX}/{self.serial}/{key}", value))

    async def _publish(self, client: aiomqtt.Client, name: str, value: Any) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(name, json.dumps(value, separators=(",", ":")), qos=0, retain=True)

    async def run(self) -> None:
        loops = [self._connection(), self._periodic()]
        if self.steps:
            loops.append(self._physics())
        await asyncio.gather(*loops)

    async def _physics(self) -> None:
        next_at = self.clock.now()
        while True:
            next_at += 1.0
            await self.clock.sleep_until(next_at)
            self.step()

    async def _periodic(self) -> None:
        while True:
            await self.clock.sleep(self.publish_every_s)
            self.publish()

    async def _connection(self) -> None:
        base = f"{PREFIX}/{self.serial}/"
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=f"go-e-{self.serial}",
                                          timeout=10, username=self.username,
                                          password=self.password) as client:
                    await client.subscribe(base + "+/set", qos=1)
                    self._client = client
                    self._published.clear()
                    self.publish()
                    self.connected.set()
                    async for m in client.messages:
                        name = str(m.topic)
                        if name.startswith(base) and name.endswith("/set"):
                            self.write(name[len(base):-len("/set")], bytes(m.payload))
                            self.publish(changed_only=True)
            except aiomqtt.MqttError as exc:
                log.info("sim go-e %s: broker link lost: %s", self.serial, exc)
            finally:
                self._client = None
                self.connected.clear()
            await asyncio.sleep(0.5)

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        """Until ``predicate(self)`` holds (re-checked on every write); TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()
