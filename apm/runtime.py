"""The one place that wires the device: what a run is made of, started in order, stopped in reverse.

    RunPlan (typed parts, built by `apm run` from its arguments, or by `apm.demo`)
      broker  -> the embedded amqtt broker with its logins (`EmbeddedBrokerPlan`), or the configured one
      source  -> a `ByteSource` (serial port, replay, a simulated meter) feeding a `apm.device.Device`,
                 with `apm.balancer_service.BalancerService` beside it (one Controller), or an
                 `Installation` that brings its own device, balancer and chargers (the demo)
      eco     -> `apm.eco_service.EcoService` beside them when there are prices (`EcoPlan`)

    async with running(plan) as run:         # everything started and connected
        await run.work                       # until the source ends (or cancelled: stop asked)

Nothing here imports `sim`: what needs the simulator (the demo's world, `--sim`'s meter) is built by the
command line (`apm.demo`) and handed in as a part implementing `ByteSource` or `Installation`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from apm.balancer_service import BalancerService
from apm.clock import Clock, RealClock, ScaledClock
from apm.config import DeviceConfig
from apm.device import Device, SubscriptionSource
from apm.meter_state import BaselineStore
from apm.outbox import Outbox

if TYPE_CHECKING:
    import serial

    from apm.broker_auth import UserTable
    from apm.eco.prices import PriceSeries
    from apm.replay import Capture

log = logging.getLogger("apm.run")

PORT_RETRY_S = 2.0  # a missing or lost serial port is tried again this often

Work = Coroutine[Any, Any, None]


class PlanError(Exception):
    """The plan cannot be carried out because of what was given (a broker port that is taken): bad input."""


# --- the parts --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbeddedBrokerPlan:
    """The broker in the device's process, and who may log in to it."""

    port: int
    host: str
    users: UserTable
    users_path: Path | None
    guests: UserTable | None = None  # logins for this run only (the demo's simulated chargers)
    any_port_if_taken: bool = False  # the demo moves to a free port rather than fail


@dataclass(frozen=True, slots=True)
class Storage:
    """What the device keeps, and what it may do."""

    subscription: SubscriptionSource
    outbox: Outbox | None = None  # None: records wait in memory
    baseline: BaselineStore | None = None  # where the hourly energy baseline is kept
    status_file: Path | None = None  # read by `apm info`


@dataclass(frozen=True, slots=True)
class EcoPlan:
    """Smart eco's prices (a function of now) and, for a price service, the background refresh."""

    prices: Callable[[datetime], PriceSeries]
    refresh: Work | None = None


@dataclass(slots=True)
class Running:
    """A started run: its parts (for the views and the summary) and the work that drives them."""

    device: Device
    balancer: BalancerService
    work: Work
    nodes: Sequence[object] = ()  # the demo's simulated chargers, for the live view
    broker_url: str = ""
    embedded: bool = False


@runtime_checkable
class ByteSource(Protocol):
    """Where the meter's bytes come from (a serial port, a replay, a simulated meter)."""

    @property
    def clock(self) -> Clock: ...

    async def attach(self, stack: contextlib.AsyncExitStack, device: Device) -> Work:
        """Open what the source needs (closed by ``stack``); the work that feeds ``device``."""
        ...


@runtime_checkable
class Installation(Protocol):
    """A whole installation that brings its own device, balancer and chargers (the demo's world)."""

    async def start(self, stack: contextlib.AsyncExitStack, url: str, config: DeviceConfig,
                    storage: Storage) -> Running: ...


@dataclass(frozen=True, slots=True)
class RunPlan:
    config: DeviceConfig
    source: ByteSource | Installation
    storage: Storage
    broker: EmbeddedBrokerPlan | None = None  # None: the configuration's broker (config.broker.url)
    eco: EcoPlan | None = None


# --- starting ---------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(plan: RunPlan) -> AsyncIterator[Running]:
    """Everything of ``plan`` started (broker, device, balancer, eco); stopped in reverse on the way out."""
    async with contextlib.AsyncExitStack() as stack:
        url = await _broker(stack, plan)
        if isinstance(plan.source, Installation):
            run = await plan.source.start(stack, url, plan.config, plan.storage)
        else:
            run = await _device(stack, plan, plan.source, url)
        run.broker_url, run.embedded = url, plan.broker is not None
        run.work = await _with_eco(stack, plan, url, run.work)
        yield run


