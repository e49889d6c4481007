"""The closed loop through the real parts, on a scaled clock.

    sim.world.World (household + SimChargers -> sim.grid -> FuseJudge, once per simulated second)
      -> sim.meter.Meter (the vendor's frames, measuring the world's line currents)
      -> VirtualSerialPort (a real pty, paced at the clock's speed)
      -> pyserial port read by apm.services.device.Device (HanReader -> apm.core.controller.Controller, the one the
         in-process loop drives) -> apm.services.balancer.BalancerService (the same Controller's setpoints)
      -> MQTT broker (embedded amqtt, or --broker) -> charger/<id>/setpoint
      -> sim.charger_node.ChargerNode -> the SimChargers of the World -> charger/<id>/state -> the device

    report = await run_pipeline(load_scenario("s.toml"), speed=20)

Every part runs in one event loop and reads one `apm.io.clock.ScaledClock`; nothing talks to anything
else except through the pty and the broker. The scenario and the report are those of the in-process
loop (sim/closed_loop.py): same keys, the same world (sim/world.py: physics, oracles, fuse judge); the report
adds ``pipeline`` (speed, broker, message counts, how far the world fell behind the clock).

The world steps once per simulated second (the scenario's ``step_s`` is for the in-process loop) and
catches up second by second when the event loop falls behind, so the physics never skips; what a slow
machine costs is control delay, reported as ``pipeline.max_lag_s`` (wall seconds behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from apm.core.config import (
    BalancerSettings,
    BrokerConfig,
    ChargerConfig,
    DeviceConfig,
    GridConfig,
    OcppConfig,
)
from apm.io.clock import Clock, ScaledClock
from apm.io.mqtt.link import link_settings
from apm.io.mqtt.topics import Topics
from apm.io.serial.port import VENDOR_SETTINGS, open_port
from apm.io.storage.outbox import MemoryOutbox, Outbox
from apm.io.tasks import stop
from apm.services.balancer import BalancerService
from apm.services.device import Device, SubscriptionSource, granted_subscription, serial_chunks
from apm.services.runtime import ChargerEdges, attach_chargers
from sim.charger import SimCharger
from sim.charger_node import ChargerNode
from sim.closed_loop import Scenario, Trace
from sim.goe_charger import SimGoeCharger
from sim.grid import GridState
from sim.meter import Meter, Push, scenario_meter
from sim.ocpp_charger import SimOcppChargePoint
from sim.serial_line import VirtualSerialPort
from sim.world import World

log = logging.getLogger(__name__)

SERIAL = "APMSIM0001"
DEMO_SCENARIO = Path(__file__).resolve().parent / "scenarios" / "demo.toml"  # `apm run --demo`
CONNECT_TIMEOUT_S = 10.0
_HISTORY_S = 180  # seconds of line currents kept for the meter (it samples up to a minute back)
# A run is faithful while the world never falls further than this behind the clock, in simulated
# seconds: the device then decides at most that late, less than an EV's own response (3 s) plus a
# margin, and far inside the stale hold (stale_after_s >= 10 s on top of the meter's list interval).
# Beyond it a loaded machine changes the day: the report says so and the soak tests fail.
LAG_LIMIT_S = 5.0


class PipelineError(RuntimeError):
    """The pipeline cannot start (no broker, no pty); the message says why."""


def device_config(sc: Scenario, serial: str = SERIAL) -> DeviceConfig:
    """The installation the scenario describes, as the device's configuration."""
    # The scenario's top-level fixed current wins over a [balancer] one, as in sim/closed_loop.py.
    balancer = {k: v for k, v in sc.balancer.items() if k != "fixed_current_a"}
    return DeviceConfig(serial=serial, installation_id=f"sim-{sc.name}",
                        grid=GridConfig(network=sc.network, fuse_a=sc.fuse_a,
                                        safety_margin_a=sc.safety_margin_a),
                        chargers=sc.chargers, broker=BrokerConfig(), fixed_current_a=sc.fallback_a,
                        balancer=BalancerSettings.from_dict(balancer), headroom=sc.headroom_settings,
                        ocpp=OcppConfig(listen="127.0.0.1"))  # the simulated charge points are local


