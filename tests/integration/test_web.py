"""The device's web page in Debian's headless chromium (tools.cdp), against `apm run --sim`: the three line
currents shown and changing, a max current changed in the page reaching the flash image and the balancer,
and logins off loopback (a wrong one refused, a reader may look but not change)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from apm.io.mqtt.auth import Login, Role, UserTable
from apm.io.storage.flash import Flash
from tests.mqtt_broker import accepts, free_port
from tools.cdp import Browser, find_chromium

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = find_chromium()
# Skipped only when the browser is missing (`make system-deps` installs it), and said so.
pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")]

CONFIG = """
serial = "APMWEB01"
[grid]
network = "IT"
fuse_a = 40
[[chargers]]
id = "garage"
phases = 3
"""
LINES = ("L1", "L2", "L3")


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "APM_BROKER_USERS": str(tmp / "users.json"),
            "APM_SERIAL_CACHE": str(tmp / "serial.json"), "XDG_STATE_HOME": str(tmp / "state"),
            "XDG_DATA_HOME": str(tmp / "data"), "APM_FLASH": str(tmp / "flash.img")}


@pytest.fixture
def logins(tmp_path: Path) -> tuple[Login, Login]:
    """The device's login and a reader's, in the users file `apm run` reads."""
    table, device = UserTable().ensure_device()
    table, reader = table.add("kitchen", Role("reader"))
    table.save(tmp_path / "users.json")
    return device, reader


def _start(tmp: Path, host: str) -> Iterator[tuple[str, Path]]:
    env = _env(tmp)
    (tmp / "c.toml").write_text(CONFIG)
    image = tmp / "flash.img"
    subprocess.run([sys.executable, "-m", "apm", "flash", "write", str(tmp / "c.toml"), "--image", str(image)],
                   check=True, env=env, cwd=ROOT, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "apm", "run", "--sim", "kaifa:3p-it", "--speed", "10",
                             "--image", str(image), "--http", f"{host}:{port}", "--broker-port", "0", "--plain"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not accepts(host, port):
            if proc.poll() is not None:
                raise AssertionError(f"apm run ended ({proc.returncode}): {proc.communicate()[1]}")
            assert time.monotonic() < deadline, "the web page never listened"
            time.sleep(0.05)
        yield f"http://{host}:{port}/", image
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.fixture
def local(tmp_path: Path, logins: tuple[Login, Login]) -> Iterator[tuple[str, Path]]:
    yield from _start(tmp_path, "127.0.0.1")


@pytest.fixture
def lan(tmp_path: Path, logins: tuple[Login, Login]) -> Iterator[tuple[str, Path]]:
    """Listening on 127.0.0.2: not 127.0.0.1, so the page asks for a login as on the LAN."""
    yield from _start(tmp_path, "127.0.0.2")


def _currents_js() -> str:
    return "[" + ",".join(f"document.getElementById('cur-{n}')?.textContent" for n in LINES) + "]"


def test_page_shows_the_lines_live_and_changes_max_current(local: tuple[str, Path]) -> None:
    url, image = local

    async def main() -> None:
        async with Browser.start(CHROMIUM) as browser:
            page = await browser.page()
            await page.size(390, 844, mobile=True)
            assert await page.goto(url) == 200
            # All three line currents shown (IT: the Kaifa reports I2 too), as numbers in amperes.
            first = await page.wait_for(
                f"(v => v.every(t => /^\\d+\\.\\d A$/.test(t || '')) && v)({_currents_js()})")
            # ... and they change without a reload as the simulated household steps.
            await page.wait_for(f"JSON.stringify({_currents_js()}) !== {json.dumps(json.dumps(first))}", 60)

            # A value the schema refuses: its message in the page, nothing stored.
            await page.eval("document.getElementById('max-garage').value = '99';"
                            "document.getElementById('save-garage').click()")
            err = await page.wait_for("(e => e.classList.contains('err') && e.textContent)"
                                      "(document.getElementById('msg-garage'))")
            assert "max_a" in err and "6..80" in err
            assert Flash(image).read().config.chargers[0].max_a == 32

            await page.eval("document.getElementById('max-garage').value = '16';"
                            "document.getElementById('save-garage').click()")
            await page.wait_for("document.getElementById('msg-garage').textContent.startsWith('saved')")
            # The balancer's cap, as the page shows it from the running Controller.
            await page.wait_for("document.getElementById('cap-garage').textContent === 'now 16 A'")

    asyncio.run(main())
    stored = Flash(image).read().config
    assert stored is not None and stored.chargers[0].max_a == 16
    assert stored.broker.username is None  # the run's own broker login is not written into the image


def _status(url: str, auth: tuple[str, str] | None, data: bytes | None = None) -> int:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_off_loopback_a_login_is_needed(lan: tuple[str, Path], logins: tuple[Login, Login]) -> None:
    url, image = lan
    device, reader = logins
    wrong = "Basic " + base64.b64encode(f"kitchen:{reader.password}x".encode()).decode()
    good = "Basic " + base64.b64encode(f"kitchen:{reader.password}".encode()).decode()

    async def main() -> None:
        async with Browser.start(CHROMIUM) as browser:
            page = await browser.page()
            assert await page.goto(url) == 401  # no login
            await page.headers({"Authorization": wrong})
            assert await page.goto(url) == 401
            await page.headers({"Authorization": good})
            assert await page.goto(url) == 200
            await page.wait_for("/^\\d+\\.\\d A$/.test(document.getElementById('cur-L1')?.textContent || '')")
            # A reader may look, not change.
            await page.eval("document.getElementById('max-garage').value = '20';"
                            "document.getElementById('save-garage').click()")
            err = await page.wait_for("(e => e.classList.contains('err') && e.textContent)"
                                      "(document.getElementById('msg-garage'))")
            assert "device" in err

    asyncio.run(main())
    body = json.dumps({"max_a": 20}).encode()
    assert _status(url + "api/state", None) == 401
    assert _status(url + "api/chargers/garage", ("kitchen", reader.password), body) == 403
    assert _status(url + "api/chargers/garage", (device.username, device.password), body) == 200
    stored = Flash(image).read().config
    assert stored is not None and stored.chargers[0].max_a == 20
