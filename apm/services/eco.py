"""The device's Smart eco service over MQTT: takes departure requests, plans all chargers together,
publishes the plan (retained) for the balancer service.

    eco/request (EcoRequest, QoS 1) --> EcoPlanner (sans-IO) --> eco/plan (EcoPlanPayload, retained)

A request (`apm.io.mqtt.messages.EcoRequest`): ``{"charger": id, "departure": ISO time, "energy_kwh": x |
"hours": h, "charge_now": bool}``; ``{"charger": id, "clear": true}`` drops that charger's request. A request for a charger replaces its
earlier one. ``charge_now`` puts the charger on the plan's ``charge_now`` list, which the balancer service
(apm.services.balancer) reads as a manual override until the car leaves. When no request is left the
plan is cleared with an empty retained payload (the balancer service's "plan cleared").

The plan's payload (`apm.io.mqtt.messages.EcoPlanPayload`) is ``Plan.to_dict()`` plus ``charge_now`` (charger
ids) and ``expected_cost_nok`` (the plan's cost, spot + grid energy charge).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from apm.core.capacity_guard import CapacityGuard
from apm.core.config import DeviceConfig
from apm.core.eco.capacity import MonthLog
from apm.core.eco.planner import (
    CapacityLimit,
    CarRequest,
    Charger,
    Plan,
    PlanError,
    PlanOptions,
    plan,
    plan_at_once,
)
from apm.core.eco.prices import OSLO, PriceSeries
from apm.core.eco.tariff import ELVIA, EnergyCharge
from apm.io.mqtt.link import MqttLink
from apm.io.mqtt.messages import EcoPlanPayload, EcoRequest, PayloadError, convert, decode, read_eco_plan
from apm.io.mqtt.topics import OutMessage, Topics

log = logging.getLogger(__name__)


def request_topic(topics: Topics) -> str:
    return topics.eco_request


class RequestError(PayloadError):
    """A request the service cannot take (the message names the field)."""


@dataclass(frozen=True, slots=True)
class Request:
    charger: str
    departure: datetime
    energy_kwh: float | None = None
    hours: float | None = None
    charge_now: bool = False
    default: bool = False  # made from the owner's daily setting, not asked for on eco/request


def next_departure(hhmm: str, now: datetime) -> datetime:
    """The next ``HH:MM`` in Oslo after ``now`` (today's or tomorrow's)."""
    hour, minute = (int(x) for x in hhmm.split(":"))
    local = now.astimezone(OSLO)
    for day in (local.date(), local.date() + timedelta(days=1)):
        at = datetime.combine(day, time(hour, minute), tzinfo=OSLO)
        if at > now:
            return at
    raise AssertionError("a time of day comes again within two days")


def daily_defaults(config: DeviceConfig) -> dict[str, tuple[str, float]] | None:
    """The configuration's Smart eco setting as `EcoPlanner.set_defaults` takes it (None: off)."""
    if not config.eco.enabled:
        return None
    return {c.id: (c.eco_departure, c.eco_energy_kwh) for c in config.chargers}


def parse_request(d: EcoRequest | Mapping[str, Any], chargers: Mapping[str, Charger]) -> Request | str:
    """A `Request`, or the charger id for ``{"charger": id, "clear": true}``; `RequestError` if bad."""
    try:
        r = d if isinstance(d, EcoRequest) else convert(d, EcoRequest)
    except PayloadError as exc:
        raise RequestError(str(exc)) from None
    if r.charger not in chargers:
        raise RequestError(f"charger: {r.charger!r} is not one of {', '.join(sorted(chargers))}")
    if r.clear:
        return r.charger
    try:
        departure = datetime.fromisoformat(r.departure) if r.departure is not None else None
    except ValueError:
        departure = None
    if departure is None:
        raise RequestError(f"departure: {r.departure!r} is not an ISO time")
    if departure.tzinfo is None:
        departure = departure.replace(tzinfo=OSLO)
    if (r.energy_kwh is None) == (r.hours is None):
        raise RequestError("give exactly one of energy_kwh and hours")
    return Request(r.charger, departure, r.energy_kwh, r.hours, r.charge_now)


