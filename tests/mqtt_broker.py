"""A real mosquitto for the tests, on a free local port, that a test can kill and restart.

    with Mosquitto(tmp_path) as broker:       # or the `mosquitto` fixture (tests/conftest.py)
        broker.url                            # mqtt://127.0.0.1:<port>
        broker.kill()                         # SIGKILL: clients see the connection drop
        broker.start()                        # again, on the same port

The config is generated: one listener on 127.0.0.1, anonymous access, persistence off (on when asked,
in the test's own directory). mosquitto is the Debian package (`make system-deps`); without it the
helper raises `MosquittoMissing` and the fixture fails the test with that message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt

CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
START_TIMEOUT_S = 10.0


class MosquittoMissing(RuntimeError):
    pass


def find_mosquitto() -> str:
    found = shutil.which("mosquitto")
    if found:
        return found
    for path in CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    raise MosquittoMissing(
        "mosquitto is not installed (looked on PATH and in /usr/sbin): the MQTT tests run against a real "
        "broker. Install the Debian package: `make system-deps` (or `apt-get install mosquitto`)."
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    def __init__(self, workdir: str | os.PathLike[str], *, port: int | None = None, persistence: bool = False,
                 users: dict[str, str] | None = None, tls: tuple[Path, Path] | None = None,
                 start: bool = True) -> None:
        """``users``: name -> password (anonymous access off); ``tls``: (certificate, key) PEM files."""
        self.binary = find_mosquitto()
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self._auto_port = port is None
        self._started = False  # a restart keeps its port: clients come back to it
        self.port = port or free_port()
        self.persistence = persistence
        self.users = users
        self.tls = tls
        self.config = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_config()
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if self.users else 'true'}",
            "set_tcp_nodelay true",  # without it Nagle adds up to 40 ms per hop (see apm/io/mqtt/link.py)
            # As root, mosquitto would switch to user "mosquitto", who cannot write the test's directory.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if self.users:
            passwords = self.dir / "passwords"
            passwords.write_text("")
            for name, password in self.users.items():
                subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b",
                                str(passwords), name, password], check=True, capture_output=True)
            lines.append(f"password_file {passwords}")
        if self.tls:
            lines += [f"certfile {self.tls[0]}", f"keyfile {self.tls[1]}"]
        if self.persistence:
            # Save after every change, so a SIGKILL loses no subscription of a persistent session.
            lines += ["persistence true", f"persistence_location {self.dir}/", "autosave_interval 1",
                      "autosave_on_changes true"]
        else:
            lines.append("persistence false")
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        if self.running:
            raise RuntimeError("mosquitto is already running")
        for _ in range(3):
            if self._launch():
                self._started = True
                return
            if self._started or not self._auto_port:
                break
            # The free port was taken between our probe and mosquitto's bind (tests in parallel).
            self.port = free_port()
            self._write_config()
        raise RuntimeError(f"mosquitto exited on port {self.port}:\n{self.log.read_text(errors='replace')[-2000:]}")

    def _launch(self) -> bool:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not accepts(self.host, self.port):
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not accept connections on port {self.port} within "
                                   f"{START_TIMEOUT_S} s")
            time.sleep(0.02)
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, no save of in-memory state."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, but nothing is answered (no PUBACK) until `thaw`."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class Observer:
    """An independent aiomqtt client that records every message on its filters (for assertions); it
    reconnects by itself when the broker comes back.

    ``persistent=True``: no clean session and QoS 1 subscriptions, so the broker keeps what arrives
    while it is away, as a cloud consumer would.
    """

    def __init__(self, url: str, *filters: str, client_id: str = "observer", persistent: bool = False) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.username, self.password = parts.username, parts.password  # mqtt://user:password@host:port
        self.filters = filters
        self.client_id = client_id
        self.persistent = persistent
        self.messages: list[tuple[str, bytes, bool]] = []
        self.connected = False
        self.client: aiomqtt.Client | None = None  # while connected: to publish with
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Observer:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(ready))
        await asyncio.wait_for(ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, ready: asyncio.Event) -> None:
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=self.client_id,
                                          username=self.username, password=self.password,
                                          clean_session=not self.persistent, timeout=5) as client:
                    for f in self.filters:
                        await client.subscribe(f, qos=1 if self.persistent else 0)
                    self.client = client
                    self.connected = True
                    ready.set()
                    async for m in client.messages:
                        self.messages.append((str(m.topic), bytes(m.payload), bool(m.retain)))
                        self._changed.set()
            except aiomqtt.MqttError:
                pass
            finally:
                self.connected = False
                self.client = None
            await asyncio.sleep(0.05)

    def payloads(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]

    def last(self, topic: str) -> bytes | None:
        found = self.payloads(topic)
        return found[-1] if found else None

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until ``predicate()`` holds; AssertionError (with what was seen) after ``timeout``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout} s; observer saw {len(self.messages)} messages: "
                                     f"{[(t, p[:80]) for t, p, _ in self.messages[-10:]]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.1))
