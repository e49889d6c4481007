"""`apm run`: the device's main loop: meter in, headroom and setpoints out over MQTT.

    apm run --port /dev/ttyUSB0            # the HAN port (serial settings auto-detected, remembered)
    apm run --replay dump.hex --speed 10   # a captured dump instead of a port
    apm run --sim aidon:3p-it              # a simulated meter on a virtual serial port
    apm run --demo                         # the whole product: simulated meter, embedded broker,
                                           # two simulated chargers with EVs, the balancer

Broker: ``--broker mqtt://host:port`` (``--username``, ``--password``, ``--tls``, or ``mqtts://``;
``--ca-file PEM`` for a broker whose certificate a private CA signs), else the configuration's broker,
else an embedded amqtt broker on 127.0.0.1 (``--listen HOST`` to let the LAN in, ``--broker-port``,
default 1883; 0 for any free port). The embedded broker lets nobody in without a login: the device
creates its own user on the first start, `apm broker user add` the chargers' and Home Assistant's.
Configuration: ``--config TOML``, else the flash image (``--image``, $APM_FLASH, the per-user default),
whose token, issuer key and outbox the device then uses; with neither, the defaults (no chargers).
``--demo`` brings its own installation.

The local web page (line currents against the fuse, chargers, HAN and broker state, a charger's max
current) is on ``--http HOST:PORT`` (default 127.0.0.1:8080, ``off`` for none); off 127.0.0.1 it asks for a
login of the broker's users (a reader may look, the device's own user may change settings).

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
import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apm.cli.arguments import positive
from apm.cli.support import UsageError, add_image_option, command, image_arg

if TYPE_CHECKING:
    from rich.console import Console

    from apm.core.config import DeviceConfig
    from apm.core.eco.prices import PriceSeries
    from apm.io.http.web import WebPlan
    from apm.services.runtime import ByteSource, EcoPlan, EmbeddedBrokerPlan, Running, RunPlan, Storage

PROG = "apm run"
VIEW_REFRESH_S = 0.25
LOG_EVERY_S = 10.0
DEFAULT_HTTP = "127.0.0.1:8080"

log = logging.getLogger("apm.run")


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
    p.add_argument("--tls", action="store_true", help="TLS to the broker (implied by mqtts:// and --ca-file)")
    p.add_argument("--ca-file", metavar="PEM", help="the CA that signs the broker's certificate (default: the "
                                                    "system's CAs)")
    p.add_argument("--listen", default="127.0.0.1", metavar="HOST",
                   help="address the embedded broker listens on (default 127.0.0.1; 0.0.0.0: the LAN, "
                        "still only with a login: `apm broker user add`)")
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
    p.add_argument("--price-api", metavar="SERVICE", action="append", nargs="?", const="default",
                   help="Smart eco: a day-ahead price service, cached: hvakosterstrommen, nordpool, a URL "
                        "(the host picks the format) or NAME:URL; twice: the second used when the first "
                        "fails; without a value: hvakosterstrommen.no, then Nord Pool")
    p.add_argument("--area", default="NO1", help="Smart eco: price area NO1..NO5 (default NO1)")
    p.add_argument("--http", metavar="HOST:PORT", default=None,
                   help=f"the local web page (default {DEFAULT_HTTP}; off: none). Off 127.0.0.1 only with "
                        "a login of the broker's users (`apm broker user add NAME reader`)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run)


# --- from arguments to a plan (synchronous: every bad input is found before anything starts) -----------


@command("run")
def run(args: argparse.Namespace) -> int:
    closers: list[Callable[[], None]] = []  # what the plan opened (a port, an outbox file)
    try:
        plan = _demo_plan(args, closers) if args.demo else _plan(args, closers)
        return asyncio.run(_main(args, plan))
    finally:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()


def _plan(args: argparse.Namespace, closers: list[Callable[[], None]]) -> RunPlan:
    from apm.services.runtime import RunPlan

    _check_options(args)
    config, image = _config(args)
    config, broker = _broker(_broker_options(config, args), args)
    passwords = _ocpp_passwords(config)
    source = _source(args, config, closers)
    # Settings changed in the page or from Home Assistant are stored where the configuration came from:
    # the image.
    storage = dataclasses.replace(_storage(args, config, image, closers),
                                  settings_image=None if args.config else image)
    return RunPlan(config, source, storage, broker=broker,
                   eco=_eco(args, None), web=_web(args, None if args.config else image),
                   ocpp_passwords=passwords)


def _demo_plan(args: argparse.Namespace, closers: list[Callable[[], None]]) -> RunPlan:
    """The demo's own installation: its simulated meter, world and chargers (`apm.cli.demo`)."""
    from dataclasses import replace

    from apm.cli.demo import Demo, DemoError, demo_prices
    from apm.services.device import granted_subscription
    from apm.services.runtime import RunPlan, Storage

    _check_options(args)
    if args.config or image_arg(args):
        raise UsageError("--demo brings its own installation: leave out --config and --image")
    try:
        demo = Demo.load(args.speed)
    except DemoError as exc:
        raise UsageError(str(exc)) from None
    config, broker = _broker(_broker_options(demo.config, args), args)
    if broker is not None:  # the simulated chargers log in as themselves, for this run only
        guests, demo = demo.guests()
        broker = replace(broker, guests=guests, any_port_if_taken=True)
    outbox = _file_outbox(args.outbox, closers) if args.outbox else None
    return RunPlan(config, demo, Storage(granted_subscription(), outbox), broker=broker,
                   eco=_eco(args, demo_prices), web=_web(args, None))


