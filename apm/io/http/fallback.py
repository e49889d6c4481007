"""A second price source used when the first fails.

`FallbackSource` wraps two day sources (anything with ``day(date) -> PriceSeries | None``, such as
apm.io.http.prices.PriceClient, or an async one whose ``day`` returns an awaitable: both are taken, so
the wrapper outlives the fetcher's move to asyncio). The first is asked first; the second when the
first raises (service down after its retries, unusable data, network) or has not published the day.
Which one answered, and why the first did not, is kept for the log and the status page.

`price_source(area, urls, cache)` is what `apm run --price-api` and `apm eco --api` use: one URL, its
`PriceClient`; two, the first with the second behind it. Both share the on-disk cache: a published day
is the same day whichever service sent it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from apm.core.eco.prices import PriceError, PriceSeries
from apm.io.http.prices import PriceApiError, PriceClient

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


def price_source(area: str, urls: Sequence[str], cache_dir: str | Path | None = None,
                 **client: Any) -> PriceClient | FallbackSource:
    """The day source for one price service URL, or for two (the second used when the first fails)."""
    if not 1 <= len(urls) <= 2:
        raise ValueError(f"one or two price service URLs, not {len(urls)}")
    clients = [PriceClient(area, url, cache_dir, **client) for url in urls]
    return clients[0] if len(clients) == 1 else FallbackSource(clients[0], clients[1])
