"""Where `apm` keeps its files, in one place (the XDG base directories).

    data   $XDG_DATA_HOME/apm   (~/.local/share/apm)  the flash image, the simulated issuer's state
    state  $XDG_STATE_HOME/apm  (~/.local/state/apm)  serial settings that worked, per port; the
                                                      embedded broker's users (0600: broker-users.json),
                                                      the OCPP chargers' passwords (0600: ocpp-passwords.json)
    cache  $XDG_CACHE_HOME/apm  (~/.cache/apm)        day-ahead prices

The device's status file lies beside its image (``<image>.status.json``). Each file can also be named
by an environment variable or an option; the variables win over the defaults, the options over both.
Only ``os`` and ``pathlib``: every command may import this without cost.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "apm"
FLASH_ENV = "APM_FLASH"
CLOUD_ENV = "APM_CLOUD_STATE"
SERIAL_ENV = "APM_SERIAL_CACHE"
BROKER_USERS_ENV = "APM_BROKER_USERS"
OCPP_PASSWORDS_ENV = "APM_OCPP_PASSWORDS"


def _base(variable: str, *default: str) -> Path:
    # The spec says a relative value is invalid and must be ignored.
    value = os.environ.get(variable, "")
    if value and os.path.isabs(value):
        return Path(value)
    return Path(os.path.expanduser("~"), *default)


def data_dir() -> Path:
    return _base("XDG_DATA_HOME", ".local", "share") / APP


def state_dir() -> Path:
    return _base("XDG_STATE_HOME", ".local", "state") / APP


def cache_dir() -> Path:
    return _base("XDG_CACHE_HOME", ".cache") / APP


def default_image() -> Path:
    """The per-user flash image (where it has always been: the data directory)."""
    return data_dir() / "flash.img"


def image(arg: str | os.PathLike[str] | None = None) -> Path:
    """``--image`` if given, else ``$APM_FLASH``, else the per-user default."""
    if arg:
        return Path(arg)
    env = os.environ.get(FLASH_ENV)
    return Path(env) if env else default_image()


def status_file(image_path: str | os.PathLike[str]) -> Path:
    """Where the device loop writes its live status (detected meter, HAN state): beside the image."""
    return Path(f"{os.fspath(image_path)}.status.json")


def cloud_state() -> Path:
    """The simulated issuer's state: ``$APM_CLOUD_STATE``, else in the data directory."""
    env = os.environ.get(CLOUD_ENV)
    return Path(env) if env else data_dir() / "cloud.json"


def serial_settings() -> Path:
    """Serial settings that worked: ``$APM_SERIAL_CACHE``, beside ``$APM_FLASH``'s image, else state.

    Earlier versions kept the file in the cache directory; it is still read from there until the
    state directory holds one, so a port detected before an upgrade is not probed again.
    """
    env = os.environ.get(SERIAL_ENV)
    if env:
        return Path(env)
    flash = os.environ.get(FLASH_ENV)
    if flash:
        return Path(f"{flash}.serial.json")
    path = state_dir() / "serial.json"
    legacy = cache_dir() / "serial.json"
    return legacy if not path.exists() and legacy.exists() else path


def broker_users() -> Path:
    """The embedded broker's users (hashed) and the device's own passwords: ``$APM_BROKER_USERS``, beside
    ``$APM_FLASH``'s image, else in the state directory (with the service user's other state, not in
    the image, which is copied and dumped)."""
    env = os.environ.get(BROKER_USERS_ENV)
    if env:
        return Path(env)
    flash = os.environ.get(FLASH_ENV)
    if flash:
        return Path(f"{flash}.broker-users.json")
    return state_dir() / "broker-users.json"


def ocpp_passwords() -> Path:
    """The OCPP chargers' passwords (plain text: the installer reads them back to type them into the
    charger): ``$APM_OCPP_PASSWORDS``, beside ``$APM_FLASH``'s image, else in the state directory, next
    to the broker's users."""
    env = os.environ.get(OCPP_PASSWORDS_ENV)
    if env:
        return Path(env)
    flash = os.environ.get(FLASH_ENV)
    if flash:
        return Path(f"{flash}.ocpp-passwords.json")
    return state_dir() / "ocpp-passwords.json"


def price_cache() -> Path:
    """Day-ahead prices fetched from a price service, one file per area and day."""
    return cache_dir() / "prices"
