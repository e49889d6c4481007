"""A second price service when the first fails: the device's feed and `apm eco plan` against two real local
HTTP servers, the first failing, the second answering with 15-minute prices (96 slots a day). The two are of
the same format (tests.integration.test_eco_price_api.PriceServer) or, as in use, independent services of
different formats: hvakosterstrommen.no's and Nord Pool's data portal (test_nordpool_api.NordPoolServer)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from apm.core.eco.prices import OSLO
from apm.io.http.fallback import FallbackSource, price_source
from apm.io.http.prices import NordPoolClient, PriceApiError, PriceClient, PriceFeed
from tests.integration.test_eco_cli import NOW, ROOT, apm
from tests.integration.test_eco_price_api import TODAY, TOMORROW, PriceServer, no_sleep
from tests.integration.test_nordpool_api import NordPoolServer
from tests.local_http import serving
from tests.mqtt_broker import free_port
from tests.nordpool_doc import day_slots, document, fixture_prices

AT_15 = datetime(2026, 1, 12, 15, 0, tzinfo=OSLO)  # after the 13:00 publication: tomorrow is asked for too


@pytest.fixture
def first() -> Iterator[PriceServer]:
    yield from serving(PriceServer())


@pytest.fixture
def second() -> Iterator[PriceServer]:
    yield from serving(PriceServer())


def test_the_feed_takes_the_second_service_when_the_first_fails(first: PriceServer, second: PriceServer,
                                                               tmp_path: Path) -> None:
    for day in (TODAY, TOMORROW):
        first.fail[first.path(day)].extend([500] * 5)  # down, however often it is asked
        second.publish(day)
    source = price_source("NO1", [first.url, second.url], tmp_path / "cache", retries=1, sleep=no_sleep)
    assert isinstance(source, FallbackSource)
    update = asyncio.run(PriceFeed(source).update(AT_15))
    assert update.error is None and update.series is not None
    # Both days from the second service, in 15-minute slots: 96 a day.
    assert len(update.series) == 192 and {s.hours for s in update.series} == {0.25}
    assert source.last is not None and source.last.source == 1
    assert "HTTP 500" in source.last.errors[0]
    assert first.log.count(first.path(TODAY)) == 2  # its retry, then the second service
    assert second.log == [second.path(TODAY), second.path(TOMORROW)]


def test_both_services_failing_is_an_error_the_feed_reports(first: PriceServer, second: PriceServer,
                                                            tmp_path: Path) -> None:
    for s in (first, second):
        s.fail[s.path(TODAY)].extend([503] * 5)
    source = price_source("NO1", [first.url, second.url], None, retries=0, sleep=no_sleep)
    with pytest.raises(PriceApiError, match="source 1: .*503.*source 2: .*503"):
        asyncio.run(PriceFeed(source).update(AT_15))


def test_apm_eco_plan_with_the_first_service_down(second: PriceServer, tmp_path: Path) -> None:
    second.publish(TODAY)
    second.publish(TOMORROW)
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = apm("plan", "--api", down, "--api", second.url, "--cache", str(tmp_path), "--now", NOW,
              "--departure", "07:30", "--energy-kwh", "20", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)["plan"]
    assert plan["prices_known_until"] == "2026-01-14T00:00:00+01:00" and plan["feasible"]
    assert len(second.log) == 2


@pytest.fixture
def portal() -> Iterator[NordPoolServer]:
    yield from serving(NordPoolServer())


def test_hvakosterstrommen_down_nord_pool_answers(first: PriceServer, portal: NordPoolServer,
                                                  tmp_path: Path) -> None:
    for day in (TODAY, TOMORROW):
        first.fail[first.path(day)].extend([500] * 5)
        portal.publish(day)
    source = price_source("NO1", [f"hvakosterstrommen:{first.url}", f"nordpool:{portal.url}"], tmp_path,
                          retries=1, sleep=no_sleep)
    assert isinstance(source, FallbackSource)
    assert [type(s) for s in source.sources] == [PriceClient, NordPoolClient]
    update = asyncio.run(PriceFeed(source).update(AT_15))
    assert update.error is None and update.series is not None
    assert len(update.series) == 192 and {s.hours for s in update.series} == {0.25}
    assert source.last is not None and source.last.source == 1 and "HTTP 500" in source.last.errors[0]
    assert portal.log == ["2026-01-12", "2026-01-13"]
    # The prices of the recorded hvakosterstrommen.no days (Nord Pool's NOK/MWh / 1000).
    recorded = fixture_prices(TODAY) + fixture_prices(TOMORROW)
    assert [s.nok_per_kwh for s in update.series] == pytest.approx(recorded, abs=1e-5)


def test_nord_pool_unpublished_hvakosterstrommen_has_tomorrow(second: PriceServer, portal: NordPoolServer,
                                                              tmp_path: Path) -> None:
    portal.publish(TODAY)  # tomorrow: 204 from the portal (late), already out at the other service
    second.publish(TOMORROW)
    source = price_source("NO1", [f"nordpool:{portal.url}", f"hvakosterstrommen:{second.url}"], tmp_path,
                          retries=2, sleep=no_sleep)
    update = asyncio.run(PriceFeed(source).update(AT_15))
    assert update.error is None and update.series is not None and len(update.series) == 192
    assert portal.log == ["2026-01-12", "2026-01-13"]  # the 204 was not retried
    assert second.log == [second.path(TOMORROW)]
    assert source.last is not None and source.last.source == 1
    assert source.last.errors == ("source 1: 2026-01-13 not published",)


def test_neither_published_yet_is_no_error(second: PriceServer, portal: NordPoolServer, tmp_path: Path) -> None:
    portal.publish(TODAY)
    source = price_source("NO1", [f"nordpool:{portal.url}", f"hvakosterstrommen:{second.url}"], tmp_path,
                          retries=2, sleep=no_sleep)
    update = asyncio.run(PriceFeed(source).update(AT_15))
    assert update.error is None and update.series is not None and len(update.series) == 96
    assert update.series.end == datetime(2026, 1, 13, tzinfo=OSLO)
    assert update.next_check == AT_15 + timedelta(minutes=15)  # the feed looks again later
    assert len(portal.log) == 2 and len(second.log) == 1  # one question each, no retry storm


def test_apm_eco_plan_from_nord_pool_when_hvakosterstrommen_is_down(portal: NordPoolServer,
                                                                   tmp_path: Path) -> None:
    portal.publish(TODAY)
    portal.publish(TOMORROW)
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = apm("plan", "--api", down, "--api", f"nordpool:{portal.url}", "--cache", str(tmp_path), "--now", NOW,
              "--departure", "07:30", "--energy-kwh", "20", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)["plan"]
    assert plan["prices_known_until"] == "2026-01-14T00:00:00+01:00" and plan["feasible"]
    assert portal.log == ["2026-01-12", "2026-01-13"]


def test_apm_eco_plan_refuses_a_mistyped_service() -> None:
    out = apm("plan", "--api", "nordpol", "--now", NOW, "--departure", "07:30", "--energy-kwh", "20")
    assert out.returncode != 0
    assert "--api: price service 'nordpol'" in out.stderr


def test_apm_run_takes_todays_prices_from_nord_pool_when_the_first_refuses(first: PriceServer,
                                                                          portal: NordPoolServer,
                                                                          tmp_path: Path) -> None:
    """The device with both formats on the command line: the first refuses (HTTP 400, not retried), the
    day comes from the portal and lands in the device's price cache; the device starts and stops cleanly."""
    today = datetime.now(OSLO).date()  # the device asks for the real today
    portal.docs[f"{today:%Y-%m-%d}", "NO1"] = document(today, [0.5] * len(day_slots(today)))
    first.fail[first.path(today)].extend([400] * 5)
    cached = tmp_path / "cache" / "apm" / "prices" / "NO1" / f"{today:%Y-%m-%d}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "APM_FLASH": str(tmp_path / "flash.img"), "APM_SERIAL_CACHE": str(tmp_path / "serial.json")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "apm", "run", "--demo", "--plain", "--http", "off", "--broker-port", "0",
         "--duration", "60", "--price-api", f"hvakosterstrommen:{first.url}", "--price-api",
         f"nordpool:{portal.url}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 45
        while not cached.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the file the device writes, not a sync by time
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert cached.exists(), err
    assert f"prices for {today} from source 2: source 1: " in err and "HTTP 400" in err
    assert proc.returncode == 0, err
    assert portal.log[0] == f"{today:%Y-%m-%d}"


def test_apm_run_refuses_a_mistyped_service_before_starting(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "APM_FLASH": str(tmp_path / "flash.img")}
    r = subprocess.run([sys.executable, "-m", "apm", "run", "--demo", "--price-api", "nordpool:www.x.no",
                        "--duration", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "--price-api: price service 'nordpool:www.x.no': after nordpool: give an http(s) URL" in r.stderr
    assert "Traceback" not in r.stderr
