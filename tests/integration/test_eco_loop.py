"""Smart eco in the closed loop: cheaper than charging at once, every departure kept, no trips."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from sim.closed_loop import ScenarioError
from sim.eco_loop import compare, from_dict

WEEK = Path(__file__).resolve().parents[2] / "sim" / "scenarios" / "eco-week-tn.toml"
DURATION_S = 129_600  # Mon 00:00 .. Tue 12:00: the Monday-morning and the Monday-evening sessions


def _short() -> dict[str, Any]:
    data = tomllib.loads(WEEK.read_text(encoding="utf-8"))
    data["duration_s"] = DURATION_S
    data["ev"] = [e for e in data["ev"] if e["depart_s"] <= DURATION_S]
    return data


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    sc, sessions = from_dict(_short(), name="eco-1.5-days")
    assert len(sessions) == 4
    return compare(sc, sessions)


@pytest.mark.timeout(120)
def test_eco_costs_less_than_charging_at_once(result: dict[str, Any]) -> None:
    eco, now = result["eco"], result["at_once"]
    assert eco["cost_total_nok"] < now["cost_total_nok"]
    # the same energy was bought, so the saving is when, not how much
    assert eco["energy_priced_kwh"] == pytest.approx(now["energy_priced_kwh"], abs=0.5)
    assert eco["plans"] > 0 and not eco["plan_errors"]


@pytest.mark.timeout(120)
def test_eco_meets_every_departure_charging_at_once_meets(result: dict[str, Any]) -> None:
    eco, now = result["eco"]["ev_cost"], result["at_once"]["ev_cost"]
    assert any(e["met"] for e in now.values())
    for ev, e in now.items():
        if e["met"]:
            assert eco[ev]["met"], f"{ev}: {eco[ev]['energy_kwh']} of {eco[ev]['need_kwh']} kWh"


@pytest.mark.timeout(120)
def test_eco_has_no_trips(result: dict[str, Any]) -> None:
    assert result["eco"]["trips"] == 0
    assert result["at_once"]["trips"] == 0


def test_energy_kwh_key_sets_the_need_and_is_checked() -> None:
    data = _short()
    data["ev"][0]["energy_kwh"] = 12.5
    _, sessions = from_dict(data)
    assert sessions[0].need_kwh == 12.5
    # the others from the battery: (0.8 - 0.5) * 60 kWh / 0.9
    assert sessions[1].need_kwh == pytest.approx(20.0)
    data["ev"][0]["energy_kwh"] = -1
    with pytest.raises(ScenarioError, match=r"ev\[0\]\.energy_kwh"):
        from_dict(data)
