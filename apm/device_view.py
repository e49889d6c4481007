"""What `apm run` shows: the device's state as a rich live view, or as one plain log line.

Both read the running parts (`apm.device.Device`, `apm.balancer_service.BalancerService`, the
simulated chargers of a demo) and never change them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

from apm.lines import LINES

if TYPE_CHECKING:
    from apm.balancer_service import BalancerService
    from apm.device import Device
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


def render(device: Device, balancer: BalancerService | None, nodes: Sequence[ChargerNode] = (),
           title: str = "APM") -> Group:
    now = device.clock.now()
    st = device.state
    sub = device.tracker.current
    head = Text.assemble(
        (f"{title} {device.config.serial}", "bold"),
        f"  ·  {st.meter or 'no meter yet'} {st.meter_type or ''}".rstrip(),
        f"  ·  {_han(device, now)}",
        f"  ·  subscription {sub.state.value if sub else '-'}",
        f"\n{_broker(device)}",
    )
    meter = Table(title="Meter", title_justify="left")
    meter.add_column("")
    for name in LINES:
        meter.add_column(name, justify="right")
    meter.add_row("Current (A)", *(_a(st.value(f"current_l{k}_a"), 2) for k in (1, 2, 3)))
    meter.add_row("Voltage (V)", *(_a(st.value(f"voltage_l{k}_v")) for k in (1, 2, 3)))
    power = st.value("active_import_w")
    energy = st.value("active_import_wh")
    kwh = None if energy is None else energy / 1000
    meter.caption = (f"import {_a(power, 0)} W · energy {_a(kwh, 2)} kWh · "
                     f"lists {st.counts.get(1, 0)}/{st.counts.get(2, 0)}/{st.counts.get(3, 0)} · "
                     f"hourly records {len(device.hourly)}")
    room = Table(title="Headroom", title_justify="left")
    room.add_column("")
    for name in LINES:
        room.add_column(name, justify="right")
    h = device.headroom
    if h is not None:
        room.add_row("Measured (A)", *(_a(v) for v in h.measured_a))
        room.add_row("House (A)", *(_a(v) for v in h.house_a))
        room.add_row("Our chargers (A)", *(_a(v) for v in h.own_a))
        room.add_row("Available (A)", *(_a(v) for v in h.available_a))
        room.caption = f"limit {h.limit_a:g} A · {'fresh' if h.fresh else 'STALE'} · {h.reason}"
    else:
        room.caption = "no per-phase list yet"
    chargers = Table(title="Chargers", title_justify="left")
    for col in ("", "state", "L1", "L2", "L3", "setpoint", "why"):
        chargers.add_column(col, justify="right" if col in ("L1", "L2", "L3", "setpoint") else "left")
    decision = balancer.balancer.last if balancer is not None else None
    for c in device.config.chargers:
        s = device.chargers.get(c.id)
        setpoint = balancer.setpoints.get(c.id) if balancer is not None else None
        why = decision.reasons.get(c.id, "") if decision is not None else ""
        cur = s.currents_a if s is not None else (None, None, None)
        chargers.add_row(c.id, s.mode if s is not None else "no report", *(_a(v) for v in cur),
                         _a(setpoint), why)
    if decision is not None:
        sent = balancer.published if balancer else 0
        chargers.caption = f"balancer: {decision.mode} · {sent} setpoints sent"
    parts: list = [head, meter, room, chargers]
    parts.extend(Text(f"Advice: {line}", style="yellow") for line in device.advice)
    evs = [n.charger.ev for n in nodes if n.charger.ev is not None]
    if evs:
        parts.append(Text("EVs: " + ", ".join(f"{ev.id} {ev.soc * 100:.0f} % ({ev.energy_kwh:.2f} kWh)"
                                              for ev in evs if ev is not None)))
    return Group(*parts)
