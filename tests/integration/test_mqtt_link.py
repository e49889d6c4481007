"""MqttLink against a real mosquitto: status and will, outages, the outbox, subscriptions."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apm.core.config import BrokerConfig
from apm.io.mqtt.link import Backoff, BrokerAddress, LinkError, MqttLink
from apm.io.mqtt.topics import ChargerStatePayload, HeadroomPayload, Topics
from apm.io.storage.outbox import FileOutbox, MemoryOutbox
from tests.certs import self_signed
from tests.energy_records import record
from tests.mqtt_broker import Mosquitto, Observer, free_port

ROOT = Path(__file__).resolve().parents[2]
FAST = Backoff(initial_s=0.05, max_s=0.4)
T = Topics("APMTEST1")


def run(coro: Coroutine[Any, Any, None], timeout: float = 30) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


def reading(n: int, list_no: int = 1) -> dict[str, Any]:
    return {"meter": "aidon", "list": list_no, "active_import_w": float(n)}


def device_link(url: str, **kw: Any) -> MqttLink:
    kw.setdefault("backoff", FAST)
    return MqttLink.for_device(T, BrokerConfig(url=url), **kw)


# --- pure parts -----------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10_000), st.floats(min_value=0, max_value=1))
def test_backoff_is_bounded_and_jittered(attempt: int, rand: float) -> None:
    b = Backoff(initial_s=0.5, max_s=30, factor=2, jitter=0.5)
    base = min(30, 0.5 * 2 ** min(attempt, 64))
    d = b.delay(attempt, rand)
    assert 0 < d <= 30
    assert base * 0.5 <= d <= base


def test_backoff_grows_then_stops_growing() -> None:
    b = Backoff(initial_s=0.5, max_s=8, jitter=0)
    assert [b.delay(n, 0.3) for n in range(7)] == [0.5, 1, 2, 4, 8, 8, 8]
    with pytest.raises(ValueError):
        Backoff(initial_s=2, max_s=1)


def test_broker_urls() -> None:
    a = BrokerAddress.parse("mqtt://broker.local")
    assert (a.host, a.port, a.tls) == ("broker.local", 1883, False)
    s = BrokerAddress.parse("mqtts://u%40x:p%3Aw@10.0.0.5:9883")
    assert (s.host, s.port, s.tls, s.username, s.password) == ("10.0.0.5", 9883, True, "u@x", "p:w")
    assert s.url == "mqtts://10.0.0.5:9883"  # no credentials in logs
    assert BrokerAddress.parse("mqtt://h", username="me", tls=True).username == "me"
    assert BrokerAddress.parse("mqtt://h", tls=True).tls
    for bad in ("http://h:1883", "mqtt://", "mqtt://h:99999", "mqtt://h/topic", "h:1883"):
        with pytest.raises(LinkError):
            BrokerAddress.parse(bad)
    with pytest.raises(LinkError):
        MqttLink.for_device(T, BrokerConfig())  # no URL anywhere


def test_queue_keeps_the_latest_per_topic_within_its_bound() -> None:
    async def main() -> None:
        link = MqttLink(f"mqtt://127.0.0.1:{free_port()}", client_id="x", queue_limit=3)
        for n in range(100):
            link.publish(T.reading_message(reading(n, 1)))
        assert link.stats.queued == 1 and link.stats.dropped == 0
        for cid in ("a", "b", "c"):
            link.publish(T.charger_state_message(cid, ChargerStatePayload.make("idle", (0, 0, 0), max_a=16,
                                                                               phases=1)))
        assert link.stats.queued == 3 and link.stats.dropped == 1  # the oldest topic (list1) went
        with pytest.raises(LinkError):
            link.add_record({"id": "x"})  # no outbox

    run(main())


# --- against mosquitto ----------------------------------------------------------------------------


def test_online_retained_subscriptions_and_clean_offline(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        link = device_link(mosquitto.url)
        async with Observer(mosquitto.url, T.status, client_id="watcher") as watcher:
            async with link:
                assert await link.wait_connected(5)
                await link.subscribe(T.all_charger_states)
                link.publish(T.reading_message(reading(1234, 2)))
                async with Observer(mosquitto.url, f"{T.root}/#") as obs:
                    # A subscriber that comes later gets the retained status and reading.
                    await obs.wait_until(lambda: obs.last(T.status) == b"online" and obs.last(T.reading(2)))
                    assert json.loads(obs.last(T.reading(2)) or b"")["active_import_w"] == 1234
                    assert all(retain for topic, _, retain in obs.messages if topic == T.status)
                    state = ChargerStatePayload.make("charging", (16, 16, 16), max_a=32, phases=3, ts=0)
                    assert obs.client is not None
                    await obs.client.publish(T.charger_state("garage"),
                                             T.charger_state_message("garage", state).payload)
                    incoming = await asyncio.wait_for(anext(aiter(link.messages())), 5)
                    assert T.parse(incoming.topic).charger == "garage"
                    assert ChargerStatePayload.decode(incoming.payload) == state
                    assert link.stats.connects == 1 and link.stats.connected
                await watcher.wait_until(lambda: watcher.last(T.status) == b"online")
            await watcher.wait_until(lambda: watcher.last(T.status) == b"offline")  # said on a clean exit
        assert not link.is_connected
        link.publish(T.reading_message(reading(1)))  # after close: ignored, no error

    run(main())


def test_last_will_says_offline_when_the_device_dies(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async def main() -> None:
        async with Observer(mosquitto.url, T.status) as obs:
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.mqtt_child", mosquitto.url, T.serial, str(tmp_path / "o.jsonl"),
                cwd=ROOT, stdout=asyncio.subprocess.PIPE)
            assert child.stdout is not None
            try:
                assert await asyncio.wait_for(child.stdout.readline(), 15) == b"ready\n"
                await obs.wait_until(lambda: obs.last(T.status) == b"online")
            finally:
                child.send_signal(signal.SIGKILL)  # no DISCONNECT: only the broker's will can tell
                await child.wait()
            await obs.wait_until(lambda: obs.last(T.status) == b"offline")
        async with Observer(mosquitto.url, T.status, client_id="late") as late:
            await late.wait_until(lambda: late.messages == [(T.status, b"offline", True)])

    run(main())


def test_no_hourly_record_lost_when_the_broker_is_killed_and_restarted(tmp_path: Path) -> None:
    """The acceptance test: SIGKILL the broker mid-run, keep the device going, restart the broker."""

    async def main() -> None:
        with Mosquitto(tmp_path / "mq", persistence=True) as broker, FileOutbox(tmp_path / "o.jsonl") as box:
            # The "cloud": a persistent QoS 1 session, so the broker keeps records that arrive while it
            # is reconnecting itself after the restart.
            async with (Observer(broker.url, f"{T.root}/#", client_id="cloud", persistent=True) as cloud,
                        device_link(broker.url, outbox=box) as link):
                assert await link.wait_connected(5)
                ticks = 0

                async def device_loop() -> None:  # readings every 10 ms, whatever the broker does
                    nonlocal ticks
                    while True:
                        ticks += 1
                        link.publish(T.reading_message(reading(ticks)))
                        await asyncio.sleep(0.01)

                loop_task = asyncio.create_task(device_loop())
                records = [f"{T.serial}/2024-01-01T{h:02d}:00:00.000Z" for h in range(12)]
                for rid in records[:4]:
                    link.add_record(record(rid, 1500.0))
                await cloud.wait_until(lambda: len(cloud.payloads(T.energy_hourly)) == 4)
                # The cloud having them is not the device having their PUBACKs: wait for those too.
                await wait_for(lambda: not box.pending(), timeout=20)

                broker.kill()
                await wait_for(lambda: not link.is_connected)
                for rid in records[4:]:
                    link.add_record(record(rid, 1500.0))
                before = ticks
                # The device loop goes on while the broker is down: by its own ticks, not a time slot.
                await wait_for(lambda: ticks - before > 10, timeout=20)
                assert len(box.pending()) == 8 and not link.is_connected

                broker.start()
                t0 = time.monotonic()
                assert await link.wait_connected(FAST.max_s + 3), "no reconnect within the backoff bound"
                assert time.monotonic() - t0 < FAST.max_s + 3
                await cloud.wait_until(lambda: {json.loads(p)["id"] for p in cloud.payloads(T.energy_hourly)}
                                       == set(records), timeout=15)
                got = [json.loads(p)["id"] for p in cloud.payloads(T.energy_hourly)]
                firsts = list(dict.fromkeys(got))
                assert firsts == records  # in order, none lost (duplicates allowed: at least once)
                assert box.pending() == []
                # Readings flow again.
                at_restart = ticks
                await cloud.wait_until(
                    lambda: json.loads(cloud.last(T.reading(1)) or b"{}").get("active_import_w", 0) > at_restart)
                loop_task.cancel()
                assert link.stats.connects == 2

    run(main(), timeout=45)


def test_a_record_leaves_the_outbox_only_after_its_puback(tmp_path: Path) -> None:
    async def main() -> None:
        with Mosquitto(tmp_path / "mq", persistence=True) as broker, FileOutbox(tmp_path / "o.jsonl") as box:
            async with (Observer(broker.url, T.energy_hourly, client_id="cloud", persistent=True) as cloud,
                        device_link(broker.url, outbox=box) as link):
                assert await link.wait_connected(5)
                broker.freeze()  # the PUBLISH reaches the socket; no PUBACK comes back
                link.add_record(record("r1", 1.0))
                await asyncio.sleep(0.3)
                assert [e.data["id"] for e in box.pending()] == ["r1"]
                broker.kill()  # the frozen broker dies without having answered
                await wait_for(lambda: not link.is_connected)
                assert [e.data["id"] for e in box.pending()] == ["r1"]
                broker.start()
                await cloud.wait_until(lambda: cloud.payloads(T.energy_hourly))
                await wait_for(lambda: not box.pending())
                assert json.loads(cloud.payloads(T.energy_hourly)[0])["id"] == "r1"

    run(main())


def test_records_of_a_crashed_device_are_sent_by_the_next_run(tmp_path: Path) -> None:
    """Broker absent; the device stores records and is SIGKILLed; the next run delivers them."""
    url = f"mqtt://127.0.0.1:{free_port()}"
    outbox_path = tmp_path / "o.jsonl"

    async def first_run() -> None:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.mqtt_child", url, T.serial, str(outbox_path), "3", "--no-wait",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        assert child.stdout is not None
        assert await asyncio.wait_for(child.stdout.readline(), 15) == b"ready\n"
        os.kill(child.pid, signal.SIGKILL)
        await child.wait()

    run(first_run())

    async def second_run() -> None:
        with Mosquitto(tmp_path / "mq", port=int(url.rsplit(":", 1)[1])), FileOutbox(outbox_path) as box:
            assert len(box.pending()) == 3
            # The link's own subscription is made before the outbox is flushed: it sees what the broker got.
            async with device_link(url, outbox=box, subscriptions=[T.energy_hourly]) as link:
                seen: list[str] = []
                async for msg in link.messages():
                    seen.append(msg.json()["id"])
                    if len(seen) == 3:
                        break
                assert seen == ["rec-0", "rec-1", "rec-2"]
                await wait_for(lambda: not box.pending())

    run(second_run())


def test_device_works_without_a_broker_and_catches_up_when_one_appears(tmp_path: Path) -> None:
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"

    async def main() -> None:
        box = MemoryOutbox()
        async with device_link(url, outbox=box, subscriptions=[f"{T.root}/#"]) as link:
            for n in range(50):
                link.publish(T.reading_message(reading(n, 1)))
                link.publish(T.reading_message(reading(1000 + n, 2)))
            link.publish(T.headroom_message(HeadroomPayload.make(9, 9, 9, ts=0), ttl_s=0.1))
            rid = link.add_record(record("boot-1", 5.0))
            await asyncio.sleep(0.6)  # the headroom outlives its ttl
            await wait_for(lambda: link.stats.last_error is not None, timeout=20)  # an attempt failed
            assert not link.is_connected and link.stats.last_error
            assert [e.id for e in box.pending()] == [rid]
            with Mosquitto(tmp_path / "mq", port=port):
                assert await link.wait_connected(FAST.max_s + 3)
                seen: dict[str, list[bytes]] = {}
                async for msg in link.messages():
                    seen.setdefault(msg.topic, []).append(msg.payload)
                    if T.energy_hourly in seen and T.reading(1) in seen and T.reading(2) in seen:
                        break
                await asyncio.sleep(0.2)
                while True:  # whatever else arrived meanwhile
                    try:
                        msg = await asyncio.wait_for(anext(aiter(link.messages())), 0.05)
                    except TimeoutError:
                        break
                    seen.setdefault(msg.topic, []).append(msg.payload)
                # Latest wins: one reading per list, the last one; the stale headroom was dropped.
                assert [json.loads(p)["active_import_w"] for p in seen[T.reading(1)]] == [49]
                assert [json.loads(p)["active_import_w"] for p in seen[T.reading(2)]] == [1049]
                assert T.headroom not in seen and link.stats.expired == 1
                assert [json.loads(p)["id"] for p in seen[T.energy_hourly]] == ["boot-1"]
                assert box.pending() == []

    run(main())


def test_subscriptions_survive_a_broker_restart(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        async with device_link(mosquitto.url, subscriptions=[T.all_charger_setpoints]) as link:
            assert await link.wait_connected(5)
            messages = aiter(link.messages())
            async with Observer(mosquitto.url, "unused/#", client_id="balancer") as bal:
                assert bal.client is not None
                await bal.client.publish(T.charger_setpoint("a"), b'{"n":1}', qos=1)
                assert (await asyncio.wait_for(anext(messages), 5)).payload == b'{"n":1}'
                mosquitto.kill()
                await wait_for(lambda: not link.is_connected)
                mosquitto.start()
                assert await link.wait_connected(FAST.max_s + 3)
                await wait_for(lambda: bal.client is not None)
                await bal.client.publish(T.charger_setpoint("b"), b'{"n":2}', qos=1)
                msg = await asyncio.wait_for(anext(messages), 5)
                assert (msg.topic, msg.payload) == (T.charger_setpoint("b"), b'{"n":2}')

    run(main())



def test_mqtts_with_username_and_password(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        with Mosquitto(tmp_path / "mq", users={"apm": "s3cret"}, tls=(cert, key)) as broker:
            assert broker.url.startswith("mqtts://")
            config = BrokerConfig(url=broker.url, username="apm", password="s3cret")
            async with MqttLink.for_device(T, config, tls_context=trust, backoff=FAST,
                                           subscriptions=[T.status]) as link:
                assert await link.wait_connected(5)
                msg = await asyncio.wait_for(anext(aiter(link.messages())), 5)
                assert (msg.topic, msg.payload, msg.retain) == (T.status, b"online", True)
            wrong = BrokerConfig(url=broker.url, username="apm", password="guess")
            async with MqttLink.for_device(T, wrong, tls_context=trust, backoff=FAST) as link:
                assert not await link.wait_connected(0.5)
                assert "authori" in (link.stats.last_error or "").lower()
            # Without trusting the broker's certificate: refused as well.
            async with MqttLink.for_device(T, config, backoff=FAST) as link:
                assert not await link.wait_connected(0.5)
                assert "certificate" in (link.stats.last_error or "").lower()

    run(main())


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
