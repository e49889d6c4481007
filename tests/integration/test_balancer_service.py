"""The balancer service over a real mosquitto: subscription gating, stale headroom, Smart eco caps.

The service runs apart from the device here: its subscription comes from a source it evaluates itself
(`Rig.entitle` sets what the signed proofs would say); the retained ``subscription`` status only makes
it look again, and what that status says is not used (tests/hostile/ forges it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import aiomqtt
import pytest

from apm.core.config import ChargerConfig, DeviceConfig, GridConfig
from apm.core.eco.planner import Charger, ChargerPlan, Plan, SlotPlan
from apm.core.subscription import State, SubscriptionState
from apm.core.token import TokenClaims
from apm.io.clock import ScaledClock
from apm.io.mqtt.topics import Topics, iso_ts, ts_seconds
from apm.io.tasks import stop
from apm.services.balancer import BalancerService
from tests.mqtt_broker import Mosquitto

pytestmark = pytest.mark.timeout(150)

SPEED = 10.0
CONFIG = DeviceConfig(serial="APMBAL01", grid=GridConfig(network="TN", fuse_a=25), fixed_current_a=10,
                      chargers=(ChargerConfig("a", max_a=32, phases=3),))
T = Topics(CONFIG.serial)
T0 = datetime.fromisoformat("2026-01-12T22:00:00+01:00")


class Rig:
    """The service, a client that plays the device and the charger, and the setpoints it sees."""

    def __init__(self, service: BalancerService, client: aiomqtt.Client, clock: ScaledClock,
                 proofs: list[SubscriptionState | None]) -> None:
        self.service, self.client, self.clock = service, client, clock
        self.proofs = proofs
        self.setpoints: list[dict[str, Any]] = []
        self.room = 20.0
        self.feeding = True
        self.last_headroom_at = 0.0  # clock time of the last headroom sent

    async def entitle(self, state: str, granted: list[str]) -> None:
        """What the verified token says now, then the device's status message (the hint to look again)."""
        self.proofs[0] = SubscriptionState(State(state), f"test: {state}", claims=_claims(granted))
        await self.send(T.subscription, subscription(state, granted), retain=True)

    async def send(self, topic: str, payload: dict[str, Any] | bytes, retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.client.publish(topic, data, qos=1, retain=retain)

    async def charger(self, state: str, amps: float = 16.0) -> None:
        cur = amps if state == "charging" else 0.0
        await self.send(T.charger_state("a"), {"state": state, "current_l1_a": cur, "current_l2_a": cur,
                                               "current_l3_a": cur, "max_a": 32, "phases": 3,
                                               "ts": iso_ts(self.clock.now())})

    async def headroom_feed(self) -> None:
        """A fresh headroom every simulated 2 s, as a device reading its meter would send."""
        while True:
            if self.feeding:
                r, now = self.room, self.clock.now()
                await self.send(T.headroom, {"l1_a": r, "l2_a": r, "l3_a": r, "ts": iso_ts(now),
                                             "stale": False, "age_s": 0.5})
                self.last_headroom_at = now
            await asyncio.sleep(2 / SPEED)

    async def listen(self) -> None:
        async for m in self.client.messages:
            self.setpoints.append(json.loads(bytes(m.payload)))  # type: ignore[arg-type]

    async def settle(self, done: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not done():
            assert asyncio.get_running_loop().time() < deadline, "the service never took the message"
            await asyncio.sleep(0.02)

    async def until(self, what: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
        """The first setpoint from now on for which ``what`` holds."""
        start = len(self.setpoints)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for d in self.setpoints[start:]:
                if what(d):
                    return d
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no such setpoint; last: {self.setpoints[-3:]}")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def rig(broker: Mosquitto, start: datetime = T0):
    clock = ScaledClock(SPEED, start=start)
    host, port = broker.host, broker.port
    async with aiomqtt.Client(host, port, identifier="rig") as client:
        await client.subscribe(T.charger_setpoint("a"), qos=1)
        proofs: list[SubscriptionState | None] = [None]

        def source(now: datetime, meter: str | None) -> SubscriptionState | None:
            return proofs[0]

        async with BalancerService(CONFIG, url=broker.url, clock=clock, subscription=source) as service:
            assert await service.link.wait_connected(5)
            r = Rig(service, client, clock, proofs)
            tasks = [asyncio.create_task(service.run()), asyncio.create_task(r.listen()),
                     asyncio.create_task(r.headroom_feed())]
            try:
                yield r
            finally:
                await stop(*tasks)  # a publish's wait_for can swallow one cancel on Python 3.11


def _claims(granted: list[str]) -> TokenClaims:
    """What a verified token granting ``granted`` says (the signature is apm.core.token's business)."""
    t = T0 + timedelta(days=30)
    return TokenClaims(CONFIG.installation_id, CONFIG.serial, "test", tuple(granted), "NO", 1, t, "jti", T0, T0)


def subscription(state: str, granted: list[str]) -> dict[str, Any]:
    return {"state": state, "reason": f"test: {state}", "granted": granted}


def test_the_subscription_decides_between_the_headroom_and_the_fixed_current(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        async with rig(mosquitto) as r:
            await r.charger("charging")
            # No subscription status at all: the chargers share the fixed current; the meter is ignored.
            d = await r.until(lambda d: d["current_a"] > 0)
            assert d["current_a"] == 10.0 and d["mode"] == "fixed"
            await r.entitle("valid", ["eco", "fuse_protection"])
            d = await r.until(lambda d: d["mode"] == "protect" and d["current_a"] == 20.0)
            assert d["headroom_seq"] is None  # the rig's headroom carries no sequence number
            # Revoked (a declined payment): back to the fixed current at once.
            await r.entitle("revoked", ["eco", "fuse_protection"])
            d = await r.until(lambda d: d["mode"] == "fixed")
            assert d["current_a"] == 10.0
            # Valid, but a plan without fuse protection: fixed as well.
            await r.entitle("valid", ["eco"])
            await r.settle(lambda: r.service.granted == {"eco"})
            assert r.service.gate().fixed_current_a == 10.0 and r.service.gate().eco
            n = len(r.setpoints)
            await r.until(lambda d: True)  # the next one, decided with the new status
            assert all(d["mode"] == "fixed" for d in r.setpoints[n:])
            # Protected again, then the headroom stops: the safe current within the stale timeout.
            await r.entitle("valid", ["eco", "fuse_protection"])
            await r.until(lambda d: d["mode"] == "protect" and d["current_a"] == 20.0)
            r.feeding = False
            d = await r.until(lambda d: d["mode"].startswith("fixed: stale"), timeout=30)
            assert d["current_a"] == 10.0
            # Decided on the tick after the last headroom's data (0.5 s old when sent) turned 25 s old.
            waited = ts_seconds(d["ts"]) - r.last_headroom_at
            assert 25.0 - 0.5 <= waited <= 25.0 - 0.5 + 1.0 + 1.5

    asyncio.run(asyncio.wait_for(main(), 120))


def plan(now: datetime) -> Plan:
    """Charger a: 16 A from 23:00 to 00:00 only; departure 07:00."""
    c = Charger("a", max_a=32, phases=3, network="TN")
    start = now.replace(hour=23, minute=0)
    slot = SlotPlan(start, start + timedelta(hours=1), 16.0, 11.0, 0.5, 0.3)
    cp = ChargerPlan(c, now.replace(hour=7) + timedelta(days=1), 11.0, (slot,), True)
    return Plan(now, "cheapest", "NO1", (cp,), now + timedelta(days=1))


def test_eco_plan_gives_zero_outside_its_slots_and_charge_now_overrides_until_the_car_leaves(
        mosquitto: Mosquitto) -> None:
    async def main() -> None:
        async with rig(mosquitto) as r:
            await r.entitle("valid", ["eco", "fuse_protection"])
            await r.charger("charging")
            await r.until(lambda d: d["mode"] == "protect" and d["current_a"] == 20.0)
            p = plan(T0)
            await r.send(T.eco_plan, p.to_dict(), retain=True)
            d = await r.until(lambda d: d["current_a"] == 0.0)
            assert "eco plan" in d["reason"]
            # "Charge now": the plan is lifted for this charger; the fuse still caps it.
            await r.send(T.eco_plan, {**p.to_dict(), "charge_now": ["a"]}, retain=True)
            await r.until(lambda d: d["current_a"] == 20.0)
            # The car leaves: the override ends with it; the plan applies to the next car.
            await r.charger("disconnected")
            await r.until(lambda d: d["current_a"] == 0.0)
            await r.settle(lambda: not r.service.eco.overrides)
            await r.send(T.eco_plan, p.to_dict(), retain=True)
            await r.settle(lambda: r.service.eco.plan is not None and not r.service.eco.overrides)
            await r.charger("charging")
            await r.settle(lambda: r.service.states["a"].mode == "charging")
            n = len(r.setpoints)
            await r.settle(lambda: len(r.setpoints) >= n + 2)  # two decisions since, not a time slot
            assert all(d["current_a"] == 0.0 for d in r.setpoints[n:])
            # In the planned slot: the plan's current (the fuse would allow more).
            # (The jump makes the last headroom stale: the fixed current at first, then the headroom.)
            r.clock.anchor(T0.replace(hour=23, minute=10))
            n = len(r.setpoints)
            await r.until(lambda d: d["mode"] == "protect" and d["current_a"] == 16.0)
            await asyncio.sleep(0.5)
            assert 0 < max(d["current_a"] for d in r.setpoints[n:]) <= 16.0  # the plan's cap, not the 20 A
            # Without a valid subscription there is no Smart eco: the car charges at once (fixed current).
            await r.entitle("expired", [])
            r.clock.anchor(T0.replace(hour=23, minute=50) + timedelta(hours=1))
            d = await r.until(lambda d: d["mode"] == "fixed" and d["current_a"] == 10.0)
            # An empty retained plan clears it.
            await r.send(T.eco_plan, b"", retain=True)
            await r.settle(lambda: r.service.eco.plan is None)

    asyncio.run(asyncio.wait_for(main(), 120))
