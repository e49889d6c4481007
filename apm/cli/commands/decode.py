"""`apm decode [FILE|-]`: a HAN dump to JSON lines (see han.cli)."""

from __future__ import annotations

from han.cli import add_decode_arguments, run_decode


def register(sub) -> None:
    p = sub.add_parser("decode", help="decode a HAN dump (hex text or raw bytes) to JSON lines")
    add_decode_arguments(p)
    p.set_defaults(func=run_decode, prog="apm decode")
