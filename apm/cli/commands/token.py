"""`apm token install|show`: the subscription token (and revocations) kept in flash."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from apm.cli.support import (
    UsageError,
    add_image_option,
    add_now_option,
    command,
    detected_meter,
    load_image,
    now_arg,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="install or show the subscription token")
    add_image_option(p)
    actions = p.add_subparsers(dest="token_action", metavar="ACTION", required=True)

    i = actions.add_parser("install", help="verify TOKEN (a subscription or a revocation) and store it")
    i.add_argument("token", metavar="TOKEN", help="the token itself, or a file holding it")
    i.add_argument("--issuer-key", metavar="PEM",
                   help="the issuer's public key file, stored with the first token and pinned from then on: "
                        "another key is refused (exit status 2)")
    i.add_argument("--replace-issuer-key", action="store_true",
                   help="replace the pinned issuer key with --issuer-key's: from then on only tokens and "
                        "revocations signed by the new key count, the old key's count for nothing. Only for "
                        "an issuer that changed its key; prints a warning")
    add_image_option(i)
    add_now_option(i)
    i.set_defaults(func=run_install)

    s = actions.add_parser("show", help="print the stored token's claims and the subscription state")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    add_image_option(s)
    add_now_option(s)
    s.set_defaults(func=run_show)


def _token_text(arg: str) -> str:
    if os.path.isfile(arg):
        try:
            return Path(arg).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{arg}: cannot read the token: {exc}") from None
    if arg.count(".") == 2 and os.sep not in arg:
        return arg.strip()
    raise UsageError(f"{arg!r} is neither a file nor a token (header.payload.signature)")


def _issuer_key(path: str) -> str:
    from apm.core import token as tok
    try:
        pem = Path(path).read_text(encoding="ascii")
        tok.load_public_key(pem)
    except (OSError, UnicodeDecodeError, tok.IssuerKeyError) as exc:
        raise UsageError(f"--issuer-key {path}: {exc}") from None
    return pem


@command("token install")
def run_install(args: argparse.Namespace) -> int:
    from apm.core import token as tok
    from apm.core.subscription import evaluate
    from apm.io.storage.flash import (
        FlashContents,
        FlashError,
        IssuerKeyPinned,
        same_issuer_key,
        with_issuer_key,
    )

    now = now_arg(args)
    text = _token_text(args.token)
    image, contents = load_image(args)
    config = contents.config
    if config is None:
        raise UsageError(f"{image.path} holds no configuration; `apm flash write CONFIG.toml` first "
                         "(the token is checked against its serial and installation id)")
    if args.replace_issuer_key and not args.issuer_key:
        raise UsageError("--replace-issuer-key needs --issuer-key FILE, the new key")
    key_pem = _issuer_key(args.issuer_key) if args.issuer_key else contents.issuer_key
    if key_pem is None:
        raise UsageError("no issuer public key stored; pass --issuer-key FILE")
    try:  # checked before the token, so that the message says the key is the problem
        with_issuer_key(contents, key_pem, replace_key=args.replace_issuer_key)
    except IssuerKeyPinned as exc:
        raise UsageError(f"--issuer-key {args.issuer_key}: {exc}; nothing stored") from None

    if tok.token_kind(text) == tok.KIND_REVOCATION:
        rv = tok.verify_revocation_for(text, key_pem, serial=config.serial)
        if not rv.ok:
            raise UsageError(f"revocation refused ({rv.refusal.value}): {rv.message}; nothing stored")

        def change(c: FlashContents) -> FlashContents:
            revs = c.revocations if text in c.revocations else (*c.revocations, text)
            return with_issuer_key(replace(c, revocations=revs), key_pem, replace_key=args.replace_issuer_key)

        done = f"stored revocation: {rv.message}"
    else:
        v = tok.verify(text, key_pem, now=now, installation_id=config.installation_id, serial=config.serial,
                       revoked=tok.revoked_ids(contents.revocations, key_pem))
        if not v.ok:
            raise UsageError(f"token refused ({v.refusal.value}): {v.message}; nothing stored")

        def change(c: FlashContents) -> FlashContents:
            return with_issuer_key(replace(c, token=text), key_pem, replace_key=args.replace_issuer_key)

        done = f"installed token {v.claims.token_id} ({v.claims.plan}: {', '.join(v.claims.features)}), {v.message}"
    replacing = contents.issuer_key is not None and not same_issuer_key(contents.issuer_key, key_pem)
    try:
        contents = image.update(change)
    except FlashError as exc:
        raise UsageError(f"{exc}; nothing stored") from None
    if replacing:
        print(f"apm token install: warning: replaced the pinned issuer key of {image.path}: only tokens and "
              "revocations signed by the new key count from now on", file=sys.stderr)
    print(done)
    state = evaluate(now, token=contents.token, public_key=contents.issuer_key, config=config,
                     revocations=contents.revocations, meter=detected_meter(image.path))
    print(f"subscription: {state.state.value} ({state.reason})")
    return 0


@command("token show")
def run_show(args: argparse.Namespace) -> int:
    from apm.core import token as tok
    from apm.core.subscription import evaluate

    now = now_arg(args)
    image, contents = load_image(args)
    if contents.token is None:
        raise UsageError(f"no token installed in {image.path}")
    payload = tok.peek(contents.token) or {}
    state = None
    if contents.config is not None:
        state = evaluate(now, token=contents.token, public_key=contents.issuer_key, config=contents.config,
                         revocations=contents.revocations, meter=detected_meter(image.path))
    if args.json:
        print(json.dumps({"claims": payload, "subscription": state.to_status() if state else None}, indent=2))
        return 0
    for key in ("installation_id", "serial", "plan", "features", "country", "max_chargers", "jti"):
        value = payload.get(key)
        print(f"{key:16} {', '.join(value) if isinstance(value, list) else value}")
    for key in ("iat", "nbf", "exp"):
        value = payload.get(key)
        if isinstance(value, int | float):
            print(f"{key:16} {tok.iso_z(datetime.fromtimestamp(value, UTC))}")
    subscription = f"{state.state.value} ({state.reason})" if state else "unknown: no configuration stored"
    print(f"{'subscription':16} {subscription}")
    return 0
