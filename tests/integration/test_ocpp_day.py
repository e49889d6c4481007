"""Issue 14's last acceptance point: one winter day through OCPP 1.6J chargers gives the same energy and
zero trips as the MQTT chargers, within 1 %.

`apm sim run` as a user types it, without --fast (the pipeline: the meter's frames on a pty, the device,
the broker, and the chargers behind their protocol, on a clock SPEED times real time), once with
``--protocol ocpp`` and once with ``--protocol mqtt``, side by side. The scenario is winter-tn-25a: two
chargers on a 25 A fuse (the most the protocol has to carry), and a Kamstrup meter with per-phase data
every 10 s only.

A run whose world fell behind the clock (a loaded machine) is not the day it claims to be: the test
fails on it rather than compare two different days.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mqtt_broker import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "sim" / "scenarios" / "winter-tn-25a.toml"
# 50x: the day takes 29 min of wall time, both runs side by side. At 100x (14.4 min) the day was the
# same (OCPP 121.14 kWh, MQTT 120.07 kWh, no trips) but on a machine shared with other jobs the world
# fell up to 12-23 simulated seconds behind the clock now and then, which the test refuses.
SPEED = 50
DAY_S = 86400
RENEW_S = 30  # ProfilePolicy.renew_s: the limits the device keeps renewing, in clock seconds

pytestmark = [pytest.mark.soak, pytest.mark.timeout(2700)]


def _start(protocol: str, report: Path, broker: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "apm", "sim", "run", str(SCENARIO), "--speed", str(SPEED), "--protocol", protocol,
         "--broker", broker, "--no-compare", "--report", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_winter_day_through_ocpp_gives_the_energy_of_mqtt(tmp_path: Path) -> None:
    # One mosquitto per run (both runs' device has the same serial, so the same client ids), out of the
    # simulation's process: the embedded broker would take a third of its CPU.
    brokers = {p: Mosquitto(tmp_path / f"broker-{p}") for p in ("ocpp", "mqtt")}
    runs = {p: (_start(p, tmp_path / f"{p}.json", brokers[p].url), tmp_path / f"{p}.json") for p in brokers}
    reports = {}
    try:
        for protocol, (proc, path) in runs.items():
            _, err = proc.communicate(timeout=2600)
            assert proc.returncode == 0, err
            reports[protocol] = json.loads(path.read_text())
            print(err.strip())  # the headline: shown with pytest -s, and in the failure report
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for broker in brokers.values():
            broker.kill()
    ocpp, mqtt = reports["ocpp"], reports["mqtt"]
    for name, r in reports.items():
        print(name, json.dumps({k: r[k] for k in ("energy_total_kwh", "trips", "setpoint_changes", "stale_s")}),
              json.dumps(r["pipeline"]))
    for r in (ocpp, mqtt):
        assert r["duration_s"] == DAY_S
        assert r["pipeline"]["faithful"], f"lagged: {r['pipeline']}"
        assert r["trips"] == 0, r["trip_events"]
        assert r["pipeline"]["frames_bad"] == 0
    # Every charger stayed on the protocol asked for: OCPP limits renewed every renew_s of the *clock*
    # (so validity and renewals scale with the speed) and never a reconnect; no MQTT setpoints at all.
    assert ocpp["pipeline"]["setpoints_received"] == 0
    assert ocpp["pipeline"]["ocpp_boots"] == 2
    assert ocpp["pipeline"]["ocpp_profiles_received"] >= 2 * DAY_S / RENEW_S
    assert mqtt["pipeline"]["setpoints_received"] > 0 and mqtt["pipeline"]["ocpp_profiles_received"] == 0
    e_ocpp, e_mqtt = ocpp["energy_total_kwh"], mqtt["energy_total_kwh"]
    assert e_mqtt > 50
    assert abs(e_ocpp - e_mqtt) <= 0.01 * e_mqtt, (e_ocpp, e_mqtt)
