"""Small pieces shared by the `apm` sub-commands (kept out of `apm.commands`, where every module is a command)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apm.flash import Flash, FlashContents


class UsageError(Exception):
    """Bad input or an unusable image: one line on stderr and exit status 1 (see `command`)."""


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Decorate a sub-command's ``run``: a `UsageError` becomes ``apm NAME: message`` on stderr, status 1."""

    def wrap(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            try:
                return func(args)
            except UsageError as exc:
                return fail(name, str(exc))

        return run

    return wrap


def load_image(args: argparse.Namespace, *, must_exist: bool = True) -> tuple[Flash, FlashContents]:
    """The image named by ``--image`` (or its defaults) and its current contents."""
    from apm.flash import Flash, FlashError, resolve_image_path

    image = Flash(resolve_image_path(image_arg(args)))
    if must_exist and not image.exists():
        raise UsageError(f"no image at {image.path}")
    try:
        return image, image.read()
    except FlashError as exc:
        raise UsageError(str(exc)) from None


def add_image_option(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: the option may stand before or after a nested action without one default hiding the other.
    parser.add_argument("--image", default=argparse.SUPPRESS, metavar="FILE",
                        help="flash image (default: $APM_FLASH, else ~/.local/share/apm/flash.img)")


def add_now_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--now", default=argparse.SUPPRESS, metavar="ISO",
                        help="simulated clock, e.g. 2030-01-31T12:00:00Z (default: the real time)")


def image_arg(args: argparse.Namespace) -> str | None:
    return getattr(args, "image", None)


def now_arg(args: argparse.Namespace) -> datetime:
    """``--now`` parsed (naive times are UTC), else the real clock."""
    text = getattr(args, "now", None)
    if text is None:
        return datetime.now(UTC)
    try:
        return parse_time(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def parse_time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--now {text!r} is not an ISO 8601 time (e.g. 2030-01-31T12:00:00Z)") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def fail(command: str, message: str, status: int = 1) -> int:
    print(f"apm {command}: {message}", file=sys.stderr)
    return status


def run_io(command: str, main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(main)``; an OSError (a port, a file) becomes ``apm COMMAND: message``, status 2.
    A broken pipe (the reader went away: ``| head``) goes on to apm's dispatcher, which ends quietly."""
    try:
        return asyncio.run(main)
    except BrokenPipeError:
        raise
    except OSError as exc:
        return fail(command, str(exc), 2)


def read_status(image: Path) -> dict[str, Any] | None:
    """The device loop's live status beside the image (``<image>.status.json``), None if absent or unreadable."""
    from apm.flash import status_path

    try:
        doc = json.loads(status_path(image).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def detected_meter(image: Path) -> str | None:
    status = read_status(image)
    meter = status.get("meter") if status else None
    return meter if isinstance(meter, str) and meter else None
