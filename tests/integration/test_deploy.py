"""The files shipped for a Raspberry Pi: the systemd unit and the udev rule naming the M-Bus adapter."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def unit() -> dict[str, dict[str, list[str]]]:
    """The unit file as section -> key -> values (a key may repeat, as Environment= does)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (DEPLOY / "apm.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def test_unit_runs_the_device_with_its_image_in_the_state_directory():
    u = unit()
    service = u["Service"]
    assert service["ExecStart"] == ["/opt/apm/bin/apm run"]
    assert service["StateDirectory"] == ["apm"]
    assert "APM_FLASH=/var/lib/apm/flash.img" in service["Environment"]
    assert service["Restart"] == ["always"]
    assert service["SupplementaryGroups"] == ["dialout"]
    assert u["Install"]["WantedBy"] == ["multi-user.target"]
    assert u["Unit"]["StartLimitIntervalSec"] == ["0"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_except_for_the_missing_binary(tmp_path):
    proc = subprocess.run(["systemd-analyze", "verify", str(DEPLOY / "apm.service")], capture_output=True, text=True)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.strip() and "/opt/apm/bin/apm" not in line]
    assert problems == []


RULE = re.compile(r'SUBSYSTEM=="tty", ATTRS\{idVendor\}=="([0-9a-f]{4})", ATTRS\{idProduct\}=="([0-9a-f]{4})", '
                  r'SYMLINK\+="ttyAPM", GROUP="dialout", MODE="0660", TAG\+="systemd"')


def test_udev_rule_names_common_usb_serial_adapters_tty_apm():
    rules = [line for line in (DEPLOY / "99-apm-mbus.rules").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    ids = set()
    for line in rules:
        m = RULE.fullmatch(line)
        assert m, line
        ids.add(m.groups())
    # FTDI FT232R, Silicon Labs CP210x, WCH CH340
    assert {("0403", "6001"), ("10c4", "ea60"), ("1a86", "7523")} <= ids
