"""The embedded broker bounds what a client may send (issue 14): a packet announcing more than
``max_packet_bytes`` is refused before its body is read and its connection closed, and everyone else is
served as before. A logged-in but hostile client cannot make the Pi buffer hundreds of MB."""

from __future__ import annotations

import asyncio
import contextlib
import struct

import aiomqtt
import pytest

from apm.io.mqtt.auth import Login, Policy, Role, UserTable
from apm.io.mqtt.broker import MAX_PACKET_BYTES, EmbeddedBroker, PacketBound, PacketTooLarge

pytestmark = pytest.mark.timeout(60)

SERIAL = "APMBOUND1"
HUGE = 200 * 1024 * 1024


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def text(s: str) -> bytes:
    return struct.pack("!H", len(s)) + s.encode()


def connect(login: Login | None, client_id: str, announced: int | None = None) -> bytes:
    flags = 0x02 | (0xC0 if login else 0)  # clean session, user name and password
    body = text("MQTT") + bytes([4, flags]) + struct.pack("!H", 60) + text(client_id)
    if login:
        body += text(login.username) + text(login.password)
    return b"\x10" + remaining_length(len(body) if announced is None else announced) + body


def publish_header(topic: str, announced: int) -> bytes:
    return b"\x30" + remaining_length(announced) + text(topic)


# --- the framer, pure -------------------------------------------------------------------------------


def test_the_bound_follows_packets_across_any_chunking() -> None:
    ok = publish_header("a/b", 5 + 60) + b"x" * 60
    stream = connect(None, "c") + ok + ok
    for size in (1, 2, 7, len(stream)):
        bound = PacketBound(1024)
        for i in range(0, len(stream), size):
            bound.feed(stream[i:i + size])
    at_limit = b"\x30" + remaining_length(1024) + b"y" * 1024
    PacketBound(1024).feed(at_limit + at_limit)
    for size in (1, 3, 100):
        bound = PacketBound(1024)
        data = ok + publish_header("a/b", 1025)
        with pytest.raises(PacketTooLarge):
            for i in range(0, len(data), size):
                bound.feed(data[i:i + size])
    with pytest.raises(PacketTooLarge):  # at its last length byte, before any byte of its body
        PacketBound(1024).feed(b"\x30" + remaining_length(HUGE))


# --- on the broker ---------------------------------------------------------------------------------


def users() -> tuple[Policy, Login, Login, Login]:
    table, device = UserTable().ensure_device()
    table, reader = table.add("ha", Role("reader"))
    table, hostile = table.add("goe-012345", Role("goe", "012345"))
    return Policy(SERIAL, table), device, reader, hostile


async def closed(reader: asyncio.StreamReader, timeout: float = 10.0) -> bool:
    """True when the broker closes the connection (EOF or a reset) within ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                if not await reader.read(4096):
                    return True
            except ConnectionError:
                return True


def test_a_logged_in_client_announcing_200_mb_is_disconnected_and_the_others_are_served() -> None:
    policy, device, reader, hostile = users()

    async def main() -> None:
        async with EmbeddedBroker(port=0, policy=policy) as b:
            def client(login: Login, name: str) -> aiomqtt.Client:
                return aiomqtt.Client("127.0.0.1", b.port, identifier=name, timeout=5,
                                      username=login.username, password=login.password)

            async with client(device, "dev") as dev, client(reader, "ha") as ha:
                await ha.subscribe(f"apm/{SERIAL}/#")
                # Logged in, then a PUBLISH that says 200 MB follow (and some of them do).
                r, w = await asyncio.open_connection("127.0.0.1", b.port)
                w.write(connect(hostile, "go-e-012345"))
                await w.drain()
                connack = await asyncio.wait_for(r.readexactly(4), 5)
                assert connack == b"\x20\x02\x00\x00", "logged in"
                w.write(publish_header("go-eCharger/012345/nrg", HUGE) + b"z" * 65536)
                with contextlib.suppress(ConnectionError):
                    await w.drain()
                assert await closed(r)
                w.close()
                # Before logging in: a CONNECT that announces 200 MB.
                r2, w2 = await asyncio.open_connection("127.0.0.1", b.port)
                w2.write(b"\x10" + remaining_length(HUGE) + b"\x00\x04MQTT")
                await w2.drain()
                assert await closed(r2)
                w2.close()
                assert b.refused_packets == 2
                # The others go on: a message of the device's reaches the reader, and one at the bound passes.
                big = b"{" + b" " * (MAX_PACKET_BYTES - 200) + b"}"
                await dev.publish(f"apm/{SERIAL}/status", b'{"alive": true}', qos=1)
                await dev.publish(f"apm/{SERIAL}/eco/plan", big, qos=1)
                got: list[tuple[str, int]] = []
                async with asyncio.timeout(10):
                    async for m in ha.messages:
                        got.append((str(m.topic), len(bytes(m.payload))))
                        if len(got) == 2:
                            break
                assert got == [(f"apm/{SERIAL}/status", 15), (f"apm/{SERIAL}/eco/plan", len(big))]

    asyncio.run(main())
