"""`apm record` and the recording format: append-only, readable after a kill at any moment."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import pytest

from apm.io.storage.recording import (
    MAGIC,
    RecordingError,
    RecordingWriter,
    encode_record,
    header_bytes,
    read_recording,
)
from han import HanReader
from tests.pty_meter import MeterOnPty

APM = [sys.executable, "-m", "apm"]


def _file(chunks: list[tuple[float, bytes]]) -> bytes:
    return header_bytes({"port": "/dev/ttyUSB0", "baud": 2400}) + b"".join(encode_record(t, d) for t, d in chunks)


CHUNKS = [(0.01 * k, bytes([k]) * (k + 1)) for k in range(1, 9)]


def test_records_round_trip(tmp_path):
    path = tmp_path / "r.apmrec"
    with RecordingWriter(path, {"port": "/dev/pts/9"}) as w:
        for t, data in CHUNKS:
            w.write(t, data)
    raw = path.read_bytes()
    assert raw.startswith(MAGIC)
    rec = read_recording(raw)
    assert [(r.t, r.data) for r in rec.records] == CHUNKS
    assert rec.meta["port"] == "/dev/pts/9" and rec.meta["clock"] == "monotonic" and "started" in rec.meta
    assert not rec.problems and not rec.torn
    # The documented layout: u32 length, f64 time, data, CRC-32 of all three.
    first = rec.records[0].offset
    length, t = struct.unpack_from("<Id", raw, first)
    assert (length, t) == (2, 0.01)
    assert struct.unpack_from("<I", raw, first + 12 + 2)[0] == zlib.crc32(raw[first : first + 14])


def test_writer_refuses_to_overwrite(tmp_path):
    path = tmp_path / "r.apmrec"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        RecordingWriter(path)
    assert path.read_bytes() == b"keep me"


def test_a_torn_last_record_is_dropped_wherever_the_cut_is():
    raw = _file(CHUNKS)
    last = read_recording(raw).records[-1].offset
    for cut in range(last + 1, len(raw)):
        rec = read_recording(raw[:cut])
        assert [(r.t, r.data) for r in rec.records] == CHUNKS[:-1], cut
        assert rec.torn and len(rec.problems) == 1 and "torn last record" in rec.problems[0].reason


def test_a_damaged_record_is_skipped_and_the_rest_read():
    raw = bytearray(_file(CHUNKS))
    third = read_recording(bytes(raw)).records[2]
    raw[third.offset + 13] ^= 0xFF  # a data byte: the CRC no longer checks
    rec = read_recording(bytes(raw))
    assert [(r.t, r.data) for r in rec.records] == CHUNKS[:2] + CHUNKS[3:]
    assert len(rec.problems) == 1 and rec.problems[0].offset == third.offset and not rec.torn


@pytest.mark.parametrize("raw,message", [
    (b"hello world, not a recording", "not a recording"),
    (MAGIC[:12], "inside its magic line"),
    (MAGIC + b'{"port": "/dev', "header line is torn"),
    (MAGIC + b"[1, 2]\n", "not a JSON object"),
])
def test_bad_headers_are_named(raw, message):
    with pytest.raises(RecordingError, match=message):
        read_recording(raw)


def test_writer_killed_mid_write_leaves_every_complete_record(tmp_path):
    """A writer of big records in a tight loop, killed with SIGKILL: everything before the kill reads."""
    path = tmp_path / "big.apmrec"
    script = textwrap.dedent(f"""
        import time
        from apm.io.storage.recording import RecordingWriter
        with RecordingWriter({str(path)!r}, fsync_every=0) as w:
            print("ready", flush=True)
            k = 0
            while True:
                w.write(k * 0.001, k.to_bytes(4, "big") * 16000)
                k += 1
                time.sleep(0.0002)  # keeps the file to some tens of MB
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    # Killed once a dozen records are in the file, whatever the machine's speed.
    deadline = time.monotonic() + 60
    while path.stat().st_size < 12 * 64_000:
        assert time.monotonic() < deadline and proc.poll() is None, "the writer wrote nothing"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rec = read_recording(path.read_bytes())
    assert len(rec.records) > 10
    for k, r in enumerate(rec.records):  # in order, none lost, each intact
        assert r.data == k.to_bytes(4, "big") * 16000 and r.t == k * 0.001
    assert not rec.problems or (rec.torn and len(rec.problems) == 1)