class EcoPlanner:
    """Sans-IO: the open requests and the plan over them. ``handle`` and ``replan`` return the payload
    to publish on ``eco/plan`` (None: clear it)."""

    def __init__(self, chargers: Mapping[str, Charger], prices: Callable[[datetime], PriceSeries],
                 grid: EnergyCharge = ELVIA.energy, budget_a: float | None = None,
                 guard: CapacityGuard | None = None) -> None:
        self.chargers = dict(chargers)
        self.prices = prices
        self.grid = grid
        self.budget_a = budget_a
        # The device's capacity guard: the plan keeps each hour in the same step, with the month the
        # guard has seen so far and the household as it draws now (one goal, `[capacity]`).
        self.guard = guard
        self.requests: dict[str, Request] = {}
        self.plan: Plan | None = None
        self.at_once: Plan | None = None  # the same requests charged at once: what the plan saves against
        # Smart eco's daily requests (the owner's [eco] setting): charger -> (departure HH:MM, kWh).
        self.defaults: dict[str, tuple[str, float]] = {}

    def set_defaults(self, defaults: Mapping[str, tuple[str, float]] | None, now: datetime) -> EcoPlanPayload | None:
        """Smart eco on with these daily requests, or off (None): every request dropped, so the chargers
        charge at once. A charger's own request (``eco/request``) goes before its default until it departs."""
        if defaults is None:
            self.defaults = {}
            self.requests.clear()
        else:
            self.defaults = {c: d for c, d in defaults.items() if c in self.chargers}
            # A default request made before stands for the old setting: made again from the new one.
            self.requests = {c: r for c, r in self.requests.items() if not r.default}
        return self.replan(now)

    def handle(self, d: EcoRequest | Mapping[str, Any], now: datetime) -> EcoPlanPayload | None:
        req = parse_request(d, self.chargers)
        if isinstance(req, str):
            self.requests.pop(req, None)
        else:
            if req.departure <= now:
                raise RequestError(f"departure: {req.departure.isoformat()} is not after now {now.isoformat()}")
            self.requests[req.charger] = req
        return self.replan(now)

    def capacity(self, now: datetime) -> CapacityLimit | None:
        """The guard's step as the planner's hourly cap (None without a guard)."""
        return None if self.guard is None else _capacity_limit(self.guard, now)

    def replan(self, now: datetime) -> EcoPlanPayload | None:
        """The plan over the requests whose departure is still ahead (older ones are dropped; a daily
        default is made again for its next departure)."""
        self.requests = {c: r for c, r in self.requests.items() if r.departure > now}
        for cid, (hhmm, kwh) in self.defaults.items():
            if cid not in self.requests:
                self.requests[cid] = Request(cid, next_departure(hhmm, now), kwh, default=True)
        if not self.requests:
            self.plan = self.at_once = None
            return None
        cars = []
        for r in self.requests.values():
            ch = self.chargers[r.charger]
            cars.append(CarRequest.for_hours(ch, r.departure, r.hours) if r.hours is not None
                        else CarRequest(ch, r.departure, r.energy_kwh or 0.0))
        prices = self.prices(now)
        options = PlanOptions(grid=self.grid, budget_a=self.budget_a, capacity=self.capacity(now))
        self.plan = plan(cars, prices, now, options)
        self.at_once = plan_at_once(cars, prices, now, options)
        return EcoPlanPayload.of(self.plan, [c for c, r in self.requests.items() if r.charge_now])


def _capacity_limit(guard: CapacityGuard, now: datetime) -> CapacityLimit:
    last = guard.last
    household = last.advice.household_kw if last is not None else 0.0
    return CapacityLimit.for_goal(guard.goal, guard.log or MonthLog.of(now, guard.goal.tz), now, household)


def plan_message(topics: Topics, payload: EcoPlanPayload | None) -> OutMessage:
    """The retained ``eco/plan`` message; None clears the plan (an empty payload)."""
    return topics.eco_plan_message(payload)


