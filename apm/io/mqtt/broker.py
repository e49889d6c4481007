"""The embedded MQTT broker (amqtt) that `apm run` starts when no broker is configured.

    policy = Policy(serial, table)                        # apm.io.mqtt.auth: users, roles, topic ACL
    async with EmbeddedBroker(port=1883, host="0.0.0.0", policy=policy) as broker:   # port=0: any free
        async with MqttLink.for_device(topics, config.broker, url=broker.url, ...) as link:
            ...

With a ``policy`` every client logs in and every publish, subscription and delivery is checked against
its role (`Policy.may`); anonymous clients are refused. Without one (simulations and tests in one process) it is
anonymous, and then it only listens on a loopback address. It runs in the device's own event loop,
listens on 127.0.0.1 by default, holds retained messages in memory and has no $SYS topics.

amqtt 0.12 drops an existing session with the client id of a new connection (its subscriptions) before
it asks the auth plugins: anyone could cut the device off its own subscriptions by connecting with its
client id and no password. `_GuardedBroker` checks the login first, and refuses a client id that another
user's session holds. Checked with amqtt 0.12.1 on Python 3.11 against aiomqtt 2.5 clients: publish and
subscribe, QoS 1 acknowledgements, retained messages for late subscribers, and the last will on an
abrupt disconnect (tests/integration/test_broker.py).

amqtt 0.12 reads a packet of any announced length (up to MQTT's 256 MB): a client that announces a huge
PUBLISH and sends it makes the device buffer all of it. Every connection's bytes pass through a
`PacketBound` (a framer that only counts: fixed header, remaining length, body), which refuses a packet
announcing more than ``max_packet_bytes`` (64 KiB; the device's own largest message is a few KiB)
before its body is read; the connection is closed and the others go on.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

from amqtt.adapters import ReaderAdapter, StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, BrokerError, MQTTError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session
from amqtt.utils import gen_client_id

from apm.io.mqtt.auth import Policy

log = logging.getLogger(__name__)

# amqtt logs every connection and packet at INFO; the device's own log says what matters.
_NOISY_LOGGERS = ("amqtt", "transitions")


class _BareConnectionFilter(logging.Filter):
    """Drops amqtt's error for a TCP connection that closes without a packet: a health check or a
    port probe (the tests', a service manager's), which is not the device's error."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        # A refused login is logged by the policy, once per user, without amqtt's echo per attempt.
        return "No data to decode MQTT packet fixed header" not in text and _REFUSED not in text


_BARE_CONNECTION_FILTER = _BareConnectionFilter()


_REFUSED = "apm: connection refused"
MAX_PACKET_BYTES = 64 * 1024


class PacketTooLarge(AMQTTError):
    """A packet announced more than the bound. An AMQTTError: amqtt then closes the connection (a
    MQTTError would make its reader skip the packet and read its body as the next one)."""


class PacketBound:
    """Follows the MQTT framing of a byte stream (sans-IO) and raises `PacketTooLarge` as soon as a
    packet's remaining length is known to exceed ``limit``. Cost: a few operations per header byte,
    one subtraction per body chunk."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._body = 0  # body bytes still to come of the current packet
        self._in_length = False  # reading the remaining length's bytes
        self._length = 0
        self._shift = 0

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._body:
                take = min(self._body, n - i)
                self._body -= take
                i += take
            elif not self._in_length:  # the fixed header's first byte: type and flags
                self._in_length, self._length, self._shift = True, 0, 0
                i += 1
            else:
                byte = data[i]
                i += 1
                self._length += (byte & 0x7F) << self._shift
                self._shift += 7
                if self._length > self.limit:
                    raise PacketTooLarge(f"a packet of more than {self.limit} bytes (at least {self._length})")
                if not byte & 0x80 or self._shift > 21:  # amqtt refuses a fifth length byte itself
                    self._in_length, self._body = False, self._length


class _BoundedReader(ReaderAdapter):
    def __init__(self, reader: ReaderAdapter, limit: int) -> None:
        self._reader = reader
        self.bound = PacketBound(limit)
        self.refused: PacketTooLarge | None = None

    async def read(self, n: int = -1) -> bytes:
        if self.refused is not None:
            raise self.refused
        data = await self._reader.read(n)
        try:
            self.bound.feed(data)
        except PacketTooLarge as exc:
            self.refused = exc
            raise
        return data

    def feed_eof(self) -> None:
        self._reader.feed_eof()


class _BoundedBroker(Broker):
    """amqtt's broker with every connection's packets bounded (see the module doc)."""

    max_packet_bytes = MAX_PACKET_BYTES
    refused_packets = 0

    async def stream_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               listener_name: str) -> None:
        bounded = _BoundedReader(StreamReaderAdapter(reader), self.max_packet_bytes)
        try:
            await self._client_connected(listener_name, bounded, StreamWriterAdapter(writer))
        finally:
            if bounded.refused is not None:
                self.refused_packets += 1  # the first at WARNING: a client in a loop must not flood the log
                log.log(logging.WARNING if self.refused_packets == 1 else logging.DEBUG,
                        "embedded MQTT broker: closed a connection from %s: %s",
                        writer.get_extra_info("peername"), bounded.refused)
                writer.close()


class _PolicyAuth(BaseAuthPlugin):
    """Every client logs in with a user of the policy."""

    @dataclass
    class Config:
        policy: Any = None

    async def authenticate(self, *, session: Session) -> bool | None:
        policy: Policy = self.context.config.policy  # type: ignore[union-attr]
        return policy.login(session.username, session.password, session.client_id) is not None


class _GuardedBroker(_BoundedBroker):
    """amqtt's broker with the login checked before an existing session is touched (see the module doc)."""

    def __init__(self, config: dict[str, Any], policy: Policy) -> None:
        super().__init__(config)
        self._policy = policy

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str,
                                         remote_port: int) -> tuple[BrokerProtocolHandler, Session]:
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except (MQTTError, PacketTooLarge):
            await writer.close()
            raise
        if not self._admit(session):
            handler.attach(session, reader, writer)
            await handler.mqtt_connack_authorize(False)
            await writer.close()
            raise AMQTTError(_REFUSED)
        # From here as amqtt 0.12.1 does it.
        if session.clean_session:
            if session.client_id:
                await self._delete_session(session.client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif session.client_id in self._sessions:
            existing, _ = self._sessions[session.client_id]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "keep_alive", "username",
                         "password"):
                setattr(existing, name, getattr(session, name))
            session = existing
            session.parent = 1
        else:
            session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return handler, session

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        # Answered here without a suspension point: amqtt asks its topic plugins through tasks, and
        # while one waits, amqtt's broadcast loop iterates the subscriptions that a client's SUBSCRIBE
        # meanwhile changes ("dictionary changed size during iteration").
        return self._policy.may(session.username if session is not None else None, str(action), topic)

    def _admit(self, session: Session) -> bool:
        if self._policy.login(session.username, session.password, session.client_id) is None:
            return False
        held = self._sessions.get(session.client_id) if session.client_id else None
        if held is not None and held[0].username != session.username:
            self._policy.note(str(session.username), f"client id {session.client_id}",
                               f"refused {session.username!r}: client id {session.client_id!r} "
                               "belongs to another user's session")
            self._policy.refused_logins += 1
            return False
        return True


