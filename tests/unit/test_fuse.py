"""The fuse judge against the published points of IEC 60898-1 breakers and IEC 60269 gG fuses."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.fuse import CURVES, FuseJudge, band, time_to_trip

IN = 25.0


def run_constant(curve: str, ratio: float, seconds: int, rating: float = IN) -> FuseJudge:
    """Cold start (a step at 0 A), then ``ratio`` x In for ``seconds`` one-second steps."""
    judge = FuseJudge(rating, curve)
    judge.step(0.0, (0.0, 0.0, 0.0))
    for t in range(1, seconds + 1):
        judge.step(float(t), (ratio * rating, 0.0, 0.0))
        if judge.trips:
            break
    return judge


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_no_trip_at_1_13_in_for_an_hour(curve: str) -> None:
    judge = run_constant(curve, 1.13, 3600)
    assert judge.trips == []
    assert time_to_trip(CURVES[curve], 1.13) == math.inf
    assert judge.seconds_above_in[0] == 3600
    assert judge.peak_ratio[0] == pytest.approx(1.13)


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_trips_within_an_hour_at_1_45_in(curve: str) -> None:
    judge = run_constant(curve, 1.45, 3600)
    assert len(judge.trips) == 1
    trip = judge.trips[0]
    assert trip.line == "L1"
    assert 0 < trip.at_s < 3600
    assert trip.at_s == pytest.approx(time_to_trip(CURVES[curve], 1.45), abs=1.0)


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_trips_within_1_to_60_s_at_2_55_in(curve: str) -> None:
    judge = run_constant(curve, 2.55, 120)
    assert len(judge.trips) == 1
    assert 1.0 <= judge.trips[0].at_s <= 60.0


def test_breakers_trip_instantly_at_their_magnetic_threshold() -> None:
    assert time_to_trip(CURVES["B"], 3.0) == 0.0
    assert time_to_trip(CURVES["C"], 5.0) == 0.0
    assert time_to_trip(CURVES["C"], 4.9) > 1.0  # thermal only below 5 In
    judge = run_constant("B", 3.2, 5)
    assert judge.trips and judge.trips[0].at_s <= 1.0


def test_short_bursts_are_tolerated_and_heat_is_remembered() -> None:
    judge = FuseJudge(IN, "C")
    judge.step(0.0, (IN, IN, IN))  # warm start at In
    for t in range(1, 11):  # 10 s at 1.4 In: fine
        judge.step(float(t), (1.4 * IN, IN, 0.5 * IN))
    assert judge.trips == []
    assert judge.seconds_above_in == [10.0, 0.0, 0.0]
    assert judge.peak_ratio[0] == pytest.approx(1.4)
    # but a warm fuse trips sooner than a cold one at the same overload
    warm = time_to_trip(CURVES["C"], 1.6, theta0=1.0)
    cold = time_to_trip(CURVES["C"], 1.6, theta0=0.0)
    assert warm < cold


def test_a_lasting_overload_counts_more_than_once_and_report_names_lines() -> None:
    judge = FuseJudge(IN, "gG")
    judge.step(0.0, (0.0, 0.0, 0.0))
    for t in range(1, 601):
        judge.step(float(t), (0.0, 2.0 * IN, 0.0))
    report = judge.report()
    assert report["trips"] >= 2
    assert {e["line"] for e in report["trip_events"]} == {"L2"}  # type: ignore[union-attr]
    assert report["max_ratio"] == {"L1": 0.0, "L2": 2.0, "L3": 0.0}
    assert report["band"]["L2"] == "trips within an hour"  # type: ignore[index]


def test_bands() -> None:
    assert band(1.0) == "safe"
    assert band(1.2) == "may trip within hours"
    assert band(1.5) == "trips within an hour"
    assert band(3.0) == "trips within 1-60 s"


@given(r1=st.floats(1.0, 6.0), r2=st.floats(1.0, 6.0), curve=st.sampled_from(sorted(CURVES)))
def test_higher_current_never_trips_later(r1: float, r2: float, curve: str) -> None:
    lo, hi = sorted((r1, r2))
    assert time_to_trip(CURVES[curve], hi) <= time_to_trip(CURVES[curve], lo)


@given(r=st.floats(0.0, 1.25), curve=st.sampled_from(sorted(CURVES)))
def test_at_or_below_the_conventional_non_tripping_current_never_trips(r: float, curve: str) -> None:
    assert time_to_trip(CURVES[curve], min(r, CURVES[curve].trip_ratio)) == math.inf
