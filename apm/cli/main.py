"""`apm`: the device's flash-style command line.

Each module in ``apm.cli.commands`` adds its own sub-command through ``register(subparsers)`` and sets
``func`` (returning the exit status) as the parser default. Only the command being run is imported:
the others are listed from ``COMMANDS`` (name and one-line help), so `apm --help` and `apm decode`
do not pay for asyncio, MQTT, rich or the simulator. A new command is a new module and a line here
(tests/integration/test_cli_conventions.py checks that the two agree).

Conventions shared by every command: bad input exits 2 with one line ``apm CMD: what is wrong`` on
stderr; a runtime failure exits 1; a time without a UTC offset is Europe/Oslo local time.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> the help line shown by `apm --help`; the module apm.cli.commands.<name> registers the real parser.
COMMANDS: dict[str, str] = {
    "broker": "users of the embedded MQTT broker (add, list, remove)",
    "cloud": "the simulated subscription issuer (keygen, subscribe, issue, ...)",
    "decode": "decode a HAN dump (hex text or raw bytes) to JSON lines",
    "eco": "Smart eco: plan charging in the cheapest slots before departure",
    "flash": "write, read, erase or verify the emulated flash image",
    "info": "firmware, serial, meter, HAN state, subscription, chargers, port, broker",
    "monitor": "read a HAN port live (auto-detects parity and baud rate)",
    "ocpp": "the OCPP chargers' passwords (show, renew, remove, list)",
    "record": "record a HAN port's raw bytes with receive times (replay with `apm replay`)",
    "replay": "replay a captured HAN dump (recording, hex or raw bytes) through the decoder",
    "run": "the device's main loop: meter -> headroom -> MQTT -> balancer",
    "sim": "the simulated world: AMS meters on a virtual serial port",
    "token": "install or show the subscription token",
}
EPILOG = ("Exit status: 0 done; 1 a runtime failure; 2 bad input. Times without a UTC offset are "
          "Europe/Oslo local time. `apm COMMAND --help` for each command.")


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("apm-emulator")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


class _Version(argparse.Action):
    """``--version``: the package metadata is read only when asked for (it costs imports)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print apm's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"apm {version()}")
        parser.exit()


def _chosen(argv: list[str]) -> str | None:
    """The command named on the line (the first word that is not an option), if it is one."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: the named command in full, every other one as its help line only.
    ``argv`` None builds every command in full (for tools that walk the whole parser)."""
    parser = argparse.ArgumentParser(prog="apm", description="APM power meter emulator", epilog=EPILOG)
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen(argv) if argv is not None else None
    for name, help_text in COMMANDS.items():
        if argv is None or name == chosen:
            importlib.import_module(f"apm.cli.commands.{name}").register(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
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