def _web(args: argparse.Namespace, image: Path | None) -> WebPlan | None:
    from dataclasses import replace

    from apm.io.http.web import WebError, parse_listen
    from apm.io.storage import paths

    try:
        plan = parse_listen(args.http or DEFAULT_HTTP)
    except WebError as exc:
        raise UsageError(str(exc)) from None
    if plan is None:
        return None
    # Only the default port gives way to another run's page; a --http that is taken is bad input.
    return replace(plan, users_path=paths.broker_users(), image=image, any_port_if_taken=args.http is None)


def _check_options(args: argparse.Namespace) -> None:
    if not 0 <= args.broker_port <= 65535:
        raise UsageError(f"--broker-port {args.broker_port} is out of range (0..65535)")


def _config(args: argparse.Namespace) -> tuple[DeviceConfig, Path | None]:
    """The configuration (--config, else the flash image's, else the defaults) and the image it goes with."""
    from apm.core import config as cfg
    from apm.io.storage.flash import Flash, FlashError, resolve_image_path

    given = image_arg(args)
    if args.config:
        try:
            config = cfg.load(args.config)
        except cfg.ConfigError as exc:
            raise UsageError(str(exc)) from None
        return config, resolve_image_path(given) if given else None
    image = resolve_image_path(given)
    try:
        stored = Flash(image).read().config
    except FlashError as exc:
        raise UsageError(str(exc)) from None
    if stored is not None:
        return stored, image
    print(f"{PROG}: no configuration in {image}" + ("" if image.exists() else " (no image)")
          + ": running with the defaults (TN 25 A, no chargers); `apm flash write CONFIG.toml` "
          "stores one", file=sys.stderr)
    # Nothing of ours in the per-user default place: no status file there either.
    return cfg.DeviceConfig(), image if given is not None else None


def _broker_options(config: DeviceConfig, args: argparse.Namespace) -> DeviceConfig:
    """The configuration's broker with the command line's options over it."""
    from msgspec.structs import replace

    from apm.io.mqtt.link import BrokerAddress, LinkError

    url = args.broker or config.broker.url
    if url is not None:
        try:
            BrokerAddress.parse(url, username=args.username, password=args.password, tls=args.tls)
        except LinkError as exc:
            raise UsageError(str(exc)) from None
    if url is None and not (args.username or args.password or args.tls or args.ca_file):
        return config
    b = config.broker
    return replace(config, broker=replace(b, url=url, username=args.username or b.username,
                                          password=args.password or b.password, tls=args.tls or b.tls,
                                          ca_file=args.ca_file or b.ca_file))


