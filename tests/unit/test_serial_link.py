"""apm.io.serial.port without a port: settings, candidates, the remembered-settings file, diagnoses, messages."""

from __future__ import annotations

import errno
import json

import pytest
import serial

from apm.io.serial.port import (
    VENDOR_SETTINGS,
    Attempt,
    SerialSettings,
    SettingsCache,
    candidates,
    default_cache_path,
    diagnose,
    port_error_message,
)

E = SerialSettings(2400, "E")
N = SerialSettings(2400, "N")


def test_vendor_defaults():
    assert str(VENDOR_SETTINGS["aidon"]) == str(VENDOR_SETTINGS["kaifa"]) == "2400 8E1"
    assert str(VENDOR_SETTINGS["kamstrup"]) == "2400 8N1"
    with pytest.raises(ValueError, match="parity"):
        SerialSettings(2400, "M")


def test_candidates_start_with_remembered_then_grid_without_repeats():
    order = candidates(N, None)
    assert order[0] == N
    assert [str(s) for s in order[1:4]] == ["2400 8E1", "2400 8O1", "9600 8E1"]
    assert len(order) == len(set(order)) == 9
    assert [s.baud for s in candidates(bauds=(9600,))] == [9600] * 3


def test_cache_remembers_per_port_and_survives_a_broken_file(tmp_path):
    path = tmp_path / "sub" / "serial.json"
    cache = SettingsCache(path)
    assert cache.get("/dev/ttyUSB0") is None
    cache.put("/dev/ttyUSB0", N)
    cache.put("/dev/ttyUSB1", E)
    assert SettingsCache(path).get("/dev/ttyUSB0") == N
    assert SettingsCache(path).get("/dev/ttyUSB1") == E
    doc = json.loads(path.read_text())
    assert doc["ports"]["/dev/ttyUSB0"]["parity"] == "N"
    path.write_text("{not json")
    assert cache.get("/dev/ttyUSB0") is None
    cache.put("/dev/ttyUSB0", E)  # a broken file is replaced, not fatal
    assert cache.get("/dev/ttyUSB0") == E
    path.write_text(json.dumps({"ports": {"/dev/ttyUSB0": {"baud": 2400, "parity": "Q"}}}))
    assert cache.get("/dev/ttyUSB0") is None


def test_default_cache_path(monkeypatch, tmp_path):
    monkeypatch.delenv("APM_SERIAL_CACHE", raising=False)
    monkeypatch.delenv("APM_FLASH", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_cache_path() == tmp_path / "apm" / "serial.json"  # state, not cache (apm.io.storage.paths)
    monkeypatch.setenv("APM_FLASH", str(tmp_path / "flash.img"))
    assert default_cache_path() == tmp_path / "flash.img.serial.json"
    monkeypatch.setenv("APM_SERIAL_CACHE", str(tmp_path / "x.json"))
    assert default_cache_path() == tmp_path / "x.json"


def attempt(settings=E, bytes_in=0, frames_ok=0, readings=0, problems=(), sample=b"") -> Attempt:
    return Attempt(settings, 1.0, bytes_in, frames_ok, 0, readings, tuple(problems), sample)


def test_diagnose_nothing_when_readings():
    assert diagnose([attempt(bytes_in=100, frames_ok=2, readings=2)], "/dev/x") is None


def test_diagnose_silent():
    d = diagnose([attempt(E), attempt(N)], "/dev/ttyUSB0")
    assert d.code == "silent"
    for words in ("grid company", "HAN module", "external power", "/dev/ttyUSB0"):
        assert words in d.message


def test_diagnose_garbage_and_p1():
    d = diagnose([attempt(E, bytes_in=500), attempt(N, bytes_in=480)], "/dev/x")
    assert d.code == "no-frames"
    assert "2400 8E1, 2400 8N1" in d.message and "wrong" in d.message
    assert "without --parity" in diagnose([attempt(E, bytes_in=5)], "/dev/x", auto=False).message
    p1 = b"/KFM5KAIFA-METER\r\n\r\n1-0:1.8.0(000336.420*kWh)\r\n1-0:2.8.0(000000.000*kWh)\r\n!D770\r\n"
    d = diagnose([attempt(E, bytes_in=500), attempt(SerialSettings(115200, "N"), bytes_in=700, sample=p1)], "/dev/x")
    assert d.code == "p1"
    assert "115200 8N1" in d.message


def test_diagnose_decoder_problems_name_the_reason():
    reason = "list id 'ISK1020784605887' (not KFM_001)"
    d = diagnose([attempt(E, 900, 3, problems=[("unsupported", reason, 3)])], "/dev/x")
    assert (d.code, d.settings) == ("unsupported", E)
    assert reason in d.message
    enc = "ciphered APDU (general-glo-ciphering, tag 0xDB); no key configured"
    d = diagnose([attempt(N, 40), attempt(E, 900, 4, problems=[("encrypted", enc, 3), ("unsupported", "x", 1)])],
                 "/dev/x")
    assert d.code == "encrypted"
    assert enc in d.message
    assert diagnose([attempt(E, 300, 1)], "/dev/x").code == "few-frames"


@pytest.mark.parametrize(("code", "text", "words"), [
    (errno.ENOENT, "No such file or directory", "no such port"),
    (errno.EACCES, "Permission denied", "dialout"),
    (errno.EBUSY, "Device or resource busy", "busy"),
])
def test_port_error_messages(code, text, words):
    # As pyserial raises them: SerialException(errno, "could not open port ...: [Errno n] ...")
    exc = serial.SerialException(code, f"could not open port /dev/ttyUSB9: [Errno {code}] {text}: '/dev/ttyUSB9'")
    assert words in port_error_message("/dev/ttyUSB9", exc)


def test_attempts_with_the_same_settings_merge():
    a = attempt(E, 100, 1, problems=[("unsupported", "x", 1)], sample=b"first")
    b = attempt(E, 50, 2, problems=[("unsupported", "x", 2), ("encrypted", "y", 1)], sample=b"second")
    m = a.merge(b)
    assert (m.seconds, m.bytes_in, m.frames_ok, m.sample) == (2.0, 150, 3, b"first")
    assert m.problems == (("unsupported", "x", 3), ("encrypted", "y", 1))
