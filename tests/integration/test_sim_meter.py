"""The meter emulator: schedules, clock and counters, and its frames through a real pty to the reader of
`apm monitor` (pyserial, apm.io.serial.port), for every vendor and meter kind."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime

import pytest
import serial

from apm.io.serial.port import VENDOR_SETTINGS, HanLink, SerialSettings, open_port
from han import HanReader
from sim.frames import MeterSpec
from sim.meter import Meter
from sim.serial_line import VirtualSerialPort

VENDORS = ("aidon", "kaifa", "kamstrup")
KINDS = ("1p", "3p-tn", "3p-it")
COMBOS = [(v, k) for v in VENDORS for k in KINDS]
FULL_HOUR = datetime.fromisoformat("2025-01-15T10:00:00+01:00")
# One hour from a full hour: (list 1, list 2, list 3) pushes per vendor.
HOURLY_COUNTS = {"aidon": {1: 1080, 2: 359, 3: 1}, "kaifa": {1: 1440, 2: 359, 3: 1}, "kamstrup": {2: 360, 3: 1}}


def _constant(amps: float):
    return lambda t: (amps, amps, amps)


def _volts(volts: float):
    return lambda t, i: (volts, volts, volts)


@pytest.mark.parametrize("vendor", VENDORS)
def test_one_hour_has_the_vendors_schedule(vendor):
    meter = Meter(MeterSpec(vendor, "3p-it"), FULL_HOUR, _constant(5.0), _volts(230.0))
    pushes = meter.pushes_between(0.0, 3600.0)
    assert Counter(p.list for p in pushes) == HOURLY_COUNTS[vendor]
    gaps = {round(b.t - a.t, 3) for a, b in zip(pushes, pushes[1:], strict=False)}
    assert gaps == {"aidon": {2.5}, "kaifa": {2.0}, "kamstrup": {5.0, 10.0}}[vendor]
    (hourly,) = [p for p in pushes if p.list == 3]
    # Sent at hh:00:10 (Kamstrup hh:00:05); Aidon's clock and counters read hh:00:00.
    assert hourly.t == {"aidon": 10.0, "kaifa": 10.0, "kamstrup": 5.0}[vendor]
    stamp = {"aidon": "10:00:00", "kaifa": "10:00:10", "kamstrup": "10:00:05"}[vendor]
    assert hourly.reading.meter_time[11:19] == stamp
    # The hourly list takes the place of a 10 s list (Aidon, Kaifa) or comes between two (Kamstrup).
    assert not [p for p in pushes if p.list == 2 and p.t == hourly.t]


def test_schedule_follows_the_meter_clock_not_the_start():
    meter = Meter(MeterSpec("aidon"), datetime(2025, 1, 15, 9, 59, 58, 700000), _constant(1.0), _volts(230.0))
    times = meter.push_times(0.0, 15.0)
    # Clock 09:59:58 (whole seconds): the next instants of its 2.5 s grid are 10:00:00, 10:00:02.5 ...
    assert times[:5] == [(2.0, 2), (4.5, 1), (7.0, 1), (9.5, 1), (12.0, 3)]  # list 3 at 10:00:10


@pytest.mark.parametrize("vendor", ["aidon", "kaifa", "kamstrup"])
def test_a_meter_started_just_after_the_hour_pushes_that_hours_list(vendor):
    # started at 10:00:03: the hourly list is pushed at 10:00:05/10 but Aidon's reads 10:00:00
    start = datetime(2025, 1, 15, 10, 0, 3, tzinfo=FULL_HOUR.tzinfo)
    meter = Meter(MeterSpec(vendor, "3p-tn"), start, _constant(5.0), _volts(230.0), energy_wh=(1e6, 0.0, 1e5, 0.0))
    (hourly,) = [p for p in meter.pushes_between(0.0, 60.0) if p.list == 3]
    assert hourly.t == {"aidon": 7.0, "kaifa": 7.0, "kamstrup": 2.0}[vendor]
    assert hourly.reading.active_import_wh == pytest.approx(1e6, abs=20.0)
    # Aidon's is stamped 3 s before the start: the counters run back on the first second's power
    power = meter.sample(0).power_w
    assert meter.energy_at(-3.0)[0] == pytest.approx(1e6 - 3.0 * power / 3600.0)


def test_splitting_the_calls_gives_the_same_bytes():
    def run(bounds):
        meter = Meter(MeterSpec("kaifa", "3p-it"), FULL_HOUR, seed=7)
        return [f for a, b in zip(bounds, bounds[1:], strict=False) for f in meter.frames_between(a, b)]

    assert run([0.0, 600.0]) == run([0.0, 0.1, 7.3, 10.0, 123.4, 599.99, 600.0])


def test_time_only_moves_forward():
    meter = Meter(MeterSpec("aidon"), FULL_HOUR, _constant(1.0), _volts(230.0))
    meter.frames_between(0.0, 60.0)
    with pytest.raises(ValueError, match="forward"):
        meter.frames_between(30.0, 90.0)


@pytest.mark.parametrize("vendor,kind", [("aidon", "3p-tn"), ("kaifa", "1p"), ("kamstrup", "3p-it")])
def test_energy_counters_integrate_the_power(vendor, kind):
    # 10 A per line at 230 V: TN 6.9 kW, one phase 2.3 kW, IT (230 V loads between lines) 3.45 kW.
    meter = Meter(MeterSpec(vendor, kind), FULL_HOUR, _constant(10.0), _volts(230.0),
                  energy_wh=(1_000_000.0, 0.0, 0.0, 0.0))
    hourly = [p.reading for p in meter.pushes_between(0.0, 3600.0 + 20.0) if p.list == 3]
    assert len(hourly) == 2  # 10:00:10 and 11:00:10 (Kamstrup :05)
    power = {"3p-tn": 6900.0, "1p": 2300.0, "3p-it": 3450.0}[kind]
    assert {p.reading.active_import_w for p in meter.pushes_between(3620.0, 3700.0)} == {power}
    step = {"aidon": 10.0, "kaifa": 1.0, "kamstrup": 10.0}[vendor]
    assert hourly[1].active_import_wh - hourly[0].active_import_wh == pytest.approx(power, abs=step)
    # Reactive power of the model: 0.04 P inductive (motors) less 120 var capacitive (electronics).
    q = 0.04 * power - 120.0
    delta_in = hourly[1].reactive_import_varh - hourly[0].reactive_import_varh
    delta_out = hourly[1].reactive_export_varh - hourly[0].reactive_export_varh
    assert (delta_in, delta_out) == pytest.approx((max(q, 0.0), max(-q, 0.0)), abs=step)


def test_clock_runs_with_the_lists():
    meter = Meter(MeterSpec("kaifa"), datetime(2025, 3, 1, 23, 59, 50), _constant(1.0), _volts(230.0))
    pushes = meter.pushes_between(0.0, 20.0)
    assert [p.reading.meter_time for p in pushes[:6]] == [
        "2025-03-01T23:59:50", "2025-03-01T23:59:52", "2025-03-01T23:59:54", "2025-03-01T23:59:56",
        "2025-03-01T23:59:58", "2025-03-02T00:00:00"]


@pytest.mark.parametrize("vendor,kind", COMBOS)
def test_pushes_decode_to_what_was_sent(vendor, kind):
    meter = Meter(MeterSpec(vendor, kind), FULL_HOUR, seed=3)
    pushes = meter.pushes_between(0.0, 30.0)
    reader = HanReader()
    assert reader.feed(b"".join(p.frame for p in pushes)) == [p.reading for p in pushes]
    sent = pushes[-1].reading if pushes[-1].list != 1 else next(p.reading for p in pushes if p.list == 2)
    assert sent.phases == (1 if kind == "1p" else 3)
    if kind == "3p-it" and vendor != "kaifa":
        assert sent.current_l2_a is None and sent.voltage_l2_v is not None
    if kind == "3p-it" and vendor == "kaifa":
        assert sent.estimated == ("voltage_l2_v",)  # the MA304H3E sends U2 = 0


# --- end to end: emulator -> real pty -> pyserial reader of `apm monitor` -------------------------


def _read_until(link: HanLink, want: int, timeout: float) -> list:
    """Readings until ``want`` of them, the timeout, or the sender closing the pty."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        try:
            got += link.poll()
        except serial.SerialException:  # the emulator ended and closed its pty
            break
    return got


