"""`apm run` as a subprocess: the demo, a replay, a simulated meter; clean stops; bad input."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from apm.io.mqtt.auth import Login, Role, UserTable
from apm.io.storage import paths
from tests.mqtt_broker import Observer, accepts, free_port

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
DUMPS = ROOT / "examples" / "dumps"
CONFIG = """
serial = "APMRUN01"
[grid]
network = "IT"
fuse_a = 40
[[chargers]]
id = "garage"
phases = 3
"""


READER = Login("test-reader", "")


@pytest.fixture(autouse=True)
def own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No flash image, serial-settings cache or broker users of the user's are read or written; the
    embedded broker has a reader for the test (it lets nobody in anonymously)."""
    global READER
    monkeypatch.setenv("APM_FLASH", str(tmp_path / "state" / "flash.img"))
    monkeypatch.setenv("APM_SERIAL_CACHE", str(tmp_path / "state" / "serial.json"))
    table, READER = UserTable().add("test-reader", Role("reader"))
    table.save(paths.broker_users())


def reader_url(port: int) -> str:
    """The embedded broker at ``port``, as the test's reader."""
    return f"mqtt://{READER.username}:{READER.password}@127.0.0.1:{port}"


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def apm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apm", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env())


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "apm", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env())


def wait_port(port: int, proc: subprocess.Popen[str], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not accepts("127.0.0.1", port):
        if proc.poll() is not None:
            raise AssertionError(f"apm run ended early ({proc.returncode}): {proc.communicate()[1]}")
        assert time.monotonic() < deadline, "the embedded broker never listened"
        time.sleep(0.05)


def observe(port: int, proc: subprocess.Popen[str], serial: str, seconds: float) -> Observer:
    """Watch the device's whole topic tree on the embedded broker until it ends (at most ``seconds``)."""

    async def main() -> Observer:
        obs = Observer(reader_url(port), f"apm/{serial}/#", client_id="test-observer")
        async with obs:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and proc.poll() is None:
                await asyncio.sleep(0.05)
        return obs

    return asyncio.run(main())


def run_observed(args: list[str], serial: str, seconds: float) -> tuple[int, Observer, str, str]:
    """`apm run ARGS --broker-port P`, watched on its embedded broker until it ends: status, observer, out, err."""
    port = free_port()
    proc = start("run", *args, "--broker-port", str(port))
    try:
        wait_port(port, proc)
        obs = observe(port, proc, serial, seconds)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    return proc.returncode, obs, out, err


class StderrLines:
    """The lines a process writes to stderr, collected by a thread, so a test can wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> None:
        """Until a line contains ``text``; the timeout only matters when the device is broken."""
        with self._changed:
            if not self._changed.wait_for(lambda: any(text in line for line in self.lines), timeout):
                raise AssertionError(f"no {text!r} on stderr within {timeout} s: {''.join(self.lines[-20:])}")

    def text(self) -> str:
        """Everything, once the process has ended."""
        self._thread.join(timeout=20)
        return "".join(self.lines)


def topics(obs: Observer, serial: str, kind: str) -> list[bytes]:
    prefix = f"apm/{serial}/{kind}"
    return [p for t, p, _ in obs.messages if t.startswith(prefix)]


def test_demo_runs_the_whole_product_and_stops_after_its_duration() -> None:
    status, obs, out, err = run_observed(["--demo", "--duration", "5", "--speed", "10"], "APMDEMO01", 60)
    assert status == 0, err
    readings = [json.loads(p) for p in topics(obs, "APMDEMO01", "reading/")]
    assert {r["list"] for r in readings} >= {1, 2}
    sent = [(t.split("/")[3], json.loads(p)) for t, p, _ in obs.messages if t.endswith("/setpoint")]
    assert {c for c, _ in sent} == {"garage", "driveway"}
    # The demo's subscription is valid: every charger is protected from the meter's data, and the
    # gate never chose the fixed current. (Around start and stop the meter data can be missing or
    # stale for a moment, which is the "fixed: ... meter data" fallback, not the gate.)
    assert {c for c, p in sent if p["mode"] == "protect"} == {"garage", "driveway"}
    assert all(p["mode"] == "protect" or p["mode"].startswith("fixed: ") for _, p in sent)
    states = [json.loads(p) for p in topics(obs, "APMDEMO01", "charger/garage/state")]
    assert any(s["state"] in ("connected", "charging") for s in states)
    assert topics(obs, "APMDEMO01", "headroom")
    # Each charger's link for Home Assistant (apm.services.links), from the runtime's wiring.
    links = {t.split("/")[3]: json.loads(p) for t, p, _ in obs.messages if t.endswith("/link")}
    assert set(links) == {"garage", "driveway"}
    assert all(link["protocol"] in ("ocpp", "goe", "mqtt") for link in links.values())
    assert "stopped after" in err and "readings" in err and out == ""
    assert " ERROR " not in err and " WARNING " not in err  # a clean start says nothing alarming


def test_ctrl_c_ends_the_demo_cleanly_and_says_offline() -> None:
    port = free_port()
    proc = start("run", "--demo", "--speed", "10", "--broker-port", str(port))
    try:
        wait_port(port, proc)

        async def main() -> Observer:
            async with Observer(reader_url(port), "apm/APMDEMO01/#", client_id="ctrl-c") as obs:
                await obs.wait_until(lambda: any(t.endswith("/setpoint") for t, _, _ in obs.messages)
                                     and any("/reading/" in t for t, _, _ in obs.messages), timeout=15)
                proc.send_signal(signal.SIGINT)
                await obs.wait_until(lambda: obs.last("apm/APMDEMO01/status") == b"offline", timeout=10)
            return obs

        asyncio.run(main())
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped after" in err


def test_sigterm_before_any_data_still_ends_cleanly() -> None:
    """A service manager stopping the device at once is not a failure, though it says what it saw."""
    port = free_port()
    proc = start("run", "--demo", "--broker-port", str(port))
    try:
        wait_port(port, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "no HAN data was decoded" in err and "Traceback" not in err


def test_replay_publishes_readings_and_setpoints_and_the_status_apm_info_reads(tmp_path: Path) -> None:
    config = tmp_path / "apm.toml"
    config.write_text(CONFIG, encoding="utf-8")
    image = tmp_path / "flash.img"
    status, obs, _, err = run_observed(["--replay", str(DUMPS / "aidon-3p-it.hex"), "--speed", "40", "--config",
                                        str(config), "--image", str(image), "--plain"], "APMRUN01", 60)
    assert status == 0, err
    assert "replay of" in err and "finished" in err
    readings = [json.loads(p) for p in topics(obs, "APMRUN01", "reading/")]
    assert len(readings) >= 20 and {r["meter"] for r in readings} == {"aidon"}
    heads = [json.loads(p) for p in topics(obs, "APMRUN01", "headroom")]
    assert heads and heads[-1]["l2_a"] is not None  # IT: I2 bounded, not missing
    setpoints = [json.loads(p) for p in topics(obs, "APMRUN01", "charger/garage/setpoint")]
    # No token in the image: the balancer works without meter data (the fixed current); no EV reports.
    assert setpoints and setpoints[-1]["mode"] == "fixed" and setpoints[-1]["current_a"] == 0.0
    subscription = json.loads(topics(obs, "APMRUN01", "subscription")[-1])
    assert subscription["state"] == "none" and subscription["granted"] == []
    status = json.loads(Path(f"{image}.status.json").read_text())
    assert status["meter"] == "aidon" and status["readings"]["list2"] >= 10
    info = apm("info", "--image", str(image), "--json")
    assert info.returncode == 0, info.stderr
    doc = json.loads(info.stdout)
    # the device has ended: its last word "fresh" (and a last frame ahead of now, at --speed 40) is not repeated
    assert doc["detected_meter"] == "aidon" and doc["han_state"].startswith("stale: the device is not running")
    # An Aidon IT meter does not report I2, and the charger would put a 1-phase EV on L1-L2: advice
    assert "installation advice: charger garage: a 1-phase EV draws between grid L1 and L2" in err
    assert len(status["advice"]) == 1 and doc["advice"] == status["advice"]


def test_simulated_meter_on_a_pty() -> None:
    port = free_port()
    proc = start("run", "--sim", "kamstrup:3p-tn", "--speed", "10", "--broker-port", str(port))
    stderr = StderrLines(proc)
    try:
        stderr.wait_for("HAN data arriving", timeout=60)  # stopped once frames came through, not after a time
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    finally:
        proc.kill()
    err = stderr.text()
    assert proc.returncode == 0, err
    assert "simulated kamstrup 3p-tn meter on /dev/pts/" in err
    assert "list 2:" in err
    assert "never retrieved" not in err and "Traceback" not in err  # shutdown awaited every task


def test_an_unreachable_broker_does_not_stop_the_device(tmp_path: Path) -> None:
    config = tmp_path / "apm.toml"
    config.write_text(CONFIG, encoding="utf-8")
    nobody = free_port()
    # No --duration: the replay ends by itself, so the count of readings does not depend on the machine.
    r = apm("run", "--replay", str(DUMPS / "kaifa-3p-it.hex"), "--speed", "30", "--config", str(config),
            "--broker", f"mqtt://127.0.0.1:{nobody}", "--outbox", str(tmp_path / "o.jsonl"))
    assert r.returncode == 1, r.stderr
    assert f"never reached the broker at mqtt://127.0.0.1:{nobody}" in r.stderr
    assert "the device kept reading the meter" in r.stderr
    assert "installation advice" not in r.stderr  # the Kaifa MA304H3E reports I2
    summary = next(line for line in r.stderr.splitlines() if "stopped after" in line)
    assert int(summary.split("stopped after")[1].split(": ")[1].split()[0]) > 10  # readings decoded meanwhile


@pytest.mark.parametrize(("args", "status", "message"), [
    (["--replay", "no-such-dump.hex"], 2, "cannot read no-such-dump.hex"),
    (["--sim", "landis:3p"], 2, "--sim 'landis:3p': VENDOR:KIND"),
    (["--port", "/dev/ttyNOSUCH0"], 2, "no such port /dev/ttyNOSUCH0"),
    (["--demo", "--config", "x.toml"], 2, "--demo brings its own installation"),
    (["--demo", "--broker", "http://x"], 2, "is not a broker URL"),
    (["--demo", "--broker-port", "70000"], 2, "--broker-port 70000 is out of range"),
    ([], 2, "no meter: give --port DEV"),
])
def test_bad_input(args: list[str], status: int, message: str, tmp_path: Path) -> None:
    r = apm("run", *args, "--duration", "1")
    assert r.returncode == status, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_configuration_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nfuse_a = 1000\n", encoding="utf-8")
    r = apm("run", "--config", str(bad), "--sim", "aidon:3p-tn", "--duration", "1")
    assert r.returncode == 2
    assert "grid.fuse_a: 1000 A is out of range (6..400 A)" in r.stderr
    r = apm("run", "--config", str(tmp_path / "none.toml"), "--sim", "aidon:3p-tn")
    assert r.returncode == 2 and "none.toml: no such file" in r.stderr


def test_embedded_broker_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = apm("run", "--sim", "aidon:3p-tn", "--broker-port", str(port), "--duration", "1")
    assert r.returncode == 2
    assert f"127.0.0.1:{port} is in use" in r.stderr


def test_a_missing_port_is_waited_for_while_the_balancer_runs(tmp_path: Path) -> None:
    """The service case: the configuration names the adapter, which is not plugged in (yet)."""
    config = tmp_path / "apm.toml"
    config.write_text('port = "/dev/ttyAPMMISSING"\n' + CONFIG, encoding="utf-8")
    r = apm("run", "--config", str(config), "--broker-port", str(free_port()), "--duration", "2.5")
    assert r.returncode == 1, r.stderr  # ran, but no HAN data
    assert "no such port /dev/ttyAPMMISSING" in r.stderr and "retrying every 2 s" in r.stderr
    assert r.stderr.count("no such port /dev/ttyAPMMISSING") == 1  # said once, not at every retry
    summary = next(line for line in r.stderr.splitlines() if "stopped after" in line)
    assert " 0 setpoints" not in summary  # the balancer ran meanwhile, on the fixed current


def test_a_port_that_goes_away_is_reported_and_the_device_keeps_running(tmp_path: Path) -> None:
    from datetime import datetime

    from apm.io.serial.port import SerialSettings
    from sim.frames import MeterSpec
    from sim.meter import Meter
    from sim.serial_line import VirtualSerialPort

    t0 = datetime.fromisoformat("2025-01-15T10:00:30+01:00")
    frames = [p.frame for p in Meter(MeterSpec("aidon", "3p-it"), t0).pushes_between(0, 600)]
    line = VirtualSerialPort(SerialSettings(2400, "E"), pace=10)
    unplugged = threading.Event()

    def meter() -> None:  # a frame every 0.25 s until the adapter is unplugged
        for frame in frames:
            if unplugged.wait(0.25):
                return
            line.write(frame)

    config = tmp_path / "apm.toml"
    config.write_text(f'port = "{line.path}"\n' + CONFIG, encoding="utf-8")
    port = free_port()
    proc = start("run", "--config", str(config), "--broker-port", str(port), "--probe-seconds", "2")
    stderr = StderrLines(proc)
    sender = threading.Thread(target=meter)
    sender.start()
    try:
        wait_port(port, proc, timeout=60)

        async def readings() -> None:  # unplugged once the device has decoded some frames, not after a time
            async with Observer(reader_url(port), "apm/APMRUN01/reading/#", client_id="unplug") as obs:
                await obs.wait_until(lambda: len(obs.messages) >= 6, timeout=60)

        asyncio.run(readings())
    finally:
        unplugged.set()
        sender.join()
        line.close()
    try:
        stderr.wait_for("waiting for the port to come back", timeout=60)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    finally:
        proc.kill()
    err = stderr.text()
    assert proc.returncode == 0, err
    assert "at 2400 8E1 (auto-detected)" in err
    assert "waiting for the port to come back" in err
    assert "Traceback" not in err
    summary = next(line for line in err.splitlines() if "stopped after" in line)
    assert int(summary.split("stopped after")[1].split(": ")[1].split()[0]) >= 5


def test_smart_eco_requests_are_planned_and_the_plan_is_published_and_followed() -> None:
    """The demo plans an eco request over MQTT and publishes the plan, retained, with its cost."""
    port = free_port()
    proc = start("run", "--demo", "--speed", "5", "--broker-port", str(port))
    try:
        wait_port(port, proc)

        async def main() -> Observer:
            url = reader_url(port)
            async with Observer(url, "apm/APMDEMO01/#", client_id="eco-test") as obs:
                await obs.wait_until(lambda: any("/reading/" in t for t, _, _ in obs.messages), timeout=20)
                departure = (datetime.now().astimezone() + timedelta(hours=10)).isoformat()
                async with aiomqtt.Client("127.0.0.1", port, identifier="eco-request",
                                          username=READER.username, password=READER.password) as c:
                    await c.publish("apm/APMDEMO01/eco/request", json.dumps(
                        {"charger": "garage", "departure": departure, "energy_kwh": 5}).encode(), qos=1)
                await obs.wait_until(lambda: bool(obs.last("apm/APMDEMO01/eco/plan")), timeout=20)
            return obs

        obs = asyncio.run(main())
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
        proc.kill()
    plan = json.loads(obs.last("apm/APMDEMO01/eco/plan"))
    assert plan["expected_cost_nok"] > 0
    assert [c["charger"]["id"] for c in plan["chargers"]] == ["garage"]
