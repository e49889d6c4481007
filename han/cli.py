"""`decode`: a HAN dump file to JSON lines, one reading per line (shared by `apm` and `python -m han`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import BinaryIO

from han.dump import DumpError, load
from han.reader import HanReader


def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", default="-", help="dump file (hex text or raw bytes); - for stdin")
    p.add_argument("--format", choices=("hex", "bin"), help="force the input format (default: detect)")
    p.add_argument("--ct-ratio", type=float, default=1.0, help="current transformer ratio (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-problem lines on stderr")


def _read(path: str, stdin: BinaryIO) -> bytes:
    if path == "-":
        return stdin.read()
    with open(path, "rb") as f:
        return f.read()


def run_decode(args: argparse.Namespace) -> int:
    prog = getattr(args, "prog", "decode")
    if not args.ct_ratio > 0:
        print(f"{prog}: --ct-ratio must be positive, got {args.ct_ratio}", file=sys.stderr)
        return 2
    try:
        dump = load(_read(args.file, sys.stdin.buffer), args.format)
    except OSError as exc:
        print(f"{prog}: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except DumpError as exc:
        print(f"{prog}: {args.file}: {exc}", file=sys.stderr)
        return 2
    reader = HanReader(ct_ratio=args.ct_ratio)
    readings = reader.feed(dump.data)
    reader.close()
    out = sys.stdout
    for reading in readings:
        out.write(json.dumps(reading.to_json_dict()) + "\n")
    out.flush()
    problems = reader.pop_problems()
    if not args.quiet:
        for p in problems:
            print(f"{prog}: {dump.where(p.offset)}: {p.kind}: {p.reason}", file=sys.stderr)
    frames = reader.frames
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(reader.errors.items())) or "no problems"
    print(
        f"{prog}: {len(readings)} readings from {frames.frames_ok} good frames; {counts}; "
        f"{frames.bytes_discarded} bytes outside frames",
        file=sys.stderr,
    )
    if not readings:
        print(f"{prog}: nothing could be decoded from {args.file} ({dump.fmt} input)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m han", description="HAN port decoder")
    sub = parser.add_subparsers(dest="command", required=True)
    decode = sub.add_parser("decode", help="decode a HAN dump to JSON lines")
    add_decode_arguments(decode)
    args = parser.parse_args(argv)
    return run_decode(args)
