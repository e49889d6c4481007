"""`apm run`: the device's main loop: meter in, headroom and setpoints out over MQTT.

    apm run --port /dev/ttyUSB0            # the HAN port (serial settings auto-detected, remembered)
    apm run --replay dump.hex --speed 10   # a captured dump instead of a port
    apm run --sim aidon:3p-it              # a simulated meter on a virtual serial port
    apm run --demo                         # the whole product: simulated meter, embedded broker,
                                           # two simulated chargers with EVs, the balancer

Broker: ``--broker mqtt://host:port`` (``--username``, ``--password``, ``--tls``, or ``mqtts://``), else
the configuration's broker, else an embedded amqtt broker on 127.0.0.1 (``--broker-port``, default 1883;
0 for any free port). Configuration: ``--config TOML``, else the flash image (``--image``, $APM_FLASH,
the per-user default), whose token, issuer key and outbox the device then uses; with neither, the
defaults (no chargers). ``--demo`` brings its own installation.

In a terminal the device shows a live view (readings, headroom per line, setpoints, chargers, broker
and HAN state); otherwise it writes log lines to stderr. It stops after ``--duration`` seconds (wall
time), at the end of a replay, or on Ctrl-C / SIGTERM, and then says "offline" on the broker.

A serial port that is missing (the configuration's ``port``; a ``--port`` that does not open is bad
input) or goes away while running is tried again every few seconds; meanwhile the device and the
balancer keep running without meter data (the chargers share the fixed current).

Exit status: 0 it ran and stopped as asked; 1 it ran but decoded no HAN data or never reached the
broker (unless stopped by Ctrl-C or SIGTERM: then it says so and exits 0); 2 bad input (options,
configuration, dump, --port, broker port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apm.arguments import positive
from apm.cli_support import add_image_option, image_arg

PROG = "apm run"
VIEW_REFRESH_S = 0.25
LOG_EVERY_S = 10.0
PORT_RETRY_S = 2.0  # a missing or lost serial port is tried again this often
DEMO_SERIAL = "APMDEMO01"

log = logging.getLogger("apm.run")


class BadInput(Exception):
    """Bad options or files: the message goes to stderr, exit status 2."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the device's main loop: meter -> headroom -> MQTT -> balancer",
                       description=__doc__.split("\n\n", 1)[1].replace("``", ""),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--port", metavar="DEV", help="serial device of the M-Bus adapter, e.g. /dev/ttyUSB0")
    src.add_argument("--replay", metavar="DUMP",
                     help="a captured dump (recording, hex or binary) instead of a port")
    src.add_argument("--sim", metavar="VENDOR:KIND",
                     help="a simulated meter on a virtual serial port, e.g. aidon:3p-it")
    src.add_argument("--demo", action="store_true",
                     help="simulated meter, embedded broker, two simulated chargers with EVs, balancer")
    p.add_argument("--speed", type=positive, default=1.0, metavar="N",
                   help="--replay, --sim, --demo: N times real time (default 1)")
    p.add_argument("--broker", metavar="URL", help="external broker, mqtt://host[:port] or mqtts://...")
    p.add_argument("--username", help="broker user name")
    p.add_argument("--password", help="broker password")
    p.add_argument("--tls", action="store_true", help="TLS to the broker (implied by mqtts://)")
    p.add_argument("--broker-port", type=int, default=1883, metavar="P",
                   help="port of the embedded broker when no broker is configured "
                        "(default 1883; 0: any free port)")
    add_image_option(p)
    p.add_argument("--config", metavar="TOML", help="configuration file instead of the flash image")
    p.add_argument("--outbox", metavar="FILE",
                   help="with --config: keep unsent hourly records in this file "
                        "(default: the image's outbox)")
    p.add_argument("--duration", type=positive, metavar="S", help="stop after S seconds (wall time)")
    p.add_argument("--plain", action="store_true", help="log lines even in a terminal (no live view)")
    p.add_argument("--probe-seconds", type=positive, default=12.0, metavar="S",
                   help="--port: time per serial-settings attempt while auto-detecting (default 12)")
    p.add_argument("--cache", metavar="FILE", help="--port: where serial settings that worked are remembered")
    p.add_argument("--prices", metavar="FILE",
                   help="Smart eco: day-ahead prices (CSV or JSON) for planning charging requests")
    p.add_argument("--price-api", metavar="URL",
                   help="Smart eco: a day-ahead price service (hvakosterstrommen.no style), cached")
    p.add_argument("--area", default="NO1", help="Smart eco: price area NO1..NO5 (default NO1)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run)


# --- setting up (synchronous: every bad input is found before anything starts) -------------------------


@dataclass(slots=True)
class Setup:
    source: str  # "port" | "replay" | "sim" | "demo"
    config: Any  # DeviceConfig
    url: str | None  # None: the embedded broker
    broker_port: int
    image: Path | None = None  # flash image the configuration came from (status file, token, outbox)
    outbox: Any = None
    subscription: Any = None
    capture: Any = None
    sim: tuple[str, str] | None = None
    port: Any = None  # an open serial.Serial
    port_path: str | None = None
    scenario: Any = None
    status_file: Path | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)


