"""The device's capacity-charge guard (apm.core.capacity_guard) through the one Controller: hour and month
boundaries, a restart mid-hour, Kamstrup (no list 1), list 3 correcting the integral, a household alone
above the step, the month kept across a restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from apm.core.capacity_guard import CapacityGuard, month_doc, month_from_doc
from apm.core.charger_state import ChargerState
from apm.core.config import ChargerConfig, GridConfig
from apm.core.controller import Controller
from apm.core.eco.capacity import CapacityGoal, MonthLog
from apm.core.meter_state import HourlyEnergy
from han import Reading

GOAL = CapacityGoal(5.0, margin_kwh=0.05)
T0 = datetime(2026, 1, 14, 9, 0, tzinfo=UTC)  # 10:00 in Oslo
CHARGERS = (ChargerConfig(id="garage", max_a=32, phases=3, rotation=("L1", "L2", "L3")),
            ChargerConfig(id="carport", max_a=32, phases=1, rotation=("L2", "L3", "L1")))


def controller(log: MonthLog | None = None) -> Controller:
    c = Controller(GridConfig(network="TN", fuse_a=25, safety_margin_a=2), CHARGERS)
    c.set_capacity(CapacityGuard(GOAL, "TN", CHARGERS, log=log))
    return c


def charging(cid: str, amps: float, phases: int, at: float) -> ChargerState:
    currents = (amps, amps, amps) if phases == 3 else (amps, 0.0, 0.0)
    return ChargerState(cid, "charging", currents, phases, 32.0, at)


def list2(import_w: float, meter: str = "aidon") -> Reading:
    return Reading(meter=meter, list=2, active_import_w=import_w, current_l1_a=import_w / 690,
                   current_l2_a=import_w / 690, current_l3_a=import_w / 690, voltage_l1_v=230.0,
                   voltage_l2_v=230.0, voltage_l3_v=230.0)


def step(c: Controller, t: datetime, import_w: float, *states: ChargerState, lst: int = 1) -> dict[str, float]:
    """One list at ``t`` (clock seconds = POSIX time, as on the device), charger reports, one decision."""
    now = t.timestamp()
    c.on_reading(now, Reading(meter="aidon", list=1, active_import_w=import_w) if lst == 1 else list2(import_w))
    c.on_charger_states(now, states)
    return c.decide(now, t).as_dict()


def test_the_guard_lowers_charging_to_keep_the_hour_in_the_step() -> None:
    c = controller()
    # household 2 kW + a 1-phase car at 16 A (3.7 kW): at that pace the hour would reach 5.7 kWh
    car = charging("carport", 16.0, 1, T0.timestamp())
    for k in range(0, 60, 2):
        step(c, T0 + timedelta(seconds=k), 2000 + 3680, car)
    caps = c.capacity.last.caps
    assert 6.0 <= caps["carport"] < 16.0  # lowered, not paused
    # what is left of 5 kWh less the margin, spread over the rest of the hour, less the household
    adv = c.capacity.last.advice
    assert adv.projected_kwh(adv.chargers_kw) == pytest.approx(5.0 - 0.05, abs=1e-6)
    sp = {s.charger: s for s in c.last.setpoints}["carport"]
    assert 0 < sp.current_a <= caps["carport"]  # the balancer holds it at the guard's cap (no subscription:
    assert sp.reason.startswith("capacity guard")  # the fixed current, 23 A, would allow more)


def test_hour_boundary_closes_the_hour_into_the_month_and_list3_replaces_it() -> None:
    c = controller()
    for k in range(0, 3601 + 10, 10):
        step(c, T0 + timedelta(seconds=k), 3000.0)
    g = c.capacity
    assert g.log.hours == ((T0, pytest.approx(3.0, abs=0.01)),)
    assert g.meter.hour == T0 + timedelta(hours=1)
    # the meter's own figure (list 3's counters) wins, and a later integral does not overwrite it
    g.on_hourly(HourlyEnergy("2026-01-14T10:00:00+01:00", "2026-01-14T11:00:00+01:00", 1, 3200.0, 0.0))
    assert g.log.hours == ((T0, 3.2),)
    # a meter clock without offset is local time; a record over missed hours is left out
    g.on_hourly(HourlyEnergy("2026-01-14T09:00:00", "2026-01-14T10:00:00", 1, 1500.0, 0.0))
    g.on_hourly(HourlyEnergy("2026-01-14T06:00:00", "2026-01-14T09:00:00", 3, 9000.0, 0.0))
    assert g.log.hours == ((T0 - timedelta(hours=1), 1.5), (T0, 3.2))


def test_restart_mid_hour_counts_the_hour_so_far_at_the_first_power_seen() -> None:
    c = controller()
    t = T0 + timedelta(minutes=30)
    step(c, t, 4000.0)
    assert c.capacity.meter.used_kwh(t) == pytest.approx(2.0)  # half an hour at 4 kW
    st = c.capacity.status(t)
    assert st.hour_left_kwh == pytest.approx(5.0 - 2.0)


def test_kamstrup_without_list1_is_guarded_from_list2() -> None:
    c = controller()
    car = charging("garage", 16.0, 3, T0.timestamp())
    for k in range(0, 1200, 10):  # list 2 every 10 s only
        step(c, T0 + timedelta(seconds=k), 2000 + 11040, car, lst=2)
    assert c.capacity.meter.used_kwh(T0 + timedelta(seconds=1190)) == pytest.approx(13.04 * 1190 / 3600, rel=1e-3)
    assert c.capacity.last.caps["garage"] < 16.0


def test_month_boundary_starts_a_new_month() -> None:
    end = datetime(2026, 1, 31, 22, 0, tzinfo=UTC)  # 23:00 on 31 January in Oslo
    log = MonthLog(2026, 1, ((datetime(2026, 1, 5, 17, tzinfo=UTC), 4.9), (datetime(2026, 1, 6, 17, tzinfo=UTC), 4.9),
                             (datetime(2026, 1, 7, 17, tzinfo=UTC), 4.9)))
    c = controller(log)
    for k in range(0, 3600 + 60, 30):
        step(c, end + timedelta(seconds=k), 1000.0)
    g = c.capacity
    assert len(g.log.hours) == 4  # January's last hour closed into January
    st = g.status(end + timedelta(hours=1, seconds=30))
    assert st.month == "2026-02" and st.peaks == () and st.figure_kw == 0.0  # a new month: no peaks yet
    assert st.hour_cap_kwh == pytest.approx(5.0, abs=1e-6)  # the step's bound again, not January's room
    for k in range(3600 + 60, 7200 + 60, 30):
        step(c, end + timedelta(seconds=k), 2000.0)
    assert (g.log.year, g.log.month) == (2026, 2) and len(g.log.hours) == 1  # February's first hour


def test_a_household_alone_above_the_step_pauses_the_chargers_and_nothing_else() -> None:
    c = controller()
    car = charging("garage", 10.0, 3, T0.timestamp())
    small = charging("carport", 10.0, 1, T0.timestamp())
    for k in range(0, 120, 2):
        sp = step(c, T0 + timedelta(seconds=k), 6500 + 6900 + 2300, car, small)
    assert c.capacity.last.caps == {"garage": 0.0, "carport": 0.0}
    assert sp == {"garage": 0.0, "carport": 0.0}
    assert c.capacity.last.advice.household_kw == pytest.approx(6.5, abs=0.01)
    # the household itself is not ours to cut: the month goes above the step, the guard says so
    st = c.capacity.status(T0 + timedelta(seconds=120))
    assert st.hour_left_kwh == pytest.approx(5.0 - st.hour_used_kwh)


def test_without_the_wall_clock_there_are_no_guard_caps() -> None:
    c = controller()
    c.on_reading(0.0, Reading(meter="aidon", list=1, active_import_w=20000.0))
    c.on_charger_states(0.0, [charging("garage", 16.0, 3, 0.0)])
    c.decide(0.0)
    assert c.capacity.last is None


def test_the_month_survives_a_restart_as_its_daily_peaks() -> None:
    tz_day = datetime(2026, 1, 3, 16, tzinfo=UTC)
    log = MonthLog(2026, 1).with_hour(tz_day, 3.1).with_hour(tz_day + timedelta(hours=1), 4.2) \
        .with_hour(tz_day + timedelta(days=1), 2.0)
    doc = month_doc(log)
    assert doc == {"month": "2026-01", "peaks": [["2026-01-03T17:00Z", 4.2], ["2026-01-04T16:00Z", 2.0]]}
    back = month_from_doc(doc, GOAL)
    assert back.daily_peaks() == log.daily_peaks() and back.figure_kw(3) == log.figure_kw(3)
    with pytest.raises(ValueError):
        month_from_doc({"month": "2026-02", "peaks": [["2026-01-03T17:00Z", 4.2]]}, GOAL)
    with pytest.raises(TypeError):
        month_from_doc({"month": "2026-01", "peaks": [["2026-01-03T17:00Z", "4.2"]]}, GOAL)
