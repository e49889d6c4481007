"""The day-ahead price client and feed against a local HTTP server that serves recorded responses."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from apm.core.eco.prices import OSLO
from apm.io.http.prices import PriceApiError, PriceClient, PriceFeed
from tests.local_http import serving

FIXTURES = Path(__file__).resolve().parents[1] / "eco_fixtures"
run = asyncio.run


async def no_sleep(_s: float) -> None:
    pass
TODAY = date(2026, 1, 12)
TOMORROW = date(2026, 1, 13)


class PriceServer:
    """Serves ``/api/v1/prices/YYYY/MM-DD_AREA.json`` from the fixture files of the published days; other
    days get 404. ``fail[path]`` queues status codes to answer first (e.g. a 500 before success)."""

    def __init__(self) -> None:
        self.published: set[str] = set()
        self.fail: dict[str, deque[int]] = defaultdict(deque)
        self.log: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.log.append(self.path)
                queued = server.fail[self.path]
                name = self.path.rsplit("/", 2)
                file = FIXTURES / f"{name[1]}-{name[2]}" if len(name) == 3 else None
                if queued:
                    self._send(queued.popleft(), b'{"error": "try later"}')
                elif self.path in server.published and file and file.exists():
                    self._send(200, file.read_bytes())
                else:
                    self._send(404, b"Not Found")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    @staticmethod
    def path(day: date, area: str = "NO1") -> str:
        return f"/api/v1/prices/{day:%Y}/{day:%m-%d}_{area}.json"

    def publish(self, day: date) -> None:
        self.published.add(self.path(day))


@pytest.fixture
def server() -> Iterator[PriceServer]:
    yield from serving(PriceServer())


def client(server: PriceServer, cache: Path | None, **kw) -> PriceClient:
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    c = PriceClient("NO1", server.url, cache, sleep=sleep, timeout_s=5, **kw)
    c.sleeps = sleeps  # type: ignore[attr-defined]
    return c


def test_fetches_a_recorded_day(server: PriceServer, tmp_path: Path) -> None:
    server.publish(TODAY)
    day = run(client(server, tmp_path).day(TODAY))
    assert day is not None
    assert len(day) == 96
    assert day.start == datetime(2026, 1, 12, tzinfo=OSLO)
    assert day.end == datetime(2026, 1, 13, tzinfo=OSLO)
    assert day.slots[0].nok_per_kwh == pytest.approx(0.56635)
    assert server.log == [server.path(TODAY)]


def test_retries_a_500_then_succeeds_with_backoff(server: PriceServer, tmp_path: Path) -> None:
    server.publish(TODAY)
    server.fail[server.path(TODAY)].extend([500, 503])
    c = client(server, tmp_path, retries=3, backoff_s=0.25)
    day = run(c.day(TODAY))
    assert day is not None and len(day) == 96
    assert server.log == [server.path(TODAY)] * 3
    assert c.sleeps == [0.25, 0.5]  # type: ignore[attr-defined]


def test_gives_up_after_the_retries(server: PriceServer, tmp_path: Path) -> None:
    server.publish(TODAY)
    server.fail[server.path(TODAY)].extend([500] * 5)
    c = client(server, tmp_path, retries=2)
    with pytest.raises(PriceApiError, match="HTTP 500"):
        run(c.day(TODAY))
    assert len(server.log) == 3
    assert not (tmp_path / "NO1").exists()  # nothing cached


def test_client_error_is_not_retried(server: PriceServer, tmp_path: Path) -> None:
    server.fail[server.path(TODAY)].append(400)
    with pytest.raises(PriceApiError, match="HTTP 400"):
        run(client(server, tmp_path).day(TODAY))
    assert len(server.log) == 1


def test_unpublished_day_is_none_and_not_cached(server: PriceServer, tmp_path: Path) -> None:
    c = client(server, tmp_path)
    assert run(c.day(TOMORROW)) is None
    assert run(c.day(TOMORROW)) is None
    assert len(server.log) == 2  # asked again: a 404 is not remembered


def test_cache_hit_needs_no_network(server: PriceServer, tmp_path: Path) -> None:
    server.publish(TODAY)
    first = run(client(server, tmp_path).day(TODAY))
    server.httpd.shutdown()  # the network is gone from here on
    offline = PriceClient("NO1", "http://127.0.0.1:9", tmp_path, retries=0, timeout_s=0.5)
    again = run(offline.day(TODAY))
    assert again == first
    assert offline.requests == 0
    assert (tmp_path / "NO1" / "2026-01-12.json").exists()


def test_damaged_cache_entry_is_fetched_again(server: PriceServer, tmp_path: Path) -> None:
    server.publish(TODAY)
    (tmp_path / "NO1").mkdir()
    (tmp_path / "NO1" / "2026-01-12.json").write_text("{not json")
    assert run(client(server, tmp_path).day(TODAY)) is not None
    assert len(server.log) == 1


def test_network_error_is_reported(tmp_path: Path) -> None:
    c = PriceClient("NO1", "http://127.0.0.1:9", tmp_path, retries=1, sleep=no_sleep, timeout_s=0.5)
    with pytest.raises(PriceApiError, match="network error"):
        run(c.day(TODAY))
    assert c.requests == 2


def test_feed_waits_for_13_then_triggers_a_replan(server: PriceServer, tmp_path: Path) -> None:
    server.publish(TODAY)
    feed = PriceFeed(client(server, tmp_path))

    morning = run(feed.update(datetime(2026, 1, 12, 9, 0, tzinfo=OSLO)))
    assert morning.series is not None and morning.series.end == datetime(2026, 1, 13, tzinfo=OSLO)
    assert morning.new_slots
    assert morning.next_check == datetime(2026, 1, 12, 13, 0, tzinfo=OSLO)
    assert server.path(TOMORROW) not in server.log  # not asked before it can be there

    # 13:05, the auction is late: tomorrow is a 404; plan with what is known, look again in 15 min.
    late = run(feed.update(datetime(2026, 1, 12, 13, 5, tzinfo=OSLO)))
    assert server.log[-1] == server.path(TOMORROW)
    assert late.series is not None and late.series.end == datetime(2026, 1, 13, tzinfo=OSLO)
    assert not late.new_slots
    assert late.next_check == datetime(2026, 1, 12, 13, 20, tzinfo=OSLO)

    server.publish(TOMORROW)
    arrived = run(feed.update(datetime(2026, 1, 12, 13, 20, tzinfo=OSLO)))
    assert arrived.new_slots  # the re-plan trigger
    assert arrived.series is not None and arrived.series.end == datetime(2026, 1, 14, tzinfo=OSLO)
    assert len(arrived.series) == 192
    assert arrived.next_check == datetime(2026, 1, 13, 13, 0, tzinfo=OSLO)

    requests = len(server.log)
    again = run(feed.update(datetime(2026, 1, 12, 18, 0, tzinfo=OSLO)))
    assert not again.new_slots
    assert len(server.log) == requests  # both days from the cache


def test_feed_keeps_todays_prices_when_tomorrow_fails(server: PriceServer, tmp_path: Path) -> None:
    server.publish(TODAY)
    server.publish(TOMORROW)
    server.fail[server.path(TOMORROW)].extend([500] * 10)
    feed = PriceFeed(client(server, tmp_path, retries=1))
    up = run(feed.update(datetime(2026, 1, 12, 14, 0, tzinfo=OSLO)))
    assert up.series is not None and up.series.end == datetime(2026, 1, 13, tzinfo=OSLO)
    assert up.error is not None and "HTTP 500" in up.error
    assert up.next_check == datetime(2026, 1, 12, 14, 15, tzinfo=OSLO)


def test_area_and_url_shape() -> None:
    c = PriceClient("NO5", "http://127.0.0.1:1/")
    assert c.url(date(2026, 3, 9)) == "http://127.0.0.1:1/api/v1/prices/2026/03-09_NO5.json"
    with pytest.raises(ValueError, match="unknown price area"):
        PriceClient("SE3")


# --- a price service that hangs does not stop the device's loop (issue 13, item 9) -----------------


class HangingServer:
    """Accepts connections and reads the request, then never answers (until closed)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self.conns.append(conn)  # kept open, never answered

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def hanging() -> Iterator[HangingServer]:
    s = HangingServer()
    try:
        yield s
    finally:
        s.close()


