"""Day-ahead prices over HTTP, with an on-disk cache and retries, and the feed that tells when tomorrow's
prices have arrived (the day-ahead auction publishes around 12:45-13:00 Oslo time).

The API is the public one of the form ``{base}/api/v1/prices/{YYYY}/{MM}-{DD}_{AREA}.json``: a JSON list
of ``{NOK_per_kWh, EUR_per_kWh, EXR, time_start, time_end}`` for one Oslo-time day. 404 means the day is
not published (yet).

Everything that waits is async (aiohttp, ``asyncio.sleep`` between retries): the device plans in the
event loop that decodes the meter and sends setpoints, and a price service that hangs must not stop that
loop. Each request has a timeout (``timeout_s``, for connecting and reading together) and the whole
fetch, retries included, ends within about ``(retries + 1) * timeout_s`` plus the backoff. `PriceFeed.run`
keeps the known prices fresh in the background; planners read `PriceFeed.latest` without waiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any, Protocol

from apm.core.eco import nordpool
from apm.core.eco.prices import OSLO, PriceError, PriceSeries, check_area, concat, parse_json

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://www.hvakosterstrommen.no"
MAX_BODY = 1 << 20  # a day of prices is ~10 kB; more is not a price list
PUBLISH_TIME = dtime(13, 0)  # Oslo time by which tomorrow's prices are normally out


class PriceApiError(RuntimeError):
    """The price service failed (after retries) or sent something unusable."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes


Get = Callable[[str, float], Awaitable[Response]]


