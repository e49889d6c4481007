"""The one path for an owner's settings, whoever changes them (the web page, Home Assistant):

    Settings.apply({"chargers": {"garage": {"max_a": 16}}, "eco": {"enabled": True}}, source="web")
      -> validated by the configuration's schema (`apm.core.config`, as `apm flash write` does)
      -> stored in the flash image (when the configuration came from one)
      -> applied to the running device (Controller, balancer) and told to the listeners (Smart eco,
         Home Assistant's state topics)
      -> None, or a one-line reason why nothing changed (logged too)

A change is a part of the configuration's dict form, the chargers keyed by id. Only the keys in
`OWNER_KEYS` may change this way; the rest (the fuse, the wiring, the broker) take `apm flash write`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apm.core import config as cfg
from apm.core.controller import balancer_settings
from apm.io.storage.flash import Flash, FlashError

if TYPE_CHECKING:
    from apm.services.balancer import BalancerService
    from apm.services.device import Device

log = logging.getLogger(__name__)

# What an owner may change while the device runs: table -> keys ("chargers": each charger's).
OWNER_KEYS: Mapping[str, frozenset[str]] = {
    "chargers": frozenset({"max_a", "eco_departure", "eco_energy_kwh"}),
    "eco": frozenset({"enabled"}),
    "balancer": frozenset({"sharing"}),
}

Listener = Callable[[cfg.DeviceConfig, cfg.DeviceConfig], None]  # (old, new)


class SettingsError(ValueError):
    """A change that is not an owner setting, or not of the change's shape."""


def patched(config: cfg.DeviceConfig, change: Mapping[str, Any]) -> cfg.DeviceConfig:
    """``config`` with ``change`` applied, validated by the schema (`cfg.ConfigError`, `SettingsError`)."""
    check_shape(change)
    data = cfg.to_dict(config)
    for table, fields in change.items():
        if table == "chargers":
            ids = [c.id for c in config.chargers]
            for cid, values in fields.items():
                if cid not in ids:
                    raise cfg.ConfigError("chargers", f"no charger {cid!r} (the chargers: {', '.join(ids) or 'none'})")
                i = ids.index(cid)
                data["chargers"][i] = {**data["chargers"][i], **values}
        else:
            data[table] = {**data.get(table, {}), **fields}
    return cfg.from_dict(data)


def check_shape(change: Mapping[str, Any]) -> None:
    if not isinstance(change, Mapping) or not change:
        raise SettingsError("a change is a table of settings, e.g. {\"eco\": {\"enabled\": true}}")
    for table, fields in change.items():
        allowed = OWNER_KEYS.get(table)
        if allowed is None:
            raise SettingsError(f"{table}: not an owner setting (those: {', '.join(OWNER_KEYS)}); "
                                "use apm flash write")
        if not isinstance(fields, Mapping) or not fields:
            raise SettingsError(f"{table}: must be a table of settings")
        groups = fields.values() if table == "chargers" else [fields]
        for group in groups:
            if not isinstance(group, Mapping) or not group:
                raise SettingsError(f"{table}: each charger's settings must be a table")
            unknown = set(group) - allowed
            if unknown:
                raise SettingsError(f"{table}.{sorted(unknown)[0]}: not an owner setting (those: "
                                    f"{', '.join(sorted(allowed))})")


def describe(change: Mapping[str, Any]) -> str:
    """``chargers.garage.max_a 16, eco.enabled True``: a change in one line, for the log."""
    parts = []
    for table, fields in change.items():
        groups = fields.items() if table == "chargers" else [(None, fields)]
        for cid, values in groups:
            prefix = f"{table}.{cid}" if cid is not None else table
            parts += [f"{prefix}.{k} {v!r}" for k, v in values.items()]
    return ", ".join(parts)


class Settings:
    """The running device's owner settings (module doc). ``image``: where they are stored (None: this
    run only). ``listeners`` are told ``(old, new)`` after every applied change."""

    def __init__(self, device: Device, balancer: BalancerService, *, image: Path | None = None) -> None:
        self.device = device
        self.balancer = balancer
        self.image = image
        self.listeners: list[Listener] = []

    @property
    def config(self) -> cfg.DeviceConfig:
        return self.device.config

    def apply(self, change: Mapping[str, Any], *, source: str = "settings") -> str | None:
        """Validate, store and apply ``change``: None when done, else why not (nothing changed then)."""
        try:
            new = patched(self.config, change)
            self._store(change, new)
        except (cfg.ConfigError, SettingsError) as exc:
            return self._refused(source, change, str(exc))
        except FlashError as exc:
            return self._refused(source, change, f"not stored: {exc}")
        old = self.config
        self._apply(old, new)
        log.info("%s: %s%s", source, describe(change),
                 f" (stored in {self.image})" if self.image else " (this run only: no flash image)")
        for listener in list(self.listeners):
            listener(old, new)
        return None

    def change_charger(self, charger_id: str, fields: Mapping[str, Any], *, source: str = "web") -> str | None:
        """One charger's settings (the web page's form)."""
        if not isinstance(fields, Mapping) or not fields:
            return self._refused(source, {}, "no settings given")
        return self.apply({"chargers": {charger_id: dict(fields)}}, source=source)

    def _refused(self, source: str, change: Mapping[str, Any], why: str) -> str:
        why = " ".join(why.split())[:300]  # one line, whatever the value held
        log.warning("%s: refused %s: %s", source, describe(change) if _printable(change) else "a change", why)
        return why

    def _store(self, change: Mapping[str, Any], running: cfg.DeviceConfig) -> None:
        if self.image is None:
            return
        # The stored configuration, not the running one: that one carries the broker login `apm run`
        # put in for this run.
        Flash(self.image).update(lambda c: dataclasses.replace(
            c, config=patched(c.config, change) if c.config is not None else running))

    def _apply(self, old: cfg.DeviceConfig, new: cfg.DeviceConfig) -> None:
        controller = self.device.controller
        for before, after in zip(old.chargers, new.chargers, strict=True):
            if after != before:
                controller.replace_charger(after)
        if new.balancer != old.balancer:
            controller.settings = controller.balancer.settings = balancer_settings(new)
        self.device.config = self.balancer.config = new
        self.balancer.update(self.balancer.clock.now(), publish_all=True)


def _printable(change: Any) -> bool:
    try:
        check_shape(change)
    except SettingsError:
        return False
    return True


def owner_values(config: cfg.DeviceConfig) -> dict[str, Any]:
    """The owner settings in force, in the change's shape (what a settings form or topic shows)."""
    chargers = {c.id: {k: getattr(c, k) for k in sorted(OWNER_KEYS["chargers"])} for c in config.chargers}
    return {"chargers": chargers, "eco": {"enabled": config.eco.enabled},
            "balancer": {"sharing": config.balancer.sharing}}
