"""`apm record --port /dev/ttyUSB0 OUT`: the raw bytes of a HAN port, with receive times, into a file.

The file (format: ``apm.io.storage.recording``, docs/recording-format.md) is only appended to, one complete
record per chunk read, so killing the recorder at any moment loses at most the chunk being written.
`apm replay OUT` plays it back with the original timing. Stop with Ctrl-C, SIGTERM or --duration.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from apm.cli.arguments import positive
from apm.io.storage.recording import RecordingWriter
from han.hdlc import FrameReader

_QUIET_WARNING = 15.0  # seconds without a byte before saying so


def register(sub) -> None:
    p = sub.add_parser("record", help="record a HAN port's raw bytes with receive times (replay with `apm replay`)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", metavar="OUT", help="the recording file to create")
    p.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    p.add_argument("--vendor", choices=("aidon", "kaifa", "kamstrup"),
                   help="use the vendor's serial settings (Aidon, Kaifa: 2400 8E1; Kamstrup: 2400 8N1)")
    p.add_argument("--baud", type=int, help="baud rate (default 2400)")
    p.add_argument("--parity", choices=("E", "N", "O"), help="parity (default E)")
    p.add_argument("--detect", action="store_true",
                   help="find the serial settings first (frames must pass their CRCs); bytes read while "
                        "probing are not recorded")
    p.add_argument("--duration", type=positive, metavar="S", help="stop after S seconds")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from apm.io.serial.port import (
        DEFAULT_SETTINGS,
        VENDOR_SETTINGS,
        PortError,
        SerialSettings,
        autodetect,
        candidates,
        open_port,
    )

    base = VENDOR_SETTINGS[args.vendor] if args.vendor else DEFAULT_SETTINGS
    try:
        settings = SerialSettings(args.baud or base.baud, args.parity or base.parity)
        port = open_port(args.port, settings)
    except (ValueError, PortError) as exc:
        print(f"apm record: {exc}", file=sys.stderr)
        return 2
    with port:
        if args.detect:
            print(f"apm record: detecting the serial settings on {args.port} ...", file=sys.stderr)
            detection = autodetect(port, candidates(settings), probe_seconds=12.0)
            if detection.settings is None:
                print(f"apm record: no setting gave valid frames on {args.port}; recording with {settings}",
                      file=sys.stderr)
            else:
                settings = detection.settings
        meta = {"port": args.port, "baud": settings.baud, "parity": settings.parity,
                "bytesize": settings.bytesize, "stopbits": settings.stopbits, "tool": "apm record"}
        try:
            writer = RecordingWriter(args.out, meta, overwrite=args.force)
        except FileExistsError:
            print(f"apm record: {args.out} exists: choose another name, or --force to overwrite it",
                  file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"apm record: cannot create {args.out}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        with writer:
            return _record(port, writer, args, str(settings))


def _record(port, writer: RecordingWriter, args: argparse.Namespace, settings: str) -> int:
    import serial

    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    previous = signal.signal(signal.SIGTERM, stop)
    frames = FrameReader()  # only to tell the user whether frames come through
    print(f"apm record: {args.port} ({settings}) -> {args.out}; Ctrl-C to stop", file=sys.stderr)
    started = time.monotonic()
    last_byte = started
    warned = False
    status = 0
    try:
        while not stopping:
            now = time.monotonic()
            if args.duration is not None and now - started >= args.duration:
                break
            try:
                data = port.read(port.in_waiting or 1)
            except (serial.SerialException, OSError) as exc:
                print(f"apm record: reading {args.port} failed ({exc}); the recording so far is kept",
                      file=sys.stderr)
                status = 1
                break
            if data:
                writer.write(time.monotonic() - started, data)
                frames.feed(data)
                last_byte = time.monotonic()
            elif not warned and now - last_byte >= _QUIET_WARNING:
                warned = True
                print(f"apm record: no bytes from {args.port} for {_QUIET_WARNING:.0f} s (is the HAN port open?)",
                      file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"apm record: {args.out}: {writer.bytes} bytes in {writer.records} records over "
          f"{time.monotonic() - started:.1f} s; {frames.frames_ok} frames passed their checks, "
          f"{frames.frames_bad} did not", file=sys.stderr)
    return status
