"""The one place that wires the device: what a run is made of, started in order, stopped in reverse.

    RunPlan (typed parts, built by `apm run` from its arguments, or by `apm.cli.demo`)
      broker  -> the embedded amqtt broker with its logins (`EmbeddedBrokerPlan`), or the configured one
      source  -> a `ByteSource` (serial port, replay, a simulated meter) feeding a `apm.services.device.Device`,
                 with `apm.services.balancer.BalancerService` beside it (one Controller), or an
                 `Installation` that brings its own device, balancer and chargers (the demo)
      eco     -> `apm.services.eco.EcoService` beside them when there are prices (`EcoPlan`)

    async with running(plan) as run:         # everything started and connected
        await run.work                       # until the source ends (or cancelled: stop asked)

Nothing here imports `sim`: what needs the simulator (the demo's world, `--sim`'s meter) is built by the
command line (`apm.cli.demo`) and handed in as a part implementing `ByteSource` or `Installation`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from apm.core.capacity_guard import CapacityGuard
from apm.core.charger_state import ChargerState
from apm.core.config import ChargerConfig, DeviceConfig, OcppConfig
from apm.core.lines import fixed_shares
from apm.core.meter_state import BaselineStore
from apm.io.clock import Clock, RealClock, ScaledClock
from apm.io.storage.outbox import Outbox
from apm.services.balancer import BalancerService
from apm.services.device import CapacityStore, Device, SubscriptionSource
from apm.services.settings import Settings

if TYPE_CHECKING:
    import ssl

    import serial

    from apm.core.eco.prices import PriceSeries
    from apm.io.chargers.goe import GoeAdapter
    from apm.io.chargers.ocpp_server import OcppCentral
    from apm.io.http.web import WebPlan
    from apm.io.mqtt.auth import UserTable
    from apm.io.replay import Capture
    from apm.services.eco import EcoService

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
    settings_image: Path | None = None  # where owner settings changed while running are stored (None: not)
    capacity: CapacityStore | None = None  # where the capacity guard's month is kept


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
    chargers: ChargerEdges | None = None  # the OCPP and go-e edges
    broker_url: str = ""
    embedded: bool = False
    web_url: str = ""  # the local web page ("" when off)
    eco: EcoService | None = None  # Smart eco (None: no price source)
    settings: Settings | None = None  # the one path for owner settings (web page, Home Assistant)

    def charger_links(self) -> dict[str, dict[str, Any]]:
        """Each charger's protocol, connection, last report and limit (the live view)."""
        return charger_links(self.device, self.balancer, self.chargers)


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
    ocpp_passwords: Mapping[str, str] = field(default_factory=dict)  # charge point id -> its password
    web: WebPlan | None = None  # the local web page (None: off)


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
        goes = [c.id for c in plan.config.chargers if c.protocol == "goe"]
        if run.embedded and goes:
            # The go-e's fallback is the device's will on the broker; this broker dies with the device.
            log.warning("go-e %s: on the embedded broker a go-e keeps its last current if the device dies; "
                        "for a fallback of its own use protocol = \"ocpp\" (go-e firmware speaks OCPP 1.6J) "
                        "or a broker that outlives the device (docs/chargers.md)", ", ".join(goes))
        image = plan.storage.settings_image or (plan.web.image if plan.web is not None else None)
        run.settings = Settings(run.device, run.balancer, image=image)
        run.work, run.eco = await _with_eco(stack, plan, url, run.work, run.settings,
                                             run.device.controller.capacity)
        run.work = await _with_controls(stack, plan, url, run)
        run.work = _with_links(run)
        if plan.web is not None:
            run.web_url = await _web(stack, plan.web, run)
        yield run


