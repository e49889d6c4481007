"""A second price service when the first fails: the device's feed and `apm eco plan` against two real local
HTTP servers (tests.integration.test_eco_price_api.PriceServer), the first failing, the second answering
with 15-minute prices (96 slots a day)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from apm.core.eco.prices import OSLO
from apm.io.http.fallback import FallbackSource, price_source
from apm.io.http.prices import PriceApiError, PriceFeed
from tests.integration.test_eco_cli import NOW, apm
from tests.integration.test_eco_price_api import TODAY, TOMORROW, PriceServer, no_sleep
from tests.mqtt_broker import free_port

AT_15 = datetime(2026, 1, 12, 15, 0, tzinfo=OSLO)  # after the 13:00 publication: tomorrow is asked for too


def _serving() -> Iterator[PriceServer]:
    s = PriceServer()
    s.thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()


@pytest.fixture
def first() -> Iterator[PriceServer]:
    yield from _serving()


@pytest.fixture
def second() -> Iterator[PriceServer]:
    yield from _serving()


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
