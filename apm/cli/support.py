"""Small pieces shared by the `apm` sub-commands (kept out of `apm.cli.commands`, where every module is a command)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apm.io.storage.flash import Flash, FlashContents


USAGE = 2  # bad input: options, files, times; one line on stderr says what
FAILURE = 1  # the input was fine but the work failed (a broker, a service, nothing decoded)
TIME_HELP = "ISO 8601, e.g. 2030-01-31T12:00; without an offset it is Europe/Oslo local time"
OSLO_ZONE = "Europe/Oslo"


class UsageError(Exception):
    """Bad input or an unusable image: one line on stderr and exit status 2 (see `command`)."""


class Failure(Exception):
    """A runtime failure (the input was fine): one line on stderr and exit status 1."""


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Decorate a sub-command's ``run``: a `UsageError` becomes ``apm NAME: message`` on stderr and
    status 2, a `Failure` the same with status 1."""

    def wrap(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            try:
                return func(args)
            except UsageError as exc:
                return fail(name, str(exc), USAGE)
            except Failure as exc:
                return fail(name, str(exc), FAILURE)

        return run

    return wrap


def load_image(args: argparse.Namespace, *, must_exist: bool = True,
               lenient: bool = False) -> tuple[Flash, FlashContents]:
    """The image named by ``--image`` (or its defaults) and its current contents (``lenient``: a stored
    configuration this version refuses comes back as ``unreadable_config`` instead of an error)."""
    from apm.io.storage.flash import Flash, FlashError, resolve_image_path

    image = Flash(resolve_image_path(image_arg(args)))
    if must_exist and not image.exists():
        raise UsageError(f"no image at {image.path}")
    try:
        return image, image.read(lenient=lenient)
    except FlashError as exc:
        raise UsageError(str(exc)) from None


def add_image_option(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: the option may stand before or after a nested action without one default hiding the other.
    parser.add_argument("--image", default=argparse.SUPPRESS, metavar="FILE",
                        help="flash image (default: $APM_FLASH, else $XDG_DATA_HOME/apm/flash.img, "
                             "i.e. ~/.local/share/apm/flash.img)")


def add_now_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--now", default=argparse.SUPPRESS, metavar="TIME",
                        help=f"simulated clock ({TIME_HELP}; default: the real time)")


def image_arg(args: argparse.Namespace) -> str | None:
    return getattr(args, "image", None)


def now_arg(args: argparse.Namespace) -> datetime:
    """``--now`` parsed (see `parse_time`), else the real clock; in UTC either way."""
    text = getattr(args, "now", None)
    if text is None:
        return datetime.now(UTC)
    try:
        return parse_time(text).astimezone(UTC)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def oslo() -> tzinfo:
    from zoneinfo import ZoneInfo

    return ZoneInfo(OSLO_ZONE)


def parse_time(text: str, what: str = "--now") -> datetime:
    """Every time argument of every command: ISO 8601; a time without an offset is Oslo local time
    (where the meters and their owners are), a ``Z`` or an offset is taken as written."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an ISO 8601 time (e.g. 2030-01-31T12:00 or "
                         "2030-01-31T12:00:00+01:00)") from None
    return t.replace(tzinfo=oslo()) if t.tzinfo is None else t


def fail(command: str, message: str, status: int = USAGE) -> int:
    print(f"apm {command}: {message}", file=sys.stderr)
    return status


def run_io(command: str, main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(main)``; an OSError (a port, a file) becomes ``apm COMMAND: message``, status 2.
    A broken pipe (the reader went away: ``| head``) goes on to apm's dispatcher, which ends quietly."""
    import asyncio

    try:
        return asyncio.run(main)
    except BrokenPipeError:
        raise
    except OSError as exc:
        return fail(command, str(exc), USAGE)


def read_status(image: Path) -> dict[str, Any] | None:
    """The device loop's live status beside the image (``<image>.status.json``), None if absent or unreadable."""
    from apm.io.storage.flash import status_path

    try:
        doc = json.loads(status_path(image).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def detected_meter(image: Path) -> str | None:
    status = read_status(image)
    meter = status.get("meter") if status else None
    return meter if isinstance(meter, str) and meter else None
