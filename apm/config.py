"""The device's configuration: what is stored in flash and written by `apm flash write CONFIG.toml`.

The TOML form is the dataclasses' fields by name; a charger is one ``[[chargers]]`` table:

    serial = "APM000123"
    installation_id = "inst-42"
    port = "/dev/ttyAPM"

    [grid]
    network = "TN"
    fuse_a = 25

    [[chargers]]
    id = "garage"
    phases = 3
    rotation = ["L2", "L3", "L1"]

Every key is checked: an unknown key, a wrong type or a value out of range is a `ConfigError` naming
the key's path (``grid.fuse_a``, ``chargers[1].rotation``). The ``[balancer]`` table is kept as a
dict; the balancer checks its keys when it applies them.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import tomli_w

Network = Literal["IT", "TN"]
LINES = ("L1", "L2", "L3")

FUSE_RANGE_A = (6.0, 400.0)
CHARGER_MAX_RANGE_A = (6.0, 80.0)
FIXED_CURRENT_RANGE_A = (0.0, 400.0)
MAX_CHARGERS = 3
BROKER_SCHEMES = ("mqtt", "mqtts")


@dataclass(frozen=True, slots=True)
class ChargerConfig:
    """One charger on the installation.

    ``rotation`` names the grid lines the charger's own L1, L2, L3 terminals are wired to, e.g.
    ("L2", "L3", "L1"). A 1-phase charger uses its L1 terminal only; on an IT network (3x230 V)
    that single-phase load sits between the first two lines of its rotation and loads both.
    """

    id: str
    max_a: float = 32.0
    phases: int = 3  # 1 or 3
    rotation: tuple[str, str, str] = LINES


@dataclass(frozen=True, slots=True)
class GridConfig:
    network: Network = "TN"
    fuse_a: float = 25.0
    ct_ratio: float = 1.0
    safety_margin_a: float = 2.0


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    url: str | None = None  # None: the embedded broker on localhost
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None  # PEM CA(s) that sign the broker's certificate (implies TLS); None: the system's


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    serial: str = "APM000000"
    installation_id: str = "inst-0"
    installation_type: str = "HOME"
    country: str = "NO"
    port: str | None = None  # serial port of the M-Bus adapter, e.g. /dev/ttyUSB0
    grid: GridConfig = field(default_factory=GridConfig)
    chargers: tuple[ChargerConfig, ...] = ()
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    # The current the chargers share when there is no valid subscription or no fresh meter data.
    fixed_current_a: float = 32.0
    # Overrides of the balancer's thresholds (names of apm.balancer.BalancerSettings fields).
    balancer: dict[str, Any] = field(default_factory=dict)


# Defaults read from instances: with slots=True the class attributes are slot descriptors.
_GRID = GridConfig()
_CHARGER = ChargerConfig(id="")
_DEVICE = DeviceConfig()


class ConfigError(ValueError):
    """A configuration that does not parse or does not validate; ``path`` names the key."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


# --- loading -------------------------------------------------------------------------------------


def loads(text: str) -> DeviceConfig:
    """Parse and validate a TOML document."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}") from None
    return from_dict(data)


def load(path: str | Path) -> DeviceConfig:
    """Read, parse and validate a TOML file; errors name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"{path}: cannot read: {exc}") from None
    try:
        return loads(text)
    except ConfigError as exc:
        raise ConfigError(exc.path, f"{exc.message} (in {path})") from None


