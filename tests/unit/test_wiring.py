"""Installation advice from real meters' lists (shared/vectors) and the chargers' wiring."""

from __future__ import annotations

import pytest

from apm.core.config import ChargerConfig
from apm.core.wiring import MEASURED_PAIR_ROTATION, unreported_i2, wiring_advice
from han import HanReader
from han.reading import Reading
from tests.vectors import frame, records


def decoded(meter: str, meter_type: str, lst: int) -> Reading:
    for rec in records("core"):
        if rec["meter"] == meter and rec["list"] == lst and (rec.get("expected") or {}).get("meter_type") == meter_type:
            (reading,) = HanReader().feed(frame(rec))
            return reading
    raise LookupError(f"no core {meter} {meter_type} list {lst} vector")


CHARGERS = [ChargerConfig("a", 32.0, 3, ("L1", "L2", "L3")), ChargerConfig("b", 32.0, 3, ("L2", "L3", "L1")),
            ChargerConfig("c", 16.0, 1, MEASURED_PAIR_ROTATION)]


@pytest.mark.parametrize(("meter", "meter_type"), [("aidon", "6525"), ("kaifa", "MA304T3")])
def test_an_it_meter_without_i2_gets_advice_for_chargers_that_load_l2(meter: str, meter_type: str) -> None:
    r = decoded(meter, meter_type, 2)
    assert r.current_l2_a is None and unreported_i2("IT", r)
    advice = wiring_advice("IT", CHARGERS, r)
    assert [a.split(":")[0] for a in advice] == ["charger a", "charger b"]
    assert "between grid L1 and L2" in advice[0] and "between grid L2 and L3" in advice[1]
    assert all("rotation L1, L3, L2" in a and f"{meter} meter" in a for a in advice)


@pytest.mark.parametrize(("meter", "meter_type", "network"), [
    ("kaifa", "MA304H3E", "IT"),  # a 3-wire meter that reports I2 (and U2 = 0)
    ("aidon", "6534", "TN"),  # a 4-wire meter
    ("kaifa", "MA304H4", "TN"),
])
def test_no_advice_when_every_line_is_measured(meter: str, meter_type: str, network: str) -> None:
    r = decoded(meter, meter_type, 2)
    assert r.current_l2_a is not None
    assert wiring_advice(network, CHARGERS, r) == ()  # type: ignore[arg-type]


def test_list_1_says_nothing_about_the_lines() -> None:
    r = Reading(meter="aidon", list=1, active_import_w=1000.0)
    assert wiring_advice("IT", CHARGERS, r) == ()
