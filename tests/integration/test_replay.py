"""`apm replay`: captures of every format, paced or fast, damaged or not, onto stdout or a pty."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import jsonschema
import pytest

from apm.io.replay import json_line, open_capture
from apm.io.serial.port import VENDOR_SETTINGS, HanLink, open_port
from apm.io.storage.recording import RecordingWriter, encode_record, read_recording
from han import FrameReader, HanReader
from sim.frames import MeterSpec
from sim.meter import Meter
from tests.pty_meter import MeterOnPty
from tests.vectors import SCHEMA, frame, records

VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
FULL_HOUR = "2025-01-15T10:00:00+01:00"
APM = [sys.executable, "-m", "apm"]


def _apm(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*APM, *args], capture_output=True, text=True, **kw)


def _sim(out: Path, vendor: str, kind: str, duration: float, start: str = FULL_HOUR, *extra: str) -> Path:
    proc = _apm("sim", "meter", "--vendor", vendor, "--kind", kind, "--fast", "--duration", str(duration),
                "--start", start, "--out", str(out), *extra)
    assert proc.returncode == 0, proc.stderr
    return out


def _readings(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.mark.parametrize("vendor,counts", [
    ("aidon", {1: 1080, 2: 359, 3: 1}),
    ("kaifa", {1: 1440, 2: 359, 3: 1}),
    ("kamstrup", {2: 360, 3: 1}),
])
def test_one_hour_fast_dump_replays_the_schedule(tmp_path, vendor, counts):
    dump = _sim(tmp_path / f"{vendor}.bin", vendor, "3p-it", 3600)
    proc = _apm("replay", str(dump), "--fast", "--json")
    assert proc.returncode == 0, proc.stderr
    readings = _readings(proc.stdout)
    assert Counter(r["list"] for r in readings) == counts
    for r in readings:
        VALIDATOR.validate(r)
    assert "no problems" in proc.stderr


def test_hex_and_binary_dumps_give_the_same_readings(tmp_path):
    binary = _sim(tmp_path / "k.bin", "kaifa", "1p", 120)
    text = _sim(tmp_path / "k.hex", "kaifa", "1p", 120, FULL_HOUR, "--hex")
    assert open_capture(text).fmt == "hex" and open_capture(binary).fmt == "bin"
    a, b = _apm("replay", str(binary), "--fast", "--json"), _apm("replay", str(text), "--fast", "--json")
    assert a.stdout == b.stdout and len(a.stdout.splitlines()) == 60


def test_json_lines_are_the_schema_form():
    reader = HanReader()
    readings = reader.feed(b"".join(frame(r) for r in records("core")))
    assert len(readings) == len(records("core"))
    for r in readings:
        # the same JSON value, keys in the schema's order (msgspec writes it compactly)
        doc = json.loads(json_line(r))
        assert doc == r.to_json_dict() and list(doc) == list(r.to_json_dict())
        VALIDATOR.validate(doc)


def test_bundled_examples_replay(tmp_path):
    for path in sorted(Path("examples/dumps").glob("*.hex")):
        capture = open_capture(path)
        reader = HanReader()
        lists = Counter(r.list for _, chunk in capture.chunks(fast=True) for r in reader.feed(chunk))
        assert lists[3] == 1 and reader.errors == Counter(), path
        assert set(lists) == ({2, 3} if path.name.startswith("kamstrup") else {1, 2, 3}), path


def test_untimed_dump_is_paced_by_the_vendor_schedule(tmp_path):
    dump = _sim(tmp_path / "k.bin", "kamstrup", "3p-tn", 60, "2025-01-15T10:59:30")
    times = [t for t, _ in open_capture(dump).chunks()]
    # 10:59:30 ... every 10 s, the hourly list at 11:00:05 between two 10 s lists.
    assert times == [0.0, 10.0, 20.0, 30.0, 35.0, 40.0, 50.0]
    dump = _sim(tmp_path / "a.bin", "aidon", "1p", 20)
    assert [t for t, _ in open_capture(dump).chunks()] == [2.5 * k for k in range(8)]


# --- damaged dumps ----------------------------------------------------------------------------


def test_damaged_dump_replays_every_undamaged_frame(tmp_path):
    pushes = Meter(MeterSpec("kaifa", "3p-it"), datetime.fromisoformat("2025-01-15T09:59:00"),
                   seed=2).pushes_between(0.0, 120.0)
    frames = [bytearray(p.frame) for p in pushes]
    flipped, cut, garbage_after = 10, 30, 20
    frames[flipped][len(frames[flipped]) // 2] ^= 0x5A  # a byte flipped inside a frame
    frames[cut] = frames[cut][:-7]  # a frame cut short, the next one follows
    frames[-1] = frames[-1][:-3]  # the dump ends inside a frame
    garbage = bytes(random.Random(1).randrange(256) for _ in range(40)) + b"\x7e\xa0\x20\x01"
    data = bytearray()
    offsets = []
    for k, f in enumerate(frames):
        offsets.append(len(data))
        data += f
        if k == garbage_after:
            garbage_at = len(data)
            data += garbage
    dump = tmp_path / "damaged.bin"
    dump.write_bytes(bytes(data))
    proc = _apm("replay", str(dump), "--fast", "--json")
    assert proc.returncode == 0, proc.stderr
    damaged = {flipped, cut, len(frames) - 1}
    expected = [p.reading.to_json_dict() for k, p in enumerate(pushes) if k not in damaged]
    assert _readings(proc.stdout) == expected
    # Each damaged frame is reported where it starts; the garbage where it starts.
    for k in sorted(damaged):
        assert f"byte {offsets[k]}: frame:" in proc.stderr, (k, proc.stderr)
    assert f"byte {garbage_at}:" in proc.stderr
    assert "input ends inside a frame" in proc.stderr


def test_damaged_hex_dump_skips_and_reports_bad_lines(tmp_path):
    text = _sim(tmp_path / "a.hex", "aidon", "3p-tn", 60, FULL_HOUR, "--hex").read_text().splitlines()
    n = len(text)
    text[3] = text[3][:-1]  # an odd number of digits: a line cut short
    text[7] = text[7][:20] + "zz" + text[7][22:]  # not hex
    text[12] = text[12][:40]  # an even cut: the frame is incomplete, the decoder reports it
    (tmp_path / "bad.hex").write_text("\n".join(text) + "\n")
    proc = _apm("replay", str(tmp_path / "bad.hex"), "--fast", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == n - 3
    assert "line 4: not hex" in proc.stderr and "line 8: not hex" in proc.stderr
    assert "line 13 (byte" in proc.stderr


@pytest.mark.parametrize("content,status,message", [
    (None, 2, "cannot read"),
    (b"", 2, "is empty"),
    (bytes(random.Random(3).randrange(256) for _ in range(5000)), 1, "no valid HAN frame"),
    (b"APM-HAN-RECOR", 2, "ends inside its magic line"),
])
def test_unreadable_or_unrecognised_files_fail_precisely(tmp_path, content, status, message):
    path = tmp_path / "dump"
    if content is not None:
        path.write_bytes(content)
    proc = _apm("replay", str(path), "--fast")
    assert proc.returncode == status
    assert message in proc.stderr


def test_frames_of_an_unsupported_meter_decode_to_nothing(tmp_path):
    foreign = [r for r in records("foreign") if r["framing"] == "hdlc" and r["crc_ok"]
               and not HanReader().feed(frame(r))]  # some foreign lists are Norwegian-style and decode
    assert len(foreign) >= 5
    path = tmp_path / "foreign.bin"
    path.write_bytes(b"".join(frame(r) for r in foreign))
    proc = _apm("replay", str(path), "--fast")
    assert proc.returncode == 1
    assert "passed their checks but none decoded" in proc.stderr


# --- recordings, the pty, timing ---------------------------------------------------------------


def test_damage_in_a_recording_is_reported_at_its_file_byte(tmp_path):
    pushes = Meter(MeterSpec("aidon", "3p-tn"), datetime.fromisoformat(FULL_HOUR)).pushes_between(0.0, 30.0)
    frames = [bytearray(p.frame) for p in pushes]
    frames[4][20] ^= 0x01  # a frame damaged on the line, recorded as it came
    path = tmp_path / "r.apmrec"
    with RecordingWriter(path, {"baud": 2400, "parity": "E"}) as w:
        for p, f in zip(pushes, frames, strict=True):
            w.write(p.t, bytes(f[:10]))  # each frame in two reads, as a serial port gives them
            w.write(p.t + 0.01, bytes(f[10:]))
    raw = bytearray(path.read_bytes())
    with open(path, "ab") as f:
        f.write(encode_record(99.0, b"\x7e\xa0\x2a\x41")[:9])  # and the writer killed mid-record
    recording = read_recording(path.read_bytes())
    record = recording.records[9]  # the second part of frame 4
    proc = _apm("replay", str(path), "--fast", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == len(pushes) - 1
    first_part = recording.records[8]
    assert f"file byte {first_part.offset + 12} (record 9): frame: bad" in proc.stderr, proc.stderr
    assert f"file byte {len(raw)}: torn last record" in proc.stderr
    assert record.t == pytest.approx(pushes[4].t + 0.01)


def _until_recorded(path: Path, size: int, within_s: float = 60) -> None:
    """Until the recording holds ``size`` bytes of line data (what the meter sent)."""
    deadline = time.monotonic() + within_s
    while sum(len(r.data) for r in read_recording(path.read_bytes()).records) < size:
        assert time.monotonic() < deadline, f"{path} never held the {size} bytes sent"
        time.sleep(0.05)


def _record(tmp_path: Path, vendor: str, speed: float, duration: float) -> tuple[Path, list]:
    """A real recording: the emulator on a pty, `apm record` reading it, stopped with SIGTERM."""
    out = tmp_path / f"{vendor}.apmrec"
    with MeterOnPty(vendor, "3p-tn", speed=speed, duration=duration) as meter:
        proc = subprocess.Popen([*APM, "record", "--port", meter.path, "--vendor", vendor, str(out)],
                                stderr=subprocess.PIPE, text=True)
        try:
            assert "Ctrl-C to stop" in proc.stderr.readline()  # the port is open: start pushing
            meter.start()
            meter.wait(duration / speed + 60)
            _until_recorded(out, sum(len(p.frame) for p in meter.sent))
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
        finally:
            proc.kill()
            proc.wait()
        return out, meter.sent


def test_recording_replays_readings_and_relative_timing(tmp_path):
    rec, sent = _record(tmp_path, "aidon", speed=8.0, duration=24.0)
    recording = read_recording(rec.read_bytes())
    assert not recording.problems and recording.meta["parity"] == "E"
    # When each frame was complete in the recording: the receive time of its closing flag's chunk.
    stream = b"".join(r.data for r in recording.records)
    ends, pos = [], 0
    for r in recording.records:
        pos += len(r.data)
        ends.append((pos, r.t))
    done = []
    for f in FrameReader().feed(stream):
        close = f.offset + 1 + (((stream[f.offset + 1] & 7) << 8) | stream[f.offset + 2])
        done.append(next(t for end, t in ends if end > close))
    proc = subprocess.Popen([*APM, "replay", str(rec), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    got, arrived = [], []
    for line in proc.stdout:
        arrived.append(time.monotonic())
        got.append(json.loads(line))
    assert proc.wait(10) == 0
    assert got == [p.reading.to_json_dict() for p in sent]
    assert len(got) == len(done) >= 9
    for k in range(1, len(got)):
        # Paced as recorded (an unpaced replay would be seconds early); the bound allows a loaded machine.
        assert abs((arrived[k] - arrived[0]) - (done[k] - done[0])) < 0.5, (k, arrived, done)


def test_replay_onto_a_pty(tmp_path):
    dump = _sim(tmp_path / "k.hex", "kamstrup", "1p", 60, "2025-01-15T10:59:30", "--hex")
    proc = subprocess.Popen([*APM, "replay", str(dump), "--pty", "--speed", "40", "--delay", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        path = proc.stdout.readline().strip()
        s = VENDOR_SETTINGS["kamstrup"]  # 8N1: replay picked the vendor's settings
        port = open_port(path, s)
        try:
            link = HanLink(port, s)
            got = []
            deadline = time.monotonic() + 60
            while len(got) < 7 and time.monotonic() < deadline:
                got += link.poll()
        finally:
            port.close()
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
    reader = HanReader()
    assert got == reader.feed(b"".join(data for _, data in open_capture(dump).chunks(fast=True)))
    assert "(2400 8N1)" in proc.stderr.read()


def test_replay_benchmark_runs(tmp_path):
    """`make bench` replay section: the plumbing works (a short dump, one pass; not the speed)."""
    import io

    from rich.console import Console

    from bench import bench_replay

    rows = bench_replay.measure(seconds=60.0, repeat=1)
    assert {(r.vendor, r.json) for r in rows} == {(v, j) for v in bench_replay.VENDORS for j in (True, False)}
    assert all(r.frames > 0 and r.seconds > 0 for r in rows)
    out = io.StringIO()
    bench_replay.render(rows, Console(file=out, width=120))
    assert "frames/s" in out.getvalue() and "30,000" in out.getvalue()