def _broker(config: DeviceConfig, args: argparse.Namespace) -> tuple[DeviceConfig, EmbeddedBrokerPlan | None]:
    """The device's login and TLS: for an external broker a CA file that reads; for the embedded one its
    own user (created, with a random password, on the first start)."""
    from msgspec.structs import replace

    from apm.io.mqtt.auth import AuthError, UserTable
    from apm.io.mqtt.link import LinkError, make_tls_context
    from apm.io.storage import paths
    from apm.services.runtime import EmbeddedBrokerPlan

    b = config.broker
    if b.url is not None:
        if b.ca_file is not None:
            try:
                make_tls_context(b.ca_file)
            except LinkError as exc:
                raise UsageError(str(exc)) from None
        return config, None
    path = paths.broker_users()
    try:
        table = UserTable.load(path)
        updated, login = table.ensure_device()
        if updated is not table:
            updated.save(path)
            print(f"{PROG}: created the device's broker user {login.username} in {path}", file=sys.stderr)
    except (AuthError, OSError) as exc:
        raise UsageError(f"the embedded broker's users: {exc}") from None
    config = replace(config, broker=replace(b, username=login.username, password=login.password))
    return config, EmbeddedBrokerPlan(args.broker_port, args.listen, updated, path)


def _ocpp_passwords(config: DeviceConfig) -> dict[str, str]:
    """The OCPP chargers' passwords (`apm ocpp password`). A charger without one is refused unless the
    central system listens on loopback only: on the LAN anyone could connect as that charger, report
    a car that draws nothing and so have the balancer hand its current to the others, above the fuse."""
    from apm.io.chargers.ocpp_passwords import PasswordBook, PasswordError
    from apm.io.storage import paths

    ids = [c.charge_point_id for c in config.chargers if c.protocol == "ocpp"]
    if not ids:
        return {}
    path = paths.ocpp_passwords()
    try:
        book = PasswordBook.load(path)
    except PasswordError as exc:
        raise UsageError(f"the OCPP passwords: {exc}") from None
    missing = [cid for cid in ids if cid not in book.passwords]
    if missing and not is_loopback(config.ocpp.listen):
        raise UsageError(f"OCPP charger {missing[0]} has no password: run `apm ocpp password {missing[0]}` and "
                         "give it to the charger (or set [ocpp] listen = \"127.0.0.1\" to run without)")
    return {cid: book.passwords[cid] for cid in ids if cid in book.passwords}


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _source(args: argparse.Namespace, config: DeviceConfig, closers: list[Callable[[], None]]) -> ByteSource:
    """Where the meter's bytes come from."""
    from apm.services.runtime import ReplaySource, SerialSource

    if args.replay:
        from apm.io.replay import CaptureError, open_capture

        try:
            return ReplaySource.paced(open_capture(args.replay), args.speed)
        except CaptureError as exc:
            raise UsageError(str(exc)) from None
    if args.sim:
        return _sim_meter(args.sim, args.speed)
    path = args.port or config.port
    if not path:
        raise UsageError("no meter: give --port DEV (or `port` in the configuration), --replay DUMP, "
                         "--sim VENDOR:KIND or --demo")
    if not args.port:
        # From the configuration (the service), the adapter may be plugged in later: the device runs and
        # waits for it. Given on the command line, a wrong path is a typo, said at once.
        return SerialSource(path, cache=args.cache, probe_s=args.probe_seconds)
    from apm.io.serial.port import PortError, SettingsCache, candidates, open_port

    try:
        port = open_port(path, candidates(SettingsCache(args.cache).get(path))[0])
    except PortError as exc:
        raise UsageError(str(exc)) from None
    closers.append(port.close)
    return SerialSource(path, port, cache=args.cache, probe_s=args.probe_seconds)


