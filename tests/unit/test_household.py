"""The simulated household: reproducible, plausible for a Norwegian winter day, IT vs TN, traces."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.household import (
    DAY,
    SyntheticHome,
    TraceHome,
    WinterDay,
    it_pair_currents,
    make_household,
    slot_lines,
)


def day_profile(home: SyntheticHome, step: int = 10) -> tuple[list[float], float]:
    hourly = [0.0] * 24
    peak = 0.0
    for t in range(0, int(DAY), step):
        s = home.sample(float(t))
        hourly[t // 3600] += s.power_w * step / 3.6e6
        peak = max(peak, *s.lines)
    return hourly, peak


def test_same_seed_same_day_other_seed_other_day() -> None:
    a = [SyntheticHome("IT", seed=3).sample(float(t)) for t in range(0, 7200, 7)]
    b = [SyntheticHome("IT", seed=3).sample(float(t)) for t in range(0, 7200, 7)]
    c = [SyntheticHome("IT", seed=4).sample(float(t)) for t in range(0, 7200, 7)]
    assert a == b
    assert a != c


def test_winter_day_energy_and_shape_are_plausible() -> None:
    home = SyntheticHome("TN", seed=2, weather=WinterDay(mean_c=-10.0))
    hourly, peak = day_profile(home)
    total = sum(hourly)
    assert 60.0 < total < 130.0  # a cold day for a ~17 MWh/year electrically heated home
    assert 5.0 < peak < 40.0
    # morning (heaters back from the night setback, showers) and evening peaks above the afternoon
    assert hourly[6] + hourly[7] > hourly[13] + hourly[14]
    assert max(hourly[17:22]) > hourly[14]
    # colder means more
    mild, _ = day_profile(SyntheticHome("TN", seed=2, weather=WinterDay(mean_c=5.0)))
    assert sum(mild) < total - 15.0


def test_single_phase_loads_on_it_sit_between_two_lines_and_on_tn_on_one() -> None:
    it = slot_lines("IT", (2300.0, 0.0, 0.0, 0.0))  # L1-L2
    tn = slot_lines("TN", (2300.0, 0.0, 0.0, 0.0))  # L1-N
    assert it == pytest.approx((10.0, 10.0, 0.0))
    assert tn == pytest.approx((10.0, 0.0, 0.0))
    assert slot_lines("IT", (0.0, 0.0, 2300.0, 0.0)) == pytest.approx((10.0, 0.0, 10.0))  # L3-L1
    three = slot_lines("TN", (0.0, 0.0, 0.0, 6900.0))
    assert three == pytest.approx((10.0, 10.0, 10.0))
    # the household's samples follow the same rule: each slot's power shows on its lines
    s = SyntheticHome("IT", seed=5).sample(64800.0)
    assert s.slots_w is not None and s.slots_var is not None
    assert s.lines == pytest.approx(slot_lines("IT", s.slots_w, slots_var=s.slots_var))
    assert s.power_w == pytest.approx(sum(s.slots_w))
    assert s.reactive_var == pytest.approx(sum(s.slots_var))
    # reactive loads add to the current: never less than the resistive part alone
    assert all(x >= y - 1e-9 for x, y in zip(s.lines, slot_lines("IT", s.slots_w), strict=True))


def test_trace_rows_hold_until_the_next(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("time_s,l1_a,l2_a,l3_a\n10,1,2,3\n20,4,5,6\n40,7,8,9\n", encoding="utf-8")
    home = TraceHome.from_csv("TN", path)
    got = {t: home.sample(float(t)).lines for t in (0, 10, 19, 20, 39, 40, 1000)}
    assert got == {0: (1, 2, 3), 10: (1, 2, 3), 19: (1, 2, 3), 20: (4, 5, 6), 39: (4, 5, 6), 40: (7, 8, 9),
                   1000: (7, 8, 9)}
    assert home.sample(1000.0).power_w == pytest.approx(230.0 * 24 * 0.95)  # DEFAULT_TRACE_PF
    it = make_household("IT", trace=path)
    # IT: the pair loads that make 4, 5, 6 A on the lines (sim.household.it_pair_currents)
    assert it.sample(25.0).lines == pytest.approx((4.0, 5.0, 6.0))
    assert it.sample(25.0).power_w == pytest.approx(230.0 * 0.95 * sum(it_pair_currents(4.0, 5.0, 6.0)[0]))


def test_bad_traces_are_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("t,a,b,c\n0,1,2,3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header"):
        TraceHome.from_csv("TN", bad)
    bad.write_text("time_s,l1_a,l2_a,l3_a\n0,1,x,3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=":2:"):
        TraceHome.from_csv("TN", bad)
    with pytest.raises(ValueError, match="decrease"):
        TraceHome("TN", [0.0, 5.0, 4.0], [(0.0, 0.0, 0.0)] * 3)
    with pytest.raises(ValueError, match="not known"):
        make_household("TN", model="summer")
