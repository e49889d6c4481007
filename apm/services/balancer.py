"""The balancer as an asyncio edge around the device's `apm.core.controller.Controller`: setpoints out on MQTT.

    Device (same process) --headroom--> Controller.decide (on every headroom, and every tick_s)
    eco/plan (MQTT) ------------------^                       --> charger/<id>/setpoint (QoS 1)

    async with Device(config, ...) as device, BalancerService.beside(device, url=url) as service:
        await service.run()

Beside the device it shares the device's Controller: the headroom, the charger states and the
subscription state (the device's own evaluation) are already there, with no round trip through the
broker; only the eco plan comes over MQTT. Alone (``BalancerService(config, url=...)``: a balancer
that runs apart from the device) it keeps a Controller of its own and feeds it from the broker:
``headroom`` and ``charger/+/state`` as the device and the chargers publish them.

Entitlement comes only from signed proofs: beside the device, from the device's own verification of
the token and revocations; alone, from ``subscription`` (the same `apm.services.device.SubscriptionSource` the
device uses: the token, the issuer's key and the revocations, verified here), evaluated at the start,
every SUBSCRIPTION_EVERY_S, and whenever the device's retained ``subscription`` status changes. That
topic is only a hint to look again: what it says is never used, so no broker client can switch fuse
protection off (``{"state": "none"}``) or grant it (``{"state": "valid"}``). Alone without a source,
there is no subscription: the fixed current.

What it may do comes from the subscription: fuse protection needs a valid subscription that grants
it; without one the chargers share the configured fixed current among themselves
(`apm.core.subscription.gate`). With a valid subscription it works from the headroom; when that is stale
(the meter data it rests on is older than ``stale_after_s``: the tick notices) the sans-IO `Balancer`
falls back to the safe fixed current by itself. No subscription status known counts as none.

Smart eco: a retained plan on ``eco/plan`` (`apm.core.eco.planner.Plan.to_dict()`, plus an optional
``"charge_now": [charger ids]``; an empty payload clears it) caps each planned charger at the plan's
current (0 A outside its slots) until its departure, when the subscription grants eco; a "charge now"
lasts until that charger's car leaves.

Setpoints are published for every charger on every headroom (each carries the headroom's
``seq``/``ts``, so the latency from the meter to the charger can be measured), whenever one changes,
and at least every ``refresh_s``, so a charger that restarted learns its setpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from apm.core.balancer import Balancer, BalancerSettings
from apm.core.charger_state import ChargerState
from apm.core.config import DeviceConfig, GridConfig
from apm.core.controller import Controller, balancer_settings
from apm.core.eco.schedule import EcoSchedule
from apm.core.headroom import Headroom
from apm.core.subscription import Gate, SubscriptionState
from apm.io.clock import Clock, RealClock
from apm.io.mqtt.link import MqttLink, link_settings
from apm.io.mqtt.messages import (
    HeadroomNote,
    Rejections,
    headroom_value,
    read_charger_state,
    read_eco_plan,
    read_headroom,
    setpoint_message,
)
from apm.io.mqtt.node import MqttNode
from apm.io.mqtt.topics import CHARGER_STATE, ECO_PLAN, HEADROOM, SUBSCRIPTION, PayloadError, Topics

if TYPE_CHECKING:
    from apm.services.device import Device, SubscriptionSource

log = logging.getLogger(__name__)

TICK_S = 1.0
REFRESH_S = 10.0
SUBSCRIPTION_EVERY_S = 60.0  # clock seconds between the alone balancer's own evaluations


__all__ = ["BalancerService", "balancer_settings"]


class BalancerService(MqttNode):
    def __init__(
        self,
        config: DeviceConfig,
        *,
        url: str,
        clock: Clock | None = None,
        settings: BalancerSettings | None = None,
        controller: Controller | None = None,
        tick_s: float = TICK_S,
        refresh_s: float = REFRESH_S,
        client_id: str | None = None,
        link_options: Mapping[str, Any] | None = None,
        subscription: SubscriptionSource | None = None,
    ) -> None:
        self.config = config
        self.subscription_source = subscription
        self.clock = clock or RealClock()
        self.topics = Topics(config.serial)
        # Beside the device: its controller. Alone: one of our own, fed from the broker.
        self.alone = controller is None
        self.controller = controller or Controller(config.grid, config.chargers,
                                                   settings=settings or balancer_settings(config))
        self.tick_s = tick_s
        self.refresh_s = refresh_s
        self.headroom: HeadroomNote | None = None
        self.setpoints: dict[str, float] = {}
        self.sent_at: dict[str, float] = {}
        self.published = 0
        self.updates = 0
        # Told every decision's setpoints (charger id -> A): the OCPP and go-e edges (apm.services.runtime).
        self.setpoint_listeners: list[Callable[[Mapping[str, float]], None]] = []
        self._evaluated_at = float("-inf")
        t = self.topics
        listen = [(t.eco_plan, 1)]
        if self.alone:
            listen += [(t.headroom, 0), (t.all_charger_states, 0), (t.subscription, 1)]
            self.evaluate_subscription()
        self.rejections = Rejections(self.topics, "balancer")
        self.link = MqttLink(
            url, client_id=client_id or f"apm-{config.serial}-balancer", **link_settings(config.broker),
            subscriptions=listen,
            **dict(link_options or {}))

    @classmethod
    def beside(cls, device: Device, **options: Any) -> BalancerService:
        """The balancer of ``device``, in its process: it shares the device's Controller and decides on
        every headroom the device computes."""
        service = cls(device.config, clock=device.clock, controller=device.controller, **options)
        device.headroom_listeners.append(service.on_headroom)
        service._device = device
        return service

    async def __aexit__(self, *exc: object) -> None:
        # Stop hearing the device first: a link that is closing must not be handed new setpoints.
        device = getattr(self, "_device", None)
        if device is not None and self.on_headroom in device.headroom_listeners:
            device.headroom_listeners.remove(self.on_headroom)
        await super().__aexit__(*exc)

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self._listen(), self._tick()]

    # --- the controller's values, for the views and tests -----------------------------------------

    @property
    def settings(self) -> BalancerSettings:
        return self.controller.settings

    @property
    def balancer(self) -> Balancer:
        return self.controller.balancer

    @property
    def states(self) -> dict[str, ChargerState]:
        return self.controller.states

    @property
    def eco(self) -> EcoSchedule:
        return self.controller.eco

    @property
    def subscription(self) -> SubscriptionState | None:
        return self.controller.subscription

    @property
    def granted(self) -> frozenset[str]:
        return self.controller.granted

    @property
    def stale_s(self) -> float:
        return self.controller.stale_s

    # --- inputs ----------------------------------------------------------------------------------

    def on_headroom(self, now: float, note: HeadroomNote) -> None:
        """A new headroom (from the device beside us, or off the broker): decide and publish at once."""
        self.headroom = note
        if self.alone:
            self.controller.use_headroom(_within_limit(headroom_value(note, now, self.config.grid.network),
                                                       self.config.grid))
        # Decided at the clock's now: the device passes when the meter measured, which lies before
        # decisions already made (a tick), and the balancer's clock must not run backwards.
        self.update(max(now, self.clock.now()), publish_all=True)

    async def _listen(self) -> None:
        async for m in self.link.messages():
            self.on_message(m.topic, m.payload)

    def on_message(self, topic: str, payload: bytes) -> None:
        """One message off the broker: used, or rejected (counted and logged), never an exception out
        of the listener (a retained bad plan would otherwise end it at every start)."""
        try:
            self._on_message(topic, payload)
        except PayloadError as exc:
            self.rejections.reject(topic, str(exc))
        except Exception as exc:  # what nobody foresaw: logged with its traceback, and the listener goes on
            self.rejections.reject(topic, f"{type(exc).__name__}: {exc}", exc_info=True)

    def _on_message(self, topic: str, payload: bytes) -> None:
        ref = self.topics.parse(topic)
        if ref is None:
            return
        now = self.clock.now()
        if ref.kind == ECO_PLAN:
            self._on_plan(payload)
        elif not self.alone:
            return  # beside the device, the rest comes from it in-process
        elif ref.kind == HEADROOM:
            self.on_headroom(now, read_headroom(payload, now))
        elif ref.kind == CHARGER_STATE and ref.charger is not None:
            if ref.charger not in self.controller.max_a:
                self.rejections.unknown_charger(ref.charger)
                return
            self.controller.on_charger_states(now, [read_charger_state(ref.charger, payload, now)])
        elif ref.kind == SUBSCRIPTION:
            self.evaluate_subscription()  # a hint to look again, never a source

    def evaluate_subscription(self) -> SubscriptionState | None:
        """Alone: the subscription from the signed proofs (None: no source, so none)."""
        source = self.subscription_source
        state = None if source is None else source(self.clock.datetime(), None)
        before = self.controller.subscription
        self.controller.set_subscription(state)
        if state != before:
            log.info("balancer: subscription %s", "none known" if state is None
                     else f"{state.state.value} ({state.reason})")
        self._evaluated_at = self.clock.now()
        return state

    def _on_plan(self, payload: bytes) -> None:
        p = read_eco_plan(payload)
        if p is None:
            self.controller.set_eco(EcoSchedule())
            log.info("balancer: eco plan cleared")
            return
        schedule = EcoSchedule(p.plan())
        for cid in p.charge_now:
            schedule.charge_now(cid)
        self.controller.set_eco(schedule)
        log.info("balancer: eco plan for %s", ", ".join(schedule.plan.charger_ids if schedule.plan else ()))

    # --- deciding ----------------------------------------------------------------------------------

    def gate(self) -> Gate:
        """What the subscription allows; meter freshness is the `Balancer`'s own check."""
        return self.controller.gate()

    def allowed(self, now_dt: datetime) -> dict[str, float] | None:
        """Eco caps per charger, or None when no plan applies."""
        return self.controller.eco_caps(now_dt)

    def current_headroom(self, now: float) -> Headroom | None:
        return self.controller.headroom

    def update(self, now: float, *, publish_all: bool = False) -> dict[str, float]:
        d = self.controller.decide(now, self.clock.datetime())
        self.updates += 1
        for sp in d.setpoints:
            cid, a = sp.charger, sp.current_a
            changed = self.setpoints.get(cid) != a
            if changed and cid in self.setpoints:
                log.debug("setpoint %s: %.1f -> %.1f A (%s)", cid, self.setpoints[cid], a, d.mode)
            if publish_all or changed or now - self.sent_at.get(cid, -1e18) >= self.refresh_s:
                self.link.publish(setpoint_message(self.topics, cid, a, sp.reason, ts=now, mode=d.mode,
                                                   headroom=self.headroom))
                self.sent_at[cid] = now
                self.published += 1
        self.setpoints = d.as_dict()
        for listener in self.setpoint_listeners:
            listener(self.setpoints)
        return self.setpoints

    async def _tick(self) -> None:
        next_at = self.clock.now()
        while True:
            next_at += self.tick_s
            await self.clock.sleep_until(next_at)
            now = self.clock.now()
            if now - next_at > 5 * self.tick_s:
                next_at = now  # fell far behind (a suspended process): do not replay every missed tick
            if self.alone and now - self._evaluated_at >= SUBSCRIPTION_EVERY_S:
                self.evaluate_subscription()  # a token expires by the clock
            self.update(now)


def _within_limit(h: Headroom, grid: GridConfig) -> Headroom:
    """A headroom off the broker with no line above what the fuse less the margin could ever leave:
    a forged or corrupted 400 A on a 25 A fuse is read as the whole limit, no more."""
    limit = grid.fuse_a - grid.safety_margin_a
    a, b, c = (None if x is None else min(x, limit) for x in h.available_a)
    lines = (a, b, c)
    return h if lines == h.available_a else dataclasses.replace(h, available_a=lines)
