"""The virtual serial line: a UART receiver model, and a real pty with pacing, garbling and no deadlock."""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from apm.io.serial.port import SerialSettings, configure, open_port
from han import HanReader
from sim.serial_line import CLOSE_WAIT_S, Receiver, VirtualSerialPort, uart_receive
from tests.vectors import frame, records

E8 = SerialSettings(2400, "E")
N8 = SerialSettings(2400, "N")


def core_frames(meter: str, lst: int | None = None) -> list[bytes]:
    return [frame(r) for r in records("core") if r["meter"] == meter and (lst is None or r["list"] == lst)]


KAIFA = b"".join(core_frames("kaifa"))
KAMSTRUP = b"".join(core_frames("kamstrup"))


def frames_ok(data: bytes) -> int:
    reader = HanReader()
    reader.feed(data)
    return reader.frames.frames_ok


# -- the receiver model (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize("sender", [E8, N8, SerialSettings(9600, "O", stopbits=2)], ids=str)
def test_small_clock_error_is_tolerated_like_a_uart(sender):
    """1.5 % off the sender's rate runs the full bit-level model, and still reads every byte right."""
    data = random.Random(1).randbytes(3000)
    rx = Receiver(round(sender.baud * 1.015), sender.parity, check_parity=sender.parity != "N")
    assert uart_receive(data, sender, rx) == data


def test_large_clock_error_garbles():
    rx = Receiver(round(2400 * 1.08), "E", check_parity=True)
    assert frames_ok(uart_receive(KAIFA, E8, rx)) == 0


@pytest.mark.parametrize(("data", "sender", "rx"), [
    (KAMSTRUP, N8, Receiver(2400, "E", check_parity=True)),
    (KAIFA, E8, Receiver(2400, "N")),
    (KAIFA, E8, Receiver(2400, "O", check_parity=True)),
    (KAIFA, E8, Receiver(9600, "E", check_parity=True)),
    (KAMSTRUP, N8, Receiver(9600, "N")),
    (KAMSTRUP, N8, Receiver(115200, "N")),
    (KAMSTRUP, SerialSettings(115200, "N"), Receiver(2400, "N")),
], ids=["8N1-as-8E1", "8E1-as-8N1", "8E1-as-8O1", "2400-as-9600", "N-2400-as-9600", "2400-as-115200",
        "115200-as-2400"])
def test_wrong_settings_leave_no_valid_frame(data, sender, rx):
    assert frames_ok(uart_receive(data, sender, Receiver(sender.baud, sender.parity))) > 10
    out = uart_receive(data, sender, rx)
    assert out != data
    assert frames_ok(out) == 0


def test_matching_settings_read_every_frame():
    assert frames_ok(uart_receive(KAIFA, E8, Receiver(2400, "E", check_parity=True))) == len(core_frames("kaifa"))


def test_errored_characters_follow_the_linux_rules():
    data = bytes(range(1, 40))  # no zero byte: a NUL below can only be an error marker
    # Odd parity read on an even line: every character has a parity error.
    assert uart_receive(data, E8, Receiver(2400, "O", check_parity=True)) == bytes(len(data))
    assert uart_receive(data, E8, Receiver(2400, "O", check_parity=True, ignore_errors=True)) == b""
    marked = uart_receive(data, E8, Receiver(2400, "O", check_parity=True, mark_errors=True))
    assert marked == b"".join(b"\xff\x00" + bytes((b,)) for b in data)
    # Without INPCK the characters come as received.
    assert uart_receive(data, E8, Receiver(2400, "O")) == data


def test_without_inpck_a_wrong_parity_can_pass():
    """Why `apm monitor` sets INPCK: 8N1 frames read as 8E1 without it survive (16550 resync)."""
    assert frames_ok(uart_receive(KAMSTRUP, N8, Receiver(2400, "E"))) == len(core_frames("kamstrup"))


def test_a_break_yields_one_nul_and_resync():
    # 0x00 at 2400 is low for 9 bits (start + 8 data): at 115200 that reads as breaks, not thousands of NULs.
    out = uart_receive(b"\x00" * 4, N8, Receiver(115200, "N"))
    assert 0 < len(out) <= 8
    assert set(out) == {0}
    assert uart_receive(b"\x00" * 4, N8, Receiver(115200, "N", ignore_break=True)) == b""


def test_settings_are_validated():
    with pytest.raises(ValueError, match="parity"):
        SerialSettings(2400, "X")
    with pytest.raises(ValueError, match="baud"):
        SerialSettings(0)
    assert str(SerialSettings(2400, "N")) == "2400 8N1"
    assert E8.bits_per_char == 11
    assert N8.bits_per_char == 10


# -- the real pty ----------------------------------------------------------------------------------


def read_for(port, seconds: float, want: int | None = None) -> bytes:
    data = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end and (want is None or len(data) < want):
        data += port.read(port.in_waiting or 1)
    return data


