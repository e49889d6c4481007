"""The device's web page in Debian's headless chromium (tools.cdp), against `apm run --sim`: the three line
currents shown and changing, a max current changed in the page reaching the flash image and the balancer,
logins off loopback (a wrong one refused, a reader may look but not change), and Smart eco (a car's plan
over the 15-minute price chart, its request changed in the page reaching the planner)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from apm.core.eco.prices import OSLO, PriceSeries, PriceSlot
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


def _start(tmp: Path, host: str, *more: str) -> Iterator[tuple[str, Path]]:
    env = _env(tmp)
    (tmp / "c.toml").write_text(CONFIG)
    image = tmp / "flash.img"
    subprocess.run([sys.executable, "-m", "apm", "flash", "write", str(tmp / "c.toml"), "--image", str(image)],
                   check=True, env=env, cwd=ROOT, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "apm", "run", "--sim", "kaifa:3p-it", "--speed", "10",
                             "--image", str(image), "--http", f"{host}:{port}", "--broker-port", "0", "--plain",
                             *more],
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


def _quarter_prices(path: Path) -> Path:
    """Two days of 15-minute prices from the hour before now (96 slots a day): dear in the evening,
    cheap at night."""
    start = datetime.now(OSLO).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    slots = []
    for k in range(2 * 96):
        t = start + timedelta(minutes=15 * k)
        h = t.hour + t.minute / 60
        slots.append(PriceSlot(t, t + timedelta(minutes=15), round(1.0 + 0.6 * math.cos((h - 18) / 12 * math.pi), 4)))
    path.write_text(PriceSeries("NO1", tuple(slots)).to_csv())
    return path


@pytest.fixture
def with_prices(tmp_path: Path, logins: tuple[Login, Login]) -> Iterator[tuple[str, Path]]:
    yield from _start(tmp_path, "127.0.0.1", "--prices", str(_quarter_prices(tmp_path / "prices.csv")))


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


def _state(url: str) -> dict:
    with urllib.request.urlopen(url + "api/state", timeout=10) as r:
        return dict(json.load(r))


def test_eco_shows_the_plan_over_the_prices_and_takes_a_request(with_prices: tuple[str, Path]) -> None:
    url, _ = with_prices
    form = ("(b => { b.querySelector('#eco-on-garage').checked = {on};"
            " b.querySelector('#eco-dep-garage').value = '{dep}'; b.querySelector('#eco-kwh-garage').value = '{kwh}';"
            " b.querySelector('#eco-save-garage').click(); })(document)")
    msg = "document.getElementById('eco-msg-garage').textContent"

    async def main() -> None:
        async with Browser.start(CHROMIUM) as browser:
            page = await browser.page()
            await page.size(390, 844, mobile=True)
            assert await page.goto(url) == 200
            # The price chart at once, a bar per 15-minute slot (12 hours at least), nothing planned yet.
            bars = await page.wait_for("(n => n >= 48 && n)(document.querySelectorAll('#eco-chart rect.eco-off').length)")
            assert await page.eval("document.querySelectorAll('#eco-chart rect.eco-on').length") == 0
            assert "no car asks" in await page.eval("document.getElementById('eco-state').textContent")

            # A request the planner refuses (negative energy): its message in the page.
            await page.eval(form.replace("{on}", "true").replace("{dep}", "06:00").replace("{kwh}", "-5"))
            err = await page.wait_for("(e => e.classList.contains('err') && e.textContent)"
                                      "(document.getElementById('eco-msg-garage'))")
            assert "energy" in err

            # Leave at 06:00 with 15 kWh: planned in the cheap night slots, the cost against at once.
            await page.eval(form.replace("{on}", "true").replace("{dep}", "06:00").replace("{kwh}", "15"))
            assert (await page.wait_for(f"{msg}.startsWith('planned') && {msg}")).startswith("planned: leave 06:00")
            cost = await page.wait_for("(t => t.includes('at once') && t)"
                                       "(document.getElementById('eco-cost-garage').textContent)")
            assert "saves" in cost
            assert await page.wait_for("document.querySelectorAll('#eco-chart rect.eco-on').length > 0")
            assert bars >= 48

            state = _state(url)["eco"]
            car = state["cars"][0]
            departure = datetime.fromisoformat(car["departure"]).astimezone(OSLO)
            assert car["on"] and car["energy_kwh"] == 15 and (departure.hour, departure.minute) == (6, 0)
            assert car["feasible"] and car["planned_kwh"] == pytest.approx(15, abs=0.05)
            assert car["cost_nok"] < car["at_once_nok"]
            # Every planned slot is a quarter of an hour before departure, on the chart's slots.
            starts = {p[0] for p in state["prices"]}
            assert all(e - s == 900 for s, e, *_ in state["prices"])
            assert all(s[0] in starts and s[1] <= departure.timestamp() for s in car["slots"])

            # Eco off: the request is dropped from the planner, the chart shows nothing planned.
            await page.eval(form.replace("{on}", "false").replace("{dep}", "06:00").replace("{kwh}", "15"))
            await page.wait_for(f"{msg} === 'eco off'")
            await page.wait_for("document.querySelectorAll('#eco-chart rect.eco-on').length === 0")
            assert _state(url)["eco"]["cars"][0]["on"] is False

    asyncio.run(main())