async def _broker(stack: contextlib.AsyncExitStack, plan: RunPlan) -> str:
    """The broker's URL: the configuration's, or an embedded one started here."""
    b = plan.broker
    if b is None:
        assert plan.config.broker.url is not None
        return plan.config.broker.url
    from apm.broker import EmbeddedBroker, EmbeddedBrokerError  # amqtt: only when embedded
    from apm.broker_auth import Policy, UserTable

    policy = Policy(plan.config.serial, b.users, path=b.users_path,
                    guests=b.guests if b.guests is not None else UserTable())
    broker = EmbeddedBroker(port=b.port, host=b.host, policy=policy)
    try:
        await broker.start()
    except EmbeddedBrokerError as exc:
        if not b.any_port_if_taken or b.port == 0:
            raise PlanError(str(exc)) from None
        log.warning("%s; the demo takes any free port instead", exc)
        broker = EmbeddedBroker(port=0, host=b.host, policy=policy)
        await broker.start()
    stack.push_async_callback(broker.stop)
    return broker.url


async def _device(stack: contextlib.AsyncExitStack, plan: RunPlan, source: ByteSource, url: str) -> Running:
    s = plan.storage
    device = await stack.enter_async_context(Device(
        plan.config, url=url, clock=source.clock, outbox=s.outbox, subscription=s.subscription,
        status_file=s.status_file, baseline_store=s.baseline))
    balancer = await stack.enter_async_context(BalancerService.beside(device, url=url))
    work = await source.attach(stack, device)
    return Running(device, balancer, beside(balancer.run(), work))


async def _with_eco(stack: contextlib.AsyncExitStack, plan: RunPlan, url: str, work: Work) -> Work:
    """Smart eco beside ``work`` when there is a price source: requests on ``eco/request`` are
    planned jointly and published on ``eco/plan``, which the balancer follows."""
    from apm.eco.planner import Charger
    from apm.eco_service import EcoPlanner, EcoService, request_topic
    from apm.mqtt_link import MqttLink, link_settings
    from apm.topics import Topics

    config = plan.config
    if plan.eco is None or not config.chargers:
        log.info("Smart eco: off (no price source: --prices FILE or --price-api URL)")
        return work
    if plan.eco.refresh is not None:  # prices fetched in the background: the planner never waits for them
        work = beside(plan.eco.refresh, work)
    network = config.grid.network
    chargers = {c.id: Charger(c.id, max_a=c.max_a, phases=c.phases, network=network) for c in config.chargers}
    link = await stack.enter_async_context(MqttLink(url, client_id=f"apm-{config.serial}-eco",
                                                    **link_settings(config.broker)))
    budget = max(config.grid.fuse_a - config.grid.safety_margin_a, 0.0)
    service = EcoService(link, Topics(config.serial), EcoPlanner(chargers, plan.eco.prices, budget_a=budget))
    log.info("Smart eco: planning the requests on %s", request_topic(Topics(config.serial)))
    return beside(service.run(), work)


async def beside(background: Awaitable[None], work: Awaitable[None]) -> None:
    """Run ``work`` with ``background`` beside it; a failure of either ends both."""
    bg = asyncio.ensure_future(background)
    main = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait([bg, main], return_when=asyncio.FIRST_COMPLETED)
        if bg in done:
            main.cancel()
            await asyncio.gather(main, return_exceptions=True)
            bg.result()
        await main
    finally:
        # Cancelled from outside (stop asked): the work must stop too, not run on while the parts
        # it feeds are being closed.
        for t in (bg, main):
            t.cancel()
        await asyncio.gather(bg, main, return_exceptions=True)


