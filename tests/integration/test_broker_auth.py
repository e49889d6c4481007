"""Nobody on the embedded broker is anonymous, and each login may touch only its role's topics (issue 13,
item 5): the ACL as pure functions, the broker with real aiomqtt clients, the users file and
`apm broker user`, and `apm run --listen`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apm.cli.main import main
from apm.core.config import BrokerConfig
from apm.io.mqtt.auth import (
    DEVICE_USER,
    AuthError,
    Login,
    Policy,
    Role,
    UserTable,
    acl,
    covers,
    matches,
)
from apm.io.mqtt.broker import EmbeddedBroker
from apm.io.mqtt.link import Backoff, MqttLink
from apm.io.mqtt.topics import SPECS, Topics
from tests.mqtt_broker import accepts, free_port

pytestmark = pytest.mark.timeout(60)

SERIAL = "APMAUTH01"
T = Topics(SERIAL)
ROOT = Path(__file__).resolve().parents[2]


# --- the ACL, pure ---------------------------------------------------------------------------------

LEVEL = st.sampled_from(["apm", SERIAL, "charger", "a", "b", "state", "setpoint", "x"])
FILTER_LEVEL = st.one_of(LEVEL, st.just("+"))


@st.composite
def topic_filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(FILTER_LEVEL, min_size=1, max_size=5))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


@given(allowed=topic_filters(), requested=topic_filters(),
       topic=st.lists(LEVEL, min_size=1, max_size=7).map("/".join))
def test_a_covered_filter_matches_nothing_the_allowed_one_does_not(allowed: str, requested: str, topic: str) -> None:
    if covers(allowed, requested) and matches(topic, requested):
        assert matches(topic, allowed)


def test_covers_and_matches_examples() -> None:
    assert matches("apm/S/charger/a/setpoint", "apm/S/charger/+/setpoint")
    assert matches("apm/S", "apm/S/#")
    assert not matches("apm/S/x/y", "apm/S/+")
    assert covers("apm/S/#", "apm/S/charger/+/setpoint")
    assert covers("apm/S/charger/+/setpoint", "apm/S/charger/a/setpoint")
    assert not covers("apm/S/charger/a/setpoint", "apm/S/charger/+/setpoint")
    assert not covers("apm/S/+", "apm/S/#")  # amqtt's own ACL plugin says yes here
    assert not covers("apm/S/charger/a/setpoint", "#")


def test_roles_parse_and_refuse() -> None:
    assert Role.parse("charger:garage") == Role("charger", "garage")
    assert str(Role.parse("reader")) == "reader"
    for bad in ("charger:", "charger:a/b", "charger:+", "admin", "reader:x", ""):
        with pytest.raises(AuthError):
            Role.parse(bad)


def test_each_role_publishes_only_its_topics() -> None:
    garage = acl(Role("charger", "garage"), SERIAL)
    assert garage.publish == (T.charger_state("garage"),)
    assert garage.subscribe == (T.charger_setpoint("garage"),)
    device = acl(Role("device"), SERIAL)
    assert not any(matches(T.charger_state("garage"), f) for f in device.publish)
    assert not any(matches(T.subscription_revocation, f) for f in device.publish)
    reader = acl(Role("reader"), SERIAL)
    # A reader (Home Assistant) sends requests and owner settings, nothing a charger or the balancer says.
    assert reader.publish == (f"{T.root}/eco/request", f"{T.root}/settings/+/set", f"{T.root}/charger/+/settings/+/set")
    assert any(matches(T.charger_set("garage", "max_a"), f) for f in reader.publish)
    for forged in (T.charger_state("garage"), T.charger_setpoint("garage"), T.charger_settings("garage"), T.settings,
                   T.headroom):
        assert not any(matches(forged, f) for f in reader.publish), forged
    assert not any(matches(T.charger_set("garage", "max_a"), f) for f in garage.publish)


def test_the_device_may_publish_every_topic_the_table_says_it_publishes() -> None:
    """The device's login (its balancer and eco service share it) against the one topic table: a new
    topic the device publishes must be in its ACL, or the embedded broker drops it with a warning."""
    device = acl(Role("device"), SERIAL)
    ours = [s for s in SPECS.values() if s.publisher.startswith(("device", "balancer", "eco service"))]
    assert len(ours) >= 10
    for spec in ours:
        topic = spec.pattern.format(serial=SERIAL, list=2, charger="garage", setting="max_a", component="sensor",
                                    node="apm_x", object="power")
        assert any(matches(topic, f) for f in device.publish), f"{spec.kind}: {topic} is not in the device's ACL"


# --- the users file --------------------------------------------------------------------------------


def test_users_file_is_0600_holds_hashes_and_only_the_devices_own_password(tmp_path: Path) -> None:
    path = tmp_path / "state" / "users.json"
    table, device = UserTable().ensure_device()
    table, garage = table.add("garage-box", Role("charger", "garage"))
    table.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    text = path.read_text()
    assert garage.password not in text  # shown once, kept as a hash
    assert device.password in text  # the device needs its own to log in
    again = UserTable.load(path)
    assert again.ensure_device() == (again, device)  # created once, then the same
    assert Policy(SERIAL, again).login("garage-box", garage.password) is not None
    assert "password" not in repr(garage) or garage.password not in repr(garage)
    assert garage.password not in repr(again)


def test_a_users_file_others_can_read_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    UserTable().ensure_device()[0].save(path)
    os.chmod(path, 0o644)
    UserTable.load(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_user_names_are_unique_and_the_device_role_is_the_devices(tmp_path: Path) -> None:
    table, _ = UserTable().add("ha", Role("reader"))
    with pytest.raises(AuthError, match="exists"):
        table.add("ha", Role("reader"))
    with pytest.raises(AuthError, match="device"):
        table.add("fake-device", Role("device"))
    with pytest.raises(AuthError, match="user name"):
        table.add("bad name", Role("reader"))


def test_apm_broker_user_add_shows_the_password_once_and_list_never(tmp_path: Path, monkeypatch, capsys) -> None:
    path = tmp_path / "users.json"
    monkeypatch.setenv("APM_BROKER_USERS", str(path))
    assert main(["broker", "user", "add", "garage-box", "--role", "charger:garage"]) == 0
    password = capsys.readouterr().out.strip()
    assert Policy(SERIAL, UserTable.load(path)).login("garage-box", password) is not None
    assert main(["broker", "user", "list", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["users"] == [{"name": "garage-box", "role": "charger:garage", "own": False}]
    assert password not in out
    assert main(["broker", "user", "add", "x", "--role", "admin"]) == 2
    assert main(["broker", "user", "remove", "garage-box"]) == 0
    assert main(["broker", "user", "remove", "garage-box"]) == 2
    assert UserTable.load(path).users == {}


def test_a_user_added_while_the_broker_runs_can_log_in_without_a_restart(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "users.json"
    UserTable().ensure_device()[0].save(path)
    policy = Policy(SERIAL, UserTable.load(path), path=path)
    monkeypatch.setenv("APM_BROKER_USERS", str(path))
    table, ha = UserTable.load(path).add("ha", Role("reader"))
    table.save(path)
    assert policy.login("ha", ha.password) is not None


# --- the broker with real clients ------------------------------------------------------------------


class Setup:
    def __init__(self) -> None:
        table, self.device = UserTable().ensure_device()
        table, self.garage = table.add("garage-box", Role("charger", "garage"))
        table, self.driveway = table.add("driveway-box", Role("charger", "driveway"))
        table, self.reader = table.add("ha", Role("reader"))
        self.policy = Policy(SERIAL, table)


@contextlib.asynccontextmanager
async def broker(setup: Setup) -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(port=0, policy=setup.policy) as b:
        yield b


def client(b: EmbeddedBroker, login: Login | None, name: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", b.port, identifier=name, timeout=5,
                          username=login.username if login else None, password=login.password if login else None)


async def wait_for(predicate, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Inbox:
    """Messages a client receives, collected in the background."""

    def __init__(self, c: aiomqtt.Client) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.task = asyncio.create_task(self._read(c))

    async def _read(self, c: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # the client's context ended
            async for m in c.messages:
                self.got.append((str(m.topic), bytes(m.payload)))

    def topics(self) -> list[str]:
        return [t for t, _ in self.got]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await self.task


def test_anonymous_and_wrong_password_clients_are_refused() -> None:
    s = Setup()

    async def main() -> None:
        async with broker(s) as b:
            for login in (None, Login("ha", "not-the-password"), Login("nobody", s.reader.password)):
                with pytest.raises(aiomqtt.MqttError, match="135|[Nn]ot authori"):
                    async with client(b, login, "intruder"):
                        pass
            async with client(b, s.reader, "ha"):
                pass
        assert s.policy.refused_logins >= 3

    asyncio.run(main())


def test_a_charger_cannot_forge_another_chargers_state_or_any_setpoint_nor_read_another_setpoint() -> None:
    s = Setup()

    async def main() -> None:
        async with broker(s) as b, client(b, s.device, "dev") as dev, client(b, s.garage, "garage") as garage:
            await dev.subscribe(f"{T.root}/#")
            seen = Inbox(dev)
            granted = await garage.subscribe(T.all_charger_setpoints)
            assert list(granted) == [128]  # refused: it would carry the driveway's setpoints
            assert list(await garage.subscribe(T.charger_setpoint("driveway"))) == [128]
            assert list(await garage.subscribe(T.charger_setpoint("garage"))) == [0]
            mine = Inbox(garage)
            denied = s.policy.denied
            await garage.publish(T.charger_state("driveway"), b'{"forged": 1}', qos=1)
            await garage.publish(T.charger_setpoint("driveway"), b'{"current_a": 32}', qos=1)
            await garage.publish(T.charger_setpoint("garage"), b'{"current_a": 32}', qos=1)
            await garage.publish(T.headroom, b'{"l1_a": 99}', qos=1)
            await wait_for(lambda: s.policy.denied >= denied + 4, "four denials")
            await garage.publish(T.charger_state("garage"), b'{"genuine": 1}', qos=1)  # after the forged ones
            await dev.publish(T.charger_setpoint("driveway"), b'{"for": "driveway"}', qos=1)
            await dev.publish(T.charger_setpoint("garage"), b'{"for": "garage"}', qos=1)
            await wait_for(lambda: T.charger_state("garage") in seen.topics(), "the genuine state")
            await wait_for(lambda: T.charger_setpoint("garage") in mine.topics(), "its own setpoint")
            await wait_for(lambda: seen.topics().count(T.charger_setpoint("garage")) == 1, "the device's own")
            assert T.charger_state("driveway") not in seen.topics()
            assert T.headroom not in seen.topics()
            assert (T.charger_setpoint("garage"), b'{"current_a": 32}') not in seen.got
            assert mine.topics() == [T.charger_setpoint("garage")]
            assert mine.got[0][1] == b'{"for": "garage"}'
            await seen.close()
            await mine.close()

    asyncio.run(main())


def test_the_reader_reads_everything_but_publishes_only_commands() -> None:
    s = Setup()

    async def main() -> None:
        async with broker(s) as b, client(b, s.device, "dev") as dev, client(b, s.reader, "ha") as ha:
            assert list(await ha.subscribe(f"{T.root}/#")) == [0]
            assert list(await ha.subscribe("homeassistant/#")) == [0]
            assert list(await ha.subscribe("apm/OTHER/#")) == [128]
            assert list(await ha.subscribe("#")) == [128]
            await dev.subscribe(f"{T.root}/#")
            seen = Inbox(dev)
            got = Inbox(ha)
            denied = s.policy.denied
            for topic in (T.headroom, T.charger_setpoint("garage"), T.subscription, T.status, T.eco_plan):
                await ha.publish(topic, b'{"state": "none"}', qos=1, retain=True)
            await wait_for(lambda: s.policy.denied >= denied + 5, "five denials")
            await ha.publish(f"{T.root}/eco/request", b'{"charger": "garage", "clear": true}', qos=1)
            await dev.publish(T.headroom, b'{"l1_a": 3}')
            await wait_for(lambda: f"{T.root}/eco/request" in seen.topics(), "the command")
            await wait_for(lambda: T.headroom in got.topics(), "the device's headroom")
            assert b'{"state": "none"}' not in [p for _, p in seen.got]  # none of the five forged ones
            assert got.got == [(f"{T.root}/eco/request", b'{"charger": "garage", "clear": true}'),
                               (T.headroom, b'{"l1_a": 3}')]
            assert b._broker is not None and not b._broker._retained_messages  # the forged retained: dropped
            await seen.close()
            await got.close()

    asyncio.run(main())


def test_nobody_can_cut_the_device_off_by_taking_its_client_id() -> None:
    """amqtt drops a session with the client id of a new connection before asking for the login; the
    guarded broker asks first, and a client id stays with the user whose session holds it."""
    s = Setup()

    async def main() -> None:
        async with broker(s) as b:
            link = MqttLink.for_device(T, BrokerConfig(username=s.device.username, password=s.device.password),
                                       url=b.url, subscriptions=[(T.all_charger_states, 0)],
                                       backoff=Backoff(0.05, 0.2))
            async with link:
                assert await link.wait_connected(10)
                for login in (None, s.garage):
                    with pytest.raises(aiomqtt.MqttError):
                        async with client(b, login, link.client_id):
                            pass
                async with client(b, s.garage, "garage") as garage:
                    await garage.publish(T.charger_state("garage"), b"{}", qos=1)
                    async for m in link.messages():
                        assert m.topic == T.charger_state("garage")
                        break
                assert link.stats.connects == 1  # never thrown off

    asyncio.run(main())


def test_an_anonymous_broker_stays_on_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        EmbeddedBroker(port=0, host="0.0.0.0")
    EmbeddedBroker(port=0, host="::1")


# --- apm run --listen ----------------------------------------------------------------------------


def test_apm_run_listens_where_asked_and_only_with_logins(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    table, ha = UserTable().add("ha", Role("reader"))
    table.save(users)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "APM_FLASH": str(tmp_path / "flash.img"),
           "APM_BROKER_USERS": str(users), "APM_SERIAL_CACHE": str(tmp_path / "serial.json")}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "apm", "run", "--sim", "aidon:3p-it", "--duration", "30",
                             "--plain", "--listen", "127.0.0.2", "--broker-port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while not accepts("127.0.0.2", port):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "never listened on 127.0.0.2"
            time.sleep(0.05)
        assert not accepts("127.0.0.1", port)

        async def probe() -> None:
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client("127.0.0.2", port, identifier="anon", timeout=5):
                    pass
            async with aiomqtt.Client("127.0.0.2", port, identifier="ha", username="ha", password=ha.password,
                                      timeout=5) as c:
                await c.subscribe("apm/APM000000/status")  # the defaults' serial: no configuration
                async for m in c.messages:
                    assert m.payload == b"online"
                    break

        asyncio.run(probe())
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    device_password = UserTable.load(users).own[DEVICE_USER]
    assert device_password not in err and ha.password not in err  # never logged
    assert "refused a login as anonymous" in err
    assert "Traceback" not in err
