"""`apm monitor` as a user runs it: a subprocess reading a real pty that a simulated meter writes at 2400 baud."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest

from apm.io.serial.port import SerialSettings, SettingsCache
from han import HanReader
from tests.serial_sender import Sender
from tests.vectors import SCHEMA, frame, mismatches, records

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
E8 = SerialSettings(2400, "E")
N8 = SerialSettings(2400, "N")


def decode_alone(data: bytes) -> tuple[list[dict], list[str]]:
    reader = HanReader()
    readings = [r.to_json_dict() for r in reader.feed(data)]
    return readings, [f"{p.kind}: {p.reason}" for p in reader.pop_problems()]


def pick(scope: str, meter: str | None = None, lst: int | None = None, max_len: int = 2048,
         problem: str | None = None, n: int = 3) -> list[dict]:
    """Distinct HDLC records; with ``problem``, those whose decoding fails with it."""
    out, seen = [], set()
    for rec in records(scope):
        data = frame(rec)
        if (rec["framing"] != "hdlc" or (meter and rec["meter"] != meter) or (lst and rec["list"] != lst)
                or len(data) > max_len or rec["hex"] in seen):
            continue
        readings, problems = decode_alone(data)
        if problem is not None and not any(problem in p for p in problems):
            continue
        if problem is None and json.dumps(readings) in {json.dumps(decode_alone(frame(r))[0]) for r in out}:
            continue
        seen.add(rec["hex"])
        out.append(rec)
        if len(out) == n:
            break
    assert len(out) == n, f"not enough {scope} {meter} vectors"
    return out


KAIFA_MIX = pick("core", "kaifa", 1, n=2) + pick("core", "kaifa", 2, n=1)  # 41 + 41 + 123 bytes
KAMSTRUP = pick("core", "kamstrup", 2, max_len=200, n=2)  # 188 bytes: 0.78 s each at 8N1


@dataclass
class Run:
    rc: int
    readings: list[dict]
    stdout: str
    stderr: str
    seconds: float

    def tried(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if ": tried " in line]


def monitor(*args: str, cache: Path, json_mode: bool = True, timeout: float = 40) -> Run:
    env = {**os.environ, "APM_SERIAL_CACHE": str(cache)}  # never the user's ~/.cache
    cmd = [sys.executable, "-m", "apm", "monitor", *args, *(["--json"] if json_mode else [])]
    t = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    took = time.monotonic() - t
    readings = [json.loads(line) for line in proc.stdout.splitlines()] if json_mode else []
    return Run(proc.returncode, readings, proc.stdout, proc.stderr, took)


def check_readings(readings: list[dict], recs: list[dict]) -> None:
    """Each reading is one of the frames, with the vector's expected values, in the order they were sent."""
    by_json = {json.dumps(decode_alone(frame(r))[0][0], sort_keys=True): i for i, r in enumerate(recs)}
    order = []
    for got in readings:
        VALIDATOR.validate(got)
        i = by_json.get(json.dumps(got, sort_keys=True))
        assert i is not None, f"reading matches none of the frames sent: {got}"
        assert mismatches(recs[i]["expected"], got) == [], recs[i]["id"]
        order.append(i)
    for a, b in zip(order, order[1:], strict=False):
        assert b == (a + 1) % len(recs), f"frames lost or repeated: {order}"


def frames_of(recs: list[dict]) -> list[bytes]:
    return [frame(r) for r in recs]


# -- readings --------------------------------------------------------------------------------------


def test_decodes_what_the_meter_writes(tmp_path):
    with Sender(frames_of(KAIFA_MIX), E8) as line:
        run = monitor("--port", line.path, "--parity", "E", "--count", "4", "--timeout", "15",
                      cache=tmp_path / "c.json")
    assert run.rc == 0, run.stderr
    assert len(run.readings) == 4
    check_readings(run.readings, KAIFA_MIX)
    assert f"reading {line.path} at 2400 8E1 (as given)" in run.stderr


def test_ct_ratio_scales_currents_and_powers(tmp_path):
    rec = KAIFA_MIX[2]
    with Sender([frame(rec)], E8) as line:
        run = monitor("--port", line.path, "--parity", "e", "--count", "1", "--ct-ratio", "10",
                      "--timeout", "10", cache=tmp_path / "c.json")
    assert run.rc == 0, run.stderr
    got, want = run.readings[0], rec["expected"]
    assert got["current_l1_a"] == pytest.approx(10 * want["current_l1_a"])
    assert got["active_import_w"] == pytest.approx(10 * want["active_import_w"])
    assert got["voltage_l1_v"] == pytest.approx(want["voltage_l1_v"], abs=0.05)


