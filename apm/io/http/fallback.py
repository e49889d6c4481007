"""A second price source used when the first fails.

`FallbackSource` wraps two day sources (anything with ``day(date) -> PriceSeries | None``, such as
apm.io.http.prices.PriceClient, or an async one whose ``day`` returns an awaitable: both are taken, so
the wrapper outlives the fetcher's move to asyncio). The first is asked first; the second when the
first raises (service down after its retries, unusable data, network) or has not published the day.
Which one answered, and why the first did not, is kept for the log and the status page.

`price_source(area, specs, cache)` is what `apm run --price-api` and `apm eco --api` use: one service, its
client; two, the first with the second behind it; ``default``, hvakosterstrommen.no with Nord Pool's data
portal behind it. A service is named (``nordpool``, ``hvakosterstrommen``), or given by URL (the host picks
the format), or both (``nordpool:URL``, for a mirror or a test server). Both share the on-disk cache: a
published day is the same day whichever service sent it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from apm.core.eco import nordpool
from apm.core.eco.prices import PriceError, PriceSeries
from apm.io.http.prices import DEFAULT_BASE_URL, NordPoolClient, PriceApiError, PriceClient

log = logging.getLogger(__name__)

# What a failing source raises: its own API error (a RuntimeError subclass in price_api), bad data,
# or the network.
FAILURES: tuple[type[BaseException], ...] = (RuntimeError, PriceError, OSError, TimeoutError)


class DaySource(Protocol):
    def day(self, day: date) -> Any: ...  # PriceSeries | None, or an awaitable of it


@dataclass(frozen=True, slots=True)
class Answer:
    series: PriceSeries | None
    source: int | None  # 0: the first, 1: the second, None: neither had the day
    errors: tuple[str, ...] = ()  # why a source did not answer, in order


async def _ask(source: DaySource, day: date) -> PriceSeries | None:
    got = source.day(day)
    return await got if inspect.isawaitable(got) else got


class FallbackSource:
    """``day`` from ``first``, else from ``second`` (see the module doc)."""

    def __init__(self, first: DaySource, second: DaySource) -> None:
        self.sources = (first, second)
        self.last: Answer | None = None

    async def answer(self, day: date) -> Answer:
        errors: list[str] = []
        for i, source in enumerate(self.sources):
            try:
                series = await _ask(source, day)
            except FAILURES as exc:
                errors.append(f"source {i + 1}: {exc}")
                continue
            if series is not None:
                self.last = Answer(series, i, tuple(errors))
                if errors:
                    log.warning("prices for %s from source %d: %s", day, i + 1, "; ".join(errors))
                return self.last
            errors.append(f"source {i + 1}: {day} not published")
        self.last = Answer(None, None, tuple(errors))
        return self.last

    async def day(self, day: date) -> PriceSeries | None:
        """The day's prices from the first source that has them; None when neither has published
        them; PriceApiError (both reasons) when both failed."""
        answer = await self.answer(day)
        if answer.series is None and all("not published" not in e for e in answer.errors):
            raise PriceApiError("; ".join(answer.errors))
        return answer.series


# Price services by name, with their format and public address. They are independent (different
# operators, different machines), so the second is a real fallback, not a mirror of the first.
SERVICES: dict[str, tuple[type[PriceClient], str]] = {
    PriceClient.name: (PriceClient, DEFAULT_BASE_URL),
    NordPoolClient.name: (NordPoolClient, nordpool.DEFAULT_BASE_URL),
}
DEFAULT = "default"  # both public services: hvakosterstrommen.no first, Nord Pool behind it
DEFAULT_SOURCES = (PriceClient.name, NordPoolClient.name)


def client_for(area: str, spec: str, cache_dir: str | Path | None = None, **client: Any) -> PriceClient:
    """The client one ``--price-api`` value names: a service's name (``nordpool``, ``hvakosterstrommen``),
    ``NAME:URL`` (that service's format at another address, e.g. a local mirror), or a URL (Nord Pool's
    format when the host is the portal's, hvakosterstrommen's otherwise). ValueError for anything else."""
    name, sep, rest = spec.partition(":")
    if name in SERVICES:
        kind, url = SERVICES[name]
        if sep and not rest.startswith(("http://", "https://")):
            raise ValueError(f"price service {spec!r}: after {name}: give an http(s) URL")
        return kind(area, rest if sep else url, cache_dir, **client)
    parts = urlsplit(spec)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"price service {spec!r}: expected {', '.join(SERVICES)}, NAME:URL or an http(s) URL")
    kind = NordPoolClient if parts.hostname == nordpool.HOST else PriceClient
    return kind(area, spec, cache_dir, **client)


def price_source(area: str, specs: Sequence[str], cache_dir: str | Path | None = None,
                 **client: Any) -> PriceClient | FallbackSource:
    """The day source for one price service, or for two (the second used when the first fails); see
    `client_for` for the forms, and `DEFAULT` for both public services."""
    if list(specs) == [DEFAULT]:
        specs = DEFAULT_SOURCES
    if DEFAULT in specs:
        raise ValueError(f"price service {DEFAULT!r} stands for two services: give it alone")
    if not 1 <= len(specs) <= 2:
        raise ValueError(f"one or two price services, not {len(specs)}")
    clients = [client_for(area, spec, cache_dir, **client) for spec in specs]
    return clients[0] if len(clients) == 1 else FallbackSource(clients[0], clients[1])