def run(args: argparse.Namespace) -> int:
    try:
        setup = _setup(args)
    except BadInput as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(args, setup))
    except BadInput as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    finally:
        for close in reversed(setup.closers):
            with contextlib.suppress(Exception):
                close()


def _setup(args: argparse.Namespace) -> Setup:
    from apm import config as cfg
    from apm.device import flash_subscription, granted_subscription, no_subscription
    from apm.flash import Flash, FlashError, resolve_image_path, status_path
    from apm.mqtt_link import BrokerAddress, LinkError
    from apm.outbox import FileOutbox, FlashOutbox, OutboxError

    if not 0 <= args.broker_port <= 65535:
        raise BadInput(f"--broker-port {args.broker_port} is out of range (0..65535)")
    if args.demo and (args.config or image_arg(args)):
        raise BadInput("--demo brings its own installation: leave out --config and --image")
    image: Path | None = None
    if args.demo:
        from sim.closed_loop import ScenarioError, load_scenario
        from sim.pipeline import DEMO_SCENARIO, device_config

        try:
            scenario = load_scenario(DEMO_SCENARIO)
        except ScenarioError as exc:
            raise BadInput(f"the demo scenario: {exc}") from None
        config = device_config(scenario, DEMO_SERIAL)
    else:
        scenario = None
        if args.config:
            try:
                config = cfg.load(args.config)
            except cfg.ConfigError as exc:
                raise BadInput(str(exc)) from None
            if image_arg(args):
                image = resolve_image_path(image_arg(args))
        else:
            image = resolve_image_path(image_arg(args))
            try:
                contents = Flash(image).read()
            except FlashError as exc:
                raise BadInput(str(exc)) from None
            config = contents.config
            if config is None:
                given = image_arg(args) is not None
                print(f"{PROG}: no configuration in {image}" + ("" if image.exists() else " (no image)")
                      + ": running with the defaults (TN 25 A, no chargers); `apm flash write CONFIG.toml` "
                      "stores one", file=sys.stderr)
                config = cfg.DeviceConfig()
                if not given:
                    image = None  # nothing of ours there: no status file in the per-user default place
    url = args.broker or config.broker.url
    if url is not None:
        try:
            BrokerAddress.parse(url, username=args.username, password=args.password, tls=args.tls)
        except LinkError as exc:
            raise BadInput(str(exc)) from None
    if url is not None or args.username or args.password or args.tls:
        from dataclasses import replace

        b = config.broker
        config = replace(config, broker=replace(b, url=url, username=args.username or b.username,
                                                password=args.password or b.password, tls=args.tls or b.tls))
    setup = Setup("demo" if args.demo else "port", config, url, args.broker_port, image=image,
                  scenario=scenario)

    # where the meter's bytes come from
    if args.demo:
        pass
    elif args.replay:
        from apm.replay import CaptureError, open_capture

        try:
            setup.capture = open_capture(args.replay)
        except CaptureError as exc:
            raise BadInput(str(exc)) from None
        setup.source = "replay"
    elif args.sim:
        from han.profiles import METER_KINDS, SUPPORTED_METERS

        vendor, _, kind = args.sim.lower().partition(":")
        kind = kind or "3p-tn"
        if vendor not in SUPPORTED_METERS or kind not in METER_KINDS:
            raise BadInput(f"--sim {args.sim!r}: VENDOR:KIND with VENDOR one of "
                           f"{', '.join(SUPPORTED_METERS)} and KIND one of {', '.join(METER_KINDS)} "
                           "(e.g. aidon:3p-it)")
        setup.sim = (vendor, kind)
        setup.source = "sim"
    else:
        path = args.port or config.port
        if not path:
            raise BadInput("no meter: give --port DEV (or `port` in the configuration), --replay DUMP, "
                           "--sim VENDOR:KIND or --demo")
        setup.port_path = path
        if args.port:
            # Given on the command line: a wrong path is a typo, said at once. From the configuration (the
            # service), the adapter may be plugged in later: the device runs and waits for it (`_serial`).
            from apm.serial_link import PortError, SettingsCache, candidates, open_port

            try:
                setup.port = open_port(path, candidates(SettingsCache(args.cache).get(path))[0])
            except PortError as exc:
                raise BadInput(str(exc)) from None
            setup.closers.append(setup.port.close)

    # what the device keeps, and what it may do
    if args.demo:
        setup.subscription = granted_subscription()
    elif image is not None:
        setup.subscription = flash_subscription(image, config)
    else:
        setup.subscription = no_subscription(config)
    if args.outbox:
        try:
            box = FileOutbox(args.outbox)
        except (OutboxError, OSError) as exc:
            raise BadInput(f"--outbox {args.outbox}: {exc}") from None
        setup.outbox = box
        setup.closers.append(box.close)
    elif image is not None and not args.demo:
        setup.outbox = FlashOutbox(Flash(image))
    elif not args.demo:
        print(f"{PROG}: hourly energy records wait in memory only (no flash image, no --outbox)",
              file=sys.stderr)
    setup.image = image
    if image is not None:
        setup.status_file = status_path(image)
    return setup


