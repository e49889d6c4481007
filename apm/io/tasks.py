"""Stopping asyncio tasks for sure.

Python 3.11's ``asyncio.wait_for`` can swallow a cancel that arrives just as the awaited thing
completes (fixed in 3.12), and the `ocpp` library awaits every answer with it: a task cancelled once
may then go on running, and whoever awaits it waits for ever. `stop` cancels again until the tasks
are done, and never raises for what they raised.
"""

from __future__ import annotations

import asyncio


async def stop(*tasks: asyncio.Task[object] | asyncio.Future[object], every_s: float = 0.1) -> None:
    pending = [t for t in tasks if not t.done()]
    while pending:
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=every_s)
        pending = [t for t in pending if not t.done()]
    for t in tasks:  # retrieve results, so nothing is logged as "never retrieved"
        if not t.cancelled():
            t.exception()
