"""The rig of the SIGKILL acceptance tests (issue 14): a device as an installer leaves it, and the house
around it, for tests/integration/test_ocpp_failsafe.py and test_goe_failsafe.py.

    config = cfg.loads(device_toml("goe", extra))
    with device_process(tmp_path, config, ["--broker", url]) as (device, line, log):
        house = House.on(tmp_path, line, "goe")          # world, meter feed, clock; house.dial.amps
        ...                                               # the test's charge points on house.world

The device is `apm run --port PTY` in its own process, its configuration and subscription in its flash
image. This process is the house: the simulated world (household, chargers, EVs, grid, fuse judge)
stepped once a second in real time (the device keeps the wall clock), and the meter writing its frames on
the pty. Two 1-phase 32 A chargers on TN, garage on L1 and carport on L2: each line carries one EV at 32 A
above the house (25 + 32 = 57 A, within 63 - 2). Once the house rises to 40 A, 32 A more would be 72 A on
a 63 A fuse; each charger's safe current (the 20 A fixed current: they share no line) is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apm.core import config as cfg
from apm.io.clock import ScaledClock
from apm.io.serial.port import VENDOR_SETTINGS, SettingsCache
from apm.io.tasks import stop
from sim.closed_loop import scenario_from_dict
from sim.cloud import provision
from sim.household import HouseSample
from sim.meter import scenario_meter
from sim.pipeline import MeterFeed, PacedWorld
from sim.serial_line import VirtualSerialPort

ROOT = Path(__file__).resolve().parents[1]
FUSE_A, MARGIN_A, FIXED_A = 63.0, 2.0, 20.0
HOUSE_A, HOUSE_LATER_A = 25.0, 40.0  # per line: ~17 kW of a cold evening, then every heater on at once
CHARGERS = {"garage": ("L1", "L2", "L3"), "carport": ("L2", "L3", "L1")}
GOE_SERIALS = {"garage": "010001", "carport": "010002"}


def _protocol_keys(cid: str, protocol: str) -> dict[str, str]:
    return {"protocol": protocol, **({"goe_serial": GOE_SERIALS[cid]} if protocol == "goe" else {})}


def device_toml(protocol: str, extra: str = "") -> str:
    chargers = ""
    for cid, rot in CHARGERS.items():
        keys = "".join(f'{k} = "{v}"\n' for k, v in _protocol_keys(cid, protocol).items())
        chargers += f'[[chargers]]\nid = "{cid}"\nphases = 1\nrotation = {list(rot)!r}\n{keys}'
    return f"""
serial = "APMKILL01"
installation_id = "inst-kill"
fixed_current_a = {FIXED_A:g}
[grid]
network = "TN"
fuse_a = {FUSE_A:g}
safety_margin_a = {MARGIN_A:g}
{chargers.replace("'", '"')}
[balancer]
max_step_up_a = 16
min_interval_s = 1
{extra}
"""


def world_scenario(tmp_path: Path, start: datetime, protocol: str) -> dict[str, object]:
    (tmp_path / "house.csv").write_text(f"time_s,l1_a,l2_a,l3_a\n0,{HOUSE_A},{HOUSE_A},{HOUSE_A}\n")
    return {
        "duration_s": 3600, "start": start.isoformat(),
        "grid": {"network": "TN", "fuse_a": FUSE_A, "safety_margin_a": MARGIN_A},
        "meter": {"vendor": "aidon", "kind": "3p-tn"},
        "household": {"trace": "house.csv"},
        "charger": [{"id": cid, "phases": 1, "rotation": list(rot), **_protocol_keys(cid, protocol)}
                    for cid, rot in CHARGERS.items()],
        "ev": [{"charger": cid, "phases": 1, "max_a": 32, "soc": 0.2, "battery_kwh": 80, "response_s": 1,
                "start_delay_s": 1, "ramp_a_per_s": 20} for cid in CHARGERS],
    }


class Dial:
    """The world's household with a dial: the test turns the heavy house heavier once the device is dead."""

    def __init__(self, amps: float) -> None:
        self.amps = amps

    def sample(self, t: float) -> HouseSample:
        a = self.amps
        return HouseSample((a, a, a), 3 * 230.0 * a)


@dataclass
class House:
    clock: ScaledClock
    origin: float
    world: PacedWorld
    dial: Dial
    feed: MeterFeed

    @classmethod
    def on(cls, tmp_path: Path, line: VirtualSerialPort, protocol: str) -> House:
        # Real time, as the device in its own process keeps it: limits run out by the wall clock.
        start = datetime.now(UTC)
        clock, origin = ScaledClock(1.0, start=start), start.timestamp()
        sc = scenario_from_dict(world_scenario(tmp_path, start, protocol), "sigkill", tmp_path)
        world = PacedWorld(sc, oracles=False)
        dial = world.household = Dial(HOUSE_A)
        feed = MeterFeed(scenario_meter(sc, world, start=start), line.awrite, clock, origin, world=world)
        clock.anchor(start)
        return cls(clock, origin, world, dial, feed)

    def running(self, *points: Coroutine[Any, Any, object]) -> contextlib.AbstractAsyncContextManager[Any]:
        """The world, the meter and the charge points' loops, stopped at the end."""
        return tasks(self.world.run(self.clock, self.origin, None), self.feed.run(None), *points)

    async def until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        await until_step(self.world, done, timeout, what)


async def until_step(world: PacedWorld, done: Callable[[], bool], timeout: float, what: str) -> None:
    """Until ``done()`` holds after a step of the world (checked once a simulated second)."""
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await world.reached(world.k + 1)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what}") from None


@contextlib.asynccontextmanager
async def tasks(*coros: Coroutine[Any, Any, object]) -> AsyncIterator[list[asyncio.Task[object]]]:
    started = [asyncio.create_task(c) for c in coros]
    try:
        yield started
    finally:
        await stop(*started)


@contextlib.contextmanager
def device_process(tmp_path: Path, config: cfg.DeviceConfig, args: list[str], env: dict[str, str] | None = None,
                   ) -> Iterator[tuple[subprocess.Popen[bytes], VirtualSerialPort, Path]]:
    """`apm run --port PTY` with ``config`` provisioned in a flash image; killed at the end."""
    image, cache, log = tmp_path / "flash.img", tmp_path / "serial.json", tmp_path / "device.log"
    provision(image, config, tmp_path, datetime.now(UTC))
    settings = VENDOR_SETTINGS["aidon"]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "APM_FLASH": str(image), "APM_SERIAL_CACHE": str(cache),
                **(env or {})}
    with VirtualSerialPort(settings, pace=1.0) as line, log.open("w") as err:
        SettingsCache(cache).put(line.path, settings)  # what the device found on an earlier start
        device = subprocess.Popen(
            [sys.executable, "-m", "apm", "run", "--port", line.path, "--image", str(image), "--plain",
             "--http", "off", *args],
            cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            yield device, line, log
        finally:
            device.kill()
            device.wait(10)
