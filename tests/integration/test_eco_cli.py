"""`apm eco plan` and `apm eco savings` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_eco_price_api import TODAY, TOMORROW, PriceServer
from tests.local_http import serving

ROOT = Path(__file__).resolve().parents[2]
NOW = "2026-01-12T17:00+01:00"


def apm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apm", "eco", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_plan_one_car_text() -> None:
    r = apm(
        "plan",
        "--departure",
        "07:30",
        "--energy-kwh",
        "20",
        "--max-a",
        "16",
        "--phases",
        "3",
        "--network",
        "TN",
        "--now",
        NOW,
    )
    assert r.returncode == 0, r.stderr
    assert "16 A 3-phase TN (11.04 kW)" in r.stdout
    assert "Tue 13.01 02:15-02:30" in r.stdout  # the night is cheapest
    assert "Smart eco saves" in r.stdout and "feasible: yes" in r.stdout
    assert r.stderr == ""


def test_plan_json_is_cheaper_than_at_once() -> None:
    r = apm("plan", "--departure", "2026-01-13T07:30+01:00", "--energy-kwh", "20", "--now", NOW, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    plan = doc["plan"]
    assert plan["feasible"] and plan["strategy"] == "cheapest"
    assert plan["energy_kwh"] == pytest.approx(20.0)
    assert doc["at_once"]["cost_nok"] > plan["cost_nok"] > 0
    assert doc["saving_nok"] == pytest.approx(doc["at_once"]["cost_nok"] - plan["cost_nok"])
    slots = plan["chargers"][0]["slots"]
    assert all(s["end"] <= "2026-01-13T07:30:00+01:00" for s in slots)


def test_plan_two_cars_on_a_shared_budget() -> None:
    r = apm(
        "plan", "--car", "a:07:30:30:16:3", "--car", "b:2026-01-13T06:00:15:32:1",
        "--budget-a", "20", "--now", NOW, "--json", "--continuous",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    assert plan["feasible"]
    per_slot: dict[str, float] = {}
    for c in plan["chargers"]:
        for s in c["slots"]:
            per_slot[s["start"]] = per_slot.get(s["start"], 0.0) + s["current_a"]
    assert max(per_slot.values()) <= 20 + 1e-6
    assert [c["energy_kwh"] for c in plan["chargers"]] == pytest.approx([30.0, 15.0])


def test_plan_from_a_file_with_hours_and_capacity(tmp_path: Path) -> None:
    prices = tmp_path / "p.csv"
    prices.write_text(
        "time,price\n"
        + "".join(f"2026-02-02T{h:02d}:00+01:00,{p}\n" for h, p in enumerate([3, 3, 0.1, 0.2, 3, 3]))
    )
    r = apm(
        "plan", "--prices", str(prices), "--area", "NO3", "--now", "2026-02-02T00:00+01:00",
        "--departure", "06:00", "--hours", "1", "--capacity-cap-kw", "8", "--household-kw", "2", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    assert plan["area"] == "NO3"
    assert plan["capacity_excess_kwh"] == pytest.approx(0.0)
    assert [round(s["energy_kwh"], 6) for s in plan["chargers"][0]["slots"]] == [6.0, 5.04]


def test_plan_not_enough_time_warns() -> None:
    r = apm("plan", "--departure", "18:00", "--energy-kwh", "40", "--now", NOW)
    assert r.returncode == 0
    assert "NOT FEASIBLE" in r.stdout and "feasible: NO" in r.stdout
    assert "warning: car: not enough time: needs 40.00 kWh" in r.stderr


@pytest.fixture
def server() -> Iterator[PriceServer]:
    yield from serving(PriceServer())


def test_plan_from_the_price_api(server: PriceServer, tmp_path: Path) -> None:
    server.publish(TODAY)
    server.publish(TOMORROW)
    args = (
        "plan",
        "--api",
        server.url,
        "--cache",
        str(tmp_path),
        "--now",
        NOW,
        "--departure",
        "07:30",
        "--energy-kwh",
        "20",
        "--json",
    )
    first = apm(*args)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["plan"]["prices_known_until"] == "2026-01-14T00:00:00+01:00"
    assert len(server.log) == 2
    again = apm(*args)
    assert again.stdout == first.stdout
    assert len(server.log) == 2  # from the cache


def test_plan_before_13_uses_estimates(server: PriceServer, tmp_path: Path) -> None:
    server.publish(TODAY)
    r = apm(
        "plan",
        "--api",
        server.url,
        "--cache",
        str(tmp_path),
        "--now",
        "2026-01-12T09:00+01:00",
        "--departure",
        "07:30",
        "--energy-kwh",
        "20",
    )
    assert r.returncode == 0, r.stderr
    assert "estimated from the day before" in r.stdout
    assert server.log == [server.path(TODAY)]


def test_price_service_down_is_exit_1(server: PriceServer, tmp_path: Path) -> None:
    server.publish(TODAY)
    server.fail[server.path(TODAY)].extend([500] * 10)
    r = apm(
        "plan",
        "--api",
        server.url,
        "--cache",
        str(tmp_path),
        "--now",
        NOW,
        "--departure",
        "07:30",
        "--energy-kwh",
        "5",
    )
    assert r.returncode == 1
    assert "price service" in r.stderr and "HTTP 500" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--departure", "25:00", "--energy-kwh", "20", "--now", NOW], "departure '25:00' is not HH:MM"),
        (["--departure", "07:30", "--now", NOW], "give --energy-kwh or --hours"),
        (["--energy-kwh", "20", "--now", NOW], "--departure is required"),
        (["--departure", "2026-01-12T08:00+01:00", "--energy-kwh", "5", "--now", NOW], "is not after now"),
        (["--departure", "07:30", "--energy-kwh", "-1", "--now", NOW], "energy (kWh) '-1' must be >= 0"),
        (
            ["--departure", "07:30", "--energy-kwh", "5", "--phases", "2", "--now", NOW],
            "phases '2' must be 1 or 3",
        ),
        (
            ["--departure", "07:30", "--energy-kwh", "5", "--max-a", "0", "--now", NOW],
            "max current (A) '0' must be > 0",
        ),
        (["--car", "a:07:30:20", "--now", NOW], "expected id:departure:kwh:max_a:phases"),
        (["--car", "a:07:30:20:16:3", "--departure", "07:30", "--now", NOW], "not both"),
        (["--car", "a:07:30:20:16:3", "--car", "a:08:00:20:16:3", "--now", NOW], "ids must differ"),
        (
            ["--departure", "07:30", "--energy-kwh", "5", "--area", "NO2", "--now", NOW],
            "bundled sample week is NO1 only",
        ),
        (
            ["--departure", "07:30", "--energy-kwh", "5", "--now", "2026-03-01T12:00+01:00"],
            "outside the bundled sample week",
        ),
        (
            ["--departure", "07:30", "--energy-kwh", "5", "--now", "yesterday"],
            "--now 'yesterday' is not an ISO 8601 time",
        ),
        (
            ["--departure", "07:30", "--energy-kwh", "5", "--prices", "/nonexistent/p.csv", "--now", NOW],
            "/nonexistent/p.csv",
        ),
        (
            ["--departure", "07:30", "--energy-kwh", "5", "--network", "TT", "--now", NOW],
            "invalid choice: 'TT'",
        ),
    ],
)
def test_bad_input_is_a_precise_error(args: list[str], message: str) -> None:
    r = apm("plan", *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert r.stdout == ""


def test_no_action_prints_help() -> None:
    r = apm()
    assert r.returncode == 2
    assert "plan" in r.stderr and "savings" in r.stderr


def test_savings_week() -> None:
    r = apm("savings")
    assert r.returncode == 0, r.stderr
    assert "at once" in r.stdout and "smart, + capacity step" in r.stdout