async def http_get(url: str, timeout: float) -> Response:
    """One GET within ``timeout`` seconds; HTTP errors are returned as responses, network errors and
    timeouts raised as OSError."""
    import aiohttp  # only when prices are fetched: most commands never do

    headers = {"Accept": "application/json", "User-Agent": "apm-emulator"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
                session.get(url, headers=headers) as r:
            body = await r.content.read(MAX_BODY + 1)
            if len(body) > MAX_BODY:
                raise OSError(f"answer larger than {MAX_BODY} bytes")
            return Response(r.status, body)
    except TimeoutError:
        raise OSError(f"no answer within {timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise OSError(str(exc) or type(exc).__name__) from None


class DaySource(Protocol):
    """Where a feed gets a day of prices: a `PriceClient`, or apm.io.http.fallback.FallbackSource over two."""

    async def day(self, day: date) -> PriceSeries | None: ...


class PriceClient:
    """Fetches one day of prices for an area from hvakosterstrommen.no (or a service of its format). A
    published day never changes, so it is cached on disk forever (as ``PriceSeries.to_json_dict``, the
    same whichever service sent it) and read back without network; a day not published yet is not cached."""

    name = "hvakosterstrommen"

    def __init__(
        self,
        area: str,
        base_url: str = DEFAULT_BASE_URL,
        cache_dir: str | Path | None = None,
        *,
        retries: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 10.0,
        get: Get = http_get,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.area = check_area(area)
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._get = get
        self._sleep = sleep
        self.requests = 0  # network requests made (for tests and logs)

    def url(self, day: date) -> str:
        return f"{self.base_url}/api/v1/prices/{day:%Y}/{day:%m-%d}_{self.area}.json"

    def parse(self, body: bytes, day: date, where: str) -> tuple[PriceSeries, bool] | None:
        """The day in a 200 answer's body and whether it is final (may be cached); None: not published."""
        return parse_json(body, self.area, where), True

    def _cache_path(self, day: date) -> Path | None:
        return self.cache_dir / self.area / f"{day:%Y-%m-%d}.json" if self.cache_dir else None

    async def day(self, day: date) -> PriceSeries | None:
        """The day's prices, or None if the service has not published them (404, 204)."""
        path = self._cache_path(day)
        if path is not None and path.exists():
            try:
                return parse_json(path.read_bytes(), self.area, f"{path}: ")
            except PriceError:
                path.unlink()  # a damaged cache entry is fetched again
        url = self.url(day)
        body = await self._fetch(url)
        if body is None:
            return None
        try:
            got = self.parse(body, day, f"{url}: ")
        except PriceError as exc:
            raise PriceApiError(str(exc)) from None
        if got is None:
            return None
        series, final = got
        if path is not None and final:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(series.to_json_dict()), encoding="utf-8")
            os.replace(tmp, path)  # atomic: a crash never leaves half a day in the cache
        return series

    async def _fetch(self, url: str) -> bytes | None:
        """GET with retries on network errors, timeouts, 5xx and 429 (exponential backoff); None on 404/204."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await self._sleep(self.backoff_s * 2 ** (attempt - 1))
            self.requests += 1
            try:
                # The bound holds even for an injected ``get`` that ignores its timeout.
                r = await asyncio.wait_for(self._get(url, self.timeout_s), self.timeout_s + 1.0)
            except TimeoutError:
                last = f"no answer within {self.timeout_s:g} s"
                continue
            except OSError as exc:
                last = f"network error: {exc}"
                continue
            if r.status == 200:
                return r.body
            if r.status in (404, 204):  # not published (yet): asked again at the feed's next check
                return None
            last = f"HTTP {r.status}"
            if not (r.status >= 500 or r.status == 429):
                break
        raise PriceApiError(f"{url}: {last}")


class NordPoolClient(PriceClient):
    """The same, from Nord Pool's data portal (apm.core.eco.nordpool): an independent second source, so
    that one service down or late does not leave the planner without prices. Prices the portal marks
    preliminary are used but not cached."""

    name = "nordpool"

    def __init__(self, area: str, base_url: str = nordpool.DEFAULT_BASE_URL, cache_dir: str | Path | None = None,
                 **kw: Any) -> None:
        super().__init__(area, base_url, cache_dir, **kw)

    def url(self, day: date) -> str:
        return nordpool.day_url(self.base_url, self.area, day)

    def parse(self, body: bytes, day: date, where: str) -> tuple[PriceSeries, bool] | None:
        got = nordpool.parse_day(body, self.area, day, where)
        return None if got is None else (got.series, got.final)


@dataclass(frozen=True, slots=True)
class FeedUpdate:
    series: PriceSeries | None  # everything known now (today, and tomorrow once published)
    new_slots: bool  # True when this update knows slots the previous one did not: re-plan
    next_check: datetime  # when to look again
    error: str | None = None  # why tomorrow could not be fetched (the service failed after retries)


class PriceFeed:
    """Today's and tomorrow's prices as known at a moment. Tomorrow is only asked for from
    ``publish_time`` on, then every ``retry`` until it arrives; before that, plans use today's prices
    (and estimates past them)."""

    def __init__(
        self,
        client: DaySource,
        publish_time: dtime = PUBLISH_TIME,
        retry: timedelta = timedelta(minutes=15),
    ) -> None:
        self.client = client
        self.publish_time = publish_time
        self.retry = retry
        self._known_until: datetime | None = None
        self.latest: FeedUpdate | None = None  # the last update: what `run` knows now

    async def run(self, clock: Callable[[], datetime], on_update: Callable[[FeedUpdate], None] | None = None,
                  failed_retry: timedelta = timedelta(minutes=1)) -> None:
        """Keep ``latest`` fresh: update now, then at each ``next_check`` (after ``failed_retry`` when even
        today's prices could not be had). Runs until cancelled; never raises for the price service."""
        while True:
            now = clock()
            try:
                upd = await self.update(now)
            except PriceApiError as exc:
                log.warning("prices: %s; trying again in %s", exc, failed_retry)
                upd = FeedUpdate(self.latest.series if self.latest else None, False, now + failed_retry, str(exc))
            else:
                if upd.error:
                    log.warning("prices: tomorrow's: %s; today's stand", upd.error)
            self.latest = upd
            if on_update is not None:
                on_update(upd)
            await asyncio.sleep(max((upd.next_check - clock()).total_seconds(), 1.0))

    async def update(self, now: datetime) -> FeedUpdate:
        local = now.astimezone(OSLO)
        today = local.date()
        tomorrow = today + timedelta(days=1)
        publish = datetime.combine(today, self.publish_time, OSLO)
        parts = [p for p in (await self.client.day(today),) if p is not None]
        got_tomorrow = False
        error = None
        if local >= publish:
            try:
                nxt = await self.client.day(tomorrow)
            except PriceApiError as exc:
                nxt, error = None, str(exc)  # today's plan stands; try again after ``retry``
            if nxt is not None:
                parts.append(nxt)
                got_tomorrow = True
        series = concat(parts) if parts else None
        end = series.end if series else None
        new = end is not None and (self._known_until is None or end > self._known_until)
        if end is not None:
            self._known_until = max(end, self._known_until or end)
        if got_tomorrow:
            next_check = datetime.combine(tomorrow, self.publish_time, OSLO)
        elif local < publish:
            next_check = publish
        else:
            next_check = now + self.retry
        return FeedUpdate(series, new, next_check, error)
