"""The balancer as its own asyncio task, talking to the rest of the device over MQTT only.

    headroom ------------+
    charger/+/state -----+--> Balancer.update (on every headroom, and every tick_s) --> charger/<id>/setpoint
    subscription --------+                                                              (QoS 1)
    eco/plan ------------+

    async with BalancerService(config, url=broker_url, clock=clock) as service:
        await service.run()

What it may do comes from the subscription status the device publishes (retained): fuse protection
needs a valid subscription that grants it; without one the chargers share the configured fixed
current among themselves (`apm.subscription.gate`). With a valid subscription it works from the
headroom; when that is stale (the meter data it rests on is older than ``stale_after_s``, or no
headroom message came for that long: the tick notices) the sans-IO `Balancer` falls back to the safe
fixed current by itself. No subscription status received at all counts as no subscription.

Smart eco: a retained plan on ``eco/plan`` (`apm.eco.planner.Plan.to_dict()`, plus an optional
``"charge_now": [charger ids]``; an empty payload clears it) caps each planned charger at the plan's
current (0 A outside its slots) until its departure, when the subscription grants eco; a "charge now"
lasts until that charger's car leaves.

Setpoints are published for every charger on every headroom message (each carries the headroom's
``seq``/``ts``, so the latency from the meter to the charger can be measured), whenever one changes,
and at least every ``refresh_s``, so a charger that restarted learns its setpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Mapping
from datetime import datetime
from typing import Any

from apm.balancer import Balancer, BalancerSettings
from apm.charger_state import ChargerState
from apm.clock import Clock, RealClock
from apm.config import DeviceConfig
from apm.eco.schedule import EcoSchedule
from apm.headroom import Headroom
from apm.messages import (
    HeadroomNote,
    headroom_value,
    read_charger_state,
    read_eco_plan,
    read_headroom,
    read_subscription,
    setpoint_message,
)
from apm.mqtt_link import MqttLink, link_settings
from apm.mqtt_node import MqttNode
from apm.subscription import FEATURES, Gate, State, SubscriptionState, gate
from apm.topics import CHARGER_STATE, ECO_PLAN, HEADROOM, SUBSCRIPTION, PayloadError, Topics

log = logging.getLogger(__name__)

TICK_S = 1.0
REFRESH_S = 10.0


def balancer_settings(config: DeviceConfig) -> BalancerSettings:
    """The device's thresholds: its ``[balancer]`` table, which carries the top-level ``fixed_current_a``."""
    return config.balancer


