"""A charger with its EV as a node on MQTT: it obeys ``charger/<id>/setpoint`` and reports its state.

    async with ChargerNode(SimCharger(config, "TN"), Topics(serial), url=broker_url, clock=clock) as node:
        await node.run()

The setpoint goes to the `SimCharger` at once, as a charger takes a new pilot duty cycle; the EV
follows it after its own response delay (sim/ev.py). The node publishes ``charger/<id>/state`` every
``state_every_s`` of the clock, and at once when what it reports changes (mode, setpoint, currents at
0.1 A), so a decrease reaches the device without waiting for the next period.

Who advances the EV: standalone (``steps=True``) the node steps its charger every second of the clock
itself. In the closed-loop simulation the world steps every charger once per simulated second (the
meter and the fuse judge need the same currents) and calls `after_step`.

Times given to the `SimCharger` and its EVs are seconds since ``origin`` (the simulation's t = 0).

A charger that stops hearing setpoints (the device or the broker gone) must not keep offering what it
was last told, which the house may no longer leave room for: after ``setpoint_timeout_s`` of the
clock without a valid setpoint it falls back to ``safe_a`` by itself (IEC 61851's 6 A by default, as
Zaptec's and Easee's offline current), until the next setpoint. A bad setpoint is counted, logged and
ignored; nothing on the setpoint topic ends the listener.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from apm.io.clock import Clock, RealClock
from apm.io.mqtt.link import MqttLink
from apm.io.mqtt.messages import charger_state_payload
from apm.io.mqtt.node import MqttNode
from apm.io.mqtt.topics import PayloadError, SetpointPayload, Topics
from sim.charger import SimCharger

log = logging.getLogger(__name__)

SETPOINT_TIMEOUT_S = 60.0  # the balancer refreshes every setpoint at least every 10 s
SAFE_A = 6.0


class ChargerNode(MqttNode):
    def __init__(
        self,
        charger: SimCharger,
        topics: Topics,
        *,
        url: str,
        clock: Clock | None = None,
        origin: float = 0.0,
        steps: bool = True,
        state_every_s: float = 1.0,
        client_id: str | None = None,
        link_options: Mapping[str, Any] | None = None,
        setpoint_timeout_s: float = SETPOINT_TIMEOUT_S,
        safe_a: float = SAFE_A,
    ) -> None:
        self.charger = charger
        self.setpoint_timeout_s = setpoint_timeout_s
        self.safe_a = safe_a
        self.rejected = 0
        self.fell_back = 0  # times the setpoint timed out
        self.id = charger.id
        self.topics = topics
        self.clock = clock or RealClock()
        self.origin = origin
        self.steps = steps
        self.state_every_s = state_every_s
        self.setpoints_received = 0
        self.last_setpoint: SetpointPayload | None = None
        self.states_sent = 0
        self._reported: tuple[Any, ...] | None = None
        self._sent_at = -1e18
        self.link = MqttLink(url, client_id=client_id or f"sim-charger-{topics.serial}-{charger.id}",
                             subscriptions=[(topics.charger_setpoint(charger.id), 1)],
                             **dict(link_options or {}))

    def t(self) -> float:
        """The simulation's time: seconds since ``origin``."""
        return self.clock.now() - self.origin

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self._listen(), self._report()]

    async def _listen(self) -> None:
        self._heard_at = self.clock.now()  # the timeout runs from the start: silence from the outset too
        async for m in self.link.messages():
            self.on_message(m.topic, m.payload)

    def on_message(self, topic: str, payload: bytes) -> bool:
        """A setpoint: applied (True), or rejected, counted and logged; never an exception."""
        if topic != self.topics.charger_setpoint(self.id):
            return False
        try:
            sp = SetpointPayload.decode(payload)
        except PayloadError as exc:
            self.rejected += 1
            log.warning("charger %s: bad setpoint ignored: %s", self.id, str(exc)[:300])
            return False
        self.setpoints_received += 1
        self.last_setpoint = sp
        self._heard_at = self.clock.now()
        if sp.current_a != self.charger.setpoint_a:
            self.charger.set_setpoint(self.t(), sp.current_a)
            self.publish_state()
        return True

    def check_timeout(self) -> bool:
        """Fall back to ``safe_a`` when no setpoint came for ``setpoint_timeout_s``; True if it did now."""
        heard = getattr(self, "_heard_at", None)
        if heard is None or self.clock.now() - heard <= self.setpoint_timeout_s:
            return False
        if self.charger.setpoint_a <= self.safe_a:
            return False
        self.fell_back += 1
        log.warning("charger %s: no setpoint for %.0f s: %.1f A -> the safe %.1f A", self.id,
                    self.clock.now() - heard, self.charger.setpoint_a, self.safe_a)
        self.charger.set_setpoint(self.t(), self.safe_a)
        self.publish_state()
        return True

    async def _report(self) -> None:
        next_at = self.clock.now()
        while True:
            next_at += self.state_every_s if not self.steps else min(1.0, self.state_every_s)
            await self.clock.sleep_until(next_at)
            self.check_timeout()
            if self.steps:
                self.charger.step(self.t())
            self.after_step()

    def after_step(self) -> None:
        """Publish when the report changed, or when ``state_every_s`` has passed since the last one."""
        now = self.clock.now()
        if self._key() != self._reported or now - self._sent_at >= self.state_every_s - 1e-6:
            self.publish_state()

    def publish_state(self) -> None:
        now = self.clock.now()
        state = self.charger.state(self.t())
        self.link.publish(self.topics.charger_state_message(
            self.id, charger_state_payload(state, self.charger.config.max_a, now)))
        self._reported = self._key()
        self._sent_at = now
        self.states_sent += 1

    def _key(self) -> tuple[Any, ...]:
        c = self.charger
        return (c.mode, c.setpoint_a, tuple(round(x, 1) for x in c.terminals))
