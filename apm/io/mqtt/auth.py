"""Who may use the embedded broker, and for what: users, roles, the topic ACL, the stored credentials.

    table = UserTable.load(paths.broker_users())             # {} when there is no file yet
    table, device = table.ensure_device()                    # the device's own login, created once
    login = table.add("garage-box", Role.parse("charger:garage"))   # shown once, stored hashed
    table.save(path)                                         # 0600, atomic
    policy = Policy(serial, table)                           # what the broker asks
    policy.login("garage-box", password)  -> User | None
    policy.may("garage-box", "publish", "apm/S/charger/garage/state")  -> True

Roles, for the device with serial S (topics of apm.io.mqtt.topics under ``apm/S/``):

    device          publishes status, reading/+, headroom, energy/hourly, energy/hour, subscription, eco/plan,
                    price, capacity, settings, charger/+/setpoint, charger/+/settings, charger/+/session,
                    charger/+/link and Home Assistant discovery;
                    reads everything under apm/S/
    charger:<id>    publishes only charger/<id>/state; reads only charger/<id>/setpoint
    reader          reads apm/S/# and homeassistant/#; publishes only READER_COMMANDS
    issuer          publishes only subscription/revocation (signed: the device checks it); reads nothing
    goe:<serial>    a go-e charger: publishes only its own keys (go-eCharger/<serial>/<key>, and the
                    <key>/result answers of its firmware); reads only its go-eCharger/<serial>/<key>/set

Passwords are always generated here (``secrets``, 192 bits), never chosen by a person, so a salted
SHA-256 is enough to store them: nobody can guess a 192-bit secret from its hash. A slow hash (scrypt,
argon2) would buy nothing here and cost the device's event loop, which checks every login, tens of
milliseconds per attempt; a LAN client could then stall the fuse protection by connecting in a loop.

The file keeps every user's hash and role, and in plain text only the passwords the device needs for its
own links and those an installer must read again to type them into a charger's app (a go-e's, like the
OCPP chargers' passwords): ``own``. It is created 0600 in a 0700 directory; a file that others can read is tightened.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from apm.io.mqtt.topics import TopicError, Topics, check_level
from apm.io.storage.private import read_private, write_private

log = logging.getLogger(__name__)

DEVICE_USER: Final = "apm-device"
DISCOVERY_ROOT: Final = "homeassistant"  # apm.io.mqtt.discovery.DISCOVERY_PREFIX (not imported: it pulls in more)
GOE_ROOT: Final = "go-eCharger"  # apm.io.chargers.goe.PREFIX (not imported: it pulls in aiomqtt and more)
# The command topics (below apm/<serial>/) a reader may publish: a request of the user's, which the
# device checks like any other input. A new command for Home Assistant is one more entry here.
READER_COMMANDS: Final = ("eco/request", "settings/+/set", "charger/+/settings/+/set")
ACTIONS: Final = ("publish", "subscribe", "receive")
FILE_VERSION: Final = 1

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_HASH = "sha256"


class AuthError(ValueError):
    """A bad user name, role or credentials file; the message says which and why."""


# --- roles and the ACL (pure) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Role:
    kind: str  # "device" | "charger" | "goe" | "reader" | "issuer"
    charger: str | None = None  # the charger's id (charger), its serial (goe)

    @classmethod
    def parse(cls, text: str) -> Role:
        kind, sep, cid = str(text).partition(":")
        if kind in ("charger", "goe") and sep and cid:
            try:
                check_level(cid, "charger id" if kind == "charger" else "go-e serial")
            except TopicError as exc:
                raise AuthError(f"role {text!r}: {exc}") from None
            return cls(kind, cid)
        if kind in ("device", "reader", "issuer") and not sep:
            return cls(kind)
        raise AuthError(f"role {text!r}: one of charger:<id>, goe:<serial>, reader, issuer "
                        "(device is the device's own)")

    @property
    def keeps_password(self) -> bool:
        """A go-e's password stays readable (`apm broker user show`): the installer types it into its app."""
        return self.kind == "goe"

    def __str__(self) -> str:
        return f"{self.kind}:{self.charger}" if self.charger is not None else self.kind


