"""``make bench``: run every ``bench/bench_*.py`` module, each printing its own section.

    python -m bench.run            # all of them, in name order
    python -m bench.run decode     # only bench_decode.py
    python bench/run.py --list

A benchmark module exposes ``run() -> None``; adding a file is all it takes to join.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(HERE.parent))


def discover() -> list[str]:
    """Short names of the benchmark modules: ``bench_decode.py`` -> ``decode``."""
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description="Run the project's benchmarks.")
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    known = discover()
    if args.list:
        print("\n".join(known))
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"bench: no benchmark named {', '.join(unknown)} (known: {', '.join(known)})", file=sys.stderr)
        return 2
    for name in args.names or known:
        module = importlib.import_module(f"bench.bench_{name}")
        module.run()
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