def from_dict(data: Mapping[str, Any]) -> DeviceConfig:
    """Build a validated `DeviceConfig` from the TOML/JSON dict form."""
    _only_keys(data, DeviceConfig, "")
    grid = _grid(_table(data, "grid", ""), "grid")
    broker = _broker(_table(data, "broker", ""), "broker")
    chargers_raw = data.get("chargers", [])
    if not isinstance(chargers_raw, list):
        raise ConfigError("chargers", "must be an array of tables ([[chargers]])")
    if len(chargers_raw) > MAX_CHARGERS:
        raise ConfigError("chargers", f"{len(chargers_raw)} chargers; an APM drives at most {MAX_CHARGERS}")
    chargers = tuple(_charger(c, f"chargers[{i}]") for i, c in enumerate(chargers_raw))
    seen: set[str] = set()
    for i, c in enumerate(chargers):
        if c.id in seen:
            raise ConfigError(f"chargers[{i}].id", f"duplicate charger id {c.id!r}")
        seen.add(c.id)
    balancer = _table(data, "balancer", "")
    for key, value in balancer.items():
        _plain_value(value, f"balancer.{key}")
    country = _text(data, "country", "", "NO").upper()
    if not re.fullmatch(r"[A-Z]{2}", country):
        raise ConfigError("country", f"{country!r} is not a two-letter country code (ISO 3166-1, e.g. NO)")
    serial = _text(data, "serial", "", _DEVICE.serial)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", serial):
        raise ConfigError("serial", f"{serial!r} is not a serial number (letters, digits, '-', '_', '.')")
    port = data.get("port")
    if port is not None and (not isinstance(port, str) or not port):
        raise ConfigError("port", "must be a non-empty string (e.g. /dev/ttyAPM)")
    return DeviceConfig(
        serial=serial,
        installation_id=_text(data, "installation_id", "", _DEVICE.installation_id),
        installation_type=_text(data, "installation_type", "", _DEVICE.installation_type).upper(),
        country=country,
        port=port,
        grid=grid,
        chargers=chargers,
        broker=broker,
        fixed_current_a=_number(data, "fixed_current_a", "", _DEVICE.fixed_current_a,
                                FIXED_CURRENT_RANGE_A, "A"),
        balancer=dict(balancer),
    )


def _grid(data: Mapping[str, Any], path: str) -> GridConfig:
    _only_keys(data, GridConfig, path)
    network = _text(data, "network", path, _GRID.network).upper()
    if network not in ("IT", "TN"):
        raise ConfigError(f"{path}.network", f"{network!r} is not a network type (IT or TN)")
    fuse = _number(data, "fuse_a", path, _GRID.fuse_a, FUSE_RANGE_A, "A")
    ct = _number(data, "ct_ratio", path, _GRID.ct_ratio, None, "")
    if ct <= 0:
        raise ConfigError(f"{path}.ct_ratio", f"{_fmt(ct)} must be greater than 0")
    margin = _number(data, "safety_margin_a", path, _GRID.safety_margin_a, (0.0, math.inf), "A")
    if margin >= fuse:
        raise ConfigError(f"{path}.safety_margin_a",
                          f"{_fmt(margin)} A leaves nothing of the {_fmt(fuse)} A fuse")
    return GridConfig(network=network, fuse_a=fuse, ct_ratio=ct, safety_margin_a=margin)  # type: ignore[arg-type]


