"""End to end through the real charger protocols: the pty/MQTT pipeline of tests/integration/test_e2e_balancer.py with
its charger behind OCPP 1.6J (the `ocpp` library on both sides, over a websocket) or behind a go-e on MQTT.

A household load step on L1 makes the device lower that charger's limit before the fuse judge would trip,
and the current comes back after the load drops.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sim.closed_loop import Trace, scenario_from_dict
from sim.pipeline import Pipeline
from tests.integration.test_e2e_balancer import SPEED, STEP_AT, STEP_END, step_scenario
from tests.mqtt_broker import Mosquitto

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("protocol", ["ocpp", "goe"])
def test_a_load_step_lowers_a_real_protocol_charger_and_current_comes_back(
        mosquitto: Mosquitto, tmp_path: Path, protocol: str) -> None:
    d = step_scenario(tmp_path)
    d["charger"] = [{"id": "a", "max_a": 32, "phases": 3, "protocol": protocol,
                     **({"goe_serial": "000123"} if protocol == "goe" else {})}]
    sc = scenario_from_dict(d, "step", tmp_path)
    trace = Trace()

    async def main() -> tuple[dict[str, Any], Pipeline]:
        async with Pipeline(sc, speed=SPEED, broker_url=mosquitto.url, trace=trace) as p:
            return await p.run(), p

    report, p = asyncio.run(asyncio.wait_for(main(), 90))

    assert not p.nodes and len(p.points) == 1, "the charger is served by its protocol, not the MQTT topics"
    assert p.edges is not None
    link = p.edges.links()["a"]
    assert link["protocol"] == protocol and link["last_report_at"] is not None
    assert report["trips"] == 0, report["trip_events"]
    t, drawn = trace.t, trace.chargers["a"]
    before = [a for s, a in zip(t, drawn, strict=True) if 30 <= s < STEP_AT]
    assert max(before) >= 15, "charging before the step"
    # Cut (under 6 A) within seconds of the step, and kept there while L1 is loaded.
    cut = next((s for s, a in zip(t, drawn, strict=True) if s >= STEP_AT and a < 6), None)
    assert cut is not None and cut - STEP_AT <= 15, f"cut at {cut}"
    during = [lines[0] for s, lines in zip(t, trace.lines, strict=True) if cut + 8 <= s < STEP_END]
    assert max(during) <= sc.fuse_a
    # Back once the load has dropped (after the restart delay).
    back = next((s for s, a in zip(t, drawn, strict=True) if s >= STEP_END and a >= 6), None)
    assert back is not None and back - STEP_END <= 60, f"back at {back}"
    assert max(drawn[-20:]) >= 15
