"""`apm flash write|read|erase|verify`: the emulated flash image, in the manner of a firmware tool."""

from __future__ import annotations

import argparse
import sys

from apm.cli.support import (
    UsageError,
    add_image_option,
    add_now_option,
    command,
    fail,
    image_arg,
    load_image,
    now_arg,
)


class _ConfigKeysHelp(argparse.RawDescriptionHelpFormatter):
    """``apm flash write --help`` ends with the configuration's keys, generated from the schema only
    when the help is shown (the schema is not imported to parse a command line)."""

    def format_help(self) -> str:
        from apm.core.config import describe

        return super().format_help() + "\n" + describe() + "\n"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flash", help="write, read, erase or verify the emulated flash image")
    add_image_option(p)
    actions = p.add_subparsers(dest="flash_action", metavar="ACTION", required=True)

    w = actions.add_parser("write", help="validate CONFIG.toml and store it as the device configuration",
                           description="Validate CONFIG.toml and store it as the device configuration.\n"
                                       "Anything `apm run` would refuse is refused here (exit status 2),\n"
                                       "naming the key, and the image is left as it was. The token, issuer\n"
                                       "key, revocations and outbox are kept; a stored configuration that\n"
                                       "this version refuses (written by another version) is replaced.",
                           formatter_class=_ConfigKeysHelp)
    w.add_argument("config", metavar="CONFIG.toml")
    add_image_option(w)
    w.set_defaults(func=run_write)

    r = actions.add_parser("read", help="print the stored configuration as TOML")
    add_image_option(r)
    r.set_defaults(func=run_read)

    e = actions.add_parser("erase", help="erase the image (configuration, token, key, outbox)")
    add_image_option(e)
    e.set_defaults(func=run_erase)

    v = actions.add_parser("verify", help="check both slots and what the current version holds")
    add_image_option(v)
    add_now_option(v)
    v.set_defaults(func=run_verify)


@command("flash write")
def run_write(args: argparse.Namespace) -> int:
    from apm.core import config as cfg
    from apm.io.storage.flash import Flash, FlashError, resolve_image_path

    try:
        config = cfg.load(args.config)
    except cfg.ConfigError as exc:
        return fail("flash write", str(exc), 2)  # bad input; nothing is written
    image = Flash(resolve_image_path(image_arg(args)))
    try:
        image.write_config(config)
        report = image.inspect()
    except FlashError as exc:
        raise UsageError(f"{exc}; nothing written") from None
    active = report.active
    version = f", version {active.sequence}" if active else ""
    print(f"wrote configuration of APM {config.serial} ({_count(len(config.chargers), 'charger')}, "
          f"{config.grid.fuse_a:g} A {config.grid.network} fuse) to {image.path}{version}")
    return 0


@command("flash read")
def run_read(args: argparse.Namespace) -> int:
    from apm.core import config as cfg
    image, contents = load_image(args)
    if contents.config is None:
        raise UsageError(f"{image.path} holds no configuration (blank); store one with `apm flash write CONFIG.toml`")
    sys.stdout.write(cfg.dumps(contents.config))
    return 0


@command("flash erase")
def run_erase(args: argparse.Namespace) -> int:
    from apm.io.storage.flash import Flash, FlashError, resolve_image_path

    image = Flash(resolve_image_path(image_arg(args)))
    try:
        image.erase()
    except (FlashError, OSError) as exc:
        raise UsageError(str(exc)) from None
    print(f"erased {image.path}")
    return 0


@command("flash verify")
def run_verify(args: argparse.Namespace) -> int:
    from apm.core import token as tok
    from apm.core.subscription import evaluate
    from apm.io.storage.flash import Flash, outbox_capacity, resolve_image_path

    now = now_arg(args)
    report = Flash(resolve_image_path(image_arg(args))).inspect()
    if not report.exists:
        raise UsageError(f"no image at {report.path}")
    print(f"image {report.path} ({report.size} bytes)")
    active = report.active
    for s in report.slots:
        seq = f" version {s.sequence}," if s.sequence is not None else ""
        size = f" {s.length} bytes," if s.length is not None else ""
        mark = " (current)" if active is not None and s.index == active.index else ""
        print(f"  slot {s.index}: {s.status},{seq}{size} {s.detail}{mark}")
    image, contents = load_image(args)
    if contents.blank:
        print("contents: blank")
        return 0
    c = contents.config
    print(f"  configuration: APM {c.serial}, installation {c.installation_id}, "
          f"{_count(len(c.chargers), 'charger')}" if c else "  configuration: none")
    if contents.issuer_key is not None:
        try:
            tok.load_public_key(contents.issuer_key)
        except tok.IssuerKeyError as exc:
            raise UsageError(f"{image.path}: the stored issuer key is unusable: {exc}") from None
        print("  issuer key: Ed25519 public key")
    else:
        print("  issuer key: none")
    if contents.token is not None and c is not None:
        state = evaluate(now, token=contents.token, public_key=contents.issuer_key, config=c,
                         revocations=contents.revocations)
        print(f"  token: subscription {state.state.value} ({state.reason})")
    else:
        print(f"  token: {'stored' if contents.token else 'none'}")
    print(f"  revocations: {len(contents.revocations)}; outbox: {len(contents.outbox)} records unsent "
          f"(room for about {outbox_capacity(contents.outbox)}), {contents.outbox_dropped} dropped when full")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
