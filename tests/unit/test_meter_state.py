"""MeterState: what each list updates, ages, hourly energy, and the repeated hourly list."""

from __future__ import annotations

import json

import pytest

from apm.core.meter_state import Baseline, HourlyEnergy, MeterState
from han.reading import Reading

ID = "7359992890000000"


def list1(w: float) -> Reading:
    return Reading(meter="aidon", list=1, active_import_w=w)


def list2(w: float, i1: float, i2: float | None, i3: float) -> Reading:
    return Reading(meter="aidon", list=2, meter_id=ID, phases=3, active_import_w=w, active_export_w=0.0,
                   current_l1_a=i1, current_l2_a=i2, current_l3_a=i3,
                   voltage_l1_v=230.1, voltage_l2_v=229.8, voltage_l3_v=231.0)


def list3(clock: str, wh: float, export_wh: float = 0.0, w: float = 1000.0, meter_id: str = ID) -> Reading:
    return Reading(meter="aidon", list=3, meter_id=meter_id, phases=3, meter_time=clock, active_import_w=w,
                   current_l1_a=4.0, current_l2_a=None, current_l3_a=3.0,
                   active_import_wh=wh, active_export_wh=export_wh)


def test_list1_updates_power_only_and_ages_grow() -> None:
    s = MeterState()
    assert s.update(0.0, list2(2300.0, 10.0, None, 5.0)) is None
    assert s.update(2.5, list1(4600.0)) is None
    assert s.value("active_import_w") == 4600.0
    assert s.age("active_import_w", 3.0) == pytest.approx(0.5)
    assert s.value("current_l1_a") == 10.0  # untouched by list 1
    assert s.age("current_l1_a", 3.0) == pytest.approx(3.0)
    assert s.phase_at == 0.0 and s.phase_reading is not None
    assert s.phase_reading.active_import_w == 2300.0  # power measured with the currents
    assert s.counts == {1: 1, 2: 1, 3: 0}


def test_missing_quantity_is_not_zero_and_keeps_older_value() -> None:
    s = MeterState()
    s.update(0.0, list2(2300.0, 10.0, None, 5.0))
    assert s.value("current_l2_a") is None  # IT meter: never reported
    assert s.age("current_l2_a", 5.0) is None
    s.update(10.0, Reading(meter="aidon", list=2, current_l1_a=11.0, current_l3_a=None))
    assert s.value("current_l3_a") == 5.0
    assert s.age("current_l3_a", 10.0) == 10.0
    snap = s.snapshot(12.0)
    assert snap["current_l1_a"] == {"value": 11.0, "age_s": 2.0}
    assert "current_l2_a" not in snap


def test_counters_only_from_list3_and_hourly_record() -> None:
    s = MeterState()
    assert s.update(5.0, list3("2025-01-15T10:00:05+01:00", 1_000_000.0)) is None  # baseline
    assert s.value("active_import_wh") == 1_000_000.0
    s.update(10.0, list2(1000.0, 4.0, None, 3.0))
    rec = s.update(3605.0, list3("2025-01-15T11:00:05+01:00", 1_003_250.0, 10.0))
    assert rec == HourlyEnergy("2025-01-15T10:00:00+01:00", "2025-01-15T11:00:00+01:00", 1, 3250.0, 10.0, ID)


def test_repeated_hourly_list_is_not_counted_twice() -> None:
    s = MeterState()
    s.update(0.0, list3("2025-01-15T10:00:00+01:00", 1_000_000.0))
    first = list3("2025-01-15T11:00:00+01:00", 1_002_000.0)
    assert s.update(3600.0, first) is not None
    current_at = s.phase_at
    assert s.update(3602.0, first) is None  # Aidon sends the same hourly list again
    assert s.repeats == 1
    assert s.counts[3] == 2
    assert s.phase_at == current_at  # a stale copy does not make the data look fresh
    rec = s.update(7200.0, list3("2025-01-15T12:00:00+01:00", 1_003_500.0))
    assert rec is not None and rec.import_wh == 1500.0 and rec.hours == 1


