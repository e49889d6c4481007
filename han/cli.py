"""`decode`: a HAN dump file to JSON lines, one reading per line (shared by `apm` and `python -m han`).

The dump is read a piece at a time (memory stays flat for a dump of any size): raw bytes in blocks,
hex text line by line. A line of a hex dump that is not hex (a last line cut short, a logger's
garbage) is reported and skipped; everything intact decodes. Exit status: 0 readings decoded;
1 nothing decoded; 2 bad input (options, a file that cannot be read, a forced format that does not fit).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import BinaryIO

from han.dump import SNIFF_BYTES, BadLine, DumpError, LineIndex, bin_stream, hex_stream, numbered_lines, sniff
from han.jsonl import json_lines
from han.reader import HanReader


def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", default="-", help="dump file (hex text or raw bytes); - for stdin")
    p.add_argument("--format", choices=("hex", "bin"), help="force the input format (default: detect)")
    p.add_argument("--ct-ratio", type=float, default=1.0, help="current transformer ratio (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-problem lines on stderr")


class _Source:
    """The dump as stream pieces (bytes) and bad lines, with where each stream offset came from."""

    def __init__(self, f: BinaryIO, fmt: str | None) -> None:
        self.f = f
        self.fmt = sniff(f.peek(SNIFF_BYTES)[:SNIFF_BYTES] if hasattr(f, "peek") else b"", fmt)
        self.index = LineIndex() if self.fmt == "hex" else None
        self.good_lines = 0

    def pieces(self) -> Iterator[bytes | BadLine]:
        if self.index is None:
            yield from bin_stream(self.f)
        else:
            yield from hex_stream(numbered_lines(self.f), self.index)

    def where(self, offset: int) -> str:
        return self.index.where(offset) if self.index is not None else f"byte {offset}"


def _open(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    return open(path, "rb", buffering=SNIFF_BYTES)  # noqa: SIM115 (closed by run_decode)


def run_decode(args: argparse.Namespace) -> int:
    prog = getattr(args, "prog", "decode")
    if not args.ct_ratio > 0:
        print(f"{prog}: --ct-ratio must be positive, got {args.ct_ratio}", file=sys.stderr)
        return 2
    try:
        f = _open(args.file)
    except OSError as exc:
        print(f"{prog}: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        return _decode(args, prog, f)
    except OSError as exc:  # a directory, a read error mid-way
        print(f"{prog}: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except DumpError as exc:
        print(f"{prog}: {args.file}: {exc}", file=sys.stderr)
        return 2
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def _decode(args: argparse.Namespace, prog: str, f: BinaryIO) -> int:
    source = _Source(f, args.format)
    reader = HanReader(ct_ratio=args.ct_ratio)
    out = sys.stdout.buffer
    readings = bad_lines = pieces = 0

    def report(where: str, what: str) -> None:
        if not args.quiet:
            print(f"{prog}: {where}: {what}", file=sys.stderr)

    def take(data: bytes) -> None:
        nonlocal readings
        got = reader.feed(data)
        if got:
            readings += len(got)
            out.write(json_lines(got))
        for p in reader.pop_problems():
            report(source.where(p.offset), f"{p.kind}: {p.reason}")

    for piece in source.pieces():
        if isinstance(piece, BadLine):
            if args.format == "hex" and not pieces:  # forced hex, and the very first line is not
                raise DumpError(f"line {piece.number}: {piece.reason}")
            bad_lines += 1
            report(f"line {piece.number}", f"not hex ({piece.reason}): line skipped")
            continue
        pieces += 1
        take(piece)
    reader.close()
    take(b"")
    out.flush()
    frames = reader.frames
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(reader.errors.items())) or "no problems"
    skipped = f"; {bad_lines} lines not hex, skipped" if bad_lines else ""
    print(f"{prog}: {readings} readings from {frames.frames_ok} good frames; {counts}{skipped}; "
          f"{frames.bytes_discarded} bytes outside frames", file=sys.stderr)
    if not readings:
        print(f"{prog}: nothing could be decoded from {args.file} ({source.fmt} input)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m han", description="HAN port decoder")
    sub = parser.add_subparsers(dest="command", required=True)
    decode = sub.add_parser("decode", help="decode a HAN dump to JSON lines")
    add_decode_arguments(decode)
    decode.set_defaults(prog="python -m han decode")
    args = parser.parse_args(argv)
    return run_decode(args)
