"""Who may have a Premium subscription: checked by the issuer when it issues a token, and on the device.

A HOME installation in Norway with at most three chargers and a supported AMS meter (Kamstrup,
Aidon, Kaifa/Nuri). Anything else is refused with the reason.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from apm.core.config import DeviceConfig

SUPPORTED_METERS = ("aidon", "kaifa", "kamstrup")
# Names a user or a meter list may give; Nuri makes the meters sold under the Kaifa name in Norway.
METER_ALIASES = {"nuri": "kaifa", "kaifa/nuri": "kaifa"}
MAX_CHARGERS = 3
COUNTRY = "NO"
INSTALLATION_TYPE = "HOME"


class Ineligible(enum.Enum):
    NOT_HOME = "not_home"
    TOO_MANY_CHARGERS = "too_many_chargers"
    NOT_NORWAY = "not_norway"
    UNSUPPORTED_METER = "unsupported_meter"


@dataclass(frozen=True, slots=True)
class Eligibility:
    ok: bool
    message: str
    reason: Ineligible | None = None


ELIGIBLE = Eligibility(True, "eligible")


def normalise_meter(meter: str) -> str:
    m = meter.strip().lower()
    return METER_ALIASES.get(m, m)


def check(installation_type: str, chargers: int, country: str, meter: str | None) -> Eligibility:
    """``meter`` None means not known yet (no HAN data): that alone does not make an APM ineligible."""
    if installation_type.strip().upper() != INSTALLATION_TYPE:
        return Eligibility(False, f"installation type {installation_type!r} is not eligible (HOME only)",
                           Ineligible.NOT_HOME)
    if chargers > MAX_CHARGERS:
        return Eligibility(False, f"{chargers} chargers; at most {MAX_CHARGERS} are eligible",
                           Ineligible.TOO_MANY_CHARGERS)
    if country.strip().upper() != COUNTRY:
        return Eligibility(False, f"country {country!r} is not eligible (Norway only)", Ineligible.NOT_NORWAY)
    if meter is not None and normalise_meter(meter) not in SUPPORTED_METERS:
        return Eligibility(False, f"meter {meter!r} is not supported (Kamstrup, Aidon, Kaifa/Nuri)",
                           Ineligible.UNSUPPORTED_METER)
    return ELIGIBLE


def check_config(config: DeviceConfig, meter: str | None) -> Eligibility:
    """The device's own check: its configuration and the meter it detected on the HAN port."""
    return check(config.installation_type, len(config.chargers), config.country, meter)
