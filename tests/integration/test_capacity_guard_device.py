"""The capacity guard inside the device, through the slow pipeline (a real pty, a real mosquitto): with
``[capacity]`` on, the device's own Controller lowers the charger to keep the hour in the step, the
setpoints say why, and the guard's month goes out retained on ``capacity``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from apm.core.config import CapacitySettings
from apm.io.mqtt.topics import Topics
from sim.closed_loop import scenario_from_dict
from sim.pipeline import SERIAL, Pipeline
from tests.mqtt_broker import Mosquitto, Observer

pytestmark = pytest.mark.timeout(90)

T = Topics(SERIAL)


def scenario() -> dict[str, Any]:
    """TN 25 A, 4 A on every line (2.8 kW), one 3-phase EV that takes 32 A; the run starts 40 minutes
    into the hour, so the guard counts those 40 minutes at 2.8 kW (1.8 kWh) and has 3.1 kWh left of a
    5 kWh step for the last 20 minutes: some 9 A for the car where the fuse alone would allow 19 A."""
    return {
        "duration_s": 120,
        "start": "2025-01-15T10:40:00+01:00",
        "grid": {"network": "TN", "fuse_a": 25, "safety_margin_a": 2},
        "meter": {"vendor": "aidon", "kind": "3p-tn"},
        "household": {"trace": "flat.csv"},
        "charger": [{"id": "a", "max_a": 32, "phases": 3}],
        "ev": [{"charger": "a", "phases": 3, "max_a": 32, "soc": 0.3}],
    }


def test_the_device_guard_lowers_the_charger_and_publishes_the_month(mosquitto: Mosquitto, tmp_path: Path) -> None:
    (tmp_path / "flat.csv").write_text("time_s,l1_a,l2_a,l3_a\n0,4,4,4\n", encoding="utf-8")
    sc = scenario_from_dict(scenario(), "capacity", tmp_path)

    async def main() -> tuple[list[dict[str, Any]], bytes | None]:
        async with Observer(mosquitto.url, f"{T.root}/#", client_id="capacity-observer") as obs:
            p = Pipeline(sc, speed=20.0, broker_url=mosquitto.url)
            p.config = msgspec.structs.replace(p.config, capacity=CapacitySettings(enabled=True, step_kw=5.0))
            async with p:
                await p.run()
            await obs.wait_until(lambda: bool(obs.last(T.capacity)), timeout=10)
            return [json.loads(x) for x in obs.payloads(T.charger_setpoint("a"))], obs.last(T.capacity)

    seen, capacity = asyncio.run(asyncio.wait_for(main(), 70))
    guarded = [s for s in seen if s["reason"].startswith("capacity guard")]
    assert guarded, [s["reason"] for s in seen]
    # lowered, not paused, and well under what the fuse leaves (19 A)
    assert all(6.0 <= s["current_a"] <= 12.0 for s in guarded), [s["current_a"] for s in guarded]
    # from the first decision on the meter's data on (before it: the fixed current, the guard knows nothing)
    assert max(s["current_a"] for s in seen if s["mode"] == "protect") <= 12.0
    doc = json.loads(capacity)
    assert doc["month"] == "2025-01" and doc["goal_kw"] == 5.0 and doc["step_kw"] == 2.0
    assert 0.0 < doc["hour_left_kwh"] < 3.2 and doc["hour_used_kwh"] > 1.8
    assert 6.0 <= doc["caps_a"]["a"] <= 12.0
