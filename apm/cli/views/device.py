"""What `apm run` shows: the device's state as a rich live view, or as one plain log line.

Both read the running parts (`apm.services.device.Device`, `apm.services.balancer.BalancerService`, the
simulated chargers of a demo) and never change them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from apm.core.lines import LINES

if TYPE_CHECKING:
    from apm.services.balancer import BalancerService
    from apm.services.device import Device
    from sim.charger_node import ChargerNode


def _a(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _han(device: Device, now: float) -> str:
    if device.last_reading_at is None:
        return "no HAN data yet"
    return f"HAN {device.han_state}, last reading {now - device.last_reading_at:.0f} s ago"


def _broker(device: Device) -> str:
    st = device.link.stats
    if st.connected:
        text = f"broker {st.broker} connected"
    else:
        text = f"broker {st.broker} NOT connected" + (f" ({st.last_error})" if st.last_error else "")
    if st.records_pending:
        text += f", {st.records_pending} hourly records waiting"
    return text


def summary_line(device: Device, balancer: BalancerService | None) -> str:
    """One line for a log: HAN, headroom, setpoints, broker."""
    now = device.clock.now()
    parts = [_han(device, now)]
    counts = device.state.counts
    parts.append("readings " + "/".join(str(counts.get(k, 0)) for k in (1, 2, 3)) + " (list 1/2/3)")
    h = device.headroom
    if h is not None:
        parts.append("headroom " + " ".join(f"{n} {_a(a)}" for n, a in zip(LINES, h.available_a, strict=True)
                                            if a is not None) + (" A" if h.fresh else " A (stale)"))
    if balancer is not None and balancer.setpoints:
        d = balancer.balancer.last
        mode = d.mode if d is not None else "-"
        parts.append("setpoints " + " ".join(f"{cid} {a:g} A" for cid, a in balancer.setpoints.items())
                     + f" [{mode}]")
    parts.append(_broker(device))
    return "; ".join(parts)


# A charger's own terminals: its phase k is wired to some grid line (the rotation), so not named L1-L3.
TERMINALS = ("T1", "T2", "T3")
WHY_WIDTH = 17  # 80 columns less charger id, state, three currents, the limit and the link


def link_text(link: Mapping[str, Any] | None) -> str:
    """``ocpp up``, ``goe DOWN``, ``mqtt`` (a generic MQTT charger's session is the broker's)."""
    if link is None:
        return "mqtt"
    protocol = str(link.get("protocol", "?"))
    connected = link.get("connected")
    return protocol if connected is None else f"{protocol} {'up' if connected else 'DOWN'}"


def _table(*columns: str, numeric: int = 3) -> Table:
    """A borderless table (header and one rule): the whole view must fit an 80x24 terminal."""
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    for i, col in enumerate(columns):
        t.add_column(col, justify="right" if 0 < i <= numeric else "left", no_wrap=True)
    return t


def _line(text: str, style: str = "") -> Text:
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def render(device: Device, balancer: BalancerService | None, nodes: Sequence[ChargerNode] = (),
           title: str = "APM", links: Mapping[str, Mapping[str, Any]] | None = None) -> Group:
    """The live view: fits 80x24 with a few chargers (grid lines L1-L3, charger terminals T1-T3).

    ``links``: each charger's protocol, connection and the limit it holds
    (`apm.services.runtime.Running.charger_links`); without them the balancer's setpoints."""
    now = device.clock.now()
    st = device.state
    sub = device.tracker.current
    head = Text.assemble(
        (f"{title} {device.config.serial}", "bold"),
        f" · {st.meter or 'no meter yet'} {st.meter_type or ''}".rstrip(),
        f" · subscription {sub.state.value if sub else '-'}",
        no_wrap=True, overflow="ellipsis",
    )
    grid = _table("Grid line", *LINES)
    grid.add_row("Current (A)", *(_a(st.value(f"current_l{k}_a"), 2) for k in (1, 2, 3)))
    grid.add_row("Voltage (V)", *(_a(st.value(f"voltage_l{k}_v")) for k in (1, 2, 3)))
    h = device.headroom
    if h is not None:
        grid.add_row("Measured (A)", *(_a(v) for v in h.measured_a))
        grid.add_row("House (A)", *(_a(v) for v in h.house_a))
        grid.add_row("Our chargers (A)", *(_a(v) for v in h.own_a))
        grid.add_row("Available (A)", *(_a(v) for v in h.available_a))
        room = f"headroom: limit {h.limit_a:g} A · {'fresh' if h.fresh else 'STALE'} · {h.reason}"
    else:
        room = "headroom: no per-phase list yet"
    power = st.value("active_import_w")
    energy = st.value("active_import_wh")
    kwh = None if energy is None else energy / 1000
    meter = (f"import {_a(power, 0)} W · energy {_a(kwh, 2)} kWh · "
             f"lists {st.counts.get(1, 0)}/{st.counts.get(2, 0)}/{st.counts.get(3, 0)} · "
             f"hourly records {len(device.hourly)}")
    chargers = _table("Charger", "state", *TERMINALS, "limit", "link", "why", numeric=0)
    # The reason is cut to what an 80-column terminal leaves beside the other columns.
    for col in chargers.columns[2:6]:
        col.justify = "right"
    chargers.columns[-1].overflow = "ellipsis"
    chargers.columns[-1].max_width = WHY_WIDTH
    decision = balancer.balancer.last if balancer is not None else None
    for c in device.config.chargers:
        s = device.chargers.get(c.id)
        link = links.get(c.id) if links is not None else None
        # The limit the charger holds (OCPP: the profile it accepted), else the setpoint sent to it.
        limit = link.get("limit_a") if link is not None else None
        if limit is None and balancer is not None:
            limit = balancer.setpoints.get(c.id)
        why = decision.reasons.get(c.id, "") if decision is not None else ""
        cur = s.currents_a if s is not None else (None, None, None)
        chargers.add_row(c.id, s.mode if s is not None else "no report", *(_a(v) for v in cur),
                         _a(limit), link_text(link), why)
    parts: list = [head, _line(f"{_han(device, now)} · {_broker(device)}"), Text(), grid, _line(meter),
                   _line(room), Text(), chargers]
    if decision is not None:
        sent = balancer.published if balancer else 0
        parts.append(_line(f"balancer: {decision.mode} · {sent} setpoints sent · T1-T3: charger terminals"))
    parts.extend(_line(f"Advice: {line}", "yellow") for line in device.advice)
    evs = [n.charger.ev for n in nodes if n.charger.ev is not None]
    if evs:
        parts.append(_line("EVs: " + ", ".join(f"{ev.id} {ev.soc * 100:.0f} % ({ev.energy_kwh:.2f} kWh)"
                                               for ev in evs if ev is not None)))
    return Group(*parts)