# --- byte sources -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplaySource:
    """A captured dump, paced at ``speed`` times real time."""

    capture: Capture
    speed: float
    clock: Clock = field(default_factory=RealClock)

    @classmethod
    def paced(cls, capture: Capture, speed: float) -> ReplaySource:
        return cls(capture, speed, ScaledClock(speed, start=datetime.now().astimezone().replace(microsecond=0)))

    async def attach(self, stack: contextlib.AsyncExitStack, device: Device) -> Work:
        return self._run(device)

    async def _run(self, device: Device) -> None:
        from apm.replay import paced

        capture = self.capture

        async def chunks() -> AsyncIterator[bytes]:
            async for _, data in paced(capture.chunks(), self.speed):
                yield data

        for d in capture.damage:
            log.warning("%s: %s: %s", capture.path, d.where, d.reason)
        await device.run(chunks())
        device.reader.close()
        log.info("replay of %s finished", capture.path)


@dataclass(frozen=True, slots=True)
class SerialSource:
    """The HAN port, read for as long as the device runs: a port that is missing or goes away (an
    unplugged adapter) is waited for, while the device and the balancer go on without meter data."""

    path: str
    port: serial.Serial | None = None  # opened already (a --port given on the command line)
    cache: str | None = None  # where serial settings that worked are remembered
    probe_s: float = 12.0  # time per serial-settings attempt while auto-detecting
    clock: Clock = field(default_factory=RealClock)

    async def attach(self, stack: contextlib.AsyncExitStack, device: Device) -> Work:
        return self._run(device)

    async def _run(self, device: Device) -> None:
        port = self.port
        said: str | None = None
        while True:
            if port is None:
                port, said = self._open(said)
                if port is None:
                    await asyncio.sleep(PORT_RETRY_S)
                    continue
            said = None
            await self._read(device, port)
            port = None
            await asyncio.sleep(PORT_RETRY_S)

    def _open(self, said: str | None) -> tuple[serial.Serial | None, str | None]:
        """The port, or None and the problem (logged once until it changes)."""
        from apm.serial_link import PortError, SettingsCache, candidates, open_port

        try:
            return open_port(self.path, candidates(SettingsCache(self.cache).get(self.path))[0]), None
        except PortError as exc:
            if str(exc) != said:
                log.warning("%s; retrying every %g s", exc, PORT_RETRY_S)
            return None, str(exc)

    async def _read(self, device: Device, port: serial.Serial) -> None:
        import serial

        from apm.device import PortLost, serial_chunks

        try:
            await self._detect(device, port)
            await device.run(serial_chunks(port.fileno()))
        except (PortLost, serial.SerialException, OSError) as exc:
            log.warning("%s: %s; waiting for the port to come back", self.path, exc)
        finally:
            port.close()

    async def _detect(self, device: Device, port: serial.Serial) -> None:
        """Find the serial settings (the remembered ones first), hand the reader to the device."""
        from apm.serial_link import SettingsCache, autodetect, candidates, diagnose

        cache = SettingsCache(self.cache)
        path = port.port
        remembered = cache.get(path)
        order = candidates(remembered)
        attempts: list[Any] = []
        said = None
        while True:
            deadline = time.monotonic() + self.probe_s * len(order)
            try:
                detection = await asyncio.to_thread(
                    autodetect, port, order, self.probe_s, deadline=deadline,
                    ct_ratio=device.config.grid.ct_ratio, on_attempt=attempts.append)
            except asyncio.CancelledError:
                port.close()  # ends the probing thread's read at once
                raise
            if detection.link is not None:
                break
            diagnosis = diagnose(attempts, path)
            if diagnosis is not None and diagnosis.code != said:
                said = diagnosis.code
                log.warning("%s: nothing decodes yet [%s]: %s; still trying", path, diagnosis.code, diagnosis)
        link = detection.link
        how = "remembered" if link.settings == remembered else "auto-detected"
        log.info("reading %s at %s (%s)", path, link.settings, how)
        if link.settings != remembered:
            try:
                cache.put(path, link.settings)
            except OSError as exc:
                log.warning("cannot remember the serial settings in %s: %s", cache.path, exc)
        s = link.settings
        device.reader = link.reader
        device.char_time_s = (1 + s.bytesize + (s.parity != "N") + s.stopbits) / s.baud
        now = device.clock.now()
        for r in detection.readings:
            device.on_reading(now, r)
