"""The parts of `apm run` that need the simulator: the demo's installation and `--sim`'s meter.

They implement `apm.services.runtime`'s protocols (`Installation`, `ByteSource`), so the runtime wires them like
any other part without importing `sim` itself. Only the command line imports this module.

    demo = Demo.load(speed=10)                      # sim/scenarios/demo.toml as the device's installation
    plan = RunPlan(demo.config, demo, storage, broker=..., eco=EcoPlan(demo_prices))
    plan = RunPlan(config, SimMeter("aidon", "3p-it", speed=10), storage)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from apm.core.config import DeviceConfig
from apm.core.eco.prices import PriceSeries
from apm.io.clock import Clock, ScaledClock
from apm.io.mqtt.auth import Login, Role, UserTable
from apm.services.device import Device
from apm.services.runtime import Running, Storage, Work, beside
from sim.closed_loop import Scenario, ScenarioError, load_scenario
from sim.pipeline import DEMO_SCENARIO, Pipeline, device_config

log = logging.getLogger("apm.run")

DEMO_SERIAL = "APMDEMO01"


class DemoError(Exception):
    """The bundled demo scenario does not load (a broken install)."""


@dataclass(frozen=True, slots=True)
class Demo:
    """`apm run --demo`: the bundled scenario's world (household, EVs, chargers on MQTT) around the device."""

    scenario: Scenario
    config: DeviceConfig
    speed: float = 1.0
    logins: Mapping[str, Login] = field(default_factory=dict)  # charger id -> its broker login

    @classmethod
    def load(cls, speed: float) -> Demo:
        try:
            scenario = load_scenario(DEMO_SCENARIO)
        except ScenarioError as exc:
            raise DemoError(f"the demo scenario: {exc}") from None
        return cls(scenario, device_config(scenario, DEMO_SERIAL), speed)

    def guests(self) -> tuple[UserTable, Demo]:
        """Broker logins for the simulated chargers, each limited to its own topics (this run only)."""
        table = UserTable()
        logins: dict[str, Login] = {}
        for c in self.config.chargers:
            role = Role("goe", c.goe_serial) if c.protocol == "goe" and c.goe_serial else Role("charger", c.id)
            table, logins[c.id] = table.add(f"sim-charger-{c.id}", role)
        return table, Demo(self.scenario, self.config, self.speed, logins)

    async def start(self, stack: contextlib.AsyncExitStack, url: str, config: DeviceConfig,
                    storage: Storage) -> Running:
        now = datetime.now().astimezone().replace(microsecond=0)
        midnight = now.replace(hour=0, minute=0, second=0)
        p = Pipeline(self.scenario, speed=self.speed, broker_url=url, duration_s=None, start=now,
                     house_offset_s=(now - midnight).total_seconds(), serial=config.serial, oracles=False,
                     subscription=storage.subscription, outbox=storage.outbox, broker=config.broker,
                     charger_logins=self.logins)
        await stack.enter_async_context(p)
        assert p.device is not None and p.balancer is not None
        return Running(p.device, p.balancer, _until_stopped(p), nodes=p.nodes)


async def _until_stopped(p: Pipeline) -> None:
    await p.run()  # for ever (duration_s None): the report is the scenario's, not the device's


def demo_prices(now: datetime) -> PriceSeries:
    """The bundled sample week moved by whole weeks to cover ``now`` (a demo has no price service)."""
    from apm.core.eco.prices import PriceSlot, sample_week

    week = sample_week()
    shift = timedelta(weeks=(now - week.start) // timedelta(weeks=1))
    return PriceSeries(week.area, tuple(PriceSlot(s.start + shift, s.end + shift, s.nok_per_kwh)
                                        for s in week.slots))


@dataclass(frozen=True, slots=True)
class SimMeter:
    """`apm run --sim VENDOR:KIND`: a simulated meter writing its frames to a virtual serial port."""

    vendor: str
    kind: str
    speed: float
    clock: Clock = field(default_factory=lambda: ScaledClock(1.0))

    @classmethod
    def paced(cls, vendor: str, kind: str, speed: float) -> SimMeter:
        start = datetime.now().astimezone().replace(microsecond=0)
        return cls(vendor, kind, speed, ScaledClock(speed, start=start))

    async def attach(self, stack: contextlib.AsyncExitStack, device: Device) -> Work:
        from apm.io.serial.port import VENDOR_SETTINGS, open_port
        from apm.services.device import serial_chunks
        from sim.frames import MeterSpec
        from sim.meter import Meter
        from sim.pipeline import MeterFeed
        from sim.serial_line import VirtualSerialPort

        settings = VENDOR_SETTINGS[self.vendor]
        line = await stack.enter_async_context(VirtualSerialPort(settings, pace=self.speed))
        port = stack.enter_context(open_port(line.path, settings))
        device.char_time_s = settings.bits_per_char / settings.baud
        start = self.clock.datetime().astimezone()
        meter = Meter(MeterSpec(self.vendor, self.kind), start)
        feed = MeterFeed(meter, line.awrite, self.clock, start.timestamp())
        log.info("simulated %s %s meter on %s (%s)", self.vendor, self.kind, line.path, settings)
        return beside(feed.run(None), device.run(serial_chunks(port.fileno())))