def test_apm_record_killed_with_sigkill_replays_up_to_the_last_chunk(tmp_path):
    out = tmp_path / "k.apmrec"
    with MeterOnPty("kaifa", "3p-it", speed=10.0, duration=60.0) as meter:
        proc = subprocess.Popen([*APM, "record", "--port", meter.path, "--vendor", "kaifa", str(out)],
                                stderr=subprocess.PIPE, text=True)
        try:
            assert "Ctrl-C to stop" in proc.stderr.readline()
            meter.start()
            deadline = time.monotonic() + 60
            while len(meter.sent) < 12:
                assert time.monotonic() < deadline, "the meter did not get 12 frames out"
                time.sleep(0.01)
            time.sleep(0.05)  # in the middle of the next frame's bytes, most likely
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            proc.kill()
            proc.wait()
    rec = read_recording(out.read_bytes())
    complete = b"".join(r.data for r in rec.records)
    replay = subprocess.run([*APM, "replay", str(out), "--fast", "--json"], capture_output=True, text=True)
    assert replay.returncode == 0, replay.stderr
    got = [json.loads(line) for line in replay.stdout.splitlines()]
    # Everything in the complete records replays: the same readings a decoder gets from their bytes,
    # which are what the meter sent, in order, up to the kill.
    assert got == [r.to_json_dict() for r in HanReader().feed(complete)]
    sent = [p.reading.to_json_dict() for p in meter.sent]
    assert len(got) >= 12 and got == sent[: len(got)]


def test_apm_record_refuses_an_existing_file_and_a_missing_port(tmp_path):
    out = tmp_path / "exists.apmrec"
    out.write_text("x")
    with MeterOnPty("aidon", "1p", speed=1.0, duration=1.0) as meter:
        proc = subprocess.run([*APM, "record", "--port", meter.path, str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and "exists" in proc.stderr and out.read_text() == "x"
    proc = subprocess.run([*APM, "record", "--port", str(tmp_path / "ttyNONE"), str(tmp_path / "n.apmrec")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no such port" in proc.stderr
    assert not (tmp_path / "n.apmrec").exists()


def test_apm_record_stops_after_its_duration(tmp_path):
    out = tmp_path / "d.apmrec"
    with MeterOnPty("kamstrup", "3p-tn", speed=20.0, duration=60.0) as meter:
        meter.start()
        proc = subprocess.run([*APM, "record", "--port", meter.path, "--vendor", "kamstrup", "--duration", "1.5",
                               str(out)], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    rec = read_recording(out.read_bytes())
    assert rec.meta["parity"] == "N" and rec.records and rec.records[-1].t < 1.6
    assert "frames passed their checks" in proc.stderr


def test_a_large_recording_streams_with_damage_far_beyond_the_first_read():
    # Several reads' worth of records: the reader's buffer moves on, its offsets must not.
    chunks = [(k * 0.1, bytes([k % 251]) * 2000) for k in range(700)]
    raw = bytearray(_file(chunks))
    head = raw.index(b"\n", len(MAGIC)) + 1
    size = 16 + 2000
    bad = head + 400 * size
    raw[bad + 20] ^= 0xFF  # a byte of record 400's data
    raw += encode_record(99.0, b"\x7e" * 100)[:50]  # and a torn last record
    rec = read_recording(bytes(raw))
    assert len(rec.records) == 699
    assert [p.offset for p in rec.problems] == [bad, len(raw) - 50]
    assert rec.problems[0].reason == f"damaged record (bad length or CRC): {size} bytes skipped"
    assert rec.torn and rec.records[400].offset == bad + size and rec.records[400].t == pytest.approx(40.1)