def test_receiver_settings_are_read_from_the_pty():
    with VirtualSerialPort(E8) as line:
        port = open_port(line.path, SerialSettings(9600, "E"))
        try:
            assert line.receiver() == Receiver(9600, "E", check_parity=True)
            configure(port, SerialSettings(2400, "O"))
            assert line.receiver() == Receiver(2400, "O", check_parity=True)
            configure(port, SerialSettings(2400, "N"))
            assert line.receiver() == Receiver(2400, "N")
            configure(port, SerialSettings(115200, "E"))
            assert line.receiver() == Receiver(115200, "E", check_parity=True)
        finally:
            port.close()


def test_frames_arrive_intact_at_2400_baud_pacing():
    frames = core_frames("kaifa", 1)[:3]
    data = b"".join(frames)
    with VirtualSerialPort(E8) as line:
        port = open_port(line.path, SerialSettings(2400, "E"))
        try:
            t = time.monotonic()
            line.write(data)
            took = time.monotonic() - t
            got = read_for(port, 2.0, len(data))
        finally:
            port.close()
    wire = len(data) * 11 / 2400  # 11 bits per character at 8E1
    assert got == data
    assert wire * 0.95 <= took <= wire + 10  # never faster than the wire; slower only under load
    assert line.bytes_dropped == 0


def test_pace_scales_line_time():
    data = core_frames("kaifa", 2)[0]  # 123 bytes: 0.56 s at 2400 8E1
    with VirtualSerialPort(E8, pace=10.0) as line:
        port = open_port(line.path, SerialSettings(2400, "E"))
        try:
            t = time.monotonic()
            line.write(data)
            took = time.monotonic() - t
            assert read_for(port, 1.0, len(data)) == data
            assert line.char_time == pytest.approx(11 / 2400 / 10)
            line.pace = 0
            assert line.char_time == 0  # unpaced: the 2.7 s of line time at 2400 baud are not waited
            line.write(data * 20)
            assert read_for(port, 1.0, len(data) * 20) == data * 20
        finally:
            port.close()
    # 0.056 s at 10x; the scale itself is checked on char_time above, so no upper bound on the clock here
    assert 0.9 * len(data) * 11 / 24000 <= took


def test_wrong_parity_on_the_pty_garbles():
    frames = core_frames("kamstrup")[:2]
    with VirtualSerialPort(N8, pace=0) as line:
        port = open_port(line.path, SerialSettings(2400, "E"))
        try:
            line.write(b"".join(frames))
            got = read_for(port, 0.5)
        finally:
            port.close()
    assert got
    assert frames_ok(got) == 0


def test_a_writer_without_reader_does_not_block():
    with VirtualSerialPort(E8, pace=0, overflow_wait=0.2) as line:
        t = time.monotonic()
        line.write(bytes(200_000))
        took = time.monotonic() - t
        assert took < 10  # overflow_wait 0.2 s in all; only a blocked writer takes this long
        assert line.bytes_dropped > 100_000
        assert line.bytes_delivered + line.bytes_dropped == 200_000
        # The buffered part is there for a reader that comes later (pyserial discards it on open).
        assert line.bytes_delivered >= 4096


def test_awrite_paces_without_blocking_the_loop():
    data = core_frames("kaifa", 1)[0]
    with VirtualSerialPort(E8) as line:
        port = open_port(line.path, SerialSettings(2400, "E"))

        async def main() -> float:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            task = asyncio.create_task(ticker())
            t = time.monotonic()
            await line.awrite(data)
            took = time.monotonic() - t
            task.cancel()
            assert ticks >= 5  # the loop kept running while the line was busy
            return took

        try:
            took = asyncio.run(main())
            assert read_for(port, 1.0, len(data)) == data
        finally:
            port.close()
    assert took >= 0.95 * len(data) * 11 / 2400


def test_link_and_close(tmp_path):
    link = str(tmp_path / "ttyHAN")
    line = VirtualSerialPort(E8, link=link)
    assert os.readlink(link) == line.path
    assert os.path.exists(line.path)
    line.close()
    line.close()  # idempotent
    assert not os.path.lexists(link)
    with pytest.raises(ValueError, match="closed"):
        line.write(b"x")


def test_close_lets_the_reader_take_what_was_sent():
    """Hanging up a pty discards unread input: close() waits for the reader first (boundedly)."""
    import threading

    data = b"".join(core_frames("kaifa", 1)[:4])
    got = bytearray()
    line = VirtualSerialPort(E8, pace=0)
    port = open_port(line.path, SerialSettings(2400, "E"))

    def reader() -> None:
        time.sleep(0.25)  # still busy when the writer closes
        got.extend(read_for(port, 1.5, len(data)))

    thread = threading.Thread(target=reader)
    thread.start()
    line.write(data)
    line.close()
    thread.join()
    port.close()
    assert bytes(got) == data


def test_close_without_reader_is_quick():
    line = VirtualSerialPort(E8, pace=0)
    line.write(bytes(1000))
    t = time.monotonic()
    line.close()
    # gives up after NO_READER_S (0.5 s) without progress, well before CLOSE_WAIT_S (2 s)
    assert time.monotonic() - t < CLOSE_WAIT_S - 0.1
