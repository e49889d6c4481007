"""The embedded MQTT broker (amqtt) that `apm run` starts when no broker is configured.

    async with EmbeddedBroker(port=1883) as broker:      # port=0: any free port
        async with MqttLink.for_device(topics, config.broker, url=broker.url, ...) as link:
            ...

It runs in the device's own event loop, listens on 127.0.0.1 by default (anonymous access, so it is
not offered to the network unless ``host`` says so), holds retained messages in memory and has no
$SYS topics. Checked with amqtt 0.12.1 on Python 3.11 against aiomqtt 2.5 clients: publish and
subscribe, QoS 1 acknowledgements, retained messages for late subscribers, and the last will on an
abrupt disconnect (tests/integration/test_broker.py).
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any

from amqtt.broker import Broker
from amqtt.errors import BrokerError

log = logging.getLogger(__name__)

# amqtt logs every connection and packet at INFO; the device's own log says what matters.
_NOISY_LOGGERS = ("amqtt", "transitions")


class _BareConnectionFilter(logging.Filter):
    """Drops amqtt's error for a TCP connection that closes without a packet: a health check or a
    port probe (the tests', a service manager's), which is not the device's error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No data to decode MQTT packet fixed header" not in record.getMessage()


_BARE_CONNECTION_FILTER = _BareConnectionFilter()


class EmbeddedBrokerError(RuntimeError):
    """The broker could not start; the message says why and what to do."""


class EmbeddedBroker:
    def __init__(self, port: int = 1883, host: str = "127.0.0.1", *, quiet: bool = True) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range (0..65535)")
        self.host = host
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
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{self._requested_port}"}},
            # Only the anonymous-auth plugin: amqtt refuses every client when no auth plugin answers,
            # and the default set adds $SYS publishing and packet logging the device does not want.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    async def start(self) -> None:
        if self._broker is not None:
            raise RuntimeError("the embedded broker is already running")
        if self._requested_port:
            self._check_port_free()  # amqtt would log a traceback first; the message says it all
        broker = Broker(self._config())
        try:
            await broker.start()
        except BrokerError as exc:
            raise EmbeddedBrokerError(self._explain(exc)) from exc
        self._broker = broker
        # With port 0 the kernel chose; read the bound port back from the listening socket.
        server = broker._servers["default"].instance  # amqtt keeps no public handle to it
        self._port = int(server.sockets[0].getsockname()[1])
        log.info("embedded MQTT broker listening on %s", self.url)

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
