"""Each charger's charging session where the owner looks: the device keeps it from the reports it already
gets (an edge's in-process report, a generic charger's MQTT report with its energy register), publishes it
retained over a real mosquitto with a Home Assistant sensor valid by Home Assistant's own rules, and the
web page's snapshot and the status file carry it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from apm.core import config as cfg
from apm.core.charger_state import ChargerState
from apm.io.clock import Clock
from apm.io.mqtt import discovery as ha
from apm.io.mqtt.messages import ChargerStatePayload, encode
from apm.io.mqtt.topics import Topics
from apm.services.balancer import BalancerService
from apm.services.device import Device
from apm.services.web import DevicePage
from tests.integration.test_ha_controls import ha_problems
from tests.mqtt_broker import Mosquitto, Observer

pytestmark = pytest.mark.timeout(60)

SERIAL = "APMSES01"
T = Topics(SERIAL)
START = 1_900_000_000.0  # 2030-03-17T17:46:40Z


class ManualClock(Clock):
    """Clock time the test sets: the reports' times and the device's agree exactly."""

    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def _config() -> cfg.DeviceConfig:
    return cfg.from_dict({"serial": SERIAL, "grid": {"network": "IT", "fuse_a": 40},
                          "chargers": [{"id": "garage", "max_a": 32},
                                       {"id": "carport.2", "max_a": 16, "phases": 1}]})


def test_the_session_sensor_follows_home_assistants_rules() -> None:
    msgs = ha.session_messages(T, ["garage", "carport.2"])
    found = {m.topic: json.loads(m.payload) for m in msgs}
    assert set(found) == {"homeassistant/sensor/apm_APMSES01/session_energy_garage/config",
                          "homeassistant/sensor/apm_APMSES01/session_energy_carport_2/config"}
    for topic, c in found.items():
        assert ha_problems("sensor", c) == [], topic
        assert (c["unit_of_measurement"], c["device_class"], c["state_class"]) == ("kWh", "energy", "total_increasing")
        assert "expire_after" not in c  # the last session stays true while nobody reports
    garage = found["homeassistant/sensor/apm_APMSES01/session_energy_garage/config"]
    assert garage["state_topic"] == "apm/APMSES01/charger/garage/session"
    assert garage["value_template"] == "{{ value_json.energy_kwh }}"
    # Unique beside the device's other sensors.
    others = ha.discovery_messages(T, chargers=["garage", "carport.2"])
    ids = [json.loads(m.payload)["unique_id"] for m in others + msgs]
    assert len(ids) == len(set(ids))


def _session(observer: Observer, charger: str) -> dict[str, Any] | None:
    last = observer.last(T.charger_session(charger))
    return json.loads(last) if last else None


def test_the_device_keeps_publishes_and_shows_each_session(mosquitto: Mosquitto) -> None:
    clock = ManualClock(START)

    async def main() -> None:
        async with (Device(_config(), url=mosquitto.url, clock=clock) as device,
                    BalancerService.beside(device, url=mosquitto.url) as balancer,
                    Observer(mosquitto.url, "apm/#", "homeassistant/#", client_id="ha") as ha_client):
            page = DevicePage(device, balancer)
            await ha_client.wait_until(lambda: ha_client.last(
                "homeassistant/sensor/apm_APMSES01/session_energy_garage/config") is not None)
            assert page.snapshot()["chargers"][0]["session"] is None  # no EV yet

            # The garage's EV, as an edge (OCPP, go-e) reports it in-process: 16 A on three phases (IT:
            # sqrt(3) x 230 V x 16 A = 6.37 kW), reported every 10 s for half an hour; no register.
            device.on_charger_state(clock.t, ChargerState("garage", "connected", at=clock.t))
            for _ in range(180):
                clock.t += 10.0
                device.on_charger_state(clock.t, ChargerState("garage", "charging", (16.0, 16.0, 16.0), 3, 16.0,
                                                              at=clock.t))
            kwh = 3 ** 0.5 * 230 * 16 * 1790 / 3.6e6  # charging from the second report on
            shown = page.snapshot()["chargers"][0]["session"]
            assert shown["active"] and shown["source"] == "integrated" and shown["duration_s"] == 1800
            assert shown["energy_kwh"] == pytest.approx(kwh, abs=1e-3)
            assert shown["started_at"] == "2030-03-17T17:46:40.000Z"
            await ha_client.wait_until(lambda: (s := _session(ha_client, "garage")) is not None
                                       and s["energy_kwh"] == pytest.approx(kwh, abs=0.05))

            # The car leaves: the session ends, published at once, and the page shows it as the last one.
            clock.t += 5.0
            device.on_charger_state(clock.t, ChargerState("garage", "disconnected", at=clock.t))
            await ha_client.wait_until(lambda: (s := _session(ha_client, "garage")) is not None
                                       and s["ended_at"] is not None)
            ended = page.snapshot()["chargers"][0]["session"]
            assert not ended["active"] and ended["duration_s"] == 1805
            assert ended["energy_kwh"] == pytest.approx(kwh + 3 ** 0.5 * 230 * 16 * 5 / 3.6e6, abs=1e-3)

            # A generic charger over MQTT with its own energy register: the register is used.
            assert ha_client.client is not None
            for k, (mode, amps, wh) in enumerate([("connected", 0.0, 52_000.0), ("charging", 10.0, 52_000.0),
                                                  ("charging", 10.0, 53_234.0)]):
                clock.t += 60.0 if k else 0.0
                payload = ChargerStatePayload.make(mode, (amps, amps, 0.0), max_a=16, phases=1 if amps else None,
                                                   energy_wh=wh)
                await ha_client.client.publish(T.charger_state("carport.2"), encode(payload))
                # Handled (stamped with the clock's time) before the clock moves on.
                await ha_client.wait_until(lambda: (s := device.chargers.get("carport.2")) is not None
                                           and s.at == clock.t)
            await ha_client.wait_until(lambda: (s := _session(ha_client, "carport.2")) is not None
                                       and s["energy_kwh"] > 0)
            carport = _session(ha_client, "carport.2")
            assert carport is not None
            assert (carport["source"], carport["energy_kwh"]) == ("charger", 1.234)
            assert page.snapshot()["chargers"][1]["session"]["energy_kwh"] == 1.234
            # The status file `apm info` reads carries each charger's session too.
            status = device.status()["chargers"]
            assert status["carport.2"]["session"]["source"] == "charger"
            assert status["garage"]["session"]["active"] is False

        # Retained: a Home Assistant that comes later still sees the last sessions.
        async with Observer(mosquitto.url, "apm/+/charger/+/session", client_id="late") as late:
            await late.wait_until(lambda: _session(late, "garage") is not None and _session(late, "carport.2") is not None)
            assert _session(late, "carport.2")["energy_kwh"] == 1.234  # type: ignore[index]

    asyncio.run(main())
