"""Supervision (issue 13): a task of the device that fails anyway is logged with its traceback and
ends `Device.run` (so `apm run` exits non-zero and systemd restarts it) within a second; a simulated
charger that stops hearing setpoints falls back to the safe current by itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from apm.core.config import ChargerConfig, DeviceConfig, GridConfig
from apm.io.clock import ScaledClock
from apm.io.mqtt.topics import Topics
from apm.services.device import Device, DeviceFailed
from sim.charger import SimCharger
from sim.charger_node import ChargerNode
from tests.hostile.payloads import GOOD_SETPOINT

pytestmark = pytest.mark.timeout(60)

CONFIG = DeviceConfig(serial="APMSUP1", grid=GridConfig(network="TN", fuse_a=25),
                      chargers=(ChargerConfig("a", max_a=32, phases=3),))
URL = "mqtt://127.0.0.1:9"  # nobody: neither part waits for the broker


async def silent() -> AsyncIterator[bytes]:
    await asyncio.Event().wait()  # a meter that sends nothing (the port stays open)
    yield b""


def test_a_failing_device_task_is_logged_and_ends_the_run(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)

    async def broken() -> AsyncIterator[object]:
        raise RuntimeError("a bug nobody foresaw")
        yield  # an async generator

    async def main() -> float:
        device = Device(CONFIG, url=URL)
        device.link.messages = broken  # type: ignore[method-assign]  # the listener's source fails
        async with device:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(DeviceFailed, match="device: listener failed: RuntimeError: a bug nobody foresaw"):
                await device.run(silent())
            return loop.time() - t0

    assert asyncio.run(main()) < 1.0
    assert "device: listener failed" in caplog.text and "Traceback" in caplog.text
    assert "a bug nobody foresaw" in caplog.text


def test_a_charger_that_hears_no_setpoint_falls_back_to_the_safe_current() -> None:
    async def main() -> tuple[float, float, int]:
        clock = ScaledClock(20.0)
        node = ChargerNode(SimCharger(CONFIG.chargers[0], "TN"), Topics(CONFIG.serial), url=URL, clock=clock,
                           state_every_s=1.0, setpoint_timeout_s=30.0)
        import json

        async with node:
            task = asyncio.create_task(node.run())
            await asyncio.sleep(0)  # the listener starts its timer
            assert node.on_message(Topics(CONFIG.serial).charger_setpoint("a"),
                                   json.dumps({**GOOD_SETPOINT, "current_a": 16.0}).encode())
            heard = clock.now()
            assert node.charger.setpoint_a == 16.0
            deadline = asyncio.get_running_loop().time() + 10
            while node.charger.setpoint_a != 6.0:
                assert asyncio.get_running_loop().time() < deadline, "never fell back"
                await asyncio.sleep(0.01)
            fell_at = clock.now()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return heard, fell_at, node.fell_back

    heard, fell_at, times = asyncio.run(main())
    assert times == 1
    assert 30.0 < fell_at - heard <= 30.0 + 1.0 + 0.5  # within a report period of the timeout
