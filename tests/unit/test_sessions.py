"""The charging session meter (apm.core.sessions): energy per session from the chargers' reports."""

from __future__ import annotations

import math

import pytest

from apm.core.charger_state import ChargerState, Mode
from apm.core.config import ChargerConfig
from apm.core.lines import Triple
from apm.core.sessions import MAX_HOLD_S, SessionMeter, charging_power

GARAGE = ChargerConfig(id="garage", max_a=32.0, phases=3)
ONE_PHASE = ChargerConfig(id="carport", max_a=32.0, phases=1, rotation=("L2", "L3", "L1"))


def report(at: float, mode: Mode = "charging", currents: Triple = (16.0, 16.0, 16.0), *,
           phases: int | None = None, energy_wh: float | None = None, cid: str = "garage") -> ChargerState:
    if phases is None and mode == "charging":
        phases = 3 if min(currents) >= 1.0 else 1
    return ChargerState(id=cid, mode=mode, currents_a=currents if mode == "charging" else (0.0, 0.0, 0.0),
                        phases_in_use=phases, at=at, energy_wh=energy_wh)


def every(meter: SessionMeter, start: float, end: float, step: float, **kw: object) -> None:
    t = start
    while t <= end + 1e-9:
        meter.on_report(report(t, **kw))  # type: ignore[arg-type]
        t += step


def test_tn_three_phase_integrates_three_u_i_at_the_meters_voltages() -> None:
    m = SessionMeter("TN", [GARAGE])
    assert m.session("garage") is None
    m.on_report(report(0.0, "connected"))
    every(m, 10.0, 3610.0, 10.0)  # 16 A on three phases for an hour, reported every 10 s
    s = m.session("garage")
    assert s is not None and s.active and s.source == "integrated"
    # 3 x 230 V x 16 A = 11.04 kW for 3600 s (the first report's power starts at 10 s)
    assert s.energy_kwh == pytest.approx(11.04, rel=1e-6)
    assert s.duration_s(3610.0) == 3610.0
    # The meter's voltages, where it reports them, instead of the nominal 230 V.
    v = SessionMeter("TN", [GARAGE])
    v.on_report(report(0.0), voltages=(240.0, 240.0, 240.0))
    s = v.on_report(report(3600.0), voltages=(240.0, 240.0, 240.0))
    assert s is not None and s.energy_wh == pytest.approx(3 * 240.0 * 16.0 * MAX_HOLD_S / 3600.0)  # the gap
    w = SessionMeter("TN", [GARAGE], max_hold_s=3600.0)
    w.on_report(report(0.0), voltages=(240.0, 240.0, 240.0))
    s = w.on_report(report(3600.0))
    assert s is not None and s.energy_wh == pytest.approx(3 * 240.0 * 16.0)


def test_it_one_phase_is_u_i_across_two_lines() -> None:
    """1-phase on IT: 230 V line-to-line, the current on two terminals; power U I, not 2 U I."""
    m = SessionMeter("IT", [ONE_PHASE], max_hold_s=3600.0)
    m.on_report(report(0.0, currents=(32.0, 32.0, 0.0), cid="carport"))
    s = m.on_report(report(3600.0, currents=(32.0, 32.0, 0.0), cid="carport"))
    assert s is not None and s.energy_wh == pytest.approx(230.0 * 32.0)
    # IT 3-phase is sqrt(3) U I; TN 1-phase takes the voltage of the line its L1 terminal is on (L2 here).
    three = report(0.0, currents=(16.0, 16.0, 16.0))
    assert charging_power("IT", GARAGE, three) == pytest.approx(math.sqrt(3) * 230.0 * 16.0)
    one = report(0.0, currents=(10.0, 0.0, 0.0), cid="carport")
    assert charging_power("TN", ONE_PHASE, one, (200.0, 240.0, 220.0)) == pytest.approx(2400.0)
    # A voltage no meter of this network reports is not used: the nominal one is.
    assert charging_power("TN", ONE_PHASE, one, (None, 0.0, None)) == pytest.approx(2300.0)
    assert charging_power("TN", GARAGE, report(0.0, "connected")) == 0.0


