"""Each charger's link (protocol, connected, last report, limit) for Home Assistant: retained on
``charger/<id>/link`` over a real mosquitto, with discovery configs valid by Home Assistant's rules."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest

from apm.core import config as cfg
from apm.io.clock import Clock
from apm.io.mqtt import discovery as ha
from apm.io.mqtt.messages import ChargerStatePayload, encode, iso_ts
from apm.io.mqtt.topics import Topics
from apm.services.balancer import BalancerService
from apm.services.device import Device
from apm.services.links import SEND_EVERY_S, LinkPublisher, publish_links
from apm.services.runtime import charger_links
from tests.integration.test_ha_controls import ha_problems
from tests.mqtt_broker import Mosquitto, Observer

pytestmark = pytest.mark.timeout(60)

SERIAL = "APMLNK01"
T = Topics(SERIAL)
START = 1_900_000_000.0  # 2030-03-17T17:46:40Z


class ManualClock(Clock):
    """Clock time the test sets; its sleeps are short in wall time (the publisher looks every clock second)."""

    speed = 50.0

    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def test_the_link_entities_follow_home_assistants_rules() -> None:
    msgs = ha.link_messages(T, ["garage", "carport.2"])
    found = {m.topic: json.loads(m.payload) for m in msgs}
    for topic, c in found.items():
        assert ha_problems(topic.split("/")[1], c) == [], topic
    conn = found["homeassistant/binary_sensor/apm_APMLNK01/connected_carport_2/config"]
    assert (conn["device_class"], conn["state_topic"]) == ("connectivity", "apm/APMLNK01/charger/carport.2/link")
    limit = found["homeassistant/sensor/apm_APMLNK01/limit_garage/config"]
    assert (limit["unit_of_measurement"], limit["device_class"], limit["state_class"]) == ("A", "current", "measurement")
    protocol = found["homeassistant/sensor/apm_APMLNK01/protocol_garage/config"]
    assert {"unit_of_measurement", "device_class", "state_class"}.isdisjoint(protocol)
    # Unique beside every other entity of the device.
    others = ha.discovery_messages(T, chargers=["garage", "carport.2"]) + ha.session_messages(T, ["garage", "carport.2"])
    ids = [json.loads(m.payload)["unique_id"] for m in others + msgs]
    assert len(ids) == len(set(ids))


def test_a_change_goes_at_once_a_new_report_alone_at_most_every_10_s() -> None:
    pub = LinkPublisher(T)
    link: dict[str, Any] = {"protocol": "ocpp", "connected": True, "last_report_at": START, "limit_a": 16.0}
    assert [m.topic for m in pub.due(START, {"garage": link})] == ["apm/APMLNK01/charger/garage/link"]
    assert pub.due(START + 1, {"garage": link}) == []  # nothing new
    assert pub.due(START + 2, {"garage": {**link, "last_report_at": START + 2}}) == []  # only a report: later
    (m,) = pub.due(START + 3, {"garage": {**link, "last_report_at": START + 3, "limit_a": 10.0}})  # the limit: now
    assert json.loads(m.payload) == {"protocol": "ocpp", "connected": True, "last_report_at": iso_ts(START + 3),
                                     "limit_a": 10.0}
    assert (m.retain, m.qos) == (True, 0)
    later = START + 3 + SEND_EVERY_S
    assert pub.due(later - 0.5, {"garage": {**link, "last_report_at": later - 1, "limit_a": 10.0}}) == []
    assert len(pub.due(later, {"garage": {**link, "last_report_at": later, "limit_a": 10.0}})) == 1
    (off,) = pub.due(later + 1, {"garage": {**link, "connected": False, "last_report_at": later, "limit_a": 10.0}})
    assert json.loads(off.payload)["connected"] is False


def _link(observer: Observer, charger: str) -> dict[str, Any] | None:
    last = observer.last(T.charger_link(charger))
    return json.loads(last) if last else None


def test_a_generic_charger_s_link_is_published_retained(mosquitto: Mosquitto) -> None:
    clock = ManualClock(START)
    config = cfg.from_dict({"serial": SERIAL, "grid": {"network": "TN", "fuse_a": 25},
                            "chargers": [{"id": "carport.2", "max_a": 16, "phases": 1}]})

    async def main() -> None:
        async with (Device(config, url=mosquitto.url, clock=clock) as device,
                    BalancerService.beside(device, url=mosquitto.url) as balancer,
                    Observer(mosquitto.url, "apm/#", "homeassistant/#", client_id="ha") as ha_client):
            task = asyncio.ensure_future(publish_links(device.link, device.topics,
                                                       lambda: charger_links(device, balancer, None), clock))
            try:
                await ha_client.wait_until(lambda: ha_client.last(
                    "homeassistant/binary_sensor/apm_APMLNK01/connected_carport_2/config") is not None)
                # No report yet: the broker, not the device, knows whether it is there.
                await ha_client.wait_until(lambda: _link(ha_client, "carport.2") is not None)
                assert _link(ha_client, "carport.2") == {"protocol": "mqtt", "connected": None,
                                                         "last_report_at": None, "limit_a": None}
                assert ha_client.client is not None
                payload = ChargerStatePayload.make("charging", (10.0, 0.0, 0.0), max_a=16, phases=1)
                await ha_client.client.publish(T.charger_state("carport.2"), encode(payload))
                await ha_client.wait_until(lambda: (s := _link(ha_client, "carport.2")) is not None
                                           and s["last_report_at"] == iso_ts(START))
                link = _link(ha_client, "carport.2")
                want = balancer.setpoints.get("carport.2")
                assert link is not None and link["limit_a"] == (round(want, 1) if want is not None else None)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        # Retained: a Home Assistant that comes later still sees it.
        async with Observer(mosquitto.url, "apm/+/charger/+/link", client_id="late") as late:
            await late.wait_until(lambda: _link(late, "carport.2") is not None)
            assert _link(late, "carport.2")["last_report_at"] == iso_ts(START)  # type: ignore[index]

    asyncio.run(main())