class EmbeddedBrokerError(RuntimeError):
    """The broker could not start; the message says why and what to do."""


class EmbeddedBroker:
    def __init__(self, port: int = 1883, host: str = "127.0.0.1", *, policy: Policy | None = None,
                 quiet: bool = True, max_packet_bytes: int = MAX_PACKET_BYTES) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range (0..65535)")
        if policy is None and not _loopback(host):
            raise ValueError(f"an anonymous broker listens on a loopback address only, not {host!r}: "
                             "give it a policy (users and their roles)")
        if max_packet_bytes < 1024:
            raise ValueError(f"max_packet_bytes {max_packet_bytes} is below 1024: the device's own messages")
        self.host = host
        self.policy = policy
        self.max_packet_bytes = max_packet_bytes
        self._requested_port = port
        self._port: int | None = None
        self._broker: Broker | None = None
        if quiet:
            for name in _NOISY_LOGGERS:
                logger = logging.getLogger(name)
                if logger.level == logging.NOTSET:
                    logger.setLevel(logging.WARNING)
            broker_log = logging.getLogger("amqtt.broker")
            if _BARE_CONNECTION_FILTER not in broker_log.filters:
                broker_log.addFilter(_BARE_CONNECTION_FILTER)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the embedded broker is not running")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    def _config(self) -> dict[str, Any]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        # Only our plugins: the default set adds $SYS publishing and packet logging the device does not
        # want; amqtt refuses every client when no auth plugin answers, hence the anonymous one.
        plugins: dict[str, Any] = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        if self.policy is not None:
            # Topics are checked by _GuardedBroker itself.
            plugins = {f"{__name__}._PolicyAuth": {"policy": self.policy}}
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{self._requested_port}"}},
            "plugins": plugins,
        }

    async def start(self) -> None:
        if self._broker is not None:
            raise RuntimeError("the embedded broker is already running")
        if self._requested_port:
            self._check_port_free()  # amqtt would log a traceback first; the message says it all
        broker = (_BoundedBroker(self._config()) if self.policy is None
                  else _GuardedBroker(self._config(), self.policy))
        broker.max_packet_bytes = self.max_packet_bytes
        try:
            await broker.start()
        except BrokerError as exc:
            raise EmbeddedBrokerError(self._explain(exc)) from exc
        self._broker = broker
        # With port 0 the kernel chose; read the bound port back from the listening socket.
        server = broker._servers["default"].instance  # amqtt keeps no public handle to it
        self._port = int(server.sockets[0].getsockname()[1])
        log.info("embedded MQTT broker listening on %s (%s)", self.url,
                 "anonymous" if self.policy is None else f"{len(self.policy.users)} users, logins required")

    @property
    def refused_packets(self) -> int:
        """Connections closed for a packet above ``max_packet_bytes``."""
        return self._broker.refused_packets if isinstance(self._broker, _BoundedBroker) else 0

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()
        self._port = None

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _check_port_free(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
            try:
                probe.bind((self.host, self._requested_port))
            except OSError as exc:
                raise EmbeddedBrokerError(self._explain(exc)) from exc

    def _explain(self, exc: BaseException) -> str:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        where = f"{self.host}:{self._requested_port}"
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            return (f"cannot start the embedded MQTT broker: {where} is in use (another broker?); "
                    f"use it with --broker mqtt://{where}, or pick another port")
        return f"cannot start the embedded MQTT broker on {where}: {cause or exc}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