def test_a_gap_is_held_for_the_report_interval_only() -> None:
    m = SessionMeter("TN", [GARAGE])
    m.on_report(report(0.0))
    m.on_report(report(10.0))
    s = m.on_report(report(310.0))  # silent for 300 s: 15 s of it counted, 285 s not
    assert s is not None
    p = 3 * 230.0 * 16.0
    assert s.energy_wh == pytest.approx(p * (10.0 + MAX_HOLD_S) / 3600.0)
    assert s.unmetered_s == pytest.approx(300.0 - MAX_HOLD_S)
    # An EV that draws nothing leaves no unmetered time behind.
    idle = SessionMeter("TN", [GARAGE])
    idle.on_report(report(0.0, "connected"))
    assert idle.on_report(report(500.0, "connected")).unmetered_s == 0.0  # type: ignore[union-attr]
    # A report older than the last one is not counted twice.
    assert m.on_report(report(300.0)) == s


def test_reconnecting_starts_a_new_session_and_keeps_the_last() -> None:
    m = SessionMeter("TN", [GARAGE])
    m.on_report(report(0.0))
    m.on_report(report(10.0))
    done = m.on_report(report(20.0, "disconnected"))
    assert done is not None and not done.active and done.ended_at == 20.0
    assert done.energy_wh == pytest.approx(3 * 230.0 * 16.0 * 20.0 / 3600.0)
    # The last session stays, its duration frozen, while no EV is there.
    assert m.on_report(report(100.0, "disconnected")) == done
    assert done.duration_s(1000.0) == 20.0
    again = m.on_report(report(200.0, "connected"))
    assert again is not None and again.active and again.started_at == 200.0 and again.energy_wh == 0.0
    # "finished" (a full car still plugged in) is the same session.
    m.on_report(report(210.0, "finished"))
    assert m.session("garage").started_at == 200.0  # type: ignore[union-attr]
    # No EV yet: no session.
    other = SessionMeter("TN", [GARAGE])
    assert other.on_report(report(0.0, "disconnected")) is None


def test_the_chargers_register_is_preferred() -> None:
    m = SessionMeter("TN", [GARAGE])
    m.on_report(report(0.0, "connected", energy_wh=120_000.0))
    m.on_report(report(10.0, energy_wh=120_000.0))
    # A long silence: the register saw the energy the integration could not.
    s = m.on_report(report(3610.0, energy_wh=131_000.0))
    assert s is not None and s.source == "charger"
    assert s.energy_wh == pytest.approx(11_000.0)
    # The register falling (the charger reset) counts on from its new value.
    s = m.on_report(report(3620.0, energy_wh=5.0))
    s = m.on_report(report(3630.0, energy_wh=35.0))
    assert s is not None and s.energy_wh == pytest.approx(11_030.0)
    # A register first reported during the session adds to what was integrated before it.
    late = SessionMeter("TN", [GARAGE])
    late.on_report(report(0.0))
    late.on_report(report(10.0, energy_wh=500.0))
    s = late.on_report(report(20.0, energy_wh=530.0))
    assert s is not None and s.source == "charger"
    assert s.energy_wh == pytest.approx(3 * 230.0 * 16.0 * 10.0 / 3600.0 + 30.0)


def test_a_go_e_reports_its_energy_register() -> None:
    """``eto`` (API v2: Wh) rides on every state the go-e's keys make."""
    from apm.io.chargers.goe import GoeCharger, GoeControl

    g = GoeControl("garage", GoeCharger(serial="012345"))
    assert g.on_message("go-eCharger/012345/car", b"2", 1.0).energy_wh is None  # type: ignore[union-attr]
    state = g.on_message("go-eCharger/012345/eto", b"123456", 2.0)
    assert state is not None and state.energy_wh == 123456.0 and state.mode == "charging"
    assert g.on_message("go-eCharger/012345/eto", b"true", 3.0) is None  # not a register
    assert g.state(4.0).energy_wh == 123456.0
