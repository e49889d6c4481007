"""`apm run` with OCPP chargers, as an installer sets it up: passwords from `apm ocpp password`, a charger
that connects with its own, and the refusals (no password on the LAN, a wrong password, an unknown id, a
malformed frame) while the device goes on balancing the good charger; `apm info` shows the link."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from apm.io.chargers.ocpp_policy import LIMIT_PROFILE_ID
from apm.io.chargers.ocpp_server import SUBPROTOCOL
from apm.io.mqtt.auth import Role, UserTable
from apm.io.storage import paths
from sim.ocpp_charger import SimOcppChargePoint
from tests.integration.test_ocpp import _handshake_refused, running, sim_charger
from tests.mqtt_broker import accepts, free_port

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


def config(listen: str, port: int) -> str:
    return f"""
serial = "APMOCPP01"
[grid]
network = "TN"
fuse_a = 63
[[chargers]]
id = "garage"
phases = 3
protocol = "ocpp"
[[chargers]]
id = "carport"
phases = 3
protocol = "ocpp"
ocpp_id = "CP-2"
[ocpp]
listen = "{listen}"
port = {port}
"""


@pytest.fixture(autouse=True)
def own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APM_FLASH", str(tmp_path / "state" / "flash.img"))
    monkeypatch.setenv("APM_SERIAL_CACHE", str(tmp_path / "state" / "serial.json"))
    UserTable().add("test-reader", Role("reader"))[0].save(paths.broker_users())


def apm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apm", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def flash(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    r = apm("flash", "write", str(cfg))
    assert r.returncode == 0, r.stderr


def test_an_ocpp_charger_without_a_password_is_refused_on_the_lan(tmp_path: Path) -> None:
    flash(tmp_path, config("0.0.0.0", free_port()))
    r = apm("run", "--sim", "aidon:3p-tn", "--broker-port", str(free_port()), "--duration", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "apm run: OCPP charger garage has no password: run `apm ocpp password garage` and give it to the "
        'charger (or set [ocpp] listen = "127.0.0.1" to run without)')


def test_passwords_are_kept_private_and_shown_again(tmp_path: Path) -> None:
    flash(tmp_path, config("0.0.0.0", free_port()))
    first = apm("ocpp", "password", "carport")  # the charger's id: stored under its ocpp_id
    assert first.returncode == 0, first.stderr
    password = first.stdout.strip()
    assert len(password) == 32 and int(password, 16) >= 0
    assert "charge point id CP-2" in first.stderr
    assert apm("ocpp", "password", "CP-2").stdout.strip() == password
    assert (paths.ocpp_passwords().stat().st_mode & 0o777) == 0o600
    assert apm("ocpp", "list").stdout.split() == ["CP-2"]
    renewed = apm("ocpp", "password", "carport", "--new").stdout.strip()
    assert renewed != password
    assert apm("ocpp", "password", "CP-2", "--remove").returncode == 0
    assert apm("ocpp", "list").stdout == ""
    warned = apm("ocpp", "password", "nobody")
    assert warned.returncode == 0 and "no OCPP charger 'nobody'" in warned.stderr


def test_refusals_leave_the_device_balancing_the_good_charger(tmp_path: Path) -> None:
    port = free_port()
    flash(tmp_path, config("0.0.0.0", port))
    passwords = {cid: apm("ocpp", "password", cid).stdout.strip() for cid in ("garage", "CP-2")}
    proc = subprocess.Popen([sys.executable, "-m", "apm", "run", "--sim", "kamstrup:3p-tn", "--speed", "10",
                             "--broker-port", str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"ws://127.0.0.1:{port}"

    async def main() -> None:
        deadline = time.monotonic() + 30
        while not accepts("127.0.0.1", port):  # another process: no event to wait on
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the central system never listened"
            await asyncio.sleep(0.05)
        good = SimOcppChargePoint(sim_charger("garage"), url, password=passwords["garage"], reconnect_s=0.2)
        async with running(good):
            await good.wait_for(lambda c: LIMIT_PROFILE_ID in c.store.profiles, timeout=30)
            # Refused before the websocket opens: an unknown id, no password, a wrong one.
            assert await _handshake_refused(url + "/intruder") == 404
            assert await _handshake_refused(url + "/CP-2") == 401
            wrong = "Basic " + base64.b64encode(b"CP-2:" + passwords["garage"].encode()).decode()
            assert await _handshake_refused(url + "/CP-2", {"Authorization": wrong}) == 401
            # In, with the right password, and then malformed: a CallError, the connection stays.
            token = base64.b64encode(f"CP-2:{passwords['CP-2']}".encode()).decode()
            async with connect(url + "/CP-2", subprotocols=[SUBPROTOCOL],
                               additional_headers={"Authorization": f"Basic {token}"}) as raw:
                await raw.send('[7, "m1", "no such message type"]')
                reply = json.loads(await asyncio.wait_for(raw.recv(), 10))
                assert reply[0] == 4 and reply[1] == "m1"
            # The good charger is still balanced: its limit keeps being renewed (every 30 device s = 3 s).
            n = good.profiles_received
            await good.wait_for(lambda c: c.profiles_received > n, timeout=30)
            assert good.connected.is_set()
            # apm info shows the link as the running device wrote it.
            deadline = time.monotonic() + 30
            while True:
                r = await asyncio.to_thread(apm, "info", "--json")
                links = json.loads(r.stdout).get("charger_links", {})
                if links.get("garage", {}).get("connected") and links["garage"].get("limit_a") is not None:
                    break
                assert time.monotonic() < deadline, r.stdout
                await asyncio.sleep(0.5)  # the status file is rewritten every 2 s
            assert links["garage"]["protocol"] == "ocpp" and links["garage"]["last_report_at"]
            assert links["carport"]["protocol"] == "ocpp"
            garage = next(line for line in json.loads(r.stdout)["chargers"] if line.startswith("garage"))
            assert "ocpp connected, last report" in garage and "limit" in garage

    try:
        asyncio.run(asyncio.wait_for(main(), 100))
        assert proc.poll() is None, "apm run went on"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "refused unknown charge point 'intruder'" in err
    assert "refused charge point 'CP-2': wrong or missing password" in err