def _sim_meter(text: str, speed: float) -> ByteSource:
    from apm.cli.demo import SimMeter
    from han.profiles import METER_KINDS, SUPPORTED_METERS

    vendor, _, kind = text.lower().partition(":")
    kind = kind or "3p-tn"
    if vendor not in SUPPORTED_METERS or kind not in METER_KINDS:
        raise UsageError(f"--sim {text!r}: VENDOR:KIND with VENDOR one of "
                         f"{', '.join(SUPPORTED_METERS)} and KIND one of {', '.join(METER_KINDS)} "
                         "(e.g. aidon:3p-it)")
    return SimMeter.paced(vendor, kind, speed)


def _storage(args: argparse.Namespace, config: DeviceConfig, image: Path | None,
             closers: list[Callable[[], None]]) -> Storage:
    """What the device keeps (outbox, hourly baseline, status file) and what it may do (its token)."""
    from apm.io.storage.flash import Flash, FlashBaseline, FlashCapacity, status_path
    from apm.io.storage.outbox import FlashOutbox
    from apm.services.device import flash_subscription, no_subscription
    from apm.services.runtime import Storage

    outbox = _file_outbox(args.outbox, closers) if args.outbox else None
    if image is None:
        if outbox is None:
            print(f"{PROG}: hourly energy records wait in memory only (no flash image, no --outbox)",
                  file=sys.stderr)
        return Storage(no_subscription(config), outbox)
    flash = Flash(image)
    return Storage(flash_subscription(image, config), outbox if outbox is not None else FlashOutbox(flash),
                   FlashBaseline(flash), status_path(image), FlashCapacity(flash))


def _file_outbox(path: str, closers: list[Callable[[], None]]) -> Any:
    from apm.io.storage.outbox import FileOutbox, OutboxError

    try:
        box = FileOutbox(path)
    except (OutboxError, OSError) as exc:
        raise UsageError(f"--outbox {path}: {exc}") from None
    closers.append(box.close)
    return box


def _eco(args: argparse.Namespace, fallback: Callable[[datetime], PriceSeries] | None) -> EcoPlan | None:
    """Smart eco's prices: --prices FILE, --price-api SERVICE (refreshed in the background), else ``fallback``."""
    from apm.services.runtime import EcoPlan

    if args.prices:
        from apm.core.eco.prices import PriceError, load_file

        try:
            series = load_file(args.prices, args.area)
        except (OSError, PriceError) as exc:
            raise UsageError(f"--prices {args.prices}: {exc}") from None
        return EcoPlan(lambda _now: series)
    if args.price_api:
        return _price_feed(args.area, args.price_api)
    return EcoPlan(fallback) if fallback is not None else None


def _price_feed(area: str, urls: list[str]) -> EcoPlan:
    from apm.core.eco.planner import PlanError
    from apm.core.eco.prices import OSLO
    from apm.io.http.fallback import price_source
    from apm.io.http.prices import PriceFeed
    from apm.io.storage import paths
    from apm.services.runtime import EcoPlan

    if len(urls) > 2:
        raise UsageError("--price-api: at most two price services (the second when the first fails)")
    try:
        feed = PriceFeed(price_source(area, urls, paths.price_cache()))
    except ValueError as exc:  # a mistyped service; a service that fails later never stops the device
        raise UsageError(f"--price-api: {exc}") from None

    def known(now: datetime) -> PriceSeries:
        series = feed.latest.series if feed.latest is not None else None
        if series is None:
            raise PlanError(f"no prices for {area} from {' or '.join(urls)} yet")
        return series

    return EcoPlan(known, feed.run(lambda: datetime.now(OSLO)))


