"""Each charger's link (protocol, connected, last report, limit) retained on ``charger/<id>/link``, for
Home Assistant (`apm.io.mqtt.discovery.link_messages`): the same values the live view and `apm info` show
(`apm.services.runtime.charger_links`).

A change of protocol, connection or limit, and a charger's first report, are published at once (within
one look, LOOK_EVERY_S); a newer last report alone at most every SEND_EVERY_S, since a charger reports
every few seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from apm.core.throttle import Throttle
from apm.io.clock import Clock
from apm.io.mqtt.link import MqttLink
from apm.io.mqtt.messages import ChargerLinkPayload, iso_ts
from apm.io.mqtt.topics import CHARGER_LINK, OutMessage, Topics

LOOK_EVERY_S = 1.0  # clock seconds between two looks at the links
SEND_EVERY_S = 10.0  # clock seconds: a charger's link is sent no more often unless what matters changed

Links = Mapping[str, Mapping[str, Any]]


def link_payload(link: Mapping[str, Any]) -> ChargerLinkPayload:
    """One charger's link (as `charger_links` gives it; its time in clock seconds) as the topic's payload."""
    at, limit = link.get("last_report_at"), link.get("limit_a")
    return ChargerLinkPayload(protocol=link["protocol"], connected=link.get("connected"),
                              last_report_at=iso_ts(at) if at is not None else None,
                              limit_a=round(float(limit), 1) if limit is not None else None)


class LinkPublisher:
    """Which link messages are due (sans I/O: links and the time in, messages out)."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self._throttle: Throttle[str] = Throttle(SEND_EVERY_S)  # per charger

    def due(self, now: float, links: Links) -> list[OutMessage]:
        out = []
        for cid, link in links.items():
            p = link_payload(link)
            # what matters at once: protocol, connection, limit and whether it ever reported
            matters = (p.protocol, p.connected, p.limit_a, p.last_report_at is None)
            if self._throttle.due(cid, now, matters, p):
                out.append(self.topics.message(CHARGER_LINK, p, charger=cid))
        return out


async def publish_links(link: MqttLink, topics: Topics, links: Callable[[], Links], clock: Clock) -> None:
    """Look at the links every LOOK_EVERY_S and publish what is due, until cancelled."""
    publisher = LinkPublisher(topics)
    while True:
        for m in publisher.due(clock.now(), links()):
            link.publish(m)
        await clock.sleep(LOOK_EVERY_S)
