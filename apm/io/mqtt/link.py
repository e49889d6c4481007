"""The device's MQTT edge: one aiomqtt connection, kept up for as long as the device runs.

    async with MqttLink.for_device(topics, config.broker, outbox=box, birth=discovery_msgs) as link:
        link.publish(topics.reading_message(reading))        # never blocks, never raises for the network
        link.add_record(topics.energy_record(hourly))         # durable: fsync'ed, sent with QoS 1
        await link.subscribe(topics.all_charger_states)
        async for msg in link.messages():                     # survives reconnects
            ...

The device never waits for the broker. `publish` puts a message in a bounded in-memory queue keyed
by topic, where the latest value wins (a stale reading is not worth replaying) and the oldest topic
is dropped when the queue is full; a message may also carry a time to live. `add_record` appends to
the persistent `apm.io.storage.outbox.Outbox` before it returns; after every (re)connect the records go out in
order with QoS 1, each acknowledged in the outbox only once the broker's PUBACK has come back
(aiomqtt's QoS 1 ``publish`` returns then), so a record is delivered at least once and never lost.

On every connect, in this order: the ``birth`` messages (Home Assistant discovery, retained), the
retained "online" status (the will, registered in CONNECT, is a retained "offline"), the
subscriptions, then the queue and the outbox. A broker that cannot be reached is retried with
exponential backoff, bounded and jittered (`Backoff`). A clean exit publishes "offline" itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt

from apm.core.config import BrokerConfig
from apm.core.meter_state import Baseline
from apm.io.mqtt.topics import OFFLINE, ONLINE, OutMessage, Topics, decode_json, encode_energy, encode_json
from apm.io.storage.outbox import Outbox
from apm.io.tasks import stop

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class LinkError(ValueError):
    """A link that cannot be set up as asked (bad URL, no outbox for records, an unreadable CA file)."""


def link_settings(broker: BrokerConfig) -> dict[str, Any]:
    """The options of an `MqttLink` that come from the configuration's broker: login and TLS. Every
    link the device opens (its own, the balancer's, Smart eco's) takes them from here."""
    return {"username": broker.username, "password": broker.password, "tls": broker.tls,
            "ca_file": broker.ca_file}


def make_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verifies the broker's certificate and host name against ``ca_file`` (PEM), else the system's CAs."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise LinkError(f"CA file {ca_file}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before reconnect attempt n (0-based): min(max_s, initial_s * factor**n), less up to
    ``jitter`` of it at random, so that devices that lost the same broker do not return in step."""

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.initial_s <= self.max_s and self.factor >= 1 and 0 <= self.jitter < 1):
            raise ValueError(f"bad backoff {self}: need 0 < initial_s <= max_s, factor >= 1, 0 <= jitter < 1")

    def delay(self, attempt: int, rand: float) -> float:
        """``rand`` in [0, 1]; the result lies in [(1 - jitter) * base, base] and never above max_s."""
        base = self.max_s
        if attempt < 256:  # past that factor**attempt may overflow; the cap has long been reached
            base = min(self.max_s, self.initial_s * self.factor ** max(attempt, 0))
        return base * (1.0 - self.jitter * min(max(rand, 0.0), 1.0))


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str, *, username: str | None = None, password: str | None = None,
              tls: bool = False) -> BrokerAddress:
        """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...``; explicit credentials win."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise LinkError(f"{url!r} is not a broker URL: {exc}") from None
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise LinkError(f"{url!r} is not a broker URL (mqtt://host[:port] or mqtts://host[:port])")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise LinkError(f"{url!r}: a broker URL has no path, query or fragment")
        return cls(
            host=parts.hostname,
            port=port or DEFAULT_PORTS[parts.scheme],
            tls=tls or parts.scheme == "mqtts",
            username=username if username is not None else (unquote(parts.username) if parts.username else None),
            password=password if password is not None else (unquote(parts.password) if parts.password else None),
        )

    @property
    def url(self) -> str:
        """The URL without credentials, for logs and status."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message from a subscription."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 0

    def json(self) -> dict[str, Any]:
        return decode_json(self.payload)


