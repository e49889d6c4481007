"""The commuter week over the bundled prices: Smart eco against charging at once."""

from __future__ import annotations

import pytest

from apm.core.eco.savings import commuter_week, report


def test_commuter_week_figures() -> None:
    # Arrive 17:00, leave 07:30, 20 kWh a night, 16 A 3-phase TN; six nights fit in the bundled week.
    out = {o.name: o for o in commuter_week()}
    at_once = out["at once"]
    spot_only = out["smart, spot only (as Zaptec)"]
    smart = out["smart, spot + grid energy"]
    capped = out["smart, + capacity step"]
    for o in out.values():
        assert o.energy_kwh == pytest.approx(6 * 20.0)
        assert o.nights_short == 0
    assert smart.energy_nok < 0.6 * at_once.energy_nok  # evenings are the week's dearest hours
    assert smart.energy_nok <= spot_only.energy_nok + 1e-9  # planning on the full price cannot lose
    # Charging at 17:00 on top of the evening load lifts the capacity step; the capped plan keeps the
    # house in the step it has without the car, at a small energy cost.
    assert at_once.capacity_nok_per_month > smart.capacity_nok_per_month > capped.capacity_nok_per_month
    assert capped.capacity_kw <= 5.0 + 1e-6
    assert smart.energy_nok < capped.energy_nok < at_once.energy_nok
    print()
    print(report(list(out.values())))
