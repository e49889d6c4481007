"""Energy prices as Norwegian households pay them: spot, Norgespris or spot with strømstøtte.

All NOK per kWh excluding VAT, before the grid tariff (apm.core.eco.tariff), like the spot series they are
made from (research notes chargers-ha-prices.md section 4):

- **spot**: the day-ahead price of the area, 15-minute slots since 2025-10-01;
- **Norgespris**: the state's fixed price a household may choose from 2025-10-01 (to the end of 2026):
  40 øre/kWh ex VAT (50 incl.) at every hour, for the first 5000 kWh of each calendar month in a home
  (1000 kWh in a holiday home); above that the household pays its own contract's price, taken here as
  spot. (The government's proposal of May 2025 said 4000 kWh; the rule in force, as the grid companies
  state it, is 5000: research notes and Lnett's "This is Norgespris".) Planning around spot saves
  nothing on energy under the cap; the grid's day/night charge and the capacity step still differ by
  hour. `paid` takes the month's energy so far (``used_kwh``), `energy_cost` splits a plan's energy at
  the cap;
- **strømstøtte**: for households on spot, the state pays 90 % of the price above 75 øre/kWh ex VAT,
  hour by hour. With 15-minute prices the hour's price is taken as the mean of its quarters (the
  notes say "hour by hour"; how the settlement treats quarters is not in them), and each quarter is
  lowered by that hour's subsidy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from apm.core.eco.prices import OSLO, PriceSeries
from apm.core.eco.tariff import hour_of

NORGESPRIS_NOK_PER_KWH = 0.40
NORGESPRIS_MONTHLY_KWH = 5000.0  # a home; above it, the contract's (spot) price
NORGESPRIS_HOLIDAY_HOME_MONTHLY_KWH = 1000.0
STROMSTOTTE_THRESHOLD_NOK_PER_KWH = 0.75
STROMSTOTTE_SHARE = 0.90

Kind = Literal["spot", "norgespris", "stromstotte"]
KINDS: tuple[Kind, ...] = ("spot", "norgespris", "stromstotte")


@dataclass(frozen=True, slots=True)
class PriceModel:
    """How the household's energy is priced."""

    kind: Kind = "spot"
    fixed_nok_per_kwh: float = NORGESPRIS_NOK_PER_KWH  # norgespris
    threshold_nok_per_kwh: float = STROMSTOTTE_THRESHOLD_NOK_PER_KWH  # strømstøtte
    share: float = STROMSTOTTE_SHARE  # strømstøtte
    monthly_cap_kwh: float = NORGESPRIS_MONTHLY_KWH  # norgespris: the fixed price's energy per month

    @property
    def flat(self) -> bool:
        """True when the energy price is the same at every hour (Smart eco saves nothing on it)."""
        return self.kind == "norgespris"

    @property
    def label(self) -> str:
        if self.kind == "norgespris":
            return f"Norgespris {100 * self.fixed_nok_per_kwh:g} øre/kWh"
        if self.kind == "stromstotte":
            return (f"spot with strømstøtte ({100 * self.share:g} % above"
                    f" {100 * self.threshold_nok_per_kwh:g} øre/kWh)")
        return "spot"


SPOT = PriceModel("spot")
NORGESPRIS = PriceModel("norgespris")
STROMSTOTTE = PriceModel("stromstotte")


def subsidy_by_hour(spot: PriceSeries, model: PriceModel = STROMSTOTTE) -> dict[datetime, float]:
    """Strømstøtte per kWh for each clock hour of the series: ``share`` of the hour's mean spot price
    (time-weighted over its slots) above the threshold."""
    price: dict[datetime, float] = defaultdict(float)
    hours: dict[datetime, float] = defaultdict(float)
    for s in spot:
        h = hour_of(s.start)
        price[h] += s.nok_per_kwh * s.hours
        hours[h] += s.hours
    return {h: model.share * max(0.0, price[h] / hours[h] - model.threshold_nok_per_kwh) for h in price}


def _month(t: datetime) -> tuple[int, int]:
    local = t.astimezone(OSLO)
    return local.year, local.month


def paid(spot: PriceSeries, model: PriceModel, used_kwh: float = 0.0) -> PriceSeries:
    """The price the household pays in each slot of ``spot`` under ``model`` (same slots). ``used_kwh``:
    the energy of the first slot's month so far; under Norgespris that month's slots are at spot once
    it has reached the cap (a new month starts at 0)."""
    if model.kind == "spot":
        return spot
    if model.kind == "norgespris":
        first = _month(spot.start)
        over = used_kwh >= model.monthly_cap_kwh
        slots = tuple(s if over and _month(s.start) == first else replace(s, nok_per_kwh=model.fixed_nok_per_kwh)
                      for s in spot)
    else:
        sub = subsidy_by_hour(spot, model)
        slots = tuple(replace(s, nok_per_kwh=s.nok_per_kwh - sub[hour_of(s.start)]) for s in spot)
    return PriceSeries(spot.area, slots)


def energy_cost(spot: PriceSeries, kwh: Sequence[float], model: PriceModel, used_kwh: float = 0.0) -> float:
    """What ``kwh[i]`` in slot i of ``spot`` costs under ``model`` (NOK ex VAT), the month's energy so far
    being ``used_kwh``. Under Norgespris a slot's energy is at the fixed price up to the month's cap and
    at spot above it, the count starting again at each new month."""
    if len(kwh) != len(spot):
        raise ValueError(f"{len(kwh)} energies for {len(spot)} slots")
    if model.kind != "norgespris":
        return sum(e * s.nok_per_kwh for s, e in zip(paid(spot, model), kwh, strict=True))
    total, month = 0.0, _month(spot.start)
    for s, e in zip(spot, kwh, strict=True):
        if _month(s.start) != month:
            month, used_kwh = _month(s.start), 0.0
        fixed = min(e, max(0.0, model.monthly_cap_kwh - used_kwh))
        total += fixed * model.fixed_nok_per_kwh + (e - fixed) * s.nok_per_kwh
        used_kwh += e
    return total
