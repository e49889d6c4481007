"""The web page's side of the running device: what it shows, and the settings it may change.

    page = DevicePage(device, balancer, chargers=edges, image=flash_image_or_None)
    async with WebServer(plan, serial=..., snapshot=page.snapshot, change=page.change) as server:
        device.headroom_listeners.append(page.on_headroom(server.notify))

`snapshot()` reads the parts `apm run` already has (the `Device`, its `Controller`, the balancer's last
decision, the charger edges' links) and keeps the last minutes of line currents for the page's plot.
`change()` hands a charger's new settings (max current, Smart eco's departure and energy) to the one
settings path, `apm.services.settings.Settings`: validated by the configuration's schema as `apm flash
write` does, stored in the flash image when the configuration came from one, applied to the running
balancer. `page.settings.apply(...)` takes any owner setting (Smart eco on/off, sharing).

Smart eco (``eco``, the running `EcoService`, None without a price source): the snapshot's ``eco`` key is
each car's request and plan over the prices it was planned on, with the plan's cost against charging at
once; `eco_change()` takes the page's Smart eco switch and a car's departure and energy through the same
settings path (``[eco] enabled``, the charger's ``eco_departure`` and ``eco_energy_kwh``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apm.core.lines import LINES
from apm.services.settings import Settings

if TYPE_CHECKING:
    from apm.core.eco.planner import Plan
    from apm.core.eco.prices import PriceSeries
    from apm.core.eco.tariff import EnergyCharge
    from apm.io.mqtt.messages import HeadroomNote
    from apm.services.balancer import BalancerService
    from apm.services.device import Device
    from apm.services.eco import EcoService
    from apm.services.runtime import ChargerEdges

log = logging.getLogger(__name__)

HISTORY_S = 600.0  # the plot's last ten minutes
HISTORY_POINTS = 600
ECO_CHART_H = 36  # the price chart's hours ahead at most (today's evening to tomorrow's morning)
ECO_FIELDS = frozenset({"on", "departure", "energy_kwh"})


def _r(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


class DevicePage:
    def __init__(self, device: Device, balancer: BalancerService, *, chargers: ChargerEdges | None = None,
                 image: Path | None = None, eco: EcoService | None = None,
                 settings: Settings | None = None) -> None:
        self.device = device
        self.eco = eco
        self.balancer = balancer
        self.edges = chargers
        # The one settings path (apm.services.settings), shared with Home Assistant's commands.
        self.settings = settings or Settings(device, balancer, image=image)
        self.image = self.settings.image  # where settings are stored (None: this run only)
        self.history: deque[tuple[float, tuple[float | None, ...]]] = deque(maxlen=HISTORY_POINTS)

    def on_headroom(self, notify: Callable[[], None]) -> Callable[[float, HeadroomNote], None]:
        return lambda _now, _note: notify()

    # --- what the page shows -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        d = self.device
        now = d.clock.now()
        st = d.state
        currents = tuple(_r(st.value(f"current_l{k}_a")) for k in (1, 2, 3))
        self._keep(now, currents)
        energy = st.value("active_import_wh")
        return {
            "t": round(now, 1),
            "serial": d.config.serial,
            "grid": {"network": d.config.grid.network, "fuse_a": d.config.grid.fuse_a,
                     "margin_a": d.config.grid.safety_margin_a},
            "lines": self._lines(currents),
            "headroom": self._headroom(),
            "power_w": _r(st.value("active_import_w"), 0),
            "energy_kwh": None if energy is None else round(energy / 1000, 2),
            "history": [[round(t - now, 1), *c] for t, c in self.history],
            "chargers": self._chargers(now),
            "balancer": self._balancer(),
            "subscription": self._subscription(),
            "han": self._han(now),
            "broker": self._broker(),
            "advice": list(d.advice),
            # the capacity guard's month and hour (apm.core.capacity_guard.CapacityGuard.to_dict); None: off
            "capacity": d.capacity.to_dict(d.clock.datetime()) if d.capacity is not None else None,
            "settings": {"stored_in": str(self.image) if self.image else None},
            "eco": self._eco(),
        }

    def _keep(self, now: float, currents: tuple[float | None, ...]) -> None:
        if self.history and now - self.history[-1][0] < HISTORY_S / HISTORY_POINTS:
            return
        self.history.append((now, currents))
        while self.history and now - self.history[0][0] > HISTORY_S:
            self.history.popleft()

    def _lines(self, currents: tuple[float | None, ...]) -> list[dict[str, Any]]:
        st, h = self.device.state, self.device.headroom
        out = []
        for i, name in enumerate(LINES):
            line: dict[str, Any] = {"name": name, "current_a": currents[i],
                                    "voltage_v": _r(st.value(f"voltage_l{i + 1}_v"), 1)}
            if h is not None:
                line.update(measured_a=_r(h.measured_a[i]), house_a=_r(h.house_a[i]), own_a=_r(h.own_a[i]),
                            available_a=_r(h.available_a[i]))
            out.append(line)
        return out

    def _headroom(self) -> dict[str, Any] | None:
        h = self.device.headroom
        if h is None:
            return None
        return {"limit_a": h.limit_a, "fresh": h.fresh, "reason": h.reason, "age_s": _r(h.age_s, 1)}

    def _chargers(self, now: float) -> list[dict[str, Any]]:
        decision = self.balancer.balancer.last
        links = self.edges.links() if self.edges is not None else {}
        out = []
        for c in self.device.config.chargers:
            s = self.device.chargers.get(c.id)
            link = links.get(c.id, {})
            out.append({
                # The balancer's own cap (what a change in the page has reached), not the file's.
                "id": c.id, "protocol": c.protocol, "max_a": self.device.controller.max_a.get(c.id, c.max_a),
                "phases": c.phases,
                "connected": link.get("connected"),
                "mode": s.mode if s is not None else "no report",
                "report_age_s": _r(now - s.at, 0) if s is not None else None,
                "ev_a": [_r(v, 1) for v in s.currents_a] if s is not None else None,
                "setpoint_a": self.balancer.setpoints.get(c.id),
                "why": decision.reasons.get(c.id, "") if decision is not None else "",
                # The charging session: the open one, else the last (None before the first EV).
                "session": self.device.session_view(c.id),
            })
        return out

    def _balancer(self) -> dict[str, Any]:
        d = self.balancer.balancer.last
        return {"mode": d.mode if d is not None else None, "setpoints_sent": self.balancer.published}

    def _subscription(self) -> dict[str, Any] | None:
        sub = self.device.tracker.current
        return None if sub is None else {"state": sub.state.value, "reason": sub.reason}

    def _han(self, now: float) -> dict[str, Any]:
        d = self.device
        st = d.state
        return {"state": d.han_state, "meter": st.meter, "meter_id": st.meter_id, "meter_type": st.meter_type,
                "lists": {str(k): v for k, v in sorted(st.counts.items())},
                "errors": d.problems, "last_problem": d.last_problem,
                "last_frame_age_s": None if d.last_reading_at is None else _r(now - d.last_reading_at, 1)}

    def _broker(self) -> dict[str, Any]:
        s = self.device.link.stats
        return {"url": s.broker, "connected": s.connected, "last_error": s.last_error,
                "records_pending": s.records_pending}

    def _eco(self) -> dict[str, Any] | None:
        if self.eco is None:
            return None
        planner, now = self.eco.planner, self.eco.clock()
        plan, at_once = planner.plan, planner.at_once
        ends = [r.departure for r in planner.requests.values()]
        try:
            prices: PriceSeries | None = planner.prices(now)
        except Exception as exc:  # noqa: BLE001 (no prices yet is shown, not raised: the page goes on)
            prices, why = None, str(exc)
        else:
            why = None
        cars = []
        for cid in planner.chargers:
            r = planner.requests.get(cid)
            cars.append({"id": cid, "on": r is not None,
                         "departure": r.departure.isoformat() if r is not None else None,
                         "energy_kwh": r.energy_kwh if r is not None else None,
                         **_car_plan(plan, at_once, cid)})
        return {"now": now.timestamp(), "cars": cars, "prices": _chart(prices, now, ends, planner.grid),
                "prices_error": why,
                "area": prices.area if prices is not None else None,
                "cost_nok": _r(plan.cost_nok) if plan is not None else None,
                "at_once_nok": _r(at_once.cost_nok) if at_once is not None else None,
                "notes": list(plan.notes) if plan is not None else [],
                "errors": self.eco.errors[-3:]}

    # --- what the page may change ------------------------------------------------------------------

    def change(self, charger_id: str, fields: Mapping[str, Any]) -> str | None:
        """A charger's settings from the page (its max current): None when applied (and stored), else why not."""
        return self.settings.change_charger(charger_id, fields, source="web")

    def eco_change(self, charger_id: str, fields: Mapping[str, Any]) -> str | None:
        """The page's Smart eco form for one car: None when applied (and stored), else why not."""
        if self.eco is None:
            return "Smart eco is off (no price source)"
        try:
            change = eco_settings(charger_id, fields)
        except ValueError as exc:
            return str(exc)
        return self.settings.apply(change, source="web")


