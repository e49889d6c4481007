"""The embedded amqtt broker, with aiomqtt clients and with the device's MqttLink."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from apm.core.config import BrokerConfig
from apm.io.mqtt.broker import EmbeddedBroker, EmbeddedBrokerError
from apm.io.mqtt.link import Backoff, MqttLink
from apm.io.mqtt.topics import Topics
from apm.io.storage.outbox import MemoryOutbox
from tests.energy_records import record
from tests.mqtt_broker import Observer

ROOT = Path(__file__).resolve().parents[2]
T = Topics("APMEMB1")


def run(coro: Coroutine[Any, Any, None], timeout: float = 30) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


def test_round_trip_qos1_and_retained_for_a_late_subscriber() -> None:
    async def main() -> None:
        async with EmbeddedBroker(port=0) as broker:
            assert broker.url == f"mqtt://127.0.0.1:{broker.port}" and broker.port > 0
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="pub") as pub:
                await pub.publish("t/retained", b"kept", qos=1, retain=True)  # returns after PUBACK
                async with aiomqtt.Client("127.0.0.1", broker.port, identifier="sub") as sub:
                    await sub.subscribe("t/#", qos=1)
                    await pub.publish("t/live", b"now", qos=1)
                    got = []
                    async for m in sub.messages:
                        got.append((str(m.topic), m.payload, m.retain))
                        if len(got) == 2:
                            break
                    assert got == [("t/retained", b"kept", True), ("t/live", b"now", False)]
        with pytest.raises(RuntimeError):
            _ = broker.url  # stopped

    run(main())


def test_last_will_of_a_killed_client(tmp_path: Path) -> None:
    async def main() -> None:
        async with EmbeddedBroker(port=0) as broker, Observer(broker.url, T.status) as obs:
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.mqtt_child", broker.url, T.serial, str(tmp_path / "o.jsonl"),
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), 15)
            if line != b"ready\n":
                child.kill()
                raise AssertionError((await child.communicate())[1].decode())
            await obs.wait_until(lambda: obs.last(T.status) == b"online")
            child.send_signal(signal.SIGKILL)
            await child.wait()
            await obs.wait_until(lambda: obs.last(T.status) == b"offline")

    run(main())


def test_device_link_on_the_embedded_broker() -> None:
    async def main() -> None:
        async with EmbeddedBroker(port=0) as broker:
            box = MemoryOutbox()
            async with (Observer(broker.url, f"{T.root}/#") as obs,
                        MqttLink.for_device(T, BrokerConfig(), url=broker.url, outbox=box,
                                            backoff=Backoff(0.05, 0.2)) as link):
                assert await link.wait_connected(5)
                link.add_record(record("h1", 42.0))
                link.publish(T.reading_message({"meter": "kaifa", "list": 1, "active_import_w": 900.0}))
                await obs.wait_until(lambda: obs.payloads(T.energy_hourly) and obs.payloads(T.reading(1)))
                assert json.loads(obs.payloads(T.energy_hourly)[0]) == record("h1", 42.0)
                assert obs.last(T.status) == b"online"
                assert box.pending() == []

    run(main())


def test_port_in_use_is_explained() -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(EmbeddedBrokerError, match=f"127.0.0.1:{port} is in use"):
                async with EmbeddedBroker(port=port):
                    pass

    run(main())


def test_a_bare_tcp_probe_is_not_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """A health check that connects and closes without a packet is no error of the device's; a
    client that then connects properly is served as ever."""

    async def main() -> None:
        async with EmbeddedBroker(port=0) as broker:
            _, writer = await asyncio.open_connection("127.0.0.1", broker.port)
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.2)
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="after-probe") as c:
                await c.publish("t/x", b"1", qos=1)

    with caplog.at_level("DEBUG", logger="amqtt"):
        run(main())
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
