"""Home Assistant's controls and the sensors beside them, on the device's own MQTT connection:

    homeassistant/<number|switch|select|text>/<node>/<object>/config   (retained, on every connect)
    apm/<serial>/settings, charger/<id>/settings                        the settings in force (retained)
    apm/<serial>/settings/<setting>/set, charger/<id>/settings/<setting>/set
        --> `command_change` --> `apm.services.settings.Settings.apply` (the web page's path too)
    apm/<serial>/price        the price now, from Smart eco's price feed (retained)
    apm/<serial>/energy/hour  this clock hour's import so far (kWh), from the meter's power

A command Home Assistant sends is plain text: a number, ON/OFF, an option, HH:MM. One that does not
parse, is out of the schema's bounds or names no setting is refused with one log line and changes
nothing; the settings in force are published again either way, so Home Assistant shows what holds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, get_args

from apm.core import config as cfg
from apm.core.eco.capacity import HourMeter
from apm.io.mqtt.discovery import SWITCH_OFF, SWITCH_ON, ChargerLimits, controls_messages
from apm.io.mqtt.link import MqttLink, link_settings
from apm.io.mqtt.messages import (
    ChargerSettingsPayload,
    HourEnergyPayload,
    PayloadError,
    PricePayload,
    Rejections,
    SettingsPayload,
    iso_ts,
)
from apm.io.mqtt.node import MqttNode
from apm.io.mqtt.topics import (
    CHARGER_SET,
    CHARGER_SETTINGS,
    ENERGY_HOUR,
    PRICE,
    SETTINGS,
    SETTINGS_SET,
    Topics,
)
from apm.services.settings import Settings, SettingsError

if TYPE_CHECKING:
    from apm.core.eco.prices import PriceSeries
    from apm.services.device import Device
    from han.reading import Reading

log = logging.getLogger(__name__)

SOURCE = "home assistant"
MAX_COMMAND_BYTES = 64
ENERGY_EVERY_S = 10.0  # clock seconds between two publications of the hour's energy
PRICE_EVERY_S = 60.0  # clock seconds between two looks at the price (it changes every 15 or 60 min)

# The settings each command topic may set, and what the value must be.
DEVICE_SETTINGS: Mapping[str, tuple[str, str]] = {"eco_enabled": ("eco", "enabled"),
                                                  "sharing": ("balancer", "sharing")}
CHARGER_SETTINGS_TAKEN = ("max_a", "eco_energy_kwh", "eco_departure")
NUMBERS = ("max_a", "eco_energy_kwh")


def command_text(payload: bytes) -> str:
    """A command's payload as text: short, UTF-8, no control characters (`SettingsError` otherwise)."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise SettingsError(f"{len(payload)} bytes; a command is at most {MAX_COMMAND_BYTES}")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SettingsError("not UTF-8 text") from None
    if not text or any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise SettingsError(f"{text!r} is not a value")
    return text


def command_change(setting: str, payload: bytes, charger: str | None = None) -> dict[str, Any]:
    """The settings change a command asks for (`Settings.apply`'s form); `SettingsError` if it cannot be one.
    The value's bounds are the schema's, checked by `Settings.apply`."""
    text = command_text(payload)
    if charger is None:
        if setting not in DEVICE_SETTINGS:
            raise SettingsError(f"{setting!r} is not a setting (those: {', '.join(DEVICE_SETTINGS)})")
        table, key = DEVICE_SETTINGS[setting]
        value: Any = text
        if setting == "eco_enabled":
            if text not in (SWITCH_ON, SWITCH_OFF):
                raise SettingsError(f"{text!r} is not {SWITCH_ON} or {SWITCH_OFF}")
            value = text == SWITCH_ON
        return {table: {key: value}}
    if setting not in CHARGER_SETTINGS_TAKEN:
        raise SettingsError(f"{setting!r} is not a charger setting (those: {', '.join(CHARGER_SETTINGS_TAKEN)})")
    value = text
    if setting in NUMBERS:
        try:
            value = float(text)
        except ValueError:
            raise SettingsError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise SettingsError(f"{text!r} is not a number")
    return {"chargers": {charger: {setting: value}}}


def charger_limits(config: cfg.DeviceConfig) -> list[ChargerLimits]:
    """Each charger's control bounds: the schema's (a max current from the balancer's min_a, below which
    the charger could never start, up to the schema's 80 A; the eco energy 1..200 kWh)."""
    keys = {k.path: k for k in cfg.schema_keys()}
    hi_a = keys["chargers[].max_a"].bounds[1] or 80.0
    lo_kwh, hi_kwh = keys["chargers[].eco_energy_kwh"].bounds
    return [ChargerLimits(c.id, config.balancer.min_a, hi_a, lo_kwh or 1.0, hi_kwh or cfg.MAX_ECO_KWH)
            for c in config.chargers]


