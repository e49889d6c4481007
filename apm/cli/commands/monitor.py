"""`apm monitor --port /dev/ttyUSB0`: read a HAN port live, finding its serial settings when not given.

Settings: --parity (and --baud) fix them; without --parity, or with --auto, they are auto-detected
(the setting remembered for this port first, then --parity/--baud if given, then 2400/9600/115200 x
E/N/O; --baud alone keeps that rate) and whatever gives two CRC-valid frames is remembered.
Auto-detection repeats its rounds until --timeout; each attempt is reported on stderr.

Exit status: 0 readings were decoded; 1 nothing decodable (the diagnosis is on stderr);
2 bad arguments or the port cannot be opened. Ctrl-C, --timeout, --count and a port lost mid-run
all end the run the same way: 0 if readings were seen, else 1 with the diagnosis.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack

import serial
from rich.console import Console
from rich.live import Live

from apm.cli.views.monitor import Board, LinkStatus
from apm.io.serial.port import (
    BAUDS,
    PARITIES,
    Attempt,
    HanLink,
    PortError,
    SerialSettings,
    SettingsCache,
    autodetect,
    candidates,
    configure,
    default_cache_path,
    diagnose,
    open_port,
)
from han import Reading
from han.jsonl import json_line

PROG = "apm monitor"
REFRESH_S = 0.25  # live table refresh when no reading arrives
_MAX_PROBLEM_LINES = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("monitor", help="read a HAN port live (auto-detects parity and baud rate)",
                       description="Read the meter's HAN port and show the readings live. Without --parity "
                                   "the serial settings are auto-detected and remembered per port.")
    p.add_argument("--port", required=True, help="serial device of the M-Bus adapter, e.g. /dev/ttyUSB0")
    p.add_argument("--baud", type=int, help="baud rate (default 2400; with auto-detection, try only this one)")
    p.add_argument("--parity", type=str.upper, choices=PARITIES,
                   help="E for Aidon and Kaifa, N for Kamstrup (default: auto-detect)")
    p.add_argument("--auto", action="store_true", help="auto-detect even with --parity (tried first then)")
    p.add_argument("--ct-ratio", type=float, default=1.0, help="current transformer ratio (default 1)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON reading per line (reading.schema.json) instead of the live table")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="stop after S seconds; exit 1 with a diagnosis if nothing was decoded")
    p.add_argument("--probe-seconds", type=float, default=12.0, metavar="S",
                   help="time per auto-detection attempt (default 12; a Kamstrup meter pushes every 10 s)")
    p.add_argument("--count", type=int, metavar="N", help="exit after N readings")
    p.add_argument("--cache", metavar="FILE",
                   help=f"where settings that worked are remembered (default {default_cache_path()})")
    p.set_defaults(func=run)


def _fail(message: str, status: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return status


def _check(args: argparse.Namespace) -> str | None:
    if not args.ct_ratio > 0:
        return f"--ct-ratio must be positive, got {args.ct_ratio}"
    if args.baud is not None and args.baud <= 0:
        return f"--baud must be positive, got {args.baud}"
    if args.count is not None and args.count < 1:
        return f"--count must be at least 1, got {args.count}"
    if args.timeout is not None and not args.timeout > 0:
        return f"--timeout must be positive, got {args.timeout}"
    if not args.probe_seconds > 0:
        return f"--probe-seconds must be positive, got {args.probe_seconds}"
    return None


def run(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem:
        return _fail(problem, 2)
    return Session(args).run()


class Session:
    """One `apm monitor` run: open, detect (or not), read until count, timeout or Ctrl-C."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.auto = args.auto or args.parity is None
        self.given = SerialSettings(args.baud or 2400, args.parity or "E")
        self.cache = SettingsCache(args.cache)
        self.remembered = self.cache.get(args.port) if self.auto else None
        if self.remembered and args.baud and self.remembered.baud != args.baud:
            self.remembered = None
        self.order = candidates(self.remembered, self.given if args.parity else None,
                                bauds=(args.baud,) if args.baud else BAUDS)
        self.deadline = time.monotonic() + args.timeout if args.timeout else None
        self.attempts: dict[SerialSettings, Attempt] = {}
        self.link: HanLink | None = None
        self.seen = 0
        self.board = Board(args.port, "")
        self.live: Live | None = None
        self.problems_said: set[str] = set()
        self.saved = False

    # -- the run -----------------------------------------------------------------------------------

    def run(self) -> int:
        args = self.args
        try:
            port = open_port(args.port, self.order[0] if self.auto else self.given)
        except PortError as exc:
            return _fail(str(exc), 2)
        with ExitStack() as stack:
            stack.enter_context(port)
            try:
                if self.auto:
                    self._detect(port)
                else:
                    configure(port, self.given)
                    self.link = HanLink(port, self.given, args.ct_ratio)
                    self._announce("as given")
                if self.link is not None:
                    if not args.json:  # also when probing already gave --count readings: show them
                        self.live = stack.enter_context(
                            Live(self._render(), console=Console(), auto_refresh=False))
                    self._read()
            except KeyboardInterrupt:
                pass
            except (serial.SerialException, OSError) as exc:
                print(f"{PROG}: {args.port}: reading failed: {exc}", file=sys.stderr)
            finally:
                if self.live is not None:
                    self.live.update(self._render(), refresh=True)
        if self.seen:
            return 0
        if self.link is not None:
            # The link goes on with the reader of the attempt that found it: its counts replace that attempt.
            found = self.link.attempt()
            if self.auto:
                self.attempts.pop(found.settings, None)
            self._record(found)
        diagnosis = diagnose(list(self.attempts.values()), args.port, auto=self.auto)
        if diagnosis is None:
            return _fail("stopped before anything was read", 1)
        return _fail(f"nothing decoded [{diagnosis.code}]: {diagnosis}", 1)

    def _detect(self, port: serial.Serial) -> None:
        said = None
        while self.link is None and not self._expired():
            detection = autodetect(port, self.order, self.args.probe_seconds, ct_ratio=self.args.ct_ratio,
                                   deadline=self.deadline, on_attempt=self._attempted)
            if detection.link is not None:
                self.link = detection.link
                how = "remembered from an earlier run" if self.link.settings == self.remembered else "auto-detected"
                self._announce(how)
                if self.link.frames_ok >= 2:
                    self._remember()
                for reading in detection.readings:
                    self._emit(reading)
                return
            diagnosis = diagnose(list(self.attempts.values()), self.args.port)
            if diagnosis is not None and diagnosis.code != said and not self._expired():
                said = diagnosis.code
                print(f"{PROG}: no setting worked yet [{diagnosis.code}]: {diagnosis}; still trying",
                      file=sys.stderr)

    def _read(self) -> None:
        link = self.link
        assert link is not None
        refreshed = 0.0
        while not self._done():
            for reading in link.poll():
                self._emit(reading)
                if self._done():
                    return
            if not self.saved and link.frames_ok >= 2:
                self._remember()
            self._say_problems()
            now = time.monotonic()
            if self.live is not None and now - refreshed >= REFRESH_S:
                self.live.update(self._render(), refresh=True)
                refreshed = now

    # -- pieces ------------------------------------------------------------------------------------

    def _expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _done(self) -> bool:
        count = self.args.count
        return (count is not None and self.seen >= count) or self._expired()

    def _attempted(self, attempt: Attempt) -> None:
        self._record(attempt)
        tag = " (remembered)" if attempt.settings == self.remembered else ""
        print(f"{PROG}: tried {attempt.describe()}{tag}", file=sys.stderr)

    def _record(self, attempt: Attempt) -> None:
        before = self.attempts.get(attempt.settings)
        self.attempts[attempt.settings] = before.merge(attempt) if before else attempt

    def _announce(self, how: str) -> None:
        assert self.link is not None
        self.board.settings = f"{self.link.settings} ({how})"
        print(f"{PROG}: reading {self.args.port} at {self.link.settings} ({how})", file=sys.stderr)

    def _remember(self) -> None:
        assert self.link is not None
        self.saved = True
        if self.cache.get(self.args.port) == self.link.settings:
            return
        try:
            self.cache.put(self.args.port, self.link.settings)
        except OSError as exc:
            print(f"{PROG}: cannot remember the settings in {self.cache.path}: {exc}", file=sys.stderr)
            return
        print(f"{PROG}: remembered {self.link.settings} for {self.args.port} in {self.cache.path}",
              file=sys.stderr)

    def _emit(self, reading: Reading) -> None:
        if self.args.count is not None and self.seen >= self.args.count:
            return
        self.seen += 1
        if self.args.json:
            sys.stdout.buffer.write(json_line(reading) + b"\n")
            sys.stdout.flush()
        else:
            self.board.update(reading)
            if self.live is not None:
                self.live.update(self._render(), refresh=True)

    def _say_problems(self) -> None:
        """In JSON mode, each distinct decoder problem once on stderr (the live table shows the last one)."""
        if self.live is not None or self.link is None or len(self.problems_said) >= _MAX_PROBLEM_LINES:
            return
        for kind, reason in self.link.problems:
            line = f"{kind}: {reason}"
            if line not in self.problems_said and len(self.problems_said) < _MAX_PROBLEM_LINES:
                self.problems_said.add(line)
                print(f"{PROG}: {line}", file=sys.stderr)

    def _render(self):
        link = self.link
        if link is None:
            return self.board.render(LinkStatus())
        reader = link.reader
        status = LinkStatus(
            frames_ok=reader.frames.frames_ok,
            frames_bad=reader.frames.frames_bad,
            bytes_in=link.bytes_in,
            bytes_discarded=reader.bytes_discarded,
            errors=tuple(sorted(reader.errors.items())),
            last_problem=link.last_problem,
        )
        return self.board.render(status)
