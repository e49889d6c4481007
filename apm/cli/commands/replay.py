"""`apm replay DUMP`: a captured HAN dump through the decoder, at its own pace or faster.

DUMP is a recording (`apm record`), hex text (one frame per line or a continuous dump) or raw bytes
as read from the port, detected. Readings go to stdout (one line each, or JSON lines with --json);
with --pty the bytes go onto a virtual serial port instead, for other programs to read. Damaged parts
are reported on stderr (where, why) and skipped; the exit status is non-zero only when the file cannot
be read or nothing in it decodes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections import Counter
from typing import Any

from apm.cli.arguments import positive
from apm.cli.support import run_io
from apm.io.replay import Capture, CaptureError, describe, drained, open_capture, paced
from han.jsonl import json_lines
from han.reader import HanReader
from han.reading import Reading

_PROGRESS_BYTES = 1 << 20  # a progress bar for files from this size on (or paced replays)


def register(sub) -> None:
    p = sub.add_parser("replay", help="replay a captured HAN dump (recording, hex or raw bytes) through the decoder",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dump", metavar="DUMP", help="recording, hex text or raw binary capture")
    pacing = p.add_mutually_exclusive_group()
    pacing.add_argument("--speed", type=positive, default=1.0, metavar="N",
                        help="N times real time (default 1: the recorded timing, or the vendor's schedule)")
    pacing.add_argument("--fast", action="store_true", help="as fast as possible")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="readings as JSON lines (reading.schema.json)")
    out.add_argument("--pty", action="store_true",
                     help="put the bytes on a virtual serial port (its path is printed) instead of printing readings")
    p.add_argument("--delay", type=float, default=0.0, metavar="S",
                   help="with --pty: wait S seconds after printing the path before the first byte")
    p.add_argument("--ct-ratio", type=positive, default=1.0, metavar="N", help="current transformer ratio")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-problem lines, no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        capture = open_capture(args.dump)
    except CaptureError as exc:
        print(f"apm replay: {exc}", file=sys.stderr)
        return 2
    return run_io("replay", _replay(args, capture))


def _text_lines(readings: list[Reading]) -> bytes:
    return "".join([describe(r) + "\n" for r in readings]).encode()


class _Report:
    """Problem lines on stderr, through the progress bar's console while it is shown."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Any = None

    def problem(self, text: str) -> None:
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr)


def _progress(capture: Capture, speed: float | None, quiet: bool):
    # A paced replay of a recording lasts as long as it was recorded: a bar for anything but a short file.
    if quiet or not sys.stderr.isatty() or not (capture.size >= _PROGRESS_BYTES or speed is not None):
        return None
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("replay"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)


@contextlib.asynccontextmanager
async def _pty(capture: Capture, speed: float | None, delay: float):
    from apm.io.serial.port import DEFAULT_SETTINGS, VENDOR_SETTINGS, SerialSettings
    from sim.serial_line import VirtualSerialPort

    meta = capture.meta
    if "baud" in meta and "parity" in meta:
        baud, parity = int(meta["baud"]), str(meta["parity"])
    else:
        s = VENDOR_SETTINGS.get(capture.vendor or "", DEFAULT_SETTINGS)
        baud, parity = s.baud, s.parity
    settings = SerialSettings(baud, parity)
    async with VirtualSerialPort(settings, pace=speed or 0.0) as port:
        print(port.path, flush=True)
        print(f"apm replay: {capture.path} on {port.path} ({settings})", file=sys.stderr)
        if delay > 0:
            await asyncio.sleep(delay)
        yield port
        await drained(port.path)  # the reader's last frame is not lost when the pty closes


async def _replay(args: argparse.Namespace, capture: Capture) -> int:
    report = _Report(args.quiet)
    damage_said = 0
    speed = None if args.fast else args.speed
    reader = HanReader(ct_ratio=args.ct_ratio)
    emit = None if args.pty else (json_lines if args.json else _text_lines)
    out = sys.stdout.buffer
    lists: Counter[int] = Counter()
    started = time.monotonic()

    def take(data: bytes) -> None:
        nonlocal damage_said
        while damage_said < len(capture.damage):  # found while reading the file, said in order
            d = capture.damage[damage_said]
            damage_said += 1
            report.problem(f"apm replay: {d.where}: {d.reason}")
        readings = reader.feed(data)
        if readings:
            lists.update(r.list for r in readings)
            if emit is not None:
                out.write(emit(readings))
                if speed is not None:
                    out.flush()
        if reader.problems:
            for p in reader.pop_problems():
                report.problem(f"apm replay: {capture.where(p.offset)}: {p.kind}: {p.reason}")

    progress = _progress(capture, speed, args.quiet)
    async with contextlib.AsyncExitStack() as stack:
        port = await stack.enter_async_context(_pty(capture, speed, args.delay)) if args.pty else None
        task = None
        if progress is not None:
            stack.enter_context(progress)
            report.progress = progress
            task = progress.add_task("replay", total=capture.size)
        async for _, data in paced(capture.chunks(fast=args.fast), speed):
            if port is not None:
                await port.awrite(data)
            take(data)
            if task is not None:
                progress.update(task, completed=capture.position)
        reader.close()
        take(b"")
    out.flush()
    return _summary(capture, reader, lists, time.monotonic() - started, args)


def _summary(capture: Capture, reader: HanReader, lists: Counter[int], seconds: float,
             args: argparse.Namespace) -> int:
    frames = reader.frames
    total = sum(lists.values())
    per_list = ", ".join(f"list {n}: {lists[n]}" for n in sorted(lists))
    errors = ", ".join(f"{n} {kind}" for kind, n in sorted(reader.errors.items()))
    damaged = f"; {len(capture.damage)} damaged parts of the file skipped" if capture.damage else ""
    print(
        f"apm replay: {capture.path} ({capture.fmt}): {total} readings ({per_list or 'none'}) from "
        f"{frames.frames_ok} good frames; {errors or 'no problems'}{damaged}; "
        f"{frames.bytes_discarded} bytes outside frames; {seconds:.2f} s",
        file=sys.stderr,
    )
    if total:
        return 0
    if not frames.frames_ok:
        print(f"apm replay: no valid HAN frame in {capture.path} (read as {capture.fmt}, {capture.size} "
              "bytes): not a HAN dump, or every frame in it is damaged", file=sys.stderr)
    else:
        kind = reader.errors.most_common(1)[0][0] if reader.errors else "unknown"
        print(f"apm replay: {frames.frames_ok} frames passed their checks but none decoded "
              f"(mostly {kind}; see the lines above)", file=sys.stderr)
    return 1
