"""A part of the device that talks over MQTT only, on its own connection (the balancer, a charger).

    async with Part(...) as part:     # connects in the background (apm.io.mqtt.link.MqttLink)
        await part.run()              # its loops, until cancelled; "offline" and disconnect on exit
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any, Self

from apm.io.mqtt.link import MqttLink

log = logging.getLogger(__name__)


class MqttNode:
    link: MqttLink

    def loops(self) -> Sequence[Coroutine[Any, Any, None]]:
        """The coroutines `run` runs side by side."""
        raise NotImplementedError

    async def run(self) -> None:
        """Every loop until cancelled; one that fails ends the others (logged with its traceback: the
        TaskGroup's own message names no cause)."""
        async with asyncio.TaskGroup() as tg:
            for loop in self.loops():
                tg.create_task(_logged(type(self).__name__, loop))

    async def __aenter__(self) -> Self:
        await self.link.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.link.__aexit__(*exc)


async def _logged(who: str, loop: Coroutine[Any, Any, None]) -> None:
    try:
        await loop
    except Exception:
        log.exception("%s: %s failed", who, getattr(loop, "__name__", "a loop"))
        raise
