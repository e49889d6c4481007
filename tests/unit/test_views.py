"""The live views of `apm run` and `apm monitor` fit an 80x24 terminal and name grid lines and charger
terminals apart (L1-L3 for the grid, T1-T3 for a charger's own terminals)."""

from __future__ import annotations

import io
from datetime import datetime
from types import SimpleNamespace

from rich.console import Console

from apm.cli.views.device import render
from apm.cli.views.monitor import Board, LinkStatus
from apm.core import config as cfg
from apm.core.balancer import Decision
from apm.core.charger_state import ChargerState
from apm.core.meter_state import MeterState
from han import HanReader
from sim.frames import MeterSpec
from sim.meter import Meter

T0 = datetime.fromisoformat("2025-01-15T10:00:30+01:00")
WIDTH, HEIGHT = 80, 24


def _readings(vendor: str = "aidon", kind: str = "3p-it") -> list:
    reader = HanReader()
    return [r for p in Meter(MeterSpec(vendor, kind), T0).pushes_between(0, 30) for r in reader.feed(p.frame)]


def _lines(renderable: object) -> list[str]:
    console = Console(width=WIDTH, height=HEIGHT, record=True, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text().rstrip("\n").split("\n")


def _device(chargers: tuple[cfg.ChargerConfig, ...], advice: tuple[str, ...] = ()) -> SimpleNamespace:
    """The parts of a running `apm.services.device.Device` the view reads, with a real meter state."""
    state = MeterState()
    readings = _readings()
    for i, r in enumerate(readings):
        state.update(float(i), r)
    now = float(len(readings))
    headroom = SimpleNamespace(measured_a=(12.9, None, 21.1), house_a=(12.9, 10.0, 21.1), own_a=(6.0, 6.0, 0.0),
                               available_a=(10.1, 13.0, 1.9), limit_a=23.0, fresh=True,
                               reason="tightest line L3 (I2 bounded by the three-wire rule)")
    stats = SimpleNamespace(connected=True, broker="mqtt://127.0.0.1:1883", last_error=None, records_pending=0)
    config = cfg.DeviceConfig(serial="APMVIEW01", grid=cfg.GridConfig(network="IT", fuse_a=25.0),
                              chargers=chargers)
    reports = {c.id: ChargerState(c.id, "charging", currents_a=(6.0, 6.0, 0.0), at=now) for c in chargers}
    return SimpleNamespace(clock=SimpleNamespace(now=lambda: now), state=state, config=config,
                           tracker=SimpleNamespace(current=SimpleNamespace(state=SimpleNamespace(value="valid"))),
                           headroom=headroom, hourly=[], link=SimpleNamespace(stats=stats), chargers=reports,
                           last_reading_at=now - 1, han_state="fresh", advice=advice)


def _balancer(device: SimpleNamespace) -> SimpleNamespace:
    ids = [c.id for c in device.config.chargers]
    decision = Decision(at=0.0, mode="protect", available_a=(10.1, 13.0, 1.9), setpoints=dict.fromkeys(ids, 6.0),
                        targets=dict.fromkeys(ids, 6.0),
                        reasons=dict.fromkeys(ids, "limited: 1.9 A available on L3 (the tightest line)"))
    return SimpleNamespace(setpoints=dict.fromkeys(ids, 6.0), balancer=SimpleNamespace(last=decision), published=42)


def test_the_device_view_fits_80x24_with_four_chargers_and_advice() -> None:
    chargers = tuple(cfg.ChargerConfig(f"charger-{k}", rotation=("L2", "L3", "L1")) for k in range(4))
    device = _device(chargers, advice=("charger charger-0: a 1-phase EV draws between grid L1 and L2, "
                                       "which the meter does not report; rotate the charger's terminals",))
    lines = _lines(render(device, _balancer(device)))  # type: ignore[arg-type]
    assert len(lines) <= HEIGHT, "\n".join(lines)
    assert max(len(line) for line in lines) <= WIDTH
    text = "\n".join(lines)
    grid_head = next(line for line in lines if line.startswith("Grid line"))
    assert grid_head.split()[-3:] == ["L1", "L2", "L3"]
    charger_head = next(line for line in lines if line.startswith("Charger"))
    assert charger_head.split()[2:5] == ["T1", "T2", "T3"] and "L1" not in charger_head
    for k in range(4):
        assert f"charger-{k}" in text
    assert "Available (A)" in text and "Advice: charger charger-0" in text


def test_the_monitor_view_fits_80x24() -> None:
    board = Board("/dev/ttyUSB0", "2400 8E1")
    for r in _readings("kaifa", "3p-it"):
        board.update(r, now=0.0)
    status = LinkStatus(frames_ok=40, frames_bad=2, bytes_in=9000, bytes_discarded=12,
                        errors=(("crc", 2),), last_problem="frame check sequence mismatch at byte 812")
    lines = _lines(board.render(status, now=1.0))
    assert len(lines) <= HEIGHT, "\n".join(lines)
    assert max(len(line) for line in lines) <= WIDTH
    grid_head = next(line for line in lines if line.startswith("Grid line"))
    assert grid_head.split()[-3:] == ["L1", "L2", "L3"]
    assert "Active import" in "\n".join(lines) and "frames: 40 good, 2 bad" in "\n".join(lines)


def test_the_device_view_shows_each_chargers_protocol_connection_and_limit_in_80x24() -> None:
    chargers = (cfg.ChargerConfig("garage", protocol="ocpp"), cfg.ChargerConfig("carport", protocol="goe",
                                                                               goe_serial="012345"),
                cfg.ChargerConfig("shed"), cfg.ChargerConfig("cabin-annex", protocol="ocpp", ocpp_id="ZAP000123"))
    device = _device(chargers)
    links = {"garage": {"protocol": "ocpp", "connected": True, "limit_a": 16.0},
             "carport": {"protocol": "goe", "connected": False, "limit_a": 10.0},
             "shed": {"protocol": "mqtt", "connected": None, "limit_a": 6.0},
             "cabin-annex": {"protocol": "ocpp", "connected": False, "limit_a": None}}
    lines = _lines(render(device, _balancer(device), links=links))  # type: ignore[arg-type]
    assert len(lines) <= HEIGHT, "\n".join(lines)
    assert max(len(line) for line in lines) <= WIDTH
    row = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in
           ("garage", "carport", "shed", "cabin-annex")}
    assert row["garage"][5:8] == ["16.0", "ocpp", "up"]
    assert row["carport"][5:8] == ["10.0", "goe", "DOWN"]
    assert row["shed"][5:7] == ["6.0", "mqtt"]
    assert row["cabin-annex"][5:8] == ["6.0", "ocpp", "DOWN"], "no limit taken yet: the balancer's setpoint"