async def _broker(stack: contextlib.AsyncExitStack, plan: RunPlan) -> str:
    """The broker's URL: the configuration's, or an embedded one started here."""
    b = plan.broker
    if b is None:
        assert plan.config.broker.url is not None
        return plan.config.broker.url
    from apm.io.mqtt.auth import Policy, UserTable
    from apm.io.mqtt.broker import EmbeddedBroker, EmbeddedBrokerError  # amqtt: only when embedded

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
        status_file=s.status_file, baseline_store=s.baseline, capacity_store=s.capacity))
    balancer = await stack.enter_async_context(BalancerService.beside(device, url=url))
    b = plan.config.broker
    login = {"username": b.username, "password": b.password} if b.username else {}
    edges = await attach_chargers(stack, device, balancer, url, passwords=plan.ocpp_passwords, mqtt_login=login)
    device.charger_links = lambda: charger_links(device, balancer, edges)  # for the status file
    work = await source.attach(stack, device)
    return Running(device, balancer, beside(balancer.run(), work), chargers=edges)


async def _with_eco(stack: contextlib.AsyncExitStack, plan: RunPlan, url: str, work: Work,
                    settings: Settings, guard: CapacityGuard | None = None) -> tuple[Work, EcoService | None]:
    """Smart eco beside ``work`` when there is a price source: requests on ``eco/request`` are
    planned jointly and published on ``eco/plan``, which the balancer follows; within the capacity
    guard's step when it is on (the same goal and month)."""
    from apm.core.eco.planner import Charger
    from apm.io.mqtt.link import MqttLink, link_settings
    from apm.io.mqtt.topics import Topics
    from apm.services.eco import EcoPlanner, EcoService, daily_defaults, request_topic

    config = plan.config
    if plan.eco is None or not config.chargers:
        log.info("Smart eco: off (no price source: --prices FILE or --price-api [SERVICE])")
        return work, None
    if plan.eco.refresh is not None:  # prices fetched in the background: the planner never waits for them
        work = beside(plan.eco.refresh, work)
    network = config.grid.network
    chargers = {c.id: Charger(c.id, max_a=c.max_a, phases=c.phases, network=network) for c in config.chargers}
    link = await stack.enter_async_context(MqttLink(url, client_id=f"apm-{config.serial}-eco",
                                                    **link_settings(config.broker)))
    budget = max(config.grid.fuse_a - config.grid.safety_margin_a, 0.0)
    service = EcoService(link, Topics(config.serial), EcoPlanner(chargers, plan.eco.prices, budget_a=budget,
                                                                       guard=guard),
                         defaults=daily_defaults(config))
    settings.listeners.append(service.on_settings)  # Smart eco on/off, a departure or energy changed
    stack.callback(settings.listeners.remove, service.on_settings)
    log.info("Smart eco: planning the requests on %s", request_topic(Topics(config.serial)))
    return beside(service.run(), work), service


async def _with_controls(stack: contextlib.AsyncExitStack, plan: RunPlan, url: str, run: Running) -> Work:
    """Home Assistant's controls (owner settings through ``run.settings``), the price and this hour's energy."""
    from apm.services.controls import HaControls

    assert run.settings is not None
    controls = await stack.enter_async_context(HaControls(
        run.settings, run.device, url=url, prices=plan.eco.prices if plan.eco is not None else None))
    return beside(controls.run(), run.work)


def _with_links(run: Running) -> Work:
    """Each charger's link retained on ``charger/<id>/link`` (Home Assistant's view of the live view's
    column), on the device's own MQTT link."""
    from apm.services.links import publish_links

    d = run.device
    return beside(publish_links(d.link, d.topics, run.charger_links, d.clock), run.work)