def test_live_table(tmp_path):
    rec = KAIFA_MIX[2]
    with Sender(frames_of(KAIFA_MIX), E8) as line:
        run = monitor("--port", line.path, "--parity", "E", "--count", "3", "--timeout", "15",
                      cache=tmp_path / "c.json", json_mode=False)
    assert run.rc == 0, run.stderr
    out = run.stdout
    for words in ("Power", "Grid line", "Voltage (V)", "list 1:", "list 2:", "2400 8E1", "frames:"):
        assert words in out
    assert f"{rec['expected']['voltage_l1_v']:.1f}" in out
    assert f"{rec['expected']['current_l1_a']:.2f}" in out
    assert re.search(r"frames: [3-9] good, 0 bad", out)


def test_ctrl_c_after_readings_exits_0(tmp_path):
    with Sender(frames_of(KAIFA_MIX), E8) as line:
        env = {**os.environ, "APM_SERIAL_CACHE": str(tmp_path / "c.json")}
        # As from a terminal: a shell's background job would inherit SIGINT ignored, and Python keeps that.
        launch = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                  "sys.argv = ['apm', *sys.argv[1:]]; runpy.run_module('apm', run_name='__main__')")
        proc = subprocess.Popen([sys.executable, "-c", launch, "monitor", "--port", line.path, "--parity", "E",
                                 "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
        try:
            first = proc.stdout.readline()
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=10)
        finally:
            proc.kill()
            proc.communicate()
    assert json.loads(first)["meter"] == "kaifa"
    assert rc == 0


# -- auto-detection --------------------------------------------------------------------------------


def test_auto_detects_parity_and_remembers_it(tmp_path):
    port = str(tmp_path / "ttyHAN")  # a stable name for the port, as /dev/serial/by-id gives
    cache = tmp_path / "serial.json"
    args = ("--port", port, "--count", "2", "--probe-seconds", "2", "--timeout", "20")

    with Sender(frames_of(KAMSTRUP), N8, link=port):  # a Kamstrup meter: 8N1
        first = monitor(*args, cache=cache)
        again = monitor(*args, cache=cache)
    assert first.rc == 0, first.stderr
    check_readings(first.readings, KAMSTRUP)
    tried = first.tried()
    assert "tried 2400 8E1" in tried[0] and "no valid frame" in tried[0]  # the first guess reads garbage
    assert "tried 2400 8N1" in tried[1] and "valid frames" in tried[1]
    assert f"reading {port} at 2400 8N1 (auto-detected)" in first.stderr
    assert SettingsCache(cache).get(port) == SerialSettings(2400, "N")

    assert again.rc == 0, again.stderr
    check_readings(again.readings, KAMSTRUP)
    assert again.tried()[0].endswith("(remembered)") and "2400 8N1" in again.tried()[0]
    assert "8E1" not in again.stderr
    assert "(remembered from an earlier run)" in again.stderr

    with Sender(frames_of(KAIFA_MIX), E8, link=port):  # the meter replaced by a Kaifa: 8E1
        swapped = monitor(*args, cache=cache)
    assert swapped.rc == 0, swapped.stderr
    check_readings(swapped.readings, KAIFA_MIX)
    tried = swapped.tried()
    assert "tried 2400 8N1" in tried[0] and "no valid frame" in tried[0] and "(remembered)" in tried[0]
    assert "tried 2400 8E1" in tried[1]
    assert f"reading {port} at 2400 8E1 (auto-detected)" in swapped.stderr
    assert SettingsCache(cache).get(port) == SerialSettings(2400, "E")


# -- diagnoses -------------------------------------------------------------------------------------


def test_silent_port(tmp_path):
    with Sender([], E8) as line:
        run = monitor("--port", line.path, "--probe-seconds", "0.2", "--timeout", "2.5", cache=tmp_path / "c.json")
    assert run.rc == 1
    assert run.readings == []
    assert "[silent]" in run.stderr
    for words in ("no bytes at all", "grid company", "HAN port", "Kamstrup", "HAN module", "external power"):
        assert words in run.stderr
    assert 2.5 <= run.seconds < 30  # waits its --timeout; the upper bound only catches a hang
    assert not (tmp_path / "c.json").exists()  # nothing worked, nothing remembered


def test_garbage_only(tmp_path):
    noise = random.Random(7).randbytes(3000)
    with Sender([noise[i : i + 100] for i in range(0, len(noise), 100)], E8) as line:
        run = monitor("--port", line.path, "--probe-seconds", "0.25", "--timeout", "3.5",
                      cache=tmp_path / "c.json")
    assert run.rc == 1
    assert run.readings == []
    assert "[no-frames]" in run.stderr
    assert "no valid frame" in run.stderr and "serial settings are wrong" in run.stderr
    assert "unsupported" in run.stderr
    assert len(run.tried()) >= 9 and "115200 8O1" in run.stderr  # every baud and parity was tried


def test_p1_text_port(tmp_path):
    p1 = [frame(r) for r in records("foreign") if r["framing"] == "dsmr_p1_ascii"][:1]
    assert p1
    with Sender(p1, SerialSettings(115200, "N")) as line:
        run = monitor("--port", line.path, "--baud", "115200", "--probe-seconds", "0.3", "--timeout", "2",
                      cache=tmp_path / "c.json")
    assert run.rc == 1
    assert "[p1]" in run.stderr and "P1" in run.stderr and "115200 8N1" in run.stderr


def test_encrypted_frames(tmp_path):
    recs = pick("encrypted", "kaifa", problem="encrypted", n=2)
    with Sender(frames_of(recs), E8) as line:
        run = monitor("--port", line.path, "--probe-seconds", "1.5", "--timeout", "3.5", cache=tmp_path / "c.json")
    assert run.rc == 1
    assert run.readings == []
    assert "(auto-detected)" in run.stderr  # the serial settings are right: frames pass their CRCs
    assert "[encrypted]" in run.stderr and "general-glo-ciphering" in run.stderr


def test_unsupported_list(tmp_path):
    recs = pick("foreign", problem="list id", max_len=140, n=2)
    reasons = [p.split(": ", 1)[1] for r in recs for p in decode_alone(frame(r))[1]]
    with Sender(frames_of(recs), E8) as line:
        run = monitor("--port", line.path, "--parity", "E", "--timeout", "3", cache=tmp_path / "c.json")
    assert run.rc == 1
    assert run.readings == []
    assert "[unsupported]" in run.stderr
    assert any(reason in run.stderr for reason in reasons), reasons  # names the list id it saw


# -- bad arguments and ports -----------------------------------------------------------------------


@pytest.mark.parametrize(("args", "words"), [
    (("--parity", "X"), "invalid choice"),
    (("--count", "0"), "--count"),
    (("--probe-seconds", "0"), "--probe-seconds"),
    (("--ct-ratio", "-2"), "--ct-ratio"),
    (("--timeout", "0"), "--timeout"),
])
def test_bad_arguments(tmp_path, args, words):
    run = monitor("--port", "/dev/null", *args, cache=tmp_path / "c.json")
    assert run.rc == 2
    assert words in run.stderr


def test_missing_port(tmp_path):
    run = monitor("--port", str(tmp_path / "ttyUSB9"), cache=tmp_path / "c.json")
    assert run.rc == 2
    assert "no such port" in run.stderr and "ttyUSB9" in run.stderr


def test_not_a_serial_port(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"")
    run = monitor("--port", str(path), cache=tmp_path / "c.json")
    assert run.rc == 2
    assert "not a serial port" in run.stderr


def test_permission_denied(tmp_path):
    with Sender([], E8) as line:
        os.chmod(line.line.path, 0)
        cmd = [sys.executable, "-m", "apm", "monitor", "--port", line.path, "--json", "--timeout", "2"]
        if os.geteuid() == 0:
            # root ignores permission bits; in a user namespace of its own it does not.
            if not shutil.which("unshare") or subprocess.run(["unshare", "--user", "true"]).returncode:
                pytest.skip("running as root without user namespaces")
            cmd = ["unshare", "--user", *cmd]
        env = {**os.environ, "APM_SERIAL_CACHE": str(tmp_path / "c.json")}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)
    assert proc.returncode == 2
    assert "permission denied" in proc.stderr and "dialout" in proc.stderr
