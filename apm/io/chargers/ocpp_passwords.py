"""The OCPP chargers' passwords (Security Profile 1), kept in a 0600 file beside the broker's users.

    book = PasswordBook.load(paths.ocpp_passwords())     # empty when there is no file yet
    book, password = book.ensure("garage")               # the stored one, or a new one
    book.save(path)
    RunPlan(..., ocpp_passwords=book.passwords)          # charge point id -> password

Unlike the broker's users (kept as hashes, shown once), these are plain text: the installer reads the
password back when standing at the charger to type it into its portal or app, and a charger cannot be
told a hash. The file is the service user's alone (0600 in a 0700 directory), like the device's own
broker password.

A new password is 32 hex digits: 16 random bytes (128 bits). OCPP 1.6's security whitepaper has the
charger keep its AuthorizationKey as 16 to 20 bytes written in hex and send those bytes; many chargers
send the text as typed instead. Hex digits are both at once, and `apm.io.chargers.ocpp_server.basic_auth_ok`
accepts either form; 32 characters also fit the chargers whose password field stops at 40.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from apm.io.storage.private import read_private, write_private

FILE_VERSION: Final = 1
MAX_ID = 64  # the longest charge point id the configuration takes (ChargerConfig.ocpp_id)


class PasswordError(ValueError):
    """A bad charge point id or passwords file; the message says which and why."""


def new_password() -> str:
    return secrets.token_hex(16)


def check_id(charge_point_id: str) -> str:
    if not (isinstance(charge_point_id, str) and 0 < len(charge_point_id) <= MAX_ID
            and charge_point_id.isprintable() and "/" not in charge_point_id and ":" not in charge_point_id):
        raise PasswordError(f"charge point id {charge_point_id!r}: 1-{MAX_ID} printable characters, no '/' or ':'")
    return charge_point_id


@dataclass(frozen=True, slots=True)
class PasswordBook:
    passwords: Mapping[str, str] = field(default_factory=dict, repr=False)  # charge point id -> password

    def ensure(self, charge_point_id: str, *, renew: bool = False) -> tuple[PasswordBook, str]:
        """The charger's password: the stored one, or a new one (always new with ``renew``)."""
        check_id(charge_point_id)
        have = self.passwords.get(charge_point_id)
        if have is not None and not renew:
            return self, have
        password = new_password()
        return PasswordBook({**self.passwords, charge_point_id: password}), password

    def remove(self, charge_point_id: str) -> PasswordBook:
        if charge_point_id not in self.passwords:
            raise PasswordError(f"no password for charge point {charge_point_id!r}")
        return PasswordBook({k: v for k, v in self.passwords.items() if k != charge_point_id})

    def to_json(self) -> dict[str, Any]:
        return {"version": FILE_VERSION, "passwords": dict(self.passwords)}

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> PasswordBook:
        try:
            if data.get("version") != FILE_VERSION:
                raise PasswordError(f"{where}version {data.get('version')!r} is not {FILE_VERSION}")
            book = {check_id(k): v for k, v in data["passwords"].items()}
            if not all(isinstance(v, str) and v for v in book.values()):
                raise PasswordError(f"{where}a password that is not a non-empty string")
        except (AttributeError, KeyError, TypeError) as exc:
            raise PasswordError(f"{where}not an OCPP passwords file: {exc}") from None
        return cls(book)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PasswordBook:
        """The stored passwords; none when there is no file."""
        try:
            raw = read_private(path)
        except OSError as exc:
            raise PasswordError(f"{path}: cannot read: {exc}") from None
        if raw is None:
            return cls()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise PasswordError(f"{path}: not JSON: {exc}") from None
        return cls.from_json(data, f"{path}: ")

    def save(self, path: str | os.PathLike[str]) -> None:
        write_private(path, json.dumps(self.to_json(), indent=1, sort_keys=True).encode())