async def _web(stack: contextlib.AsyncExitStack, web: WebPlan, run: Running) -> str:
    """The local web page on the running parts; its URL."""
    from apm.io.http.web import WebError, WebServer
    from apm.services.web import DevicePage

    page = DevicePage(run.device, run.balancer, chargers=run.chargers, image=web.image, eco=run.eco,
                      settings=run.settings)
    try:
        server = await stack.enter_async_context(
            WebServer(web, serial=run.device.config.serial, snapshot=page.snapshot, change=page.change,
                      eco_change=page.eco_change))
    except WebError as exc:
        raise PlanError(str(exc)) from None
    listener = page.on_headroom(server.notify)
    run.device.headroom_listeners.append(listener)
    stack.callback(run.device.headroom_listeners.remove, listener)
    return server.url


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
        from apm.io.replay import paced

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
        from apm.io.serial.port import PortError, SettingsCache, candidates, open_port

        try:
            return open_port(self.path, candidates(SettingsCache(self.cache).get(self.path))[0]), None
        except PortError as exc:
            if str(exc) != said:
                log.warning("%s; retrying every %g s", exc, PORT_RETRY_S)
            return None, str(exc)

    async def _read(self, device: Device, port: serial.Serial) -> None:
        import serial

        from apm.services.device import PortLost, serial_chunks

        try:
            await self._detect(device, port)
            await device.run(serial_chunks(port.fileno()))
        except (PortLost, serial.SerialException, OSError) as exc:
            log.warning("%s: %s; waiting for the port to come back", self.path, exc)
        finally:
            port.close()

    async def _detect(self, device: Device, port: serial.Serial) -> None:
        """Find the serial settings (the remembered ones first), hand the reader to the device."""
        from apm.io.serial.port import SettingsCache, autodetect, candidates, diagnose

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


# --- real chargers: OCPP 1.6J and go-e beside the MQTT ones ------------------------------------------


@dataclass(frozen=True, slots=True)
class ChargerEdges:
    """The protocol edges of the chargers that are not "mqtt" ones (None: no such charger)."""

    ocpp: OcppCentral | None = None
    goe: GoeAdapter | None = None
    ids: Mapping[str, str] = field(default_factory=dict)  # charger id -> its OCPP id / go-e serial

    def set_limits(self, setpoints: Mapping[str, float]) -> None:
        for cid, amps in setpoints.items():
            if cid not in self.ids:
                continue  # an MQTT charger: its setpoint topic carries it
            edge = self.ocpp if self.ocpp is not None and self.ids[cid] in self.ocpp.chargers else self.goe
            if edge is not None:
                edge.set_limit(self.ids[cid] if edge is self.ocpp else cid, amps)

    def links(self) -> dict[str, dict[str, Any]]:
        """Per charger id: its protocol, connection, last report and current limit (for `apm info`)."""
        out: dict[str, dict[str, Any]] = {}
        for cid, ext in self.ids.items():
            if self.ocpp is not None and ext in self.ocpp.chargers:
                o = self.ocpp.links()[ext]
                out[cid] = {"protocol": "ocpp", "connected": o.connected, "last_report_at": o.last_report_at,
                            "limit_a": o.limit_a, "wanted_a": o.wanted_a, "status": o.status}
            elif self.goe is not None:
                g = self.goe.links()[cid]
                out[cid] = {"protocol": "goe", "connected": g.connected, "last_report_at": g.last_report_at,
                            "limit_a": g.limit_a, "wanted_a": g.wanted_a}
        return out


def charger_links(device: Device, balancer: BalancerService | None,
                  edges: ChargerEdges | None) -> dict[str, dict[str, Any]]:
    """Every configured charger's link, in the configuration's order: for OCPP and go-e what their edge
    knows (connected, last report, the limit the charger took); for a generic MQTT charger its last
    report and the setpoint published to it (``connected`` None: the broker, not we, holds its session)."""
    known = edges.links() if edges is not None else {}
    out: dict[str, dict[str, Any]] = {}
    for c in device.config.chargers:
        link = known.get(c.id)
        if link is None:
            state = device.chargers.get(c.id)
            wanted = balancer.setpoints.get(c.id) if balancer is not None else None
            link = {"protocol": "mqtt", "connected": None, "last_report_at": state.at if state else None,
                    "limit_a": wanted, "wanted_a": wanted}
        out[c.id] = link
    return out


