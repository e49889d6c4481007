"""argparse value types shared by the `apm` sub-commands."""

from __future__ import annotations

import argparse


def positive(text: str) -> float:
    """A number above zero (seconds, a speed, a ratio); argparse reports anything else as a usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