@dataclass(frozen=True, slots=True)
class LinkStats:
    connected: bool
    broker: str
    connects: int
    last_error: str | None
    queued: int  # ordinary messages waiting
    published: int
    dropped: int  # queue full: the oldest topic's message was dropped
    expired: int  # waited longer than its ttl_s
    records_pending: int
    records_sent: int
    records_dropped: int  # the outbox was full: its oldest records were dropped unsent
    incoming_dropped: int  # the consumer of messages() fell behind


class _Stop(Exception):
    """The link is closing: ends a session normally."""


class MqttLink:
    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        tls_context: ssl.SSLContext | None = None,
        ca_file: str | None = None,
        status_topic: str | None = None,
        birth: Sequence[OutMessage] = (),
        subscriptions: Iterable[str | tuple[str, int]] = (),
        outbox: Outbox | None = None,
        outbox_topic: str | None = None,
        check_record: Callable[[Mapping[str, Any]], object] = encode_json,
        queue_limit: int = 256,
        incoming_limit: int = 1024,
        backoff: Backoff = Backoff(),
        keepalive_s: int = 30,
        timeout_s: float = 10.0,
        close_timeout_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        if (outbox is None) != (outbox_topic is None):
            raise LinkError("an outbox needs an outbox_topic, and an outbox_topic an outbox")
        if queue_limit < 1 or incoming_limit < 1:
            raise LinkError("queue_limit and incoming_limit must be at least 1")
        # A CA file means TLS: nobody names a CA for a plain connection.
        self.address = BrokerAddress.parse(url, username=username, password=password,
                                           tls=tls or ca_file is not None or tls_context is not None)
        self.client_id = client_id
        if tls_context is None and self.address.tls:
            tls_context = make_tls_context(ca_file)  # read now: a bad file is an error at start, not a retry loop
        self._tls_context = tls_context
        self._status_topic = status_topic
        self._birth = tuple(birth)
        self._subs: dict[str, int] = {}
        for sub in subscriptions:
            topic_filter, qos = (sub, 0) if isinstance(sub, str) else sub
            self._subs[topic_filter] = qos
        self._outbox = outbox
        self._outbox_topic = outbox_topic
        self._check_record = check_record
        self._queue_limit = queue_limit
        self._backoff = backoff
        self._keepalive_s = keepalive_s
        self._timeout_s = timeout_s
        self._close_timeout_s = close_timeout_s
        self._rng = rng or random.Random()

        self._queue: OrderedDict[str, tuple[OutMessage, float]] = OrderedDict()
        self._queue_wake = asyncio.Event()
        self._records_wake = asyncio.Event()
        self._incoming: asyncio.Queue[Incoming | None] = asyncio.Queue(incoming_limit)
        self._connected = asyncio.Event()
        self._closing = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

        self._connects = 0
        self._last_error: str | None = None
        self._published = 0
        self._dropped = 0
        self._expired = 0
        self._records_sent = 0
        self._incoming_dropped = 0

    @classmethod
    def for_device(
        cls,
        topics: Topics,
        broker: BrokerConfig,
        *,
        url: str | None = None,
        outbox: Outbox | None = None,
        birth: Sequence[OutMessage] = (),
        client_id: str | None = None,
        **options: Any,
    ) -> MqttLink:
        """The device's link: status and will on ``topics.status``, records to ``topics.energy_hourly``.

        ``url`` (e.g. an `apm.io.mqtt.broker.EmbeddedBroker`'s) is used when ``broker.url`` is None.
        """
        target = broker.url or url
        if target is None:
            raise LinkError("no broker URL: configure one (--broker mqtt://host:port) or start the embedded broker")
        return cls(
            target,
            client_id=client_id or f"apm-{topics.serial}",
            **link_settings(broker),
            status_topic=topics.status,
            birth=birth,
            outbox=outbox,
            outbox_topic=topics.energy_hourly if outbox is not None else None,
            check_record=encode_energy,
            **options,
        )

    # --- the device's side -----------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """True once connected (birth, status and subscriptions done); False if ``timeout`` passed."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def publish(self, msg: OutMessage) -> None:
        """Queue a message; the latest per topic wins. Sent in order of last update once connected."""
        if self._closed:
            log.debug("link closed: not sending %s", msg.topic)
            return
        self._queue.pop(msg.topic, None)
        self._queue[msg.topic] = (msg, _now())
        while len(self._queue) > self._queue_limit:
            self._queue.popitem(last=False)
            self._dropped += 1
        self._queue_wake.set()

    def add_record(self, record: Mapping[str, Any], *, baseline: Baseline | None = None) -> int:
        """Store a record in the outbox (durably, before returning) and wake the sender; its outbox id.

        The record is checked first (for the device: a JSON object with a string ``id``), so a bad
        record fails here rather than sitting in the outbox. ``baseline`` (the hourly baseline once the
        record's hour is closed) goes into the same write where the outbox can keep it (the flash image).
        """
        if self._outbox is None:
            raise LinkError("this link has no outbox")
        self._check_record(record)
        rid = self._outbox.add(record, baseline=baseline)
        self._records_wake.set()
        return rid

    async def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        """Subscribe now if connected, and again after every reconnect."""
        self._subs[topic_filter] = qos
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):  # the session is ending; the next one subscribes
                await client.subscribe(topic_filter, qos, timeout=self._timeout_s)

    async def messages(self) -> AsyncIterator[Incoming]:
        """Messages of all subscriptions, across reconnects, until the link closes. One consumer."""
        while True:
            item = await self._incoming.get()
            if item is None:
                self._incoming.put_nowait(None)  # let a later call end too
                return
            yield item

    @property
    def stats(self) -> LinkStats:
        pending = len(self._outbox.pending()) if self._outbox is not None else 0
        return LinkStats(
            connected=self.is_connected, broker=self.address.url, connects=self._connects,
            last_error=self._last_error, queued=len(self._queue), published=self._published,
            dropped=self._dropped, expired=self._expired, records_pending=pending,
            records_sent=self._records_sent, incoming_dropped=self._incoming_dropped,
            records_dropped=self._outbox.dropped if self._outbox is not None else 0,
        )

    # --- lifetime --------------------------------------------------------------------------------

    async def __aenter__(self) -> MqttLink:
        """Starts connecting in the background and returns at once: the device does not wait."""
        if self._task is not None:
            raise RuntimeError("an MqttLink is entered once")
        self._task = asyncio.create_task(self._supervise(), name=f"mqtt-link {self.client_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Send what is queued, publish "offline" and disconnect (within ``close_timeout_s``)."""
        self._closing.set()
        self._records_wake.set()
        task = self._task
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), self._close_timeout_s)
            except TimeoutError:
                log.warning("MQTT link did not close in %.1f s; dropping the connection", self._close_timeout_s)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except asyncio.CancelledError:
                task.cancel()
                raise
        self._closed = True
        self._connected.clear()
        self._end_messages()

    # --- inside ----------------------------------------------------------------------------------

    def _make_client(self) -> aiomqtt.Client:
        will = None
        if self._status_topic is not None:
            will = aiomqtt.Will(self._status_topic, OFFLINE.encode(), qos=1, retain=True)
        return aiomqtt.Client(
            self.address.host,
            self.address.port,
            username=self.address.username,
            password=self.address.password,
            identifier=self.client_id,
            will=will,
            keepalive=self._keepalive_s,
            timeout=self._timeout_s,
            tls_context=self._tls_context if self.address.tls else None,
            # Small messages at once: without it Nagle holds a headroom behind the reading sent just
            # before until the broker's delayed ACK (~40 ms on Linux): the meter-to-setpoint latency.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )

    async def _supervise(self) -> None:
        attempt = 0
        while not self._closing.is_set():
            try:
                async with self._make_client() as client:
                    attempt = 0
                    self._connects += 1
                    log.info("MQTT connected to %s as %s", self.address.url, self.client_id)
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                self._note_error(exc, logging.WARNING)
            except Exception as exc:  # a bug must not stop the device; it is logged in full
                log.exception("MQTT link failed")
                self._last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self._client = None
                self._connected.clear()
            if self._closing.is_set():
                break
            delay = self._backoff.delay(attempt, self._rng.random())
            attempt += 1
            log.debug("MQTT reconnect attempt %d in %.2f s", attempt, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)

    def _note_error(self, exc: BaseException, level: int) -> None:
        text = str(exc) or type(exc).__name__
        if exc.__cause__ is not None:  # aiomqtt's "Disconnected during message iteration" hides why
            text = f"{text} ({exc.__cause__})"
        if text != self._last_error:  # a broker that stays away is logged once, not every attempt
            log.log(level, "MQTT %s: %s", self.address.url, text)
        self._last_error = text

    async def _session(self, client: aiomqtt.Client) -> None:
        for m in self._birth:
            await client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
        if self._status_topic is not None:
            await client.publish(self._status_topic, ONLINE.encode(), qos=1, retain=True)
        done: set[str] = set()
        while todo := [f for f in self._subs if f not in done]:  # subscribe() may add some meanwhile
            for f in todo:
                await client.subscribe(f, self._subs[f])
                done.add(f)
        self._client = client
        self._connected.set()
        self._last_error = None
        jobs: list[Awaitable[None]] = [self._read(client), self._send(client), self._stop_when_closing()]
        if self._outbox is not None:
            jobs.append(self._flush(client))
        try:
            await _until_first_failure(jobs)
        except _Stop:
            self._client = None
            self._connected.clear()
            await self._drain(client)
            await self._drain_records(client)
            if self._status_topic is not None:
                await client.publish(self._status_topic, OFFLINE.encode(), qos=1, retain=True)

    async def _stop_when_closing(self) -> None:
        await self._closing.wait()
        raise _Stop

    async def _read(self, client: aiomqtt.Client) -> None:
        async for m in client.messages:  # raises MqttError when the connection is lost
            payload = m.payload
            if isinstance(payload, str):
                payload = payload.encode()
            elif not isinstance(payload, bytes | bytearray):
                payload = b"" if payload is None else str(payload).encode()
            self._deliver(Incoming(str(m.topic), bytes(payload), bool(m.retain), int(m.qos)))

    def _deliver(self, item: Incoming) -> None:
        if self._incoming.full():
            self._incoming.get_nowait()
            self._incoming_dropped += 1
        self._incoming.put_nowait(item)

    def _end_messages(self) -> None:
        while True:
            try:
                self._incoming.put_nowait(None)
                return
            except asyncio.QueueFull:
                self._incoming.get_nowait()

    def _take(self) -> tuple[OutMessage, float] | None:
        """The next queued message, skipping those that outlived their ttl_s."""
        now = _now()
        while self._queue:
            _, (msg, since) = self._queue.popitem(last=False)
            if msg.ttl_s is not None and now - since > msg.ttl_s:
                self._expired += 1
                continue
            return msg, since
        return None

    def _put_back(self, msg: OutMessage, since: float) -> None:
        if msg.topic not in self._queue:  # unless a newer value has come meanwhile
            self._queue[msg.topic] = (msg, since)
            self._queue.move_to_end(msg.topic, last=False)

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            item = self._take()
            if item is None:
                self._queue_wake.clear()
                await self._queue_wake.wait()
                continue
            msg, since = item
            try:
                await client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain,
                                     timeout=self._timeout_s)
            except BaseException:
                self._put_back(msg, since)
                raise
            self._published += 1

    async def _drain(self, client: aiomqtt.Client) -> None:
        while (item := self._take()) is not None:
            msg, _ = item
            await client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain, timeout=self._timeout_s)
            self._published += 1

    async def _flush(self, client: aiomqtt.Client) -> None:
        while True:
            self._records_wake.clear()
            if not await self._drain_records(client):
                await self._records_wake.wait()

    async def _drain_records(self, client: aiomqtt.Client) -> int:
        """Publish every pending record, each acked in the outbox only after its PUBACK. On closing this
        runs once more, so a record whose PUBACK the stop cut off is sent again (consumers dedupe by id)
        rather than left waiting for the next start."""
        if self._outbox is None or self._outbox_topic is None:
            return 0
        entries = self._outbox.pending()
        for entry in entries:
            await client.publish(self._outbox_topic, encode_json(entry.data), qos=1, timeout=self._timeout_s)
            self._outbox.ack(entry.id)
            self._records_sent += 1
        return len(entries)


async def _until_first_failure(jobs: Sequence[Awaitable[None]]) -> None:
    """Run the jobs until one ends; cancel the rest; re-raise the first one's exception."""
    tasks = [asyncio.ensure_future(j) for j in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await stop(*tasks)  # cancel until done: a publish's wait_for can swallow one cancel on 3.11
    errors = [t.exception() for t in tasks if t in done and not t.cancelled() and t.exception() is not None]
    # A lost connection outranks a request to stop: there is no broker left to say "offline" to.
    errors.sort(key=lambda e: isinstance(e, _Stop))
    if errors:
        raise errors[0]  # type: ignore[misc]


def _now() -> float:
    return asyncio.get_running_loop().time()
