"""The Smart eco service over a real mosquitto: requests in, a joint retained plan out, shown by the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from apm.core.eco.planner import Charger, Plan
from apm.core.eco.prices import sample_week
from apm.core.eco.schedule import EcoSchedule
from apm.io.mqtt.link import MqttLink
from apm.io.mqtt.topics import Topics
from apm.services.eco import EcoPlanner, EcoService, RequestError, fetch_plan, request_topic
from tests.mqtt_broker import Mosquitto

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
SERIAL = "APMECO01"
T = Topics(SERIAL)
NOW = datetime.fromisoformat("2026-01-12T17:00:00+01:00")
CHARGERS = {c.id: c for c in (Charger("a", 16, 3, "TN"), Charger("b", 16, 3, "TN"))}
DEPART = "2026-01-13T07:30:00+01:00"


def _planner(budget_a: float | None = None) -> EcoPlanner:
    week = sample_week()
    return EcoPlanner(CHARGERS, lambda _now: week, budget_a=budget_a)


def test_planner_keeps_the_capacity_guards_step() -> None:
    """One goal: the planner caps each hour where the device's guard does (its month so far included)."""
    from apm.core.capacity_guard import CapacityGuard
    from apm.core.config import ChargerConfig
    from apm.core.eco.capacity import CapacityGoal, MonthLog, hour_cap_kwh

    goal = CapacityGoal(5.0, margin_kwh=0.05)
    log = MonthLog(2026, 1).with_hour(datetime.fromisoformat("2026-01-05T17:00:00+01:00"), 6.0)
    guard = CapacityGuard(goal, "TN", [ChargerConfig(id="a", phases=3), ChargerConfig(id="b", phases=3)], log=log)
    week = sample_week()
    p = EcoPlanner(CHARGERS, lambda _now: week, guard=guard)
    d = p.handle({"charger": "a", "departure": DEPART, "energy_kwh": 20}, NOW)
    assert d is not None
    cap = hour_cap_kwh(goal, log, NOW) - goal.margin_kwh
    assert cap < 5.0 - 0.05  # January's 6 kWh peak leaves less than the step's bound
    assert d.plan().capacity_cap_kw == pytest.approx(cap)
    assert _planner().handle({"charger": "a", "departure": DEPART, "energy_kwh": 20}, NOW).plan().capacity_cap_kw is None


def test_planner_plans_jointly_and_rejects_bad_requests() -> None:
    p = _planner(budget_a=20)
    p.handle({"charger": "a", "departure": DEPART, "energy_kwh": 20}, NOW)
    d = p.handle({"charger": "b", "departure": DEPART, "hours": 2, "charge_now": True}, NOW)
    assert d is not None
    plan = d.plan()
    assert set(plan.charger_ids) == {"a", "b"} and plan.feasible
    assert plan.charger("b").energy_kwh == pytest.approx(2 * CHARGERS["b"].max_kw)
    assert d.charge_now == ["b"] and d.expected_cost_nok == pytest.approx(plan.cost_nok, abs=1e-3)
    # the joint plan keeps the shared 20 A budget in every slot
    slots: dict[Any, float] = {}
    for c in plan.chargers:
        for s in c.slots:
            slots[s.start] = slots.get(s.start, 0.0) + s.current_a
    assert max(slots.values()) <= 20 + 1e-6
    for bad, field in (({"charger": "x", "departure": DEPART, "energy_kwh": 1}, "charger"),
                       ({"charger": "a", "departure": "soon", "energy_kwh": 1}, "departure"),
                       ({"charger": "a", "departure": DEPART, "energy_kwh": -1}, "energy_kwh"),
                       ({"charger": "a", "departure": DEPART}, "exactly one"),
                       ({"charger": "a", "departure": "2026-01-12T16:00:00+01:00", "hours": 1}, "not after now")):
        with pytest.raises(RequestError, match=field):
            p.handle(bad, NOW)
    assert p.handle({"charger": "a", "clear": True}, NOW) is not None
    assert p.handle({"charger": "b", "clear": True}, NOW) is None


async def _until_listening(user: aiomqtt.Client, service: EcoService, within_s: float = 20) -> None:
    """Publish a bad request until the service has logged one: from then on it receives what we send."""
    probe = json.dumps({"charger": "probe-before-requests"}).encode()
    deadline = asyncio.get_running_loop().time() + within_s
    while not any("probe-before-requests" in e for e in service.errors):
        assert asyncio.get_running_loop().time() < deadline, "the service never received a request"
        await user.publish(request_topic(T), probe, qos=1)
        await asyncio.sleep(0.05)  # between probes; the loop ends on the service's reaction


