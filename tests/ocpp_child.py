"""A device with an OCPP central system for the tests to kill:
``python -m tests.ocpp_child PORT_FILE VALIDITY_S LIMIT_A ID:SAFE_A [ID:SAFE_A ...]``.

It serves on a free port on 127.0.0.1 (written to PORT_FILE), asks every charger for LIMIT_A with
limits valid VALIDITY_S, prints "ready" once every charger has accepted its limit, then waits to be
killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from apm.io.chargers.ocpp_policy import OcppCharger, ProfilePolicy
from apm.io.chargers.ocpp_server import OcppCentral


async def main(port_file: str, validity_s: float, limit_a: float, specs: list[str]) -> None:
    chargers = {cid: OcppCharger(safe_current_a=float(a)) for cid, a in (s.split(":") for s in specs)}
    policy = ProfilePolicy(validity_s=validity_s, renew_s=validity_s / 3, skew_s=0)
    async with OcppCentral(chargers, "127.0.0.1", 0, policy=policy, boot_wait_s=0.5) as central:
        tmp = Path(port_file + ".tmp")
        tmp.write_text(str(central.port))
        tmp.rename(port_file)
        for cid in chargers:
            central.set_limit(cid, limit_a)
        await central.wait_for(lambda c: all(link.limit_a == limit_a for link in c.links().values()), 60)
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]))
