"""A declined payment over MQTT: the issuer's signed revocation, retained on
``apm/<serial>/subscription/revocation``, ends the device's subscription at once (real mosquitto).

- `apm cloud decline --broker` publishes it; the device verifies it with the issuer key in its flash
  image, stores it there, publishes "revoked", and the balancer falls back to the fixed current.
- a revocation signed by another key is refused (logged, nothing stored, still valid).
- a device that starts after the revocation was published picks the retained message up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from apm.cli.main import main
from apm.core import token as tok
from apm.core.config import ChargerConfig, DeviceConfig, GridConfig
from apm.io.mqtt.topics import Topics, iso_ts
from apm.io.storage.flash import Flash
from apm.services.balancer import BalancerService
from apm.services.device import Device, MemorySubscription, flash_subscription
from sim.cloud import Installation, Issuer
from tests.mqtt_broker import Mosquitto, Observer

pytestmark = pytest.mark.timeout(60)

CONFIG = DeviceConfig(serial="APMREV01", installation_id="inst-rev", fixed_current_a=10,
                      grid=GridConfig(network="TN", fuse_a=25), chargers=(ChargerConfig("a", max_a=32, phases=3),))
T = Topics(CONFIG.serial)
HOME = Installation(CONFIG.installation_id, CONFIG.serial, chargers=1, meter="kamstrup")
PROMPT_S = 2.0  # "at once": the revoked state is published within this many wall seconds


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    cloud = Issuer.keygen(tmp_path / "cloud.json")
    cloud.subscribe(HOME, datetime.now(UTC))
    return cloud


def states(observer: Observer) -> list[str]:
    return [json.loads(p)["state"] for p in observer.payloads(T.subscription)]


def forged_revocation(token: str, tmp_path: Path) -> str:
    """A well-formed revocation of ``token`` for this APM, signed by a key that is not the issuer's."""
    other = Issuer.keygen(tmp_path / "forger.json")
    rv = tok.Revocation(installation_id=CONFIG.installation_id, serial=CONFIG.serial,
                        revokes=(str(tok.peek(token)["jti"]),), revocation_id=tok.new_token_id(),
                        issued_at=datetime.now(UTC), reason="payment declined")
    return tok.sign_revocation(rv, other._private_key())


async def publish_retained(broker: Mosquitto, topic: str, payload: str) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="cloud-test") as client:
        await client.publish(topic, payload.encode(), qos=1, retain=True)


