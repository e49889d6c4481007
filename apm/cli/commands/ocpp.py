"""`apm ocpp password|list`: the OCPP chargers' passwords (Security Profile 1), for the installer.

    apm ocpp password garage          # garage's password: the stored one, or a new one on first use
    apm ocpp password garage --new    # a new one (the charger must be given it again)
    apm ocpp password garage --remove
    apm ocpp list                     # the charge point ids that have a password (not the passwords)

The password goes to stdout alone (``PW=$(apm ocpp password garage)``), the rest to stderr: the
address, the charge point id and the user name the charger needs. Asking again shows the same password:
the installer types it into the charger's app or portal, maybe days later, so the file keeps it in
plain text (0600, beside the broker's users; `apm.io.chargers.ocpp_passwords`). A charger's ``id`` in
the configuration is turned into its ``ocpp_id`` when it has one. `apm run` reads the file when it
starts (restart it after a change); on any address but loopback it refuses to start while an OCPP
charger has no password.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from apm.cli.support import Failure, UsageError, add_image_option, command, image_arg

if TYPE_CHECKING:
    from apm.core.config import DeviceConfig
    from apm.io.chargers.ocpp_passwords import PasswordBook


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ocpp", help="the OCPP chargers' passwords (show, renew, remove, list)",
                       description=__doc__.split("\n\n", 1)[1].replace("``", ""),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="ocpp_action", metavar="ACTION", required=True)
    pw = actions.add_parser("password", help="a charger's password: shown, created on first use")
    pw.add_argument("charger", metavar="CHARGER", help="the charger's id (or its charge point id)")
    which = pw.add_mutually_exclusive_group()
    which.add_argument("--new", action="store_true", help="replace it with a new password")
    which.add_argument("--remove", action="store_true", help="remove it")
    _options(pw)
    pw.set_defaults(func=run_password)
    ls = actions.add_parser("list", help="the charge point ids with a password (never the passwords)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    _options(ls)
    ls.set_defaults(func=run_list)


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", metavar="FILE",
                   help="the passwords file (default: $APM_OCPP_PASSWORDS, beside $APM_FLASH, else "
                        "$XDG_STATE_HOME/apm/ocpp-passwords.json)")
    add_image_option(p)


def _load(args: argparse.Namespace) -> tuple[Path, PasswordBook]:
    from apm.io.chargers.ocpp_passwords import PasswordBook, PasswordError
    from apm.io.storage import paths

    path = Path(args.file) if args.file else paths.ocpp_passwords()
    try:
        return path, PasswordBook.load(path)
    except PasswordError as exc:
        raise UsageError(str(exc)) from None


def _config(args: argparse.Namespace) -> DeviceConfig | None:
    """The flash image's configuration, when there is a readable one (only to name the chargers)."""
    from apm.io.storage.flash import Flash, FlashError, resolve_image_path

    image = Flash(resolve_image_path(image_arg(args)))
    if not image.exists():
        return None
    try:
        return image.read(lenient=True).config
    except FlashError:
        return None


def charge_point_id(name: str, config: DeviceConfig | None) -> tuple[str, str | None]:
    """The charge point id for ``name`` (a charger's id or its ocpp_id), and a warning when the stored
    configuration has no such OCPP charger."""
    if config is None:
        return name, None
    ocpp = [c for c in config.chargers if c.protocol == "ocpp"]
    for c in ocpp:
        if name in (c.id, c.charge_point_id):
            return c.charge_point_id, None
    known = ", ".join(c.charge_point_id for c in ocpp) or "none"
    return name, f"the stored configuration has no OCPP charger {name!r} (its OCPP chargers: {known})"


@command("ocpp")
def run_password(args: argparse.Namespace) -> int:
    from apm.io.chargers.ocpp_passwords import PasswordError

    path, book = _load(args)
    config = _config(args)
    cid, warning = charge_point_id(args.charger, config)
    if warning:
        print(f"apm ocpp: warning: {warning}", file=sys.stderr)
    try:
        if args.remove:
            _save(book.remove(cid), path)
            print(f"the password of charge point {cid} removed from {path} (restart `apm run`)", file=sys.stderr)
            return 0
        updated, password = book.ensure(cid, renew=args.new)
    except PasswordError as exc:
        raise UsageError(str(exc)) from None
    if updated is not book:
        _save(updated, path)
    print(password)
    port = config.ocpp.port if config is not None else 9000
    scheme = "wss" if config is not None and config.ocpp.cert_file else "ws"
    state = "new, stored in" if updated is not book else "stored in"
    print(f"charge point {cid}: password {state} {path}. Give the charger: the central system "
          f"{scheme}://<this device's address>:{port}/ with charge point id {cid}, and the password above "
          f"(HTTP basic auth / AuthorizationKey; user {cid})"
          + (". Restart `apm run` to use it." if updated is not book else "."), file=sys.stderr)
    return 0


@command("ocpp")
def run_list(args: argparse.Namespace) -> int:
    path, book = _load(args)
    ids = sorted(book.passwords)
    if args.json:
        print(json.dumps({"file": str(path), "charge_points": ids}, indent=2))
    elif not ids:
        print(f"no OCPP passwords in {path} yet (`apm ocpp password CHARGER` creates one)", file=sys.stderr)
    else:
        print("\n".join(ids))
    return 0


def _save(book: PasswordBook, path: Path) -> None:
    try:
        book.save(path)
    except OSError as exc:
        raise Failure(f"cannot write {path}: {exc}") from None