PROTOCOLS = ("mqtt", "ocpp", "goe")


def with_protocol(sc: Scenario, protocol: str) -> Scenario:
    """``sc`` with every ``[[charger]]`` on ``protocol`` (`apm sim run --protocol`): the same day through
    another protocol. A go-e without a ``goe_serial`` takes its charger's id (what the topics allow)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    chargers = []
    for c in sc.chargers:
        serial = c.goe_serial
        if protocol == "goe" and serial is None:
            serial = re.sub(r"[^A-Za-z0-9_-]", "_", c.id)
        chargers.append(msgspec.structs.replace(c, protocol=protocol, goe_serial=serial))
    return dataclasses.replace(sc, chargers=tuple(chargers))


# --- the world ---------------------------------------------------------------------------------------


class PacedWorld(World):
    """`sim.world.World` stepped once per second of a clock, with hooks after every step and a way
    to wait for a step (the meter measures only seconds the world has reached)."""

    def __init__(self, sc: Scenario, **kwargs: Any) -> None:
        super().__init__(sc, step_s=1.0, history_s=_HISTORY_S, **kwargs)
        self._advanced = asyncio.Event()
        self.after_step: list[Callable[[], None]] = []
        self.max_lag_s = 0.0  # wall seconds
        self.late_steps = 0  # steps taken more than LAG_LIMIT_S simulated seconds late

    def step(self, k: int) -> GridState:
        g = super().step(k)
        self.record()
        for hook in self.after_step:
            hook()
        old, self._advanced = self._advanced, asyncio.Event()
        old.set()
        return g

    async def reached(self, k: int) -> None:
        """Until second ``k`` has been stepped."""
        while self.k < k:
            await self._advanced.wait()

    async def run(self, clock: Clock, origin: float, duration_s: float | None) -> None:
        """Step every second from 0 to ``duration_s`` (None: for ever) as the clock reaches it."""
        k = 0
        while duration_s is None or k <= duration_s:
            due = origin + k
            await clock.sleep_until(due)
            lag = clock.lag(due)
            self.max_lag_s = max(self.max_lag_s, lag)
            if lag * clock.speed > LAG_LIMIT_S:
                self.late_steps += 1
            self.step(k)
            k += 1


# --- the meter on the line -----------------------------------------------------------------------------


class MeterFeed:
    """Pushes a `Meter`'s frames to ``write`` when the clock reaches them (and the world has measured).

    The meter's faults (outages, repeated hourly lists, skew) are its own (`sim.meter.Meter`).
    ``on_written(push, wall_time)`` is called as each frame's last byte has been written. A feed that
    fell further behind the world than the meter remembers (a loaded machine at a high speed) skips
    the pushes it missed, as a real meter would not queue them: ``skipped`` counts them.
    """

    def __init__(self, meter: Meter, write: Callable[[bytes], Awaitable[None]], clock: Clock, origin: float,
                 *, world: PacedWorld | None = None,
                 on_written: Callable[[Push, float], None] | None = None) -> None:
        self.meter = meter
        self.write = write
        self.clock = clock
        self.origin = origin
        self.world = world
        self.on_written = on_written
        self.frames = 0
        self.bytes = 0
        self.skipped = 0
        if world is not None:
            # The meter measures every second as the world reaches it, however late its pushes go out.
            world.after_step.append(lambda: meter.sample(world.k))

    async def run(self, duration_s: float | None) -> None:
        meter = self.meter
        t, cursor = 0.0, 0.0
        window = 10.0
        while duration_s is None or t < duration_s:
            t1 = t + window if duration_s is None else min(t + window, duration_s)
            for pt, _list in meter.push_times(t, t1):
                if self.world is not None:
                    await self.world.reached(math.floor(pt))
                await self.clock.sleep_until(self.origin + pt)
                if not meter.keeps(pt):
                    self.skipped += 1
                    cursor = pt + 1e-4
                    continue
                # One push at a time: the meter measures (samples the world) when it sends, not before.
                pushes = meter.pushes_between(cursor, pt + 1e-4)
                cursor = pt + 1e-4
                for push in pushes:
                    await self._send(push)
            t = t1

    async def _send(self, push: Push) -> None:
        await self.write(push.frame)
        self.frames += 1
        self.bytes += len(push.frame)
        if self.on_written is not None:
            self.on_written(push, time.monotonic())


# --- the whole loop --------------------------------------------------------------------------------------


class Pipeline:
    """Everything of the module doc, as an async context manager:

        async with Pipeline(sc, speed=20, broker_url=url) as p:
            report = await p.run()

    ``p.clock``, ``p.origin`` (clock time of t = 0), ``p.world``, ``p.device``, ``p.balancer`` and
    ``p.nodes`` are there for tests and the live view. ``duration_s`` None runs until cancelled.
    """

    def __init__(
        self,
        sc: Scenario,
        *,
        speed: float = 20.0,
        broker_url: str | None = None,
        trace: Trace | None = None,
        duration_s: float | None | str = "scenario",
        start: datetime | None = None,
        house_offset_s: float | None = None,  # None: the scenario's
        serial: str = SERIAL,
        subscription: SubscriptionSource | None = None,
        outbox: Outbox | None = None,
        state_every_s: float = 1.0,
        link_options: Mapping[str, Any] | None = None,
        oracles: bool = True,
        broker: BrokerConfig | None = None,
        charger_logins: Mapping[str, Any] | None = None,
    ) -> None:
        self.sc = sc
        self.speed = speed
        self.duration_s: float | None = (sc.duration_s if duration_s == "scenario"
                                         else duration_s)  # type: ignore[assignment]
        self.start = start or sc.start
        self.origin = self.start.timestamp()
        self.clock = ScaledClock(speed, start=self.start)
        # Time stands at the start while the parts connect: what they set up then (the OCPP chargers'
        # profiles start "now") must not lie in the future of t = 0, which `run` anchors to the start.
        # At 100x a second of connecting would be 100 s, beyond the profiles' skew allowance.
        self.clock.freeze()
        self.broker_url = broker_url
        self.config = device_config(sc, serial)
        if broker is not None:  # the device's login and TLS (`apm run --demo`)
            self.config = msgspec.structs.replace(self.config, broker=broker)
        self.charger_logins = dict(charger_logins or {})  # charger id -> apm.io.mqtt.auth.Login
        self.topics = Topics(serial)
        self.world = PacedWorld(sc, trace=trace, house_offset_s=house_offset_s, oracles=oracles,
                           duration_s=self.duration_s if self.duration_s is not None else math.inf)
        self.subscription = subscription or granted_subscription(
            "simulated subscription (closed-loop simulation)")
        self.outbox = outbox if outbox is not None else MemoryOutbox()
        self.state_every_s = state_every_s
        self.link_options = dict(link_options or {})
        self.device: Device | None = None
        self.balancer: BalancerService | None = None
        self.nodes: list[ChargerNode] = []
        self.points: list[SimOcppChargePoint | SimGoeCharger] = []  # chargers behind OCPP or go-e
        self.edges: ChargerEdges | None = None
        self.feed: MeterFeed | None = None
        self.line: VirtualSerialPort | None = None
        self._stack = contextlib.AsyncExitStack()
        self._point_tasks: list[asyncio.Task[None]] = []
        self._wall = 0.0

    async def __aenter__(self) -> Pipeline:
        try:
            await self._enter()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _enter(self) -> None:
        stack = self._stack
        sc = self.sc
        url = self.broker_url
        if url is None:
            from apm.io.mqtt.broker import EmbeddedBroker

            url = (await stack.enter_async_context(EmbeddedBroker(port=0))).url
        else:
            await _check_reachable(url)
        self.broker_url = url
        s = VENDOR_SETTINGS[sc.vendor]
        self.line = await stack.enter_async_context(
            VirtualSerialPort(s, pace=self.speed))
        port = stack.enter_context(open_port(self.line.path, s))  # the device's side: pyserial
        self._fd = port.fileno()
        meter = scenario_meter(sc, self.world, start=self.start)
        self.feed = MeterFeed(meter, self.line.awrite, self.clock, self.origin, world=self.world)
        opts = self.link_options
        self.device = await stack.enter_async_context(Device(
            self.config, url=url, clock=self.clock, outbox=self.outbox, subscription=self.subscription,
            stale_after_s=self._stale_after(),
            char_time_s=self.line.settings.bits_per_char / self.line.settings.baud, link_options=opts))
        # the device's own Controller decides: the balancer service only publishes its setpoints
        self.balancer = await stack.enter_async_context(
            BalancerService.beside(self.device, url=url, link_options=opts))
        cfg = {c.id: c for c in self.config.chargers}
        self.edges = await attach_chargers(stack, self.device, self.balancer, url, ocpp_port=0)
        for charger in self.world.chargers.values():
            if cfg[charger.id].protocol != "mqtt":
                self.points.append(self._real_charger(charger, cfg[charger.id], url))
                continue
            login = self.charger_logins.get(charger.id)
            node_opts = {**opts, **link_settings(self.config.broker)}
            if login is not None:  # each charger logs in as itself: it may touch only its own topics
                node_opts.update(username=login.username, password=login.password)
            node = await stack.enter_async_context(ChargerNode(
                charger, self.topics, url=url, clock=self.clock, origin=self.origin, steps=False,
                state_every_s=self.state_every_s, link_options=node_opts))
            self.nodes.append(node)
            self.world.after_step.append(node.after_step)
        links = [self.device.link, self.balancer.link, *(n.link for n in self.nodes)]
        ok = await asyncio.gather(*(link.wait_connected(CONNECT_TIMEOUT_S) for link in links))
        if not all(ok):
            err = next((link.stats.last_error for link in links if not link.is_connected), None)
            raise PipelineError(f"cannot reach the MQTT broker at {url} within {CONNECT_TIMEOUT_S:g} s"
                                + (f": {err}" if err else ""))
        await self._connect_points()

    async def _connect_points(self) -> None:
        """Start the OCPP and go-e chargers and wait until each is connected (an OCPP one also holds its
        safe base profile), as a real installation's chargers are before the day begins: at 100x, a
        second of booting would otherwise be 100 s of chargers at their own maximum."""
        self._point_tasks = [asyncio.create_task(p.run(), name=f"charger {p.charger.id}") for p in self.points]
        self._stack.push_async_callback(stop, *self._point_tasks)
        central = self.edges.ocpp if self.edges is not None else None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await asyncio.gather(*(p.connected.wait() for p in self.points))
                if central is not None:
                    await central.wait_for(lambda c: all(link.base_profile for link in c.links().values()),
                                           timeout=CONNECT_TIMEOUT_S)
        except TimeoutError:
            late = [p.charger.id for p in self.points if not p.connected.is_set()]
            raise PipelineError(f"the simulated chargers did not connect within {CONNECT_TIMEOUT_S:g} s"
                                + (f": {', '.join(late)}" if late else " (no base profile)")) from None

    def _real_charger(self, charger: SimCharger, config: ChargerConfig, url: str) -> SimOcppChargePoint | SimGoeCharger:
        """The simulated charger behind the real protocol: an OCPP 1.6J charge point or a go-e on MQTT."""
        assert self.edges is not None
        point: SimOcppChargePoint | SimGoeCharger
        if config.protocol == "ocpp":
            assert self.edges.ocpp is not None
            point = SimOcppChargePoint(charger, self.edges.ocpp.url,
                                       cp_id=config.charge_point_id, clock=self.clock, origin=self.origin,
                                       steps=False, validate=False)
        else:
            assert config.goe_serial is not None
            login = self.charger_logins.get(charger.id)  # on the embedded broker: its goe:<serial> user
            point = SimGoeCharger(charger, config.goe_serial, url, clock=self.clock, origin=self.origin,
                                  steps=False, username=login.username if login else None,
                                  password=login.password if login else None)
        self.world.after_step.append(point.after_step)
        return point

    def _stale_after(self) -> float:
        from apm.services.balancer import balancer_settings

        return balancer_settings(self.config).stale_after_s

    async def run(self) -> dict[str, Any]:
        """Run the scenario (or until cancelled when ``duration_s`` is None); the report."""
        assert self.device is not None and self.balancer is not None and self.feed is not None
        self.clock.anchor(self.start)  # t = 0 now that everything is connected
        wall0 = time.perf_counter()
        tasks = [
            asyncio.create_task(self.device.run(serial_chunks(self._fd)), name="device"),
            asyncio.create_task(self.balancer.run(), name="balancer"),
            asyncio.create_task(self.feed.run(self.duration_s), name="meter"),
            *(asyncio.create_task(n.run(), name=f"charger {n.id}") for n in self.nodes),
            *self._point_tasks,
        ]
        world = asyncio.create_task(self.world.run(self.clock, self.origin, self.duration_s), name="world")
        try:
            # The world ends the run; a part that fails ends it too, with its exception.
            done, _ = await asyncio.wait([world, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not world and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            await world
        finally:
            self._wall = time.perf_counter() - wall0
            if self.duration_s is not None:
                self.clock.freeze()  # the scenario is over: no part should see time pass while closing
            await stop(world, *tasks)  # cancels until done (the ocpp library's wait_for may swallow one)
        return self.report()

    def report(self) -> dict[str, Any]:
        """The report of sim/closed_loop.py (same keys), plus ``pipeline``."""
        sc, w = self.sc, self.world
        dev, bal = self.device, self.balancer
        assert dev is not None and bal is not None
        report: dict[str, Any] = {"scenario": sc.name, "mode": "protect", "network": sc.network,
                                  "fuse_a": sc.fuse_a, "duration_s": float(max(w.k, 0))}
        report.update(w.fuse_report())
        report["energy_kwh"] = {e: round(ev.energy_kwh, 3) for e, ev in w.evs.items()}
        report["energy_total_kwh"] = round(sum(ev.energy_kwh for ev in w.evs.values()), 3)
        report["final_soc"] = {e: round(ev.soc, 4) for e, ev in w.evs.items()}
        report["setpoint_changes"] = bal.balancer.changes
        if w.oracles is not None:
            report.update(w.oracles.report(report["energy_total_kwh"]))
        report["stale_s"] = round(bal.stale_s, 1)
        report["hourly_records"] = len(dev.hourly)
        report["repeated_hourly_dropped"] = dev.state.repeats
        report["readings"] = {f"list{k}": v for k, v in dev.state.counts.items()}
        link = dev.link.stats
        report["pipeline"] = {
            "speed": self.speed,
            "broker": self.broker_url,
            "wall_s": round(self._wall, 2),
            "max_lag_s": round(w.max_lag_s, 3),
            "max_lag_sim_s": round(w.max_lag_s * self.speed, 1),
            "late_steps": w.late_steps,
            # the world kept within LAG_LIMIT_S of the clock: the day is the one the speed claims
            "faithful": w.late_steps == 0,
            "frames_sent": self.feed.frames if self.feed else 0,
            "frames_skipped": self.feed.skipped if self.feed else 0,
            "frames_bad": dev.reader.frames.frames_bad,
            "headroom_messages": dev.headroom_seq,
            "setpoints_published": bal.published,
            "charger_states_sent": sum(n.states_sent for n in self.nodes),
            "setpoints_received": sum(n.setpoints_received for n in self.nodes),
            "broker_connects": link.connects,
            # OCPP: limits renewed every renew_s of the clock (a day at 30 s: 2880 per charger) and
            # no reconnects
            "ocpp_profiles_received": sum(p.profiles_received for p in self.points
                                          if isinstance(p, SimOcppChargePoint)),
            "ocpp_boots": sum(p.boots for p in self.points if isinstance(p, SimOcppChargePoint)),
        }
        report["runtime_s"] = round(self._wall, 2)
        return report


async def _check_reachable(url: str) -> None:
    """Fail at once, and say why, when nothing listens at the broker's address (a simulation cannot wait)."""
    from apm.io.mqtt.link import BrokerAddress, LinkError

    try:
        a = BrokerAddress.parse(url)
    except LinkError as exc:
        raise PipelineError(str(exc)) from None
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(a.host, a.port), CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise PipelineError(f"cannot reach the MQTT broker at {a.url}: {why}") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def run_pipeline(sc: Scenario, **options: Any) -> dict[str, Any]:
    """``Pipeline(sc, **options)`` entered, run, left: the report."""
    async with Pipeline(sc, **options) as p:
        return await p.run()