class HaControls(MqttNode):
    """The controls' MQTT side (module doc). ``prices``: Smart eco's feed (None: no price sensor)."""

    def __init__(self, settings: Settings, device: Device, *, url: str,
                 prices: Callable[[datetime], PriceSeries] | None = None) -> None:
        self.settings = settings
        self.device = device
        self.prices = prices
        config = settings.config
        self.topics = t = Topics(config.serial)
        self.rejections = Rejections(t, "settings")
        self.applied = self.refused = 0  # commands taken and refused (for `apm info` and tests)
        self.hour: HourMeter | None = None
        self._energy_sent_at = float("-inf")
        birth = controls_messages(t, charger_limits(config), sharing=get_args(cfg.Sharing),
                                  departure_pattern=cfg.HHMM, price=prices is not None)
        self.link = MqttLink(url, client_id=f"apm-{config.serial}-settings", birth=birth,
                             subscriptions=[(t.all_settings_sets, 1), (t.all_charger_sets, 1)],
                             **link_settings(config.broker))

    async def __aenter__(self) -> HaControls:
        await super().__aenter__()
        self.settings.listeners.append(self.on_settings)
        self.device.reading_listeners.append(self.on_reading)
        self.publish_settings()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for listeners, me in ((self.settings.listeners, self.on_settings),
                              (self.device.reading_listeners, self.on_reading)):
            if me in listeners:
                listeners.remove(me)  # type: ignore[arg-type]
        await super().__aexit__(*exc)

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self._listen(), *([self._price_every()] if self.prices is not None else [])]

    # --- settings ---------------------------------------------------------------------------------

    def publish_settings(self) -> None:
        c, t = self.settings.config, self.topics
        self.link.publish(t.message(SETTINGS, SettingsPayload(eco_enabled=c.eco.enabled,
                                                              sharing=c.balancer.sharing)))
        for ch in c.chargers:
            self.link.publish(t.message(CHARGER_SETTINGS, ChargerSettingsPayload(
                max_a=ch.max_a, eco_departure=ch.eco_departure, eco_energy_kwh=ch.eco_energy_kwh), charger=ch.id))

    def on_settings(self, _old: cfg.DeviceConfig, _new: cfg.DeviceConfig) -> None:
        self.publish_settings()

    async def _listen(self) -> None:
        async for m in self.link.messages():
            self.on_message(m.topic, m.payload)

    def on_message(self, topic: str, payload: bytes) -> bool:
        """A command: applied (True), or refused with a log line; never an exception out of the listener."""
        try:
            ref = self.topics.parse(topic)
            if ref is None or ref.kind not in (SETTINGS_SET, CHARGER_SET) or ref.setting is None:
                return False
            change = command_change(ref.setting, payload, ref.charger if ref.kind == CHARGER_SET else None)
        except (SettingsError, PayloadError) as exc:
            self.rejections.reject(topic, str(exc))
            self.refused += 1
            return False
        refused = self.settings.apply(change, source=SOURCE)
        if refused is not None:
            self.refused += 1
            self.publish_settings()  # Home Assistant shows the setting that holds, not the refused value
            return False
        self.applied += 1
        return True

    # --- sensors ----------------------------------------------------------------------------------

    def on_reading(self, now: float, reading: Reading) -> None:
        """The hour's energy goes on with the meter's import power (list 1 every 2 s where the meter
        sends it, else list 2); the power holds between readings, as `HourMeter` integrates it."""
        power = reading.active_import_w
        if power is None:
            return
        t = datetime.fromtimestamp(now, UTC)  # when the meter measured (clock seconds)
        if self.hour is None:
            self.hour = HourMeter.start(t, power)
            return
        self.hour, closed = self.hour.advance(t, power)
        if closed or now - self._energy_sent_at >= ENERGY_EVERY_S:
            self._energy_sent_at = now
            self.link.publish(self.topics.message(ENERGY_HOUR, HourEnergyPayload(
                hour_start=iso_ts(self.hour.hour), import_kwh=round(self.hour.kwh, 4), ts=iso_ts(t))))

    def publish_price(self, t: datetime) -> PricePayload | None:
        assert self.prices is not None
        try:
            slot = self.prices(t).at(t)
        except Exception as exc:  # a feed that fails: the sensor keeps its last value, the device goes on
            log.warning("price: none for now: %s", exc)
            return None
        if slot is None:
            return None
        payload = PricePayload(nok_per_kwh=round(slot.nok_per_kwh, 4), start=iso_ts(slot.start), end=iso_ts(slot.end))
        self.link.publish(self.topics.message(PRICE, payload))
        return payload

    async def _price_every(self) -> None:
        last: PricePayload | None = None
        while True:
            t = self.device.clock.datetime()
            if last is None or iso_ts(t) >= last.end:  # a new price interval (both UTC, one format)
                last = self.publish_price(t) or last
            await self.device.clock.sleep(PRICE_EVERY_S)
