"""`apm sim`: the simulated world around the device.

    apm sim meter --vendor aidon --kind 3p-it --pty      # a meter on a virtual serial port
    apm sim meter --vendor kaifa --fast --duration 3600 --out kaifa.bin

Each sub-command registers itself with a ``register_*(sim_sub)`` function below; the closed-loop
simulation (`apm sim run`) joins the same way (see ``register``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime

from apm.cli.arguments import positive
from apm.cli.support import TIME_HELP, oslo, parse_time, run_io
from apm.io.replay import drained, paced
from han.profiles import METER_KINDS, SUPPORTED_METERS
from sim.meter import Meter, Push

_WINDOW = 60.0  # seconds of meter time generated at once
_DESCRIPTION = """The simulated world around the device.

    apm sim meter --vendor aidon --kind 3p-it --pty      # a meter on a virtual serial port
    apm sim meter --vendor kaifa --fast --duration 3600 --out kaifa.bin
"""


def register(sub) -> None:
    p = sub.add_parser("sim", help="the simulated world: AMS meters on a virtual serial port",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sim_sub = p.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")
    register_meter(sim_sub)
    # Further sub-commands (the closed-loop `run`) are added here: register_run(sim_sub).
    from apm.cli.sim_run import register_run  # the closed loop; its module imports the simulator lazily

    register_run(sim_sub)

    def usage(args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return 2

    p.set_defaults(func=usage)


# --- apm sim meter -------------------------------------------------------------------------------


def register_meter(sim_sub) -> None:
    p = sim_sub.add_parser(
        "meter", help="an Aidon, Kaifa or Kamstrup meter pushing its lists on the vendor's schedule",
        description="Push a simulated meter's HAN frames (the exact bytes of the vendor's lists, on its "
                    "schedule, clock and energy counters running) to a virtual serial port, a file or stdout.")
    p.add_argument("--vendor", required=True, choices=SUPPORTED_METERS)
    p.add_argument("--kind", default="3p-tn", choices=METER_KINDS,
                   help="1p, 3p-tn (230/400 V TN) or 3p-it (3x230 V IT, 3-wire metering; default 3p-tn)")
    p.add_argument("--omit-u2", action="store_true", help="Aidon 3p-it: leave out the L2 voltage too")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--pty", action="store_true",
                     help="a virtual serial port at the vendor's settings; its path is printed on stdout")
    out.add_argument("--out", metavar="FILE", help="write to FILE (raw bytes, or hex lines with --hex)")
    p.add_argument("--hex", action="store_true", help="hex text, one frame per line (file or stdout)")
    pacing = p.add_mutually_exclusive_group()
    pacing.add_argument("--speed", type=positive, default=1.0, metavar="N", help="N times real time (default 1)")
    pacing.add_argument("--fast", action="store_true", help="no pacing (needs --duration)")
    p.add_argument("--start", metavar="TIME",
                   help=f"meter clock at the start ({TIME_HELP}; default: now)")
    p.add_argument("--duration", type=positive, metavar="S", help="seconds of meter time (default: run until stopped)")
    p.add_argument("--seed", type=int, default=1, help="household and counters (default 1)")
    p.set_defaults(func=run_meter)


def _start(text: str | None) -> datetime:
    if text is None:
        return datetime.now(oslo()).replace(microsecond=0)
    return parse_time(text, "--start")


def pushes_for(meter: Meter, duration: float | None) -> Iterator[tuple[float, Push]]:
    """The meter's pushes from its start, a window at a time, for ``duration`` seconds (None: forever)."""
    t = 0.0
    while duration is None or t < duration:
        t1 = t + _WINDOW if duration is None else min(t + _WINDOW, duration)
        for push in meter.pushes_between(t, t1):
            yield push.t, push
        t = t1


def run_meter(args: argparse.Namespace) -> int:
    from sim.frames import MeterSpec

    try:
        spec = MeterSpec(args.vendor, args.kind, omit_u2=args.omit_u2)
        start = _start(args.start)
    except ValueError as exc:
        print(f"apm sim meter: {exc}", file=sys.stderr)
        return 2
    if args.fast and args.duration is None:
        print("apm sim meter: --fast needs --duration (it would never end)", file=sys.stderr)
        return 2
    if args.hex and args.pty:
        print("apm sim meter: --hex is for a file or stdout; a serial port carries bytes", file=sys.stderr)
        return 2
    if not (args.pty or args.out or args.hex) and sys.stdout.isatty():
        print("apm sim meter: not writing binary frames to a terminal: use --hex, --out FILE or --pty",
              file=sys.stderr)
        return 2
    meter = Meter(spec, start, seed=args.seed)
    return run_io("sim meter", _push(args, meter))


async def _push(args: argparse.Namespace, meter: Meter) -> int:
    speed = None if args.fast else args.speed
    lists: Counter[int] = Counter()
    size = 0
    async with contextlib.AsyncExitStack() as stack:
        write = await _sink(stack, args, meter.spec.vendor, speed)
        try:
            async for _, push in paced(pushes_for(meter, args.duration), speed):
                await write(push.frame)
                size += len(push.frame)
                lists[push.list] += 1
        finally:
            per_list = ", ".join(f"list {n}: {lists[n]}" for n in sorted(lists))
            print(f"apm sim meter: {meter.spec.vendor} {meter.spec.kind}: {sum(lists.values())} frames "
                  f"({per_list or 'none'}), {size} bytes, meter clock from {meter.start.isoformat()}",
                  file=sys.stderr)
    return 0


async def _sink(stack: contextlib.AsyncExitStack, args: argparse.Namespace, vendor: str, speed: float | None):
    """An async ``write(frame)`` to the chosen output."""
    if args.pty:
        from apm.io.serial.port import VENDOR_SETTINGS
        from sim.serial_line import VirtualSerialPort

        settings = VENDOR_SETTINGS[vendor]
        port = await stack.enter_async_context(VirtualSerialPort(settings, pace=speed or 0.0))
        print(port.path, flush=True)
        print(f"apm sim meter: {vendor} meter on {port.path} ({settings})", file=sys.stderr)
        # On the way out (the stack unwinds in reverse), first let the reader take the last frame.
        stack.push_async_callback(drained, port.path)
        return port.awrite
    f = stack.enter_context(open(args.out, "wb")) if args.out else sys.stdout.buffer  # noqa: SIM115
    flush = speed is not None  # paced: each frame goes out when it is due

    async def write(frame: bytes) -> None:
        f.write(frame.hex().encode() + b"\n" if args.hex else frame)
        if flush:
            f.flush()

    return write
