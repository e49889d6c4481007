"""`apm decode` and `python -m han decode` as a user runs them: subprocesses on real files."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest

from tests.vectors import SCHEMA, frame, mismatches, records

CORE = records("core")
BAD = records("bad-crc")
VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))


def run(*args: str, stdin: bytes | None = None, module: str = "apm") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, "decode", *args], input=stdin,
                          capture_output=True, timeout=60)


@pytest.fixture
def hex_file(tmp_path):
    lines = ["# Kaifa, Aidon and Kamstrup frames, one per line"]
    for rec in CORE:
        spaced = " ".join(rec["hex"][i : i + 2] for i in range(0, len(rec["hex"]), 2))
        lines.append(f"{spaced}  # {rec['id']}")
    path = tmp_path / "core.hex"
    path.write_text("\n".join(lines) + "\n")
    return path


def _readings(proc) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def test_hex_file_with_comments(hex_file):
    proc = run(str(hex_file))
    assert proc.returncode == 0, proc.stderr
    got = _readings(proc)
    assert len(got) == len(CORE)
    for rec, reading in zip(CORE, got, strict=True):
        VALIDATOR.validate(reading)
        assert mismatches(rec["expected"], reading) == [], rec["id"]
    assert f"{len(CORE)} readings" in proc.stderr.decode()


def test_raw_binary_from_stdin_via_python_m_han():
    stream = b"".join(frame(r) for r in CORE[:10])
    proc = run("-", stdin=stream, module="han")
    assert proc.returncode == 0, proc.stderr
    assert len(_readings(proc)) == 10


def test_forced_format(tmp_path):
    path = tmp_path / "dump.bin"
    path.write_bytes(frame(CORE[0]))
    assert len(_readings(run("--format", "bin", str(path)))) == 1
    proc = run("--format", "hex", str(path))
    assert proc.returncode == 2
    assert b"not a hex digit" in proc.stderr


def test_bad_frames_are_reported_with_their_line_and_the_rest_decodes(tmp_path):
    lines = [CORE[0]["hex"], BAD[0]["hex"], "zz" * 0 + CORE[1]["hex"]]
    path = tmp_path / "mixed.hex"
    path.write_text("\n".join(lines) + "\n")
    proc = run(str(path))
    assert proc.returncode == 0
    assert len(_readings(proc)) == 2
    err = proc.stderr.decode()
    assert "line 2" in err and "frame" in err


def test_ct_ratio_scales_current_power_and_energy_not_voltage(tmp_path):
    rec = next(r for r in CORE if r["list"] == 3 and r["meter"] == "kamstrup")
    path = tmp_path / "one.hex"
    path.write_text(rec["hex"])
    plain = _readings(run(str(path)))[0]
    scaled = _readings(run("--ct-ratio", "40", str(path)))[0]
    for key in ("current_l1_a", "active_import_w", "active_import_wh"):
        assert scaled[key] == pytest.approx(plain[key] * 40)
    assert scaled["voltage_l1_v"] == plain["voltage_l1_v"]


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (["/no/such/file"], None, 2, b"cannot read /no/such/file"),
        (["-"], b"\x00\x01garbage without frames", 1, b"nothing could be decoded"),
        (["--ct-ratio", "0", "-"], b"", 2, b"--ct-ratio must be positive"),
        (["--format", "xml", "-"], b"", 2, b"invalid choice"),
    ],
)
def test_bad_input_is_named_and_exits_non_zero(args, stdin, code, message):
    proc = run(*args, stdin=stdin)
    assert proc.returncode == code
    assert message in proc.stderr
    assert proc.stdout == b""


def test_odd_hex_is_a_precise_error(tmp_path):
    path = tmp_path / "odd.hex"
    path.write_text("7ea0\n7ea\n")
    proc = run(str(path))
    assert proc.returncode == 1  # nothing in it decodes
    assert b"line 2: not hex (odd number of hex digits (3)): line skipped" in proc.stderr


@pytest.mark.parametrize("cut", [1, 2, 7])
def test_a_hex_dump_whose_last_line_is_cut_decodes_what_is_intact(hex_file, cut):
    lines = hex_file.read_text().splitlines()
    lines[-1] = lines[-1].split("#")[0].rstrip()[:-cut]  # the logger stopped mid-line, without a newline
    hex_file.write_text("\n".join(lines))
    proc = run(str(hex_file))
    assert proc.returncode == 0, proc.stderr
    got = _readings(proc)
    assert len(got) == len(CORE) - 1
    assert got == _readings(run(str(hex_file), "-q"))
    err = proc.stderr.decode()
    last = len(CORE) + 1  # the comment line, then one line per frame
    assert f"line {last}" in err, err


def test_a_continuous_hex_dump_on_one_long_line_streams(tmp_path):
    stream = b"".join(frame(r) for r in CORE)
    text = stream.hex()
    path = tmp_path / "one-line.hex"
    path.write_text(text[:1001] + "  " + text[1001:] + "  # all frames on one line\n")
    proc = run(str(path))
    assert proc.returncode == 0, proc.stderr
    assert len(_readings(proc)) == len(CORE)