async def _heartbeat(beats: list[float], every_s: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    while True:
        beats.append(loop.time())
        await asyncio.sleep(every_s)


def test_a_hanging_price_service_does_not_stop_the_event_loop(hanging: HangingServer, tmp_path: Path) -> None:
    """The fetch gives up after its timeouts and retries while a heartbeat in the same loop keeps
    ticking (a blocking fetch would have stopped it for the whole hang)."""
    c = PriceClient("NO1", hanging.url, tmp_path, retries=1, backoff_s=0.1, timeout_s=1.0)

    async def main() -> tuple[list[float], float, float]:
        beats: list[float] = []
        beat = asyncio.create_task(_heartbeat(beats))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(PriceApiError, match="no answer within 1 s"):
            await c.day(TODAY)
        t1 = loop.time()
        beat.cancel()
        return [b for b in beats if t0 <= b <= t1], t0, t1

    beats, t0, t1 = asyncio.run(main())
    assert hanging.accepted == 2 and c.requests == 2  # it did hang, twice
    assert t1 - t0 >= 2.0
    gaps = [b - a for a, b in zip([t0, *beats], [*beats, t1], strict=True)]
    assert max(gaps) < 0.75, max(gaps)  # the loop ran all along (generous: a loaded machine is slow)
    assert t1 - t0 < 30  # and the fetch ended


def test_the_feed_keeps_retrying_in_the_background_and_never_raises(hanging: HangingServer, tmp_path: Path) -> None:
    feed = PriceFeed(PriceClient("NO1", hanging.url, tmp_path, retries=0, timeout_s=0.3))
    updates: list[object] = []

    async def main() -> None:
        task = asyncio.create_task(feed.run(lambda: datetime(2026, 1, 12, 9, 0, tzinfo=OSLO), updates.append,
                                            failed_retry=timedelta(seconds=0)))
        while len(updates) < 2:
            assert not task.done(), task
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(main())
    assert feed.latest is not None and feed.latest.series is None
    assert "no answer" in (feed.latest.error or "")
