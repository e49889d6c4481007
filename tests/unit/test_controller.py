"""The one Controller: readings and charger states in, headroom, setpoints and records out (sans-IO)."""

from __future__ import annotations

from datetime import datetime, timedelta

from apm.core.balancer import BalancerSettings
from apm.core.charger_state import ChargerState
from apm.core.config import ChargerConfig, GridConfig
from apm.core.controller import Controller
from apm.core.eco.planner import Charger, ChargerPlan, Plan, SlotPlan
from apm.core.eco.schedule import EcoSchedule
from apm.core.subscription import State, SubscriptionState
from han.reading import Reading

GRID = GridConfig(network="TN", fuse_a=25.0, safety_margin_a=2.0)
CHARGERS = (ChargerConfig("a", max_a=32.0, phases=3),)
ID = "7359992890000000"


def list2(i: float, w: float = 0.0) -> Reading:
    return Reading(meter="aidon", list=2, meter_id=ID, phases=3, active_import_w=w, active_export_w=0.0,
                   current_l1_a=i, current_l2_a=i, current_l3_a=i,
                   voltage_l1_v=230.0, voltage_l2_v=230.0, voltage_l3_v=230.0)


def list3(clock: str, wh: float) -> Reading:
    return Reading(meter="aidon", list=3, meter_id=ID, phases=3, meter_time=clock, active_import_w=1000.0,
                   current_l1_a=4.0, current_l2_a=4.0, current_l3_a=4.0, active_import_wh=wh,
                   active_export_wh=0.0)


def connected(at: float) -> ChargerState:
    return ChargerState("a", "connected", at=at)


def controller(**settings: float) -> Controller:
    c = Controller(GRID, CHARGERS, settings=BalancerSettings(fixed_current_a=10.0, **settings))
    c.set_subscription(SubscriptionState(State.VALID, "test"))
    return c


def test_readings_give_the_headroom_and_the_setpoints_follow_it() -> None:
    c = controller()
    assert c.on_charger_states(0.0, [connected(0.0)]) is None  # no per-phase list yet
    d = c.decide(0.0)
    assert d.mode == "fixed: no meter data" and d.as_dict() == {"a": 10.0}
    out = c.on_reading(1.0, list2(5.0))
    assert out.headroom is not None and out.headroom.available_a == (18.0, 18.0, 18.0)
    assert out.han_back == "no data" and out.new_meter
    d = c.decide(2.0)
    assert d.mode == "protect" and d.as_dict() == {"a": 10.0}  # an increase waits min_interval_s
    assert not d.setpoints[0].changed and d.headroom is out.headroom
    d = c.decide(6.0)
    assert d.as_dict() == {"a": 16.0} and d.setpoints[0].changed  # by at most max_step_up_a


def test_without_a_subscription_the_chargers_share_the_fixed_current() -> None:
    c = controller()
    c.set_subscription(None)
    c.on_charger_states(0.0, [connected(0.0)])
    c.on_reading(0.0, list2(5.0))
    d = c.decide(1.0)
    assert d.mode == "fixed" and d.as_dict() == {"a": 10.0}
    c.set_subscription(SubscriptionState(State.EXPIRED, "over"))
    assert c.decide(2.0).mode == "fixed"


def test_tick_turns_stale_data_into_the_fixed_fallback_and_counts_its_time() -> None:
    c = controller(stale_after_s=25.0)
    c.on_charger_states(0.0, [connected(0.0)])
    c.on_reading(0.0, list2(5.0))
    assert c.decide(1.0).mode == "protect"
    assert not c.tick(20.0).went_stale and c.han_fresh(20.0)
    t = c.tick(30.0)
    assert t.went_stale and t.silent_s == 30.0 and c.han_state == "stale"
    assert not c.tick(31.0).went_stale  # said once
    d = c.decide(30.0)
    assert d.mode.startswith("fixed: stale meter data") and d.as_dict() == {"a": 10.0}
    c.decide(40.0)
    assert c.status().stale_s == 10.0
    assert c.on_reading(41.0, list2(5.0)).han_back == "stale"


def test_hourly_records_come_out_of_the_list_3s() -> None:
    c = controller()
    assert c.on_reading(10.0, list3("2025-01-15T10:00:00+01:00", 1000.0)).hourly is None  # the baseline
    rec = c.on_reading(3610.0, list3("2025-01-15T11:00:00+01:00", 3000.0)).hourly
    assert rec is not None and rec.import_wh == 2000.0 and rec.hours == 1
    assert c.status().hourly_records == 1


def test_the_eco_plan_caps_a_charger_until_a_charge_now_and_the_car_leaving_ends_that() -> None:
    c = controller()
    c.on_charger_states(0.0, [connected(0.0)])
    c.on_reading(0.0, list2(5.0))
    t0 = datetime.fromisoformat("2026-01-12T22:00:00+01:00")
    charger = Charger("a", max_a=32.0, phases=3, network="TN")
    slot = SlotPlan(t0 + timedelta(hours=1), t0 + timedelta(hours=2), 16.0, 11.0, 0.5, 0.3)
    plan = Plan(t0, "cheapest", "NO1", (ChargerPlan(charger, t0 + timedelta(hours=9), 11.0, (slot,), True),),
                t0 + timedelta(days=1))
    c.set_eco(EcoSchedule(plan))
    assert c.eco_caps(t0) == {"a": 0.0}
    assert c.decide(1.0, t0).as_dict() == {"a": 0.0}  # outside its slot
    assert c.eco_caps(t0 + timedelta(hours=1, minutes=30)) == {"a": 16.0}
    c.eco.charge_now("a")
    assert c.eco_caps(t0) == {"a": 32.0}
    c.on_charger_states(2.0, [ChargerState("a", "disconnected", at=2.0)])
    assert c.eco.overrides == set()
