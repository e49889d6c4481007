"""A device with one go-e for the tests to kill: ``python -m tests.goe_child URL SERIAL SAFE_A LIMIT_A``.

It runs a `GoeAdapter`, asks for LIMIT_A, prints "ready" once the charger has echoed it, then waits to
be killed.
"""

from __future__ import annotations

import asyncio
import sys

from apm.io.chargers.goe import GoeAdapter, GoeCharger


async def main(url: str, serial: str, safe_a: float, limit_a: float) -> None:
    echoed = asyncio.Event()

    def seen(state: object) -> None:
        if getattr(state, "setpoint_a", None) == int(limit_a):
            echoed.set()

    async with GoeAdapter({"garage": GoeCharger(serial=serial, safe_current_a=safe_a)}, url,
                          on_report=seen, tick_s=0.05) as goe:
        goe.set_limit("garage", limit_a)
        await asyncio.wait_for(echoed.wait(), 20)
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