# --- Smart eco ---------------------------------------------------------------------------------------


def eco_settings(charger_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The page's Smart eco form, ``{"on": bool, "departure": "HH:MM", "energy_kwh": x}``, as owner
    settings: the switch is Smart eco's own (``[eco] enabled``, every car, as Home Assistant's switch),
    departure and energy are this car's daily request (``eco_departure``, ``eco_energy_kwh``), kept in
    the flash image. The schema judges the values (`Settings.apply`)."""
    unknown = set(fields) - ECO_FIELDS
    if unknown:
        raise ValueError(f"the page may change {', '.join(sorted(ECO_FIELDS))} only, not {', '.join(sorted(unknown))}")
    car = {key: fields[name] for name, key in (("departure", "eco_departure"), ("energy_kwh", "eco_energy_kwh"))
           if name in fields}
    change: dict[str, Any] = {"eco": {"enabled": fields.get("on", True)}}
    if car:
        change["chargers"] = {charger_id: car}
    return change


def _car_plan(plan: Plan | None, at_once: Plan | None, charger_id: str) -> dict[str, Any]:
    """One car's part of the plan: its slots as ``[start, end, amperes, kWh]`` (epoch seconds), its cost
    and the cost of the same energy charged at once."""
    if plan is None or charger_id not in plan.charger_ids:
        return {"slots": [], "feasible": None, "reason": None, "cost_nok": None, "at_once_nok": None,
                "planned_kwh": None}
    c = plan.charger(charger_id)
    ref = at_once.charger(charger_id) if at_once is not None and charger_id in at_once.charger_ids else None
    return {"slots": [[s.start.timestamp(), s.end.timestamp(), _r(s.current_a, 1), _r(s.energy_kwh, 3)]
                      for s in c.slots],
            "feasible": c.feasible, "reason": c.reason, "cost_nok": _r(c.cost_nok),
            "at_once_nok": _r(ref.cost_nok) if ref is not None else None, "planned_kwh": _r(c.energy_kwh)}


def _chart(prices: PriceSeries | None, now: datetime, departures: list[datetime],
           grid: EnergyCharge | None) -> list[list[Any]]:
    """The price chart's slots, ``[start, end, spot, grid]`` (epoch seconds, NOK/kWh: what the planner
    weighs), from the slot holding now to the last departure (at least 12 hours, at most ``ECO_CHART_H``):
    15-minute prices give 4 a hour."""
    if prices is None:
        return []
    until = max([now + timedelta(hours=12), *departures])
    until = min(until, now + timedelta(hours=ECO_CHART_H))
    return [[s.start.timestamp(), s.end.timestamp(), round(s.nok_per_kwh, 4),
             round(grid.rate_at(s.start), 4) if grid is not None else 0.0]
            for s in prices if s.end > now and s.start < until]