def _broker(data: Mapping[str, Any], path: str) -> BrokerConfig:
    _only_keys(data, BrokerConfig, path)
    url = data.get("url")
    if url is not None:
        if not isinstance(url, str):
            raise ConfigError(f"{path}.url", "must be a string like mqtt://host:1883")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"{path}.url", f"{url!r} is not a URL: {exc}") from None
        if parts.scheme not in BROKER_SCHEMES or not parts.hostname:
            raise ConfigError(f"{path}.url", f"{url!r} is not an MQTT URL (mqtt://host[:port] or mqtts://...)")
        del port
    for key in ("username", "password"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{path}.{key}", "must be a string")
    tls = data.get("tls", False)
    if not isinstance(tls, bool):
        raise ConfigError(f"{path}.tls", "must be true or false")
    ca_file = data.get("ca_file")
    if ca_file is not None and (not isinstance(ca_file, str) or not ca_file):
        raise ConfigError(f"{path}.ca_file", "must be the path of a PEM file")
    return BrokerConfig(url=url, username=data.get("username"), password=data.get("password"), tls=tls,
                        ca_file=ca_file)


def _charger(data: Any, path: str) -> ChargerConfig:
    if not isinstance(data, Mapping):
        raise ConfigError(path, "must be a table")
    _only_keys(data, ChargerConfig, path)
    if "id" not in data:
        raise ConfigError(f"{path}.id", "missing (every charger needs an id)")
    cid = _text(data, "id", path, "")
    phases = data.get("phases", 3)
    if isinstance(phases, bool) or phases not in (1, 3):
        raise ConfigError(f"{path}.phases", f"{phases!r} is not 1 or 3")
    rotation = data.get("rotation", list(LINES))
    if (not isinstance(rotation, list) or len(rotation) != 3
            or sorted(str(x) for x in rotation) != list(LINES)):
        raise ConfigError(f"{path}.rotation", f"{rotation!r} is not a permutation of L1, L2, L3")
    max_a = _number(data, "max_a", path, _CHARGER.max_a, CHARGER_MAX_RANGE_A, "A")
    return ChargerConfig(id=cid, max_a=max_a, phases=int(phases), rotation=tuple(rotation))  # type: ignore[arg-type]


def _only_keys(data: Mapping[str, Any], cls: type, path: str) -> None:
    allowed = [f.name for f in fields(cls)]
    for key in data:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            raise ConfigError(where, f"unknown key (known keys here: {', '.join(allowed)})")


def _table(data: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}.{key}" if path else key, f"must be a table ([{key}])")
    return value


def _text(data: Mapping[str, Any], key: str, path: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}.{key}" if path else key, f"{value!r} must be a non-empty string")
    return value.strip()


def _number(data: Mapping[str, Any], key: str, path: str, default: float,
            bounds: tuple[float, float] | None, unit: str) -> float:
    where = f"{path}.{key}" if path else key
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(where, f"{value!r} is not a number")
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        hi = "" if math.isinf(bounds[1]) else _fmt(bounds[1])
        sp = f" {unit}" if unit else ""
        raise ConfigError(where, f"{_fmt(value)}{sp} is out of range ({_fmt(bounds[0])}..{hi}{sp})")
    return float(value)


def _plain_value(value: Any, where: str) -> None:
    """Balancer overrides are stored as JSON in flash: no TOML dates or times."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _plain_value(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain_value(v, f"{where}[{i}]")
    elif not isinstance(value, str | int | float | bool):
        raise ConfigError(where, f"{type(value).__name__} values are not supported here")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# --- dumping -------------------------------------------------------------------------------------


def to_dict(config: DeviceConfig) -> dict[str, Any]:
    """The TOML/JSON form: plain dicts and lists, None values left out (TOML has no null)."""

    def plain(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                continue
            if isinstance(value, tuple) and f.name == "rotation":
                value = list(value)
            out[f.name] = value
        return out

    d = plain(config)
    d["grid"] = plain(config.grid)
    d["broker"] = plain(config.broker)
    d["chargers"] = [plain(c) for c in config.chargers]
    d["balancer"] = dict(config.balancer)
    for key in ("chargers", "balancer"):
        if not d[key]:
            del d[key]
    return d


def dumps(config: DeviceConfig) -> str:
    """The configuration as TOML; `loads(dumps(c)) == c`."""
    return _INLINE_ARRAY.sub(_inline, tomli_w.dumps(to_dict(config)))


# tomli-w writes every array one item a line; short arrays of plain values read better on one line.
_INLINE_ARRAY = re.compile(r"\[\n((?:[ ]+[^\[\]{}\n]+,\n)+)[ ]*\]")


def _inline(match: re.Match[str]) -> str:
    items = [line.strip().removesuffix(",") for line in match.group(1).splitlines()]
    return "[" + ", ".join(items) + "]"
