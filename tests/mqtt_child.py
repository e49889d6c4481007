"""A device process for the tests to kill: ``python -m tests.mqtt_child URL SERIAL OUTBOX [RECORDS]``.

It opens the outbox, adds RECORDS hourly records (ids ``rec-0``...), runs an MqttLink, prints
"ready" once the records are stored and, if the broker is reachable, the link is connected; then it
waits to be killed.
"""

from __future__ import annotations

import asyncio
import sys

from apm.core.config import BrokerConfig
from apm.io.mqtt.link import Backoff, MqttLink
from apm.io.mqtt.topics import Topics
from apm.io.storage.outbox import FileOutbox
from tests.energy_records import record


async def main(url: str, serial: str, outbox_path: str, records: int) -> None:
    topics = Topics(serial)
    with FileOutbox(outbox_path) as box:
        link = MqttLink.for_device(topics, BrokerConfig(url=url), outbox=box, backoff=Backoff(0.05, 0.2))
        async with link:
            for i in range(records):
                link.add_record(record(f"rec-{i}", 1000.0 + i))
            if "--no-wait" not in sys.argv:
                await link.wait_connected(10)
            print("ready", flush=True)
            await asyncio.Event().wait()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    asyncio.run(main(args[0], args[1], args[2], int(args[3]) if len(args) > 3 else 0))