class EcoService:
    """Subscribes to ``eco/request`` on ``link`` and publishes ``eco/plan``; re-plans every ``replan_s``
    (new day-ahead prices from about 13:00, departed cars dropped). Bad requests are logged (a status
    per request on its own topic would be a later addition)."""

    def __init__(self, link: MqttLink, topics: Topics, planner: EcoPlanner,
                 clock: Callable[[], datetime] = lambda: datetime.now(OSLO), replan_s: float = 900.0,
                 defaults: Mapping[str, tuple[str, float]] | None = None) -> None:
        self.link = link
        self.defaults = defaults  # the owner's Smart eco setting at the start (None: off)
        self.topics = topics
        self.planner = planner
        self.clock = clock
        self.replan_s = replan_s
        self.errors: list[str] = []

    async def _replan_every(self) -> None:
        while True:
            await asyncio.sleep(self.replan_s)
            if not self.planner.requests:
                continue
            try:
                payload = self.planner.replan(self.clock())
            except PlanError as exc:  # e.g. no prices for now: keep the last plan
                self.errors.append(str(exc))
                log.warning("eco: re-plan failed: %s", exc)
                continue
            self.link.publish(plan_message(self.topics, payload))

    async def run(self) -> None:
        await self.link.subscribe(request_topic(self.topics), 1)
        if self.defaults is not None:
            self.use_defaults(self.defaults)
        ticker = asyncio.create_task(self._replan_every())
        try:
            await self._serve()
        finally:
            ticker.cancel()

    def on_settings(self, old: DeviceConfig, new: DeviceConfig) -> None:
        """A settings listener (apm.services.settings): Smart eco turned on or off, or a charger's
        departure or energy changed: planned again at once."""
        resized = False
        for c in new.chargers:  # a new max current: the plan's currents must fit it
            ch = self.planner.chargers.get(c.id)
            if ch is not None and ch.max_a != c.max_a:
                self.planner.chargers[c.id] = dataclasses.replace(ch, max_a=c.max_a)
                resized = True
        if resized or daily_defaults(new) != daily_defaults(old):
            self.use_defaults(daily_defaults(new))

    def use_defaults(self, defaults: Mapping[str, tuple[str, float]] | None) -> None:
        self.defaults = defaults
        try:
            payload = self.planner.set_defaults(defaults, self.clock())
        except PlanError as exc:  # e.g. no prices yet: the next re-plan tries again
            self.errors = [*self.errors[-99:], str(exc)[:300]]
            log.warning("eco: cannot plan the daily requests: %s", exc)
            return
        self.link.publish(plan_message(self.topics, payload))
        log.info("eco: Smart eco %s", "off: the chargers charge at once" if defaults is None else
                 "on: " + ", ".join(f"{c} by {d} with {e:g} kWh" for c, (d, e) in defaults.items()))

    async def _serve(self) -> None:
        async for m in self.link.messages():
            self.on_message(m.topic, m.payload)

    def submit(self, request: Mapping[str, Any]) -> str | None:
        """A request from the device itself (the web page): planned and the plan published as for one on
        ``eco/request``; None when taken, else why not."""
        try:
            plan = self.planner.handle(request, self.clock())
        except (PayloadError, RequestError, PlanError) as exc:
            return str(exc)
        self.link.publish(plan_message(self.topics, plan))
        return None

    def on_message(self, topic: str, payload: bytes) -> bool:
        """A request: planned and the plan published (True), or refused and logged; never an exception
        (a bad request must not end the service for everyone else's)."""
        if topic != request_topic(self.topics):
            return False
        try:
            plan = self.planner.handle(decode(payload, EcoRequest), self.clock())
        except (PayloadError, RequestError, PlanError) as exc:
            why = str(exc)
        except Exception as exc:  # what nobody foresaw: with its traceback, and the service goes on
            why = f"{type(exc).__name__}: {exc}"
            log.error("%s: request failed", topic, exc_info=True)
        else:
            self.link.publish(plan_message(self.topics, plan))
            return True
        self.errors = [*self.errors[-99:], why[:300]]
        log.warning("%s: ignored a bad request: %s", topic, why[:300])
        return False


async def fetch_plan(url: str, serial: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """The retained plan on ``apm/<serial>/eco/plan``, or None if none came within ``timeout_s``."""
    topics = Topics(serial)
    async with MqttLink(url, client_id=f"apm-eco-show-{serial}", subscriptions=[(topics.eco_plan, 1)]) as link:
        async def first() -> dict[str, Any] | None:
            async for m in link.messages():
                if m.topic != topics.eco_plan:
                    continue
                try:
                    plan = read_eco_plan(m.payload)
                except PayloadError as exc:
                    log.warning("%s: not a plan: %s", m.topic, exc)
                    continue
                return plan.to_json_dict() if plan is not None else None
            return None

        try:
            return await asyncio.wait_for(first(), timeout_s)
        except TimeoutError:
            return None
