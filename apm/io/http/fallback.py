"""A second price source used when the first fails.

`FallbackSource` wraps two day sources (anything with ``day(date) -> PriceSeries | None``, such as
apm.io.http.prices.PriceClient, or an async one whose ``day`` returns an awaitable: both are taken, so
the wrapper outlives the fetcher's move to asyncio). The first is asked first; the second when the
first raises (service down after its retries, unusable data, network) or has not published the day.
Which one answered, and why the first did not, is kept for the log and the status page.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

from apm.core.eco.prices import PriceError, PriceSeries
from apm.io.http.prices import PriceApiError

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
