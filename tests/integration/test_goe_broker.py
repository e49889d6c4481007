"""A go-e on the embedded broker (issue 14): its own login (`goe:<serial>`), which may publish only its own
keys and read only its own ``<key>/set``; the device's go-e adapter drives a simulated go-e that logs in
as itself, and a hostile go-e login reaches nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import pytest

from apm.cli.main import main
from apm.core.config import ChargerConfig
from apm.io.chargers.goe import GoeAdapter, GoeCharger
from apm.io.mqtt.auth import AuthError, Login, Policy, Role, UserTable, acl, matches
from apm.io.mqtt.broker import EmbeddedBroker
from apm.io.mqtt.topics import Topics
from sim.charger import SimCharger
from sim.goe_charger import SimGoeCharger

pytestmark = pytest.mark.timeout(60)

SERIAL = "APMGOE01"
T = Topics(SERIAL)
GOE, OTHER = "012345", "067890"


def goe(serial: str, key: str) -> str:
    return f"go-eCharger/{serial}/{key}"


# --- the role, pure --------------------------------------------------------------------------------


def test_the_goe_role_publishes_its_own_keys_and_reads_only_its_own_set_topics() -> None:
    assert Role.parse(f"goe:{GOE}") == Role("goe", GOE)
    assert str(Role("goe", GOE)) == f"goe:{GOE}"
    for bad in ("goe:", "goe:01/23", "goe:#", "goe"):
        with pytest.raises(AuthError):
            Role.parse(bad)
    rules = acl(Role("goe", GOE), SERIAL)
    may_publish = [goe(GOE, "amp"), goe(GOE, "nrg"), goe(GOE, "mcc"), goe(GOE, "amp/result")]
    for name in may_publish:
        assert any(matches(name, f) for f in rules.publish), name
    for name in (goe(GOE, "amp/set"), goe(GOE, "frc/set"), goe(OTHER, "amp"), goe(OTHER, "amp/set"),
                 T.charger_state("garage"), T.headroom, "go-eCharger", goe(GOE, "a/b/c")):
        assert not any(matches(name, f) for f in rules.publish), name
    assert rules.subscribe == (goe(GOE, "+/set"),)
    device = acl(Role("device"), SERIAL)
    assert any(matches(goe(GOE, "amp/set"), f) for f in device.publish)
    assert not any(matches(goe(GOE, "amp"), f) for f in device.publish)  # it cannot forge what a go-e says
    assert Policy(SERIAL, UserTable().ensure_device()[0]).may("apm-device", "subscribe", goe(GOE, "+"))


def test_a_goe_password_is_kept_readable_and_shown_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "state" / "users.json"
    monkeypatch.setenv("APM_BROKER_USERS", str(path))
    assert main(["broker", "user", "add", f"goe-{GOE}", "--role", f"goe:{GOE}"]) == 0
    out = capsys.readouterr()
    password = out.out.strip()
    assert f"mqtt://goe-{GOE}:" in out.err and "1883" in out.err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["broker", "user", "show", f"goe-{GOE}"]) == 0
    assert capsys.readouterr().out.strip() == password
    assert Policy(SERIAL, UserTable.load(path)).login(f"goe-{GOE}", password) is not None
    # Only a go-e's: other users' passwords stay hashes, shown once.
    assert main(["broker", "user", "add", "ha", "--role", "reader"]) == 0
    reader_password = capsys.readouterr().out.strip()
    assert reader_password not in path.read_text()
    assert main(["broker", "user", "show", "ha"]) == 2
    assert main(["broker", "user", "show", "nobody"]) == 2
    listed = capsys.readouterr()
    assert main(["broker", "user", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["users"]
    assert {"name": f"goe-{GOE}", "role": f"goe:{GOE}", "own": True} in rows
    assert password not in listed.out + listed.err
    # Removing the user removes its kept password too.
    assert main(["broker", "user", "remove", f"goe-{GOE}"]) == 0
    assert password not in path.read_text()


# --- on the broker, with real clients ----------------------------------------------------------------


class Logins:
    def __init__(self) -> None:
        table, self.device = UserTable().ensure_device()
        table, self.goe = table.add(f"goe-{GOE}", Role("goe", GOE))
        table, self.other = table.add(f"goe-{OTHER}", Role("goe", OTHER))
        self.policy = Policy(SERIAL, table)


def client(b: EmbeddedBroker, login: Login, name: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", b.port, identifier=name, timeout=5, username=login.username,
                          password=login.password)


@contextlib.asynccontextmanager
async def inbox(c: aiomqtt.Client) -> AsyncIterator[list[tuple[str, bytes]]]:
    got: list[tuple[str, bytes]] = []

    async def read() -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for m in c.messages:
                got.append((str(m.topic), bytes(m.payload)))

    task = asyncio.create_task(read())
    try:
        yield got
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def sim_goe(serial: str, url: str, login: Login) -> SimGoeCharger:
    charger = SimCharger(ChargerConfig(id="garage", phases=3, max_a=32), "TN")
    return SimGoeCharger(charger, serial, url, amp=6, publish_every_s=0.5, username=login.username,
                         password=login.password)


def test_the_device_drives_a_goe_that_logs_in_as_itself() -> None:
    s = Logins()

    async def run() -> list[tuple[str, object]]:
        async with EmbeddedBroker(port=0, policy=s.policy) as b:
            point = sim_goe(GOE, b.url, s.goe)
            task = asyncio.create_task(point.run())
            try:
                await asyncio.wait_for(point.connected.wait(), 10)
                async with GoeAdapter({"garage": GoeCharger(GOE, safe_current_a=10)}, b.url, tick_s=0.05,
                                      username=s.device.username, password=s.device.password) as adapter:
                    adapter.set_limit("garage", 16)
                    await point.wait_for(lambda p: p.amp == 16, 15)
                    await until(lambda: adapter.links()["garage"].limit_a == 16, "the echo of 16 A")
                    assert adapter.links()["garage"].connected
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return point.received

    received = asyncio.run(run())
    amps = [v for k, v in received if k == "amp"]
    assert amps[0] == 10 and amps[-1] == 16, "the safe value first, the balancer's once echoed"
    assert s.policy.refused_logins == 0


def test_a_goe_login_reaches_nothing_but_its_own_topics() -> None:
    s = Logins()

    async def run() -> None:
        async with (EmbeddedBroker(port=0, policy=s.policy) as b, client(b, s.device, "dev") as dev,
                    client(b, s.goe, "go-e-mine") as mine, client(b, s.other, "go-e-other") as other):
            for refused in ("apm/#", f"{T.root}/#", T.charger_setpoint("garage"), goe(OTHER, "+/set"),
                            goe(OTHER, "amp/set"), goe(GOE, "#"), "go-eCharger/#", goe(GOE, "amp"), "#"):
                assert list(await mine.subscribe(refused)) == [128], refused
            assert list(await mine.subscribe(goe(GOE, "+/set"))) == [0]
            assert list(await other.subscribe(goe(OTHER, "+/set"))) == [0]
            await dev.subscribe("go-eCharger/#")
            await dev.subscribe(f"{T.root}/#")
            async with inbox(dev) as seen, inbox(other) as theirs, inbox(mine) as own:
                denied = s.policy.denied
                forged = [goe(OTHER, "amp/set"), goe(OTHER, "frc/set"), goe(OTHER, "nrg"), goe(GOE, "amp/set"),
                          T.charger_state("garage"), T.charger_setpoint("garage"), T.headroom,
                          "homeassistant/sensor/x/config"]
                for name in forged:
                    await mine.publish(name, b"32", qos=1)
                await until(lambda: s.policy.denied >= denied + len(forged), "every forgery denied")
                await mine.publish(goe(GOE, "amp"), b"16", qos=1)  # genuine, after the forged ones
                await dev.publish(goe(GOE, "amp/set"), b"10", qos=1)
                await dev.publish(goe(OTHER, "amp/set"), b"12", qos=1)
                await until(lambda: (goe(GOE, "amp"), b"16") in seen, "the genuine key")
                await until(lambda: (goe(GOE, "amp/set"), b"10") in own, "its own setpoint")
                await until(lambda: (goe(OTHER, "amp/set"), b"12") in theirs, "the other's setpoint")
                assert not any(payload == b"32" for _, payload in seen), seen
                assert own == [(goe(GOE, "amp/set"), b"10")], "nothing of the other go-e's, nor apm/..."
                assert theirs == [(goe(OTHER, "amp/set"), b"12")]

    asyncio.run(run())