@dataclass(frozen=True, slots=True)
class Acl:
    """Topic filters this role may publish to and subscribe to (receive = subscribe)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def acl(role: Role, serial: str) -> Acl:
    t = Topics(serial)
    if role.kind == "device":
        return Acl((t.status, f"{t.root}/reading/+", t.headroom, t.energy_hourly, t.subscription, t.eco_plan,
                    t.all_charger_setpoints, t.settings, f"{t.root}/charger/+/settings", f"{t.root}/charger/+/session",
                    f"{t.root}/charger/+/link", t.price, t.energy_hour, t.capacity, f"{DISCOVERY_ROOT}/#", f"{GOE_ROOT}/+/+/set"),
                   (f"{t.root}/#", f"{GOE_ROOT}/#"))
    if role.kind == "charger" and role.charger is not None:
        return Acl((t.charger_state(role.charger),), (t.charger_setpoint(role.charger),))
    if role.kind == "goe" and role.charger is not None:
        # One level only: "+" never matches "amp/set", so a go-e cannot write its own (or another's) amp.
        own = f"{GOE_ROOT}/{role.charger}"
        return Acl((f"{own}/+", f"{own}/+/result"), (f"{own}/+/set",))
    if role.kind == "reader":
        return Acl(tuple(f"{t.root}/{c}" for c in READER_COMMANDS), (f"{t.root}/#", f"{DISCOVERY_ROOT}/#"))
    if role.kind == "issuer":
        return Acl((t.subscription_revocation,), ())
    return Acl((), ())


def matches(topic: str, topic_filter: str) -> bool:
    """MQTT matching of a topic name against a filter (``+`` one level, ``#`` the rest, or nothing)."""
    names, levels = topic.split("/"), topic_filter.split("/")
    for i, level in enumerate(levels):
        if level == "#":
            return True
        if i >= len(names) or (level != "+" and level != names[i]):
            return False
    return len(names) == len(levels)


def covers(allowed: str, requested: str) -> bool:
    """True when every topic the filter ``requested`` can match is matched by ``allowed``.

    A subscription is checked with this, not by matching the filter as if it were a topic: a charger
    that subscribes to ``apm/S/charger/+/setpoint`` or ``apm/S/#`` must not get the other chargers' setpoints.
    """
    have, want = allowed.split("/"), requested.split("/")
    for i, level in enumerate(have):
        if level == "#":
            return True
        if i >= len(want):
            return False
        if want[i] == "#" or (level != "+" and level != want[i]):
            return False  # "+" in requested is covered by "+" only
    return len(want) == len(have)


# --- credentials ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Login:
    """A user name and a password; the password is kept out of repr (and so out of logs)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    hash: str = field(repr=False)


def new_password() -> str:
    return secrets.token_urlsafe(24)


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.sha256(salt + password.encode()).hexdigest()
    return f"{_HASH}${salt.hex()}${digest}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, salt, digest = stored.split("$")
        if kind != _HASH:
            return False
        expected = hashlib.sha256(bytes.fromhex(salt) + password.encode()).hexdigest()
    except ValueError:
        return False
    return hmac.compare_digest(expected, digest)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise AuthError(f"user name {name!r}: 1-64 letters, digits, '_', '.', '@', '-', starting with a letter "
                        "or digit")
    return name


@dataclass(frozen=True, slots=True)
class UserTable:
    users: Mapping[str, User] = field(default_factory=dict)
    own: Mapping[str, str] = field(default_factory=dict, repr=False)  # name -> plain password

    def add(self, name: str, role: Role, *, own: bool = False) -> tuple[UserTable, Login]:
        """A new user with a fresh password; `AuthError` if the name is taken."""
        check_name(name)
        if name in self.users:
            raise AuthError(f"user {name!r} exists (remove it first to give it a new password)")
        if role.kind == "device" and name != DEVICE_USER:
            raise AuthError("the device role is the device's own user")
        login = Login(name, new_password())
        users = {**self.users, name: User(name, role, hash_password(login.password))}
        mine = {**self.own, name: login.password} if own or role.keeps_password else dict(self.own)
        return UserTable(users, mine), login

    def remove(self, name: str) -> UserTable:
        if name not in self.users:
            raise AuthError(f"no user {name!r}")
        if name == DEVICE_USER:
            raise AuthError(f"{DEVICE_USER} is the device's own user (delete the file to renew it)")
        return UserTable({k: v for k, v in self.users.items() if k != name},
                         {k: v for k, v in self.own.items() if k != name})

    def ensure_device(self) -> tuple[UserTable, Login]:
        """The device's own login, created (with a new password) when the table has none usable."""
        user, password = self.users.get(DEVICE_USER), self.own.get(DEVICE_USER)
        if user is not None and password is not None and verify_password(password, user.hash):
            return self, Login(DEVICE_USER, password)
        rest = UserTable({k: v for k, v in self.users.items() if k != DEVICE_USER},
                         {k: v for k, v in self.own.items() if k != DEVICE_USER})
        return rest.add(DEVICE_USER, Role("device"), own=True)

    def with_guest(self, name: str, role: Role) -> tuple[UserTable, Login]:
        """A user for this run only (the demo's simulated chargers): in memory, never saved."""
        others = UserTable({k: v for k, v in self.users.items() if k != name},
                           {k: v for k, v in self.own.items() if k != name})
        return others.add(name, role)

    # --- the file ---

    def to_json(self) -> dict[str, Any]:
        return {"version": FILE_VERSION,
                "users": {u.name: {"role": str(u.role), "hash": u.hash} for u in self.users.values()},
                "own": dict(self.own)}

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> UserTable:
        try:
            if data.get("version") != FILE_VERSION:
                raise AuthError(f"{where}version {data.get('version')!r} is not {FILE_VERSION}")
            users = {check_name(n): User(n, Role.parse(u["role"]), str(u["hash"]))
                     for n, u in data.get("users", {}).items()}
            own = {str(n): str(p) for n, p in data.get("own", {}).items() if n in users}
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise AuthError(f"{where}not a broker user file: {exc}") from None
        return cls(users, own)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UserTable:
        """The stored table; an empty one when there is no file."""
        p = Path(path)
        try:
            raw = read_private(p)
        except OSError as exc:
            raise AuthError(f"{p}: cannot read: {exc}") from None
        if raw is None:
            return cls()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise AuthError(f"{p}: not JSON: {exc}") from None
        return cls.from_json(data, f"{p}: ")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Atomically (a crash leaves the old file or the new one), created 0600 in a 0700 directory."""
        write_private(path, json.dumps(self.to_json(), indent=1, sort_keys=True).encode())


# --- what the broker asks -------------------------------------------------------------------------


@dataclass(slots=True)
class Policy:
    """The broker's view: logins checked against the hashes, every topic against the user's role.

    ``path``: the users file, read again when it changes (checked at each login), so `apm broker user
    add` takes effect without a restart; ``guests``: users of this run only (never saved). Refusals are
    counted; each (user, reason) is logged once at WARNING (a client that retries in a loop must not
    flood the log), the rest at DEBUG. Passwords are never logged."""

    serial: str
    table: UserTable
    path: Path | None = None
    guests: UserTable = field(default_factory=UserTable)
    refused_logins: int = 0
    denied: int = 0
    _acl: dict[str, Acl] = field(default_factory=dict)
    _users: dict[str, User] = field(default_factory=dict)
    _stamp: tuple[int, int] | None = None
    _said: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        Topics(self.serial)
        self._stamp = self._file_stamp()
        self._use(self.table)

    def _use(self, table: UserTable) -> None:
        self.table = table
        self._users = {**table.users, **self.guests.users}
        self._acl = {name: acl(u.role, self.serial) for name, u in self._users.items()}

    @property
    def users(self) -> Mapping[str, User]:
        """Everyone who may log in now: the file's users and this run's guests."""
        return self._users

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path) if self.path is not None else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size) if st is not None else None

    def refresh(self) -> None:
        """Read the users file again if it changed since it was last read."""
        stamp = self._file_stamp()
        if self.path is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            table = UserTable.load(self.path)
        except AuthError as exc:
            log.warning("broker: keeping the users as they were: %s", exc)
            return
        self._use(table)
        log.info("broker: %d users from %s", len(table.users), self.path)

    def login(self, username: str | None, password: str | None, client_id: str = "?") -> User | None:
        self.refresh()
        user = self._users.get(username) if isinstance(username, str) else None
        if user is not None and isinstance(password, str) and verify_password(password, user.hash):
            return user
        self.refused_logins += 1
        who = "anonymous" if not username else repr(username)
        self.note(who, "login", f"refused a login as {who} (client {client_id!r}): "
                  + ("no user name" if not username else "unknown user or wrong password"))
        return None

    def may(self, username: str | None, action: str, topic: str) -> bool:
        rules = self._acl.get(username) if isinstance(username, str) else None
        if rules is None or action not in ACTIONS:
            ok = False
        elif action == "publish":
            ok = any(matches(topic, f) for f in rules.publish)
        elif action == "subscribe":
            ok = any(covers(f, topic) for f in rules.subscribe)
        else:  # receive: what a subscription delivers (checked again, in case a filter slipped through)
            ok = any(matches(topic, f) for f in rules.subscribe)
        if not ok:
            self.denied += 1
            self.note(str(username), f"{action} {topic}", f"{username!r} may not {action} {topic!r}")
        return ok

    def note(self, who: str, what: str, text: str) -> None:
        key = (who, what)
        if key in self._said or len(self._said) > 1000:
            log.debug("broker: %s", text)
            return
        self._said.add(key)
        log.warning("broker: %s", text)