def safe_current(config: DeviceConfig, charger: ChargerConfig) -> float:
    """The failsafe's current: the charger's share of the configuration's fixed current (all chargers may
    fall back at once: on each line the shares add up to at most the fixed current), capped by its rating."""
    return fixed_shares(config.fallback_a, config.grid.network, config.chargers)[charger.id]


async def attach_chargers(stack: contextlib.AsyncExitStack, device: Device, balancer: BalancerService, url: str,
                          *, passwords: Mapping[str, str] | None = None, ocpp_port: int | None = None,
                          mqtt_login: Mapping[str, str] | None = None) -> ChargerEdges:
    """Start the OCPP central system and the go-e adapter for the configured chargers of those protocols:
    the balancer's setpoints go to them, their reports to the device's Controller as the MQTT ones do."""
    config = device.config
    ocpp = await _ocpp(stack, device, passwords or {}, ocpp_port)
    goe = await _goe(stack, device, url, mqtt_login or {})
    ids = {c.id: c.charge_point_id for c in config.chargers if c.protocol == "ocpp"}
    ids.update({c.id: c.id for c in config.chargers if c.protocol == "goe"})
    edges = ChargerEdges(ocpp, goe, ids)
    if ids:
        balancer.setpoint_listeners.append(edges.set_limits)
    return edges


def _report_to(device: Device, rename: Mapping[str, str]) -> Callable[[ChargerState], None]:
    def report(state: ChargerState) -> None:
        if state.id in rename:
            state = dataclasses.replace(state, id=rename[state.id])
        device.on_charger_state(device.clock.now(), state)

    return report


async def _ocpp(stack: contextlib.AsyncExitStack, device: Device, passwords: Mapping[str, str],
                port: int | None) -> OcppCentral | None:
    from apm.io.chargers.ocpp_policy import OcppCharger, ProfilePolicy
    from apm.io.chargers.ocpp_server import OcppCentral

    config = device.config
    mine = [c for c in config.chargers if c.protocol == "ocpp"]
    if not mine:
        return None
    chargers = {c.charge_point_id: OcppCharger(password=passwords.get(c.charge_point_id),
                                               safe_current_a=safe_current(config, c), phases=c.phases)
                for c in mine}
    o = config.ocpp
    policy = ProfilePolicy(validity_s=o.validity_s, renew_s=o.renew_s)
    central = OcppCentral(chargers, host=o.listen, port=o.port if port is None else port, ssl=_ocpp_tls(o),
                          clock=device.clock, policy=policy,
                          on_report=_report_to(device, {c.charge_point_id: c.id for c in mine}))
    try:
        await stack.enter_async_context(central)
    except OSError as exc:
        raise PlanError(f"the OCPP central system on {o.listen}:{o.port}: {exc}") from None
    log.info("OCPP central system on %s for %s", central.url, ", ".join(chargers))
    return central


def _ocpp_tls(o: OcppConfig) -> ssl.SSLContext | None:
    if o.cert_file is None or o.key_file is None:
        return None
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(o.cert_file, o.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise PlanError(f"ocpp.cert_file/key_file: {exc}") from None
    return context


async def _goe(stack: contextlib.AsyncExitStack, device: Device, url: str,
               login: Mapping[str, str]) -> GoeAdapter | None:
    from apm.io.chargers.goe import MIN_A, GoeAdapter, GoeCharger

    config = device.config
    mine = [c for c in config.chargers if c.protocol == "goe" and c.goe_serial is not None]
    if not mine:
        return None
    # A go-e takes 6 A at least: below that the failsafe can only park it at 6 A.
    chargers = {c.id: GoeCharger(c.goe_serial, safe_current_a=max(MIN_A, safe_current(config, c)), max_a=c.max_a)
                for c in mine if c.goe_serial is not None}
    adapter = GoeAdapter(chargers, url, clock=device.clock, on_report=_report_to(device, {}),
                         client_prefix=f"apm-{config.serial}-goe", **login)
    await stack.enter_async_context(adapter)
    return adapter