def test_same_counters_an_hour_later_is_a_real_hour_with_zero_energy() -> None:
    s = MeterState()
    s.update(0.0, list3("2025-01-15T10:00:00+01:00", 5000.0))
    rec = s.update(3600.0, list3("2025-01-15T11:00:00+01:00", 5000.0))
    assert rec is not None and rec.import_wh == 0.0
    assert s.repeats == 0


def test_missed_hours_and_counter_reset() -> None:
    s = MeterState()
    s.update(0.0, list3("2025-01-15T10:00:02+01:00", 5000.0))
    rec = s.update(10800.0, list3("2025-01-15T13:00:02+01:00", 11000.0))
    assert rec is not None and rec.hours == 3 and rec.import_wh == 6000.0
    assert s.update(14400.0, list3("2025-01-15T14:00:02+01:00", 10.0)) is None  # counters reset
    rec = s.update(18000.0, list3("2025-01-15T15:00:02+01:00", 110.0))
    assert rec is not None and rec.import_wh == 100.0


def test_another_meter_starts_afresh() -> None:
    s = MeterState()
    s.update(0.0, list3("2025-01-15T10:00:00+01:00", 5000.0))
    assert s.update(3600.0, list3("2025-01-15T11:00:00+01:00", 9000.0, meter_id="OTHER")) is None
    rec = s.update(7200.0, list3("2025-01-15T12:00:00+01:00", 9100.0, meter_id="OTHER"))
    assert rec is not None and rec.import_wh == 100.0 and rec.meter_id == "OTHER"


def test_restore_baseline_continues_across_a_restart() -> None:
    s = MeterState()
    s.update(0.0, list3("2025-01-15T10:00:00+01:00", 5000.0))
    kept = s.baseline
    assert kept is not None and (kept.meter_time, kept.import_wh, kept.export_wh) == (
        "2025-01-15T10:00:00+01:00", 5000.0, 0.0)
    stored = Baseline.from_dict(json.loads(json.dumps(kept.to_dict())))  # what the flash image keeps
    fresh = MeterState()
    fresh.restore_baseline(stored)
    rec = fresh.update(10.0, list3("2025-01-15T11:00:00+01:00", 5400.0))
    assert rec is not None and rec.import_wh == 400.0
    # the restored list counts as seen: its repeat is dropped too
    again = MeterState()
    again.restore_baseline(stored)
    assert again.update(1.0, list3("2025-01-15T10:00:00+01:00", 5000.0)) is None
    assert again.repeats == 1


def test_the_baseline_changes_by_identity_once_an_hour_and_names_its_meter() -> None:
    s = MeterState()
    s.update(0.0, list3("2025-01-15T10:00:00+01:00", 5000.0, meter_id="A"))
    first = s.baseline
    s.update(1.0, list3("2025-01-15T10:00:00+01:00", 5000.0, meter_id="A"))  # a repeat: no change
    assert s.baseline is first and first is not None and first.meter_id == "A"
    s.update(3600.0, list3("2025-01-15T11:00:00+01:00", 5400.0, meter_id="A"))
    assert s.baseline is not first
    # A baseline kept from another meter is not continued: its counters are not ours.
    other = MeterState()
    other.restore_baseline(first)
    assert other.update(5.0, list3("2025-01-15T11:00:00+01:00", 9000.0, meter_id="B")) is None
    with pytest.raises((TypeError, KeyError)):
        Baseline.from_dict({"meter_time": 5, "import_wh": 1.0})


def test_naive_meter_clock() -> None:
    s = MeterState()
    s.update(0.0, list3("2025-01-15T10:00:03", 100.0))
    rec = s.update(3600.0, list3("2025-01-15T11:00:03", 600.0))
    assert rec is not None and rec.hour_start == "2025-01-15T10:00:00"