# --- running ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    run: Running | None = None
    error: BaseException | None = None
    signal: bool = False  # stopped by Ctrl-C or SIGTERM


async def _main(args: argparse.Namespace, plan: RunPlan) -> int:
    from apm.services.runtime import PlanError, running

    live = sys.stdout.isatty() and not args.plain
    console, handler = _logging(args.verbose, live)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    outcome = Outcome()
    try:
        async with running(plan) as run:
            if run.embedded:
                print(f"{PROG}: embedded MQTT broker on {run.broker_url}", file=sys.stderr, flush=True)
            if run.web_url:
                print(f"{PROG}: web page on {run.web_url}", file=sys.stderr, flush=True)
            outcome = await _until_done(run, args.duration, stop, live, console)
    except PlanError as exc:
        raise UsageError(str(exc)) from None
    finally:
        logging.getLogger().removeHandler(handler)
    return _summary(outcome, time.monotonic() - started)


async def _until_done(run: Running, duration: float | None, stop: asyncio.Event, live: bool,
                      console: Console | None) -> Outcome:
    """Run until the work ends, a signal comes or ``duration`` (wall seconds) is over."""
    work = asyncio.create_task(run.work, name="apm run")
    view = asyncio.create_task(_show(run, live, console), name="view")
    waits = [work, asyncio.create_task(stop.wait())]
    if duration:
        waits.append(asyncio.create_task(asyncio.sleep(duration)))
    done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    error = work.exception() if work in done else None
    for t in (*waits, view):
        t.cancel()
    await asyncio.gather(*waits, view, return_exceptions=True)
    return Outcome(run, error, stop.is_set())


# --- showing ---------------------------------------------------------------------------------------------


def _logging(verbose: bool, live: bool) -> tuple[Console | None, logging.Handler]:
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
    if not verbose:  # the ocpp library logs every frame at INFO
        logging.getLogger("ocpp").setLevel(logging.WARNING)
        # A charge point's handshake cut short (at a stop, a port scan) is logged with a traceback;
        # the refusals that matter (unknown id, wrong password) are apm.io.chargers.ocpp_server's own lines.
        logging.getLogger("websockets.server").setLevel(logging.CRITICAL)
    return console, handler


async def _show(parts: Running, live: bool, console: Console | None) -> None:
    from apm.cli.views.device import render, summary_line

    if not live:
        while True:
            await asyncio.sleep(LOG_EVERY_S)
            log.info("%s", summary_line(parts.device, parts.balancer))
    from rich.console import Group
    from rich.live import Live

    def view() -> Group:
        return render(parts.device, parts.balancer, parts.nodes, links=parts.charger_links())

    with Live(view(), console=console, auto_refresh=False) as live_view:
        try:
            while True:
                await asyncio.sleep(VIEW_REFRESH_S)
                live_view.update(view(), refresh=True)
        finally:
            live_view.update(view(), refresh=True)


def _summary(outcome: Outcome, wall: float) -> int:
    parts = outcome.run
    if parts is None:
        return 1
    device = parts.device
    counts = device.state.counts
    lists = ", ".join(f"list {k}: {v}" for k, v in sorted(counts.items()) if v) or "none"
    stats = device.link.stats
    setpoints = parts.balancer.published
    print(f"{PROG}: stopped after {wall:.1f} s: {device.readings} readings ({lists}), "
          f"{len(device.hourly)} hourly records, {device.headroom_seq} headroom messages, "
          f"{setpoints} setpoints; broker {stats.broker}: "
          f"{stats.connects} connection(s)" + (f", {stats.records_pending} records still in the outbox"
                                                if stats.records_pending else ""), file=sys.stderr)
    status = 0
    error = outcome.error
    if error is not None:
        print(f"{PROG}: {error}", file=sys.stderr)
        status = 1
    # Stopped by Ctrl-C or SIGTERM (a service manager), the run ended as asked: only a failure counts then.
    asked = outcome.signal
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