# --- running ---------------------------------------------------------------------------------------------


async def _main(args: argparse.Namespace, setup: Setup) -> int:
    from apm.broker import EmbeddedBroker, EmbeddedBrokerError

    live = sys.stdout.isatty() and not args.plain
    console, handler = _logging(args.verbose, live)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    outcome: dict[str, Any] = {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            url = setup.url
            if url is None:
                broker = EmbeddedBroker(port=setup.broker_port)
                try:
                    await broker.start()
                except EmbeddedBrokerError as exc:
                    if setup.source != "demo" or setup.broker_port == 0:
                        raise BadInput(str(exc)) from None
                    log.warning("%s; the demo takes any free port instead", exc)
                    broker = EmbeddedBroker(port=0)
                    await broker.start()
                stack.push_async_callback(broker.stop)
                url = broker.url
                print(f"{PROG}: embedded MQTT broker on {url}", file=sys.stderr, flush=True)
            parts = await _start(stack, setup, url, args)
            work = asyncio.create_task(parts.work, name="apm run")
            view = asyncio.create_task(_show(parts, live, console), name="view")
            waits = [work, asyncio.create_task(stop.wait())]
            if args.duration:
                waits.append(asyncio.create_task(asyncio.sleep(args.duration)))
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if work in done and work.exception() is not None:
                outcome["error"] = work.exception()
            elif work in done:
                outcome["finished"] = True
            outcome["signal"] = stop.is_set()
            for t in (*waits, view):
                t.cancel()
            await asyncio.gather(*waits, view, return_exceptions=True)
            outcome["parts"] = parts
    finally:
        logging.getLogger().removeHandler(handler)
    return _summary(outcome, time.monotonic() - started, setup)


@dataclass(slots=True)
class Parts:
    device: Any
    balancer: Any
    nodes: list[Any]
    work: Any  # the coroutine that runs the source (and, for the demo, the world)


async def _start(stack: contextlib.AsyncExitStack, setup: Setup, url: str, args: argparse.Namespace) -> Parts:
    from apm.balancer_service import BalancerService
    from apm.clock import RealClock, ScaledClock
    from apm.device import Device

    config = setup.config
    if setup.source == "demo":
        from sim.pipeline import Pipeline

        now = datetime.now().astimezone().replace(microsecond=0)
        midnight = now.replace(hour=0, minute=0, second=0)
        p = Pipeline(setup.scenario, speed=args.speed, broker_url=url, duration_s=None, start=now,
                     house_offset_s=(now - midnight).total_seconds(), serial=DEMO_SERIAL, oracles=False,
                     subscription=setup.subscription)
        await stack.enter_async_context(p)
        return Parts(p.device, p.balancer, p.nodes,
                     await _with_eco(stack, setup, url, args, _demo_prices, p.run()))
    if setup.source == "port":
        clock = RealClock()
    else:
        clock = ScaledClock(args.speed, start=datetime.now().astimezone().replace(microsecond=0))
    device = await stack.enter_async_context(Device(
        config, url=url, clock=clock, outbox=setup.outbox, subscription=setup.subscription,
        status_file=setup.status_file))
    balancer = await stack.enter_async_context(BalancerService(config, url=url, clock=clock))
    if setup.source == "replay":
        work = _replay(device, setup.capture, args.speed)
    elif setup.source == "sim":
        work = await _sim(stack, device, clock, setup.sim, args.speed)  # type: ignore[arg-type]
    else:
        work = _serial(device, setup, args)
    return Parts(device, balancer, [],
                 await _with_eco(stack, setup, url, args, None, _with(balancer.run(), work)))


def _demo_prices(now: datetime) -> Any:
    """The bundled sample week moved by whole weeks to cover ``now`` (a demo has no price service)."""
    from apm.eco.prices import PriceSeries, PriceSlot, sample_week

    week = sample_week()
    shift = timedelta(weeks=(now - week.start) // timedelta(weeks=1))
    return PriceSeries(week.area, tuple(PriceSlot(s.start + shift, s.end + shift, s.nok_per_kwh)
                                        for s in week.slots))


async def _with_eco(stack: contextlib.AsyncExitStack, setup: Setup, url: str, args: argparse.Namespace,
                    fallback: Any, work: Any) -> Any:
    """Smart eco beside ``work`` when there is a price source: requests on ``eco/request`` are
    planned jointly and published on ``eco/plan``, which the balancer follows."""
    from apm.eco.planner import Charger
    from apm.eco_service import EcoPlanner, EcoService, request_topic
    from apm.mqtt_link import MqttLink
    from apm.topics import Topics

    prices = _price_source(args) or fallback
    config = setup.config
    if prices is None or not config.chargers:
        log.info("Smart eco: off (no price source: --prices FILE or --price-api URL)")
        return work
    network = config.grid.network
    chargers = {c.id: Charger(c.id, max_a=c.max_a, phases=c.phases, network=network) for c in config.chargers}
    link = await stack.enter_async_context(MqttLink(url, client_id=f"apm-{config.serial}-eco"))
    budget = max(config.grid.fuse_a - config.grid.safety_margin_a, 0.0)
    service = EcoService(link, Topics(config.serial), EcoPlanner(chargers, prices, budget_a=budget))
    log.info("Smart eco: planning the requests on %s", request_topic(Topics(config.serial)))
    return _with(service.run(), work)


def _price_source(args: argparse.Namespace) -> Any:
    from apm.eco.prices import PriceError, load_file

    if args.prices:
        try:
            series = load_file(args.prices, args.area)
        except (OSError, PriceError) as exc:
            raise BadInput(f"--prices {args.prices}: {exc}") from None
        return lambda _now: series
    if args.price_api:
        from apm.eco.planner import PlanError
        from apm.eco.price_api import PriceClient, PriceFeed

        feed = PriceFeed(PriceClient(args.area, args.price_api, Path.home() / ".cache" / "apm" / "prices"))

        def known(now: datetime) -> Any:
            series = feed.update(now).series
            if series is None:
                raise PlanError(f"no prices for {args.area} from {args.price_api} yet")
            return series

        return known
    return None


async def _with(background: Any, work: Any) -> None:
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
        # Cancelled from outside (a stop, --duration), both must end here: a `main` left running reads
        # the port after shutdown closed it and dies as "Task exception was never retrieved".
        bg.cancel()
        main.cancel()
        await asyncio.gather(bg, main, return_exceptions=True)


async def _replay(device: Any, capture: Any, speed: float) -> None:
    from apm.replay import paced

    async def chunks() -> AsyncIterator[bytes]:
        async for _, data in paced(capture.chunks(), speed):
            yield data

    for d in capture.damage:
        log.warning("%s: %s: %s", capture.path, d.where, d.reason)
    await device.run(chunks())
    device.reader.close()
    log.info("replay of %s finished", capture.path)


async def _sim(stack: contextlib.AsyncExitStack, device: Any, clock: Any, sim: tuple[str, str],
               speed: float) -> Any:
    from apm.device import serial_chunks
    from apm.serial_link import VENDOR_SETTINGS, open_port
    from sim.frames import MeterSpec
    from sim.meter import Meter
    from sim.pipeline import MeterFeed
    from sim.serial_line import VirtualSerialPort

    vendor, kind = sim
    settings = VENDOR_SETTINGS[vendor]
    line = await stack.enter_async_context(VirtualSerialPort(settings, pace=speed))
    port = stack.enter_context(open_port(line.path, settings))
    device.char_time_s = settings.bits_per_char / settings.baud
    start = clock.datetime().astimezone()
    meter = Meter(MeterSpec(vendor, kind), start)
    feed = MeterFeed(meter, line.awrite, clock, start.timestamp())
    log.info("simulated %s %s meter on %s (%s)", vendor, kind, line.path, settings)
    return _with(feed.run(None), device.run(serial_chunks(port.fileno())))


async def _serial(device: Any, setup: Setup, args: argparse.Namespace) -> None:
    """Read the HAN port for as long as the device runs: a port that is missing or goes away (an
    unplugged adapter) is waited for, while the device and the balancer go on without meter data."""
    import serial

    from apm.device import PortLost, serial_chunks
    from apm.serial_link import PortError, SettingsCache, candidates, open_port

    path = setup.port_path
    assert path is not None
    port = setup.port
    said: str | None = None
    while True:
        if port is None:
            try:
                port = open_port(path, candidates(SettingsCache(args.cache).get(path))[0])
            except PortError as exc:
                if str(exc) != said:
                    said = str(exc)
                    log.warning("%s; retrying every %g s", exc, PORT_RETRY_S)
                await asyncio.sleep(PORT_RETRY_S)
                continue
            setup.closers.append(port.close)
        said = None
        try:
            await _detect(device, port, args)
            await device.run(serial_chunks(port.fileno()))
        except (PortLost, serial.SerialException, OSError) as exc:
            log.warning("%s: %s; waiting for the port to come back", path, exc)
        finally:
            port.close()
        port = None
        await asyncio.sleep(PORT_RETRY_S)


async def _detect(device: Any, port: Any, args: argparse.Namespace) -> None:
    """Find the serial settings (the remembered ones first), hand the reader to the device."""
    from apm.serial_link import SettingsCache, autodetect, candidates, diagnose

    cache = SettingsCache(args.cache)
    path = port.port
    remembered = cache.get(path)
    order = candidates(remembered)
    attempts: list[Any] = []
    said = None
    while True:
        deadline = time.monotonic() + args.probe_seconds * len(order)
        try:
            detection = await asyncio.to_thread(
                autodetect, port, order, args.probe_seconds, deadline=deadline,
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


# --- showing ---------------------------------------------------------------------------------------------


def _logging(verbose: bool, live: bool) -> tuple[Any, logging.Handler]:
    level = logging.DEBUG if verbose else logging.INFO
    console = None
    if live:
        from rich.console import Console
        from rich.logging import RichHandler

        console = Console()
        handler: logging.Handler = RichHandler(console=console, show_path=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return console, handler


async def _show(parts: Parts, live: bool, console: Any) -> None:
    from apm.device_view import render, summary_line

    if not live:
        while True:
            await asyncio.sleep(LOG_EVERY_S)
            log.info("%s", summary_line(parts.device, parts.balancer))
    from rich.live import Live

    with Live(render(parts.device, parts.balancer, parts.nodes), console=console, auto_refresh=False) as view:
        try:
            while True:
                await asyncio.sleep(VIEW_REFRESH_S)
                view.update(render(parts.device, parts.balancer, parts.nodes), refresh=True)
        finally:
            view.update(render(parts.device, parts.balancer, parts.nodes), refresh=True)


def _summary(outcome: dict[str, Any], wall: float, setup: Setup) -> int:
    parts: Parts | None = outcome.get("parts")
    if parts is None:
        return 1
    device = parts.device
    counts = device.state.counts
    lists = ", ".join(f"list {k}: {v}" for k, v in sorted(counts.items()) if v) or "none"
    stats = device.link.stats
    setpoints = parts.balancer.published if parts.balancer is not None else 0
    print(f"{PROG}: stopped after {wall:.1f} s: {device.readings} readings ({lists}), "
          f"{len(device.hourly)} hourly records, {device.headroom_seq} headroom messages, "
          f"{setpoints} setpoints; broker {stats.broker}: "
          f"{stats.connects} connection(s)" + (f", {stats.records_pending} records still in the outbox"
                                                if stats.records_pending else ""), file=sys.stderr)
    status = 0
    error = outcome.get("error")
    if error is not None:
        print(f"{PROG}: {error}", file=sys.stderr)
        status = 1
    # Stopped by Ctrl-C or SIGTERM (a service manager), the run ended as asked: only a failure counts then.
    asked = outcome.get("signal", False)
    if device.readings == 0:
        print(f"{PROG}: no HAN data was decoded" + (f" (last problem: {device.last_problem})"
                                                    if device.last_problem else ""), file=sys.stderr)
        status = status or (0 if asked else 1)
    if stats.connects == 0:
        print(f"{PROG}: never reached the broker at {stats.broker}"
              + (f" ({stats.last_error})" if stats.last_error else "")
              + "; the device kept reading the meter and kept its hourly records", file=sys.stderr)
        status = status or (0 if asked else 1)
    return status