async def _until_plan(url: str, want: Callable[[dict[str, Any] | None], bool], what: str,
                      within_s: float = 20) -> dict[str, Any] | None:
    """The retained plan once ``want`` holds for it: by a deadline, not by a count of fetches."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        plan = await fetch_plan(url, SERIAL, 0.5)
        if want(plan):
            return plan
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(what)
        await asyncio.sleep(0.05)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apm", "eco", "plan", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_service_publishes_a_retained_plan_the_balancer_and_cli_read(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        link = MqttLink(mosquitto.url, client_id="eco-service-test")
        async with link:
            service = EcoService(link, T, _planner(budget_a=23), clock=lambda: NOW)
            task = asyncio.create_task(service.run())
            assert await link.wait_connected(10)
            async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="eco-user") as user:
                await _until_listening(user, service)
                for req in ({"charger": "a", "departure": DEPART, "energy_kwh": 20},
                            {"charger": "nope", "departure": DEPART, "energy_kwh": 1},
                            {"charger": "b", "departure": DEPART, "energy_kwh": 20, "charge_now": True}):
                    await user.publish(request_topic(T), json.dumps(req).encode(), qos=1)
                plan = await _until_plan(mosquitto.url, lambda p: p is not None and len(p["chargers"]) == 2,
                                         "no plan for both chargers")
                assert plan is not None and len(plan["chargers"]) == 2
                assert any("nope" in e for e in service.errors)
                # what the balancer service does with it (apm.services.balancer._on_plan)
                schedule = EcoSchedule(Plan.from_dict(plan))
                for cid in plan.get("charge_now", ()):
                    schedule.charge_now(str(cid))
                assert schedule.plan is not None and schedule.plan.feasible
                assert schedule.allowed_current("a", NOW, 16) == 0.0  # 17:00 is dear: not planned
                assert schedule.allowed_current("b", NOW, 16) == 16  # charge now
                assert plan["expected_cost_nok"] > 0
                # the CLI shows it (a subprocess, as a user runs it)
                r = await asyncio.to_thread(_cli, "--show", "--broker", mosquitto.url, "--serial", SERIAL)
                assert r.returncode == 0, r.stderr
                assert "expected cost" in r.stdout and "CHARGE NOW" in r.stdout
                assert f"{plan['expected_cost_nok']:.2f} NOK" in r.stdout
                # clearing every request clears the retained plan
                for cid in ("a", "b"):
                    await user.publish(request_topic(T), json.dumps({"charger": cid, "clear": True}).encode(),
                                       qos=1)
                await _until_plan(mosquitto.url, lambda p: p is None, "the plan was not cleared")
            task.cancel()

    asyncio.run(asyncio.wait_for(main(), 45))


def test_service_replans_and_clears_the_plan_once_the_cars_have_left(mosquitto: Mosquitto) -> None:
    clock = [NOW]

    async def main() -> None:
        async with MqttLink(mosquitto.url, client_id="eco-service-replan") as link:
            service = EcoService(link, T, _planner(), clock=lambda: clock[0], replan_s=0.2)
            task = asyncio.create_task(service.run())
            assert await link.wait_connected(10)
            async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="eco-user2") as user:
                await _until_listening(user, service)
                await user.publish(request_topic(T), json.dumps(
                    {"charger": "a", "departure": DEPART, "energy_kwh": 10}).encode(), qos=1)
                await _until_plan(mosquitto.url, lambda p: p is not None, "no plan published")
                clock[0] = datetime.fromisoformat("2026-01-13T08:00:00+01:00")  # after the departure
                await _until_plan(mosquitto.url, lambda p: p is None, "the plan outlived the departure")
            task.cancel()

    asyncio.run(asyncio.wait_for(main(), 45))


def test_show_without_a_plan_or_broker_fails_cleanly(mosquitto: Mosquitto) -> None:
    r = _cli("--show", "--broker", mosquitto.url, "--serial", "APMNONE", "--timeout", "1")
    assert r.returncode == 1 and "no plan published on apm/APMNONE/eco/plan" in r.stderr
    r = _cli("--show", "--serial", "X")
    assert r.returncode == 2 and "--show needs --broker" in r.stderr