async def until(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not done():
        assert asyncio.get_running_loop().time() < deadline, f"timed out ({timeout} s) waiting for {what}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def balancer_rig(broker: Mosquitto, image: Path) -> AsyncIterator[list[dict[str, Any]]]:
    """The balancer service apart from the device, verifying the token and revocations in ``image``
    itself, fed a fresh 20 A headroom and a charging charger; yields its setpoints."""
    setpoints: list[dict[str, Any]] = []
    async with aiomqtt.Client(broker.host, broker.port, identifier="rig") as client:
        await client.subscribe(T.charger_setpoint("a"), qos=1)
        async with BalancerService(CONFIG, url=broker.url, subscription=flash_subscription(image, CONFIG)) as service:
            assert await service.link.wait_connected(5)

            async def feed() -> None:
                while True:
                    ts = iso_ts(datetime.now(UTC))
                    await client.publish(T.headroom, json.dumps(
                        {"l1_a": 20.0, "l2_a": 20.0, "l3_a": 20.0, "ts": ts, "stale": False, "age_s": 0.2}))
                    await client.publish(T.charger_state("a"), json.dumps(
                        {"state": "charging", "current_l1_a": 16.0, "current_l2_a": 16.0, "current_l3_a": 16.0,
                         "max_a": 32, "phases": 3, "ts": ts}))
                    await asyncio.sleep(0.2)

            async def listen() -> None:
                async for m in client.messages:
                    setpoints.append(json.loads(bytes(m.payload)))  # type: ignore[arg-type]

            tasks = [asyncio.create_task(c) for c in (service.run(), feed(), listen())]
            try:
                yield setpoints
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


def test_a_declined_payment_revokes_at_once_and_the_balancer_falls_back(
        mosquitto: Mosquitto, issuer: Issuer, tmp_path: Path) -> None:
    image = tmp_path / "flash.img"
    flash = Flash(image)
    flash.write_token(issuer.issue(CONFIG.serial, datetime.now(UTC)))
    flash.write_issuer_key(issuer.public_key_pem)
    out = tmp_path / "revocation.jwt"

    async def main_() -> None:
        async with Observer(mosquitto.url, T.subscription) as obs, balancer_rig(mosquitto, image) as setpoints, \
                Device(CONFIG, url=mosquitto.url, subscription=flash_subscription(image, CONFIG)):
            await obs.wait_until(lambda: states(obs)[-1:] == ["valid"], 5)
            await until(lambda: any(d["mode"] == "protect" for d in setpoints), 5, "fuse protection")

            argv = ["cloud", "decline", "--state", str(issuer.state_path), "--serial", CONFIG.serial,
                    "--broker", mosquitto.url, "--out", str(out)]
            assert await asyncio.to_thread(main, argv) == 0
            declined_at = asyncio.get_running_loop().time()
            await obs.wait_until(lambda: states(obs)[-1:] == ["revoked"], PROMPT_S)
            mark = len(setpoints)
            await until(lambda: any(d["mode"] == "fixed" for d in setpoints[mark:]), PROMPT_S, "the fallback")
            fixed = next(d for d in setpoints[mark:] if d["mode"] == "fixed")
            assert fixed["current_a"] == CONFIG.fixed_current_a
            assert asyncio.get_running_loop().time() - declined_at < 2 * PROMPT_S
            status = json.loads(obs.payloads(T.subscription)[-1])
            assert status["previous"] == "valid" and status["granted"] == []

    asyncio.run(main_())
    revocation = out.read_text().strip()
    assert Flash(image).read().revocations == (revocation,)  # stored in the image: survives a restart
    assert tok.verify_revocation(revocation, issuer.public_key_pem).ok


def test_a_forged_revocation_changes_nothing(
        mosquitto: Mosquitto, issuer: Issuer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = issuer.issue(CONFIG.serial, datetime.now(UTC))
    store = MemorySubscription(CONFIG, token=token, public_key=issuer.public_key_pem)
    caplog.set_level(logging.INFO, logger="apm.services.device")

    async def main_() -> None:
        async with Observer(mosquitto.url, T.subscription) as obs, \
                Device(CONFIG, url=mosquitto.url, subscription=store) as device:
            await obs.wait_until(lambda: states(obs)[-1:] == ["valid"], 5)
            await publish_retained(mosquitto, T.subscription_revocation, forged_revocation(token, tmp_path))
            await until(lambda: "revocation refused" in caplog.text, 5, "the refusal")
            # Not JWT text at all: refused too.
            await publish_retained(mosquitto, T.subscription_revocation, "not a token")
            await until(lambda: caplog.text.count("revocation refused") >= 2, 5, "the second refusal")
            assert store.revocations == []
            assert device.evaluate_subscription().state.value == "valid"
            assert states(obs) == ["valid"]

            # The genuine one, after the forgeries, still works.
            await publish_retained(mosquitto, T.subscription_revocation, issuer.decline(CONFIG.serial,
                                                                                        datetime.now(UTC)))
            await obs.wait_until(lambda: states(obs)[-1:] == ["revoked"], PROMPT_S)
            assert len(store.revocations) == 1

    asyncio.run(main_())
    assert "signature" in caplog.text.lower()  # the reason is logged


def test_a_device_starting_later_picks_up_the_retained_revocation(
        mosquitto: Mosquitto, issuer: Issuer, tmp_path: Path) -> None:
    image = tmp_path / "flash.img"
    flash = Flash(image)
    flash.write_token(issuer.issue(CONFIG.serial, datetime.now(UTC)))
    flash.write_issuer_key(issuer.public_key_pem)

    async def main_() -> None:
        revocation = issuer.decline(CONFIG.serial, datetime.now(UTC))
        await publish_retained(mosquitto, T.subscription_revocation, revocation)
        async with Observer(mosquitto.url, T.subscription) as obs, \
                Device(CONFIG, url=mosquitto.url, subscription=flash_subscription(image, CONFIG)):
            await obs.wait_until(lambda: states(obs)[-1:] == ["revoked"], PROMPT_S + 3)
        assert Flash(image).read().revocations == (revocation,)
        # Started again: revoked from the image at once; the retained copy seen again stores nothing new.
        async with Observer(mosquitto.url, T.subscription, client_id="obs2") as obs2, \
                Device(CONFIG, url=mosquitto.url, subscription=flash_subscription(image, CONFIG)):
            await obs2.wait_until(lambda: "revoked" in states(obs2), 5)
            await asyncio.sleep(0.3)
            assert "valid" not in states(obs2)[1:]
        assert Flash(image).read().revocations == (revocation,)

    asyncio.run(main_())
