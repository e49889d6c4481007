"""The Nord Pool client (apm.io.http.prices.NordPoolClient) and the feed against a local HTTP server that
answers like the data portal: 200 with the day's document once published, 204 with no body before."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from datetime import date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from apm.core.eco.prices import OSLO
from apm.io.http.prices import NordPoolClient, PriceApiError, PriceClient, PriceFeed
from tests.integration.test_eco_price_api import TODAY, TOMORROW, no_sleep
from tests.local_http import serving
from tests.nordpool_doc import body, document, fixture_prices

run = asyncio.run


class NordPoolServer:
    """Serves ``/api/DayAheadPrices?market=DayAhead&date=D&deliveryArea=A&currency=NOK``: the published
    document of (D, A), else 204 as the portal does before publication. ``fail[D]`` queues statuses to
    answer first. ``log`` holds the asked dates."""

    def __init__(self) -> None:
        self.docs: dict[tuple[str, str], dict[str, Any]] = {}
        self.fail: dict[str, deque[int]] = defaultdict(deque)
        self.log: list[str] = []
        self.queries: list[dict[str, list[str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                url = urlsplit(self.path)
                q = parse_qs(url.query)
                server.queries.append(q)
                day, area = q.get("date", [""])[0], q.get("deliveryArea", [""])[0]
                server.log.append(day)
                queued = server.fail[day]
                if url.path != "/api/DayAheadPrices":
                    self._send(404, b"")
                elif queued:
                    self._send(queued.popleft(), b'{"message": "An error has occurred."}')
                elif (day, area) in server.docs:
                    self._send(200, body(server.docs[day, area]))
                else:
                    self._send(204, b"")

            def _send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                if status != 204:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if status != 204:
                    self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def publish(self, day: date, area: str = "NO1", **kw: Any) -> None:
        """The day with the prices of the recorded hvakosterstrommen.no day."""
        self.docs[f"{day:%Y-%m-%d}", area] = document(day, fixture_prices(day, area), area=area, **kw)


@pytest.fixture
def portal() -> Iterator[NordPoolServer]:
    yield from serving(NordPoolServer())


def client(portal: NordPoolServer, cache: Path | None, **kw: Any) -> NordPoolClient:
    return NordPoolClient("NO1", portal.url, cache, sleep=no_sleep, timeout_s=5, **kw)


def test_fetches_a_published_day(portal: NordPoolServer, tmp_path: Path) -> None:
    portal.publish(TODAY)
    day = run(client(portal, tmp_path).day(TODAY))
    assert day is not None and len(day) == 96
    assert day.start == datetime(2026, 1, 12, tzinfo=OSLO) and day.end == datetime(2026, 1, 13, tzinfo=OSLO)
    assert day.slots[0].nok_per_kwh == pytest.approx(0.56635)
    assert portal.queries == [{"market": ["DayAhead"], "date": ["2026-01-12"], "deliveryArea": ["NO1"],
                               "currency": ["NOK"]}]


def test_204_before_publication_is_not_published_asked_once_not_cached(portal: NordPoolServer,
                                                                       tmp_path: Path) -> None:
    c = client(portal, tmp_path, retries=3)
    assert run(c.day(TOMORROW)) is None
    assert portal.log == ["2026-01-13"]  # no retries: 204 is an answer, not a failure
    assert not (tmp_path / "NO1").exists()
    portal.publish(TOMORROW)
    assert run(c.day(TOMORROW)) is not None


def test_feed_before_publication_logs_nothing_and_looks_again_later(portal: NordPoolServer, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    portal.publish(TODAY)
    feed = PriceFeed(client(portal, tmp_path))
    with caplog.at_level(logging.INFO):
        for minute in (5, 20, 35):  # the feed's 15-minute retries while the auction is late
            upd = run(feed.update(datetime(2026, 1, 12, 13, minute, tzinfo=OSLO)))
            assert upd.error is None and upd.series is not None and len(upd.series) == 96
            assert upd.next_check == datetime(2026, 1, 12, 13, minute + 15, tzinfo=OSLO)
    assert portal.log == ["2026-01-12", "2026-01-13", "2026-01-13", "2026-01-13"]  # today from the cache
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    portal.publish(TOMORROW)
    upd = run(feed.update(datetime(2026, 1, 12, 13, 50, tzinfo=OSLO)))
    assert upd.new_slots and upd.series is not None and len(upd.series) == 192


def test_server_errors_are_retried_then_reported(portal: NordPoolServer) -> None:
    portal.publish(TODAY)
    portal.fail["2026-01-12"].extend([502, 500, 500])
    with pytest.raises(PriceApiError, match="HTTP 500"):
        run(client(portal, None, retries=2).day(TODAY))
    assert len(portal.log) == 3
    assert run(client(portal, None, retries=0).day(TODAY)) is not None


def test_a_document_without_our_area_is_an_error(portal: NordPoolServer) -> None:
    portal.publish(TODAY)
    del portal.docs["2026-01-12", "NO1"]["multiAreaEntries"][7]["entryPerArea"]["NO1"]
    with pytest.raises(PriceApiError, match="entry 7: no NO1 price"):
        run(client(portal, None).day(TODAY))


def test_preliminary_prices_are_used_but_not_cached(portal: NordPoolServer, tmp_path: Path) -> None:
    portal.publish(TODAY, state="Preliminary")
    c = client(portal, tmp_path)
    assert run(c.day(TODAY)) is not None
    assert not (tmp_path / "NO1" / "2026-01-12.json").exists()
    portal.publish(TODAY)  # now final
    assert run(c.day(TODAY)) is not None
    assert (tmp_path / "NO1" / "2026-01-12.json").exists()
    assert len(portal.log) == 2


def test_a_day_cached_from_nord_pool_serves_the_other_client_offline(portal: NordPoolServer,
                                                                    tmp_path: Path) -> None:
    portal.publish(TODAY)
    from_portal = run(client(portal, tmp_path).day(TODAY))
    offline = PriceClient("NO1", "http://127.0.0.1:9", tmp_path, retries=0, timeout_s=0.5)
    assert run(offline.day(TODAY)) == from_portal
    assert offline.requests == 0