@pytest.mark.parametrize("vendor,kind", COMBOS)
def test_emulator_on_a_pty_decodes_in_the_monitor_reader(vendor, kind):
    # Meter clock from hh:59:52: lists 2 and 1, then the hourly list 3 twenty seconds in.
    meter = Meter(MeterSpec(vendor, kind), datetime.fromisoformat("2025-01-15T09:59:52+01:00"), seed=5)
    pushes = meter.pushes_between(0.0, 22.0)
    assert {p.list for p in pushes} == ({2, 3} if vendor == "kamstrup" else {1, 2, 3})
    s = VENDOR_SETTINGS[vendor]
    with VirtualSerialPort(SerialSettings(s.baud, s.parity), pace=40.0) as line:
        port = open_port(line.path, s)  # before the first byte: opening a port discards its input
        try:
            link = HanLink(port, s)
            writer = threading.Thread(target=lambda: [line.write(p.frame) for p in pushes])
            writer.start()
            got = _read_until(link, len(pushes), timeout=20.0)
            writer.join()
        finally:
            port.close()
    assert got == [p.reading for p in pushes]
    assert link.reader.frames.frames_bad == 0


def test_cli_meter_on_a_pty(tmp_path):
    """`apm sim meter --pty` prints the path; a pyserial reader gets the lists the meter sends."""
    start = "2025-01-15T09:59:30+01:00"
    cmd = [sys.executable, "-m", "apm", "sim", "meter", "--vendor", "aidon", "--kind", "3p-it", "--pty",
           "--speed", "20", "--start", start, "--duration", "45", "--seed", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/"), proc.stderr.read()
        s = VENDOR_SETTINGS["aidon"]
        port = open_port(path, s)
        try:
            got = _read_until(HanLink(port, s), 18, timeout=15.0)
        finally:
            port.close()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
    expected = [p.reading for p in Meter(MeterSpec("aidon", "3p-it"), datetime.fromisoformat(start),
                                         seed=4).pushes_between(0.0, 45.0)]
    # The reader may open the port after the first frames went out; from there on every list matches.
    assert len(expected) == 18 and len(got) >= 15, [r.list for r in got]
    first = expected.index(got[0])
    assert got == expected[first : first + len(got)]
    assert 3 in {r.list for r in got}


def test_cli_meter_to_files(tmp_path):
    args = ["--vendor", "kamstrup", "--kind", "1p", "--fast", "--duration", "60",
            "--start", "2025-01-15T10:59:30"]
    out = subprocess.run([sys.executable, "-m", "apm", "sim", "meter", *args, "--hex"], capture_output=True,
                         check=True)
    binary = tmp_path / "k.bin"
    subprocess.run([sys.executable, "-m", "apm", "sim", "meter", *args, "--out", str(binary)], check=True,
                   capture_output=True)
    frames = [bytes.fromhex(line) for line in out.stdout.decode().split()]
    assert b"".join(frames) == binary.read_bytes()
    assert len(frames) == 7  # 10:59:30 ... 11:00:20 every 10 s, and the hourly list at 11:00:05
    assert b"list 2: 6, list 3: 1" in out.stderr


@pytest.mark.parametrize("argv,message", [
    (["--vendor", "aidon", "--fast", "--hex"], "--fast needs --duration"),
    (["--vendor", "kaifa", "--kind", "3p-it", "--omit-u2", "--hex", "--duration", "1"], "only Aidon"),
    (["--vendor", "aidon", "--start", "yesterday", "--hex", "--duration", "1"], "not an ISO 8601 time"),
])
def test_cli_meter_refuses_bad_options(argv, message):
    proc = subprocess.run([sys.executable, "-m", "apm", "sim", "meter", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_a_power_source_overrides_the_power_from_currents():
    meter = Meter(MeterSpec("aidon", "3p-it"), FULL_HOUR, _constant(10.0), _volts(230.0), power=lambda t: 6894.6)
    assert {p.reading.active_import_w for p in meter.pushes_between(0.0, 30.0)} == {6895.0}
