"""`apm`: the device's flash-style command line.

Each module in ``apm.commands`` adds its own sub-command through ``register(subparsers)``
and sets ``func`` (returning the exit status) as the parser default, so a new command is
a new file and this dispatcher never changes.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from apm import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apm", description="APM power meter emulator")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
