"""`apm broker user add|list|remove`: who may log in to the embedded broker that `apm run` starts.

    apm broker user add garage-box --role charger:garage   # prints the new password, once
    apm broker user add home-assistant --role reader
    apm broker user add goe-012345 --role goe:012345       # a go-e charger, by its serial
    apm broker user show goe-012345                         # a go-e's password again
    apm broker user list
    apm broker user remove garage-box

The password goes to stdout alone (a script can take it: ``PW=$(apm broker user add ...)``) and is
shown only this once: the file keeps its hash. A go-e's is the exception: the installer types it into
the go-e app's MQTT URL (mqtt://USER:PASSWORD@PI:1883), so it stays readable with `show`, like the OCPP
chargers' passwords (the file is the service user's alone, 0600). A running `apm run` reads the file again at the next
login, so nothing needs a restart; a removed user keeps a connection it has until it reconnects.
Roles: ``charger:<id>`` publishes only its charger's state and reads only its setpoint; ``goe:<serial>``
(a go-e) publishes only its own go-eCharger/<serial>/<key> and reads only their <key>/set; ``reader``
(Home Assistant) reads the device's topics and discovery and publishes only the command topics
(``eco/request``); ``issuer`` publishes only signed revocations. The device's own user is created by
`apm run` on its first start.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from apm.cli.support import Failure, UsageError, command

if TYPE_CHECKING:
    from apm.io.mqtt.auth import UserTable

ROLE_HELP = ("charger:<id> (a charger on our MQTT topics), goe:<serial> (a go-e), reader (Home Assistant, "
             "dashboards) or issuer (revocations)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker", help="users of the embedded MQTT broker (add, list, remove)",
                       description=__doc__.split("\n\n", 1)[1].replace("``", ""),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    things = p.add_subparsers(dest="broker_thing", metavar="THING", required=True)
    user = things.add_parser("user", help="add, list or remove a user")
    actions = user.add_subparsers(dest="user_action", metavar="ACTION", required=True)

    a = actions.add_parser("add", help="add a user with a new password (printed once)")
    a.add_argument("name", metavar="NAME", help="the user name the client logs in with")
    a.add_argument("--role", required=True, help=ROLE_HELP)
    _users_option(a)
    a.set_defaults(func=run_add)

    s = actions.add_parser("list", help="the users and their roles (never a password)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _users_option(s)
    s.set_defaults(func=run_list)

    w = actions.add_parser("show", help="a go-e's password again (the only ones kept readable)")
    w.add_argument("name", metavar="NAME")
    _users_option(w)
    w.set_defaults(func=run_show)

    r = actions.add_parser("remove", help="remove a user")
    r.add_argument("name", metavar="NAME")
    _users_option(r)
    r.set_defaults(func=run_remove)


def _users_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", metavar="FILE",
                   help="the users file (default: $APM_BROKER_USERS, beside $APM_FLASH, else "
                        "$XDG_STATE_HOME/apm/broker-users.json)")


def _load(args: argparse.Namespace) -> tuple[Path, UserTable]:
    from apm.io.mqtt.auth import AuthError, UserTable
    from apm.io.storage import paths

    path = Path(args.users) if args.users else paths.broker_users()
    try:
        return path, UserTable.load(path)
    except AuthError as exc:
        raise UsageError(str(exc)) from None


def _save(table: UserTable, path: Path) -> None:
    try:
        table.save(path)
    except OSError as exc:
        raise Failure(f"cannot write {path}: {exc}") from None


@command("broker")
def run_add(args: argparse.Namespace) -> int:
    from apm.io.mqtt.auth import AuthError, Role

    path, table = _load(args)
    try:
        role = Role.parse(args.role)
        table, login = table.add(args.name, role)
    except AuthError as exc:
        raise UsageError(str(exc)) from None
    _save(table, path)
    print(login.password)
    if role.keeps_password:
        print(f"user {login.username} ({role}) added to {path}. In the go-e app (Internet, Advanced settings, "
              f"MQTT): URL mqtt://{login.username}:<the password above>@<the device's address>:1883, "
              "allow writes (not read-only), keep the topic prefix at its default; "
              f"`apm broker user show {login.username}` shows the password again.", file=sys.stderr)
        return 0
    print(f"user {login.username} ({args.role}) added to {path}; its password (above) is shown only now. "
          f"Give the client: the device's address and broker port (1883), user {login.username}, "
          "that password.", file=sys.stderr)
    return 0


@command("broker")
def run_show(args: argparse.Namespace) -> int:
    path, table = _load(args)
    user = table.users.get(args.name)
    if user is None:
        raise UsageError(f"no user {args.name!r} in {path}")
    if not user.role.keeps_password or args.name not in table.own:
        raise UsageError(f"the password of {args.name} ({user.role}) is not kept (only a go-e's is): "
                         f"`apm broker user remove {args.name}` and add it again for a new one")
    print(table.own[args.name])
    return 0


@command("broker")
def run_list(args: argparse.Namespace) -> int:
    from apm.io.mqtt.auth import DEVICE_USER

    path, table = _load(args)
    users = sorted(table.users.values(), key=lambda u: u.name)
    if args.json:
        rows = [{"name": u.name, "role": str(u.role), "own": u.name in table.own} for u in users]
        print(json.dumps({"file": str(path), "users": rows}, indent=2))
        return 0
    if not users:
        print(f"no users in {path} yet (`apm run` creates {DEVICE_USER} on its first start)", file=sys.stderr)
        return 0
    width = max(len(u.name) for u in users)
    for u in users:
        mark = "  (the device's own)" if u.name == DEVICE_USER else ""
        print(f"{u.name:<{width}}  {u.role}{mark}")
    return 0


@command("broker")
def run_remove(args: argparse.Namespace) -> int:
    from apm.io.mqtt.auth import AuthError

    path, table = _load(args)
    try:
        table = table.remove(args.name)
    except AuthError as exc:
        raise UsageError(str(exc)) from None
    _save(table, path)
    print(f"user {args.name} removed from {path} (a connection it has lasts until it reconnects)",
          file=sys.stderr)
    return 0
