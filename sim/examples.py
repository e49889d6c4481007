"""Regenerate the bundled example dumps: ``python -m sim.examples [DIR]`` (default examples/dumps).

The content depends on nothing but the code (a fixed start, duration and seed): two runs write the
same bytes, and a file that would not change is left alone.

One hex dump per vendor and meter kind, two minutes of a simulated meter around a full hour, so every
list appears, the hourly one included. One frame per line with a comment saying when and which list:

    apm replay examples/dumps/aidon-3p-it.hex --json
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from han.profiles import METER_KINDS, SUPPORTED_METERS
from sim.frames import MeterSpec
from sim.meter import Meter

ROOT = Path(__file__).resolve().parents[1]
START = datetime.fromisoformat("2025-01-15T09:59:00+01:00")
DURATION = 120.0
SEED = 1


def specs() -> list[tuple[str, MeterSpec]]:
    out = [(f"{vendor}-{kind}", MeterSpec(vendor, kind)) for vendor in SUPPORTED_METERS for kind in METER_KINDS]
    out.append(("aidon-3p-it-no-u2", MeterSpec("aidon", "3p-it", omit_u2=True)))
    return out


def dump_text(name: str, spec: MeterSpec, start: datetime = START, duration: float = DURATION,
              seed: int = SEED) -> str:
    meter = Meter(spec, start, seed=seed)
    variant = " without UL2" if spec.omit_u2 else ""
    lines = [
        f"# {name}: a simulated {spec.vendor} {spec.kind} meter{variant} ({spec.wire.list_id}, type "
        f"{spec.meter_type}), seed {seed}.",
        f"# Meter clock from {start.isoformat()} for {duration:.0f} s. Regenerate: python -m sim.examples",
        "# One HDLC frame per line, as the HAN port sends it; the comment gives its time and list.",
    ]
    for push in meter.pushes_between(0.0, duration):
        clock = meter.clock(push.t).strftime("%H:%M:%S.%f")[:10]
        lines.append(f"{push.frame.hex()}  # {clock} list {push.list}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.examples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", nargs="?", default=str(ROOT / "examples" / "dumps"))
    args = parser.parse_args(argv)
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, spec in specs():
        path = out / f"{name}.hex"
        text = dump_text(name, spec)  # a function of the name, START, DURATION and SEED only
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            print(f"{path}: unchanged", file=sys.stderr)
            continue
        path.write_text(text, encoding="utf-8", newline="\n")
        print(f"{path}: written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