class BalancerService(MqttNode):
    def __init__(
        self,
        config: DeviceConfig,
        *,
        url: str,
        clock: Clock | None = None,
        settings: BalancerSettings | None = None,
        tick_s: float = TICK_S,
        refresh_s: float = REFRESH_S,
        client_id: str | None = None,
        link_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or RealClock()
        self.topics = Topics(config.serial)
        self.settings = settings or balancer_settings(config)
        self.balancer = Balancer(config.grid.network, config.chargers, self.settings)
        self.tick_s = tick_s
        self.refresh_s = refresh_s
        self.max_a = {c.id: c.max_a for c in config.chargers}
        self.states: dict[str, ChargerState] = {}
        self.headroom: HeadroomNote | None = None
        self.subscription: SubscriptionState | None = None
        self.granted: frozenset[str] = frozenset()
        self.eco = EcoSchedule()
        self.setpoints: dict[str, float] = {}
        self.sent_at: dict[str, float] = {}
        self.published = 0
        self.updates = 0
        self.stale_s = 0.0  # clock seconds spent on the fallback for stale or missing meter data
        self._last_update: float | None = None
        t = self.topics
        self.link = MqttLink(
            url, client_id=client_id or f"apm-{config.serial}-balancer", **link_settings(config.broker),
            subscriptions=[(t.headroom, 0), (t.all_charger_states, 0), (t.subscription, 1), (t.eco_plan, 1)],
            **dict(link_options or {}))

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self._listen(), self._tick()]

    # --- inputs ----------------------------------------------------------------------------------

    async def _listen(self) -> None:
        async for m in self.link.messages():
            ref = self.topics.parse(m.topic)
            if ref is None:
                continue
            now = self.clock.now()
            try:
                if ref.kind == HEADROOM:
                    self.headroom = read_headroom(m.payload, now)
                    self.update(now, publish_all=True)
                elif ref.kind == CHARGER_STATE and ref.charger in self.max_a:
                    state = read_charger_state(ref.charger, m.payload, now)
                    if state.mode == "disconnected":
                        self.eco.car_left(state.id)  # a "charge now" lasts until the car leaves
                    self.states[state.id] = state
                elif ref.kind == SUBSCRIPTION:
                    self._on_subscription(m.payload)
                elif ref.kind == ECO_PLAN:
                    self._on_plan(m.payload)
            except (PayloadError, ValueError, KeyError, TypeError) as exc:
                log.warning("%s: ignored a bad message: %s", m.topic, exc)

    def _on_subscription(self, payload: bytes) -> None:
        p = read_subscription(payload)
        state = SubscriptionState(State(p.state), p.reason)
        self.subscription = state
        self.granted = frozenset(FEATURES if p.granted is None else p.granted)
        log.info("balancer: subscription %s (%s)", state.state.value, state.reason)

    def _on_plan(self, payload: bytes) -> None:
        p = read_eco_plan(payload)
        if p is None:
            self.eco = EcoSchedule()
            log.info("balancer: eco plan cleared")
            return
        schedule = EcoSchedule(p.plan())
        for cid in p.charge_now:
            schedule.charge_now(cid)
        self.eco = schedule
        log.info("balancer: eco plan for %s", ", ".join(schedule.plan.charger_ids if schedule.plan else ()))

    # --- deciding ----------------------------------------------------------------------------------

    def gate(self) -> Gate:
        """What the subscription allows; meter freshness is the `Balancer`'s own check."""
        fixed = self.settings.fixed_current_a
        if self.subscription is None:
            return Gate(frozenset(), fixed)
        g = gate(self.subscription, True, fixed)
        active = g.features & self.granted
        return Gate(active, None if "fuse_protection" in active else fixed)

    def allowed(self, now_dt: datetime) -> dict[str, float] | None:
        """Eco caps per charger, or None when no plan applies."""
        eco = self.eco
        if eco.plan is None and not eco.overrides:
            return None
        out: dict[str, float] = {}
        for cid, max_a in self.max_a.items():
            plan = eco.plan
            planned = plan is not None and cid in plan.charger_ids and now_dt < plan.charger(cid).departure
            if cid in eco.overrides or planned:
                out[cid] = eco.allowed_current(cid, now_dt, max_a)
        return out or None

    def current_headroom(self, now: float) -> Headroom | None:
        return None if self.headroom is None else headroom_value(self.headroom, now, self.config.grid.network)

    def update(self, now: float, *, publish_all: bool = False) -> dict[str, float]:
        g = self.gate()
        allowed = self.allowed(self.clock.datetime()) if g.eco else None
        mode = "protect" if g.fuse_protection else "fixed"
        setpoints = self.balancer.update(now, self.current_headroom(now), self.states, mode=mode,
                                         allowed_a=allowed)
        decision = self.balancer.last
        how = decision.mode if decision is not None else mode
        if self._last_update is not None and how.startswith("fixed:"):
            self.stale_s += max(0.0, now - self._last_update)
        self._last_update = now
        self.updates += 1
        for cid, a in setpoints.items():
            changed = self.setpoints.get(cid) != a
            if changed and cid in self.setpoints:
                log.debug("setpoint %s: %.1f -> %.1f A (%s)", cid, self.setpoints[cid], a, how)
            if publish_all or changed or now - self.sent_at.get(cid, -1e18) >= self.refresh_s:
                reason = decision.reasons.get(cid, how) if decision is not None else how
                self.link.publish(setpoint_message(self.topics, cid, a, reason, ts=now, mode=how,
                                                   headroom=self.headroom))
                self.sent_at[cid] = now
                self.published += 1
        self.setpoints = dict(setpoints)
        return setpoints

    async def _tick(self) -> None:
        next_at = self.clock.now()
        while True:
            next_at += self.tick_s
            await self.clock.sleep_until(next_at)
            now = self.clock.now()
            if now - next_at > 5 * self.tick_s:
                next_at = now  # fell far behind (a suspended process): do not replay every missed tick
            self.update(now)
