"""The web page's side of the running device: what it shows, and the settings it may change.

    page = DevicePage(device, balancer, chargers=edges, image=flash_image_or_None)
    async with WebServer(plan, serial=..., snapshot=page.snapshot, change=page.change) as server:
        device.headroom_listeners.append(page.on_headroom(server.notify))

`snapshot()` reads the parts `apm run` already has (the `Device`, its `Controller`, the balancer's last
decision, the charger edges' links) and keeps the last minutes of line currents for the page's plot.
`change()` puts a charger's new max current through the configuration's schema (`apm.core.config`, as
`apm flash write` does), stores it in the flash image when the configuration came from one, and hands it
to the running balancer.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apm.core import config as cfg
from apm.core.lines import LINES
from apm.io.storage.flash import Flash, FlashError

if TYPE_CHECKING:
    from apm.core.headroom import HeadroomNote
    from apm.services.balancer import BalancerService
    from apm.services.device import Device
    from apm.services.runtime import ChargerEdges

log = logging.getLogger(__name__)

HISTORY_S = 600.0  # the plot's last ten minutes
HISTORY_POINTS = 600


def _r(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


class DevicePage:
    def __init__(self, device: Device, balancer: BalancerService, *, chargers: ChargerEdges | None = None,
                 image: Path | None = None) -> None:
        self.device = device
        self.balancer = balancer
        self.edges = chargers
        self.image = image  # where settings are stored (None: this run only)
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

    # --- what the page may change ------------------------------------------------------------------

    def change(self, charger_id: str, fields: Mapping[str, Any]) -> str | None:
        """A charger's settings from the page: None when applied (and stored), else why not."""
        unknown = set(fields) - {"max_a"}
        if unknown:
            return f"the page may change max_a only, not {', '.join(sorted(unknown))}"
        try:
            running = changed(self.device.config, charger_id, fields)
            if self.image is not None:
                # The stored configuration, not the running one: that one carries the broker login
                # `apm run` put in for this run.
                Flash(self.image).update(lambda c: dataclasses.replace(
                    c, config=changed(c.config, charger_id, fields) if c.config is not None else running))
        except cfg.ConfigError as exc:
            return str(exc)
        except FlashError as exc:
            return f"not stored: {exc}"
        self._apply(running, charger_id)
        log.info("web: charger %s: %s%s", charger_id, ", ".join(f"{k} {v}" for k, v in fields.items()),
                 f" (stored in {self.image})" if self.image else " (this run only: no flash image)")
        return None

    def _apply(self, new: cfg.DeviceConfig, charger_id: str) -> None:
        self.device.controller.replace_charger(next(c for c in new.chargers if c.id == charger_id))
        self.device.config = self.balancer.config = new
        self.balancer.update(self.balancer.clock.now(), publish_all=True)


def changed(config: cfg.DeviceConfig, charger_id: str, fields: Mapping[str, Any]) -> cfg.DeviceConfig:
    """``config`` with ``fields`` of one charger changed, validated by the schema (`cfg.ConfigError`)."""
    ids = [c.id for c in config.chargers]
    if charger_id not in ids:
        raise cfg.ConfigError("chargers", f"no charger {charger_id!r} (the chargers: {', '.join(ids) or 'none'})")
    data = cfg.to_dict(config)
    i = ids.index(charger_id)
    data["chargers"][i] = {**data["chargers"][i], **fields}
    return cfg.from_dict(data)
