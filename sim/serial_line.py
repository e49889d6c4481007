"""A virtual serial line on a real pseudo-terminal: the meter's side of a HAN cable.

    with VirtualSerialPort(SerialSettings(2400, "E"), pace=1.0) as line:
        ...  # a serial program (pyserial, `apm monitor`) opens line.path
        line.write(frame)  # arrives at the receiver at 2400 baud, garbled if its settings differ

The sender is a UART with ``SerialSettings``. Before each chunk goes out, the line reads the receiver's
settings from the tty (what the program that opened ``path`` asked for) and runs the chunk through
``uart_receive``, a bit-level model of a UART receiver: start-bit hunting, sampling in the middle of
each of its own bit periods, parity and stop-bit checks, and the Linux rules for errored characters
(INPCK, IGNPAR, PARMRK, IGNBRK). Matching settings give the bytes unchanged; a wrong parity or a
wrong baud rate gives what a real port gives: frames that fail their CRCs, or garbage.

What a Linux pty keeps of the receiver's settings: the speed, PARODD, CSTOPB and the input flags.
It clears PARENB and forces CS8 whatever the program asks. So the receiver's parity is read as:
PARENB or INPCK (input parity checking on) -> even, unless PARODD -> odd; neither -> none. A program
that asks for even parity without INPCK (plain pyserial does that) looks like 8N1 to this line.
`apm monitor` sets INPCK whenever it expects parity, as it should on a real UART anyway (without
INPCK, Linux hands over characters with parity errors as if they were good).

Pacing: ``pace`` 1.0 is real time at ``settings.baud`` (start + data + parity + stop bits per
character), 10.0 ten times faster, 0 no pacing. Bytes are delivered in chunks of about 20 ms of line
time, each when its last character would have been received; consecutive writes queue behind each other.

Nobody reading: the pty holds some 14-20 KiB (measured on Linux 6.x: the line discipline's 4 KiB plus
the tty buffer; the figure depends on the write sizes). Writes are non-blocking; one ``write`` call
waits at most ``overflow_wait`` seconds in all for the receiver to make room, then what does not fit is
dropped (a UART overrun), counted in ``bytes_dropped``. So a writer with no reader never deadlocks. The line keeps its own handle on the
slave side open, so the device exists (and keeps its settings) between the receiver's opens;
pyserial discards what was buffered when it opens a port. ``close`` first waits (at most
CLOSE_WAIT_S) for the receiver to read what is buffered: hanging up a pty discards unread input.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import math
import os
import select
import struct
import termios
import threading
import time
from dataclasses import dataclass

from apm.io.serial.port import SerialSettings

CLOSE_WAIT_S = 2.0  # longest close() waits for the receiver to read what is buffered
NO_READER_S = 0.5  # ... or until it has read nothing for this long
_CHUNK_SECONDS = 0.02  # line time per delivered chunk when paced
_UNPACED_CHUNK = 4096

# Linux: speeds above B38400 carry CBAUDEX; BOTHER means "the real speed is in termios2".
_BOTHER = 0o010000
_TCGETS2 = 0x802C542A  # _IOR('T', 0x2A, struct termios2) on x86, arm and the generic ABI
_TERMIOS2 = struct.Struct("=4IB19s2I")
_SPEEDS = {getattr(termios, n): int(n[1:]) for n in dir(termios) if n[:1] == "B" and n[1:].isdigit()}
_CMSPAR = getattr(termios, "CMSPAR", 0o10000000000)
_CSIZE_BITS = {termios.CS5: 5, termios.CS6: 6, termios.CS7: 7, termios.CS8: 8}


@dataclass(frozen=True, slots=True)
class Receiver:
    """The receiving UART as its tty describes it (see the module doc for what a pty keeps)."""

    baud: int
    parity: str = "N"
    bytesize: int = 8
    check_parity: bool = False  # INPCK: errored characters are flagged (else passed on as received)
    ignore_errors: bool = False  # IGNPAR: flagged characters are dropped
    mark_errors: bool = False  # PARMRK: flagged characters come as FF 00 c
    ignore_break: bool = False  # IGNBRK

    @classmethod
    def from_termios(cls, attrs: list, speed: int | None = None) -> Receiver:
        iflag, _oflag, cflag = attrs[0], attrs[1], attrs[2]
        if speed is None:
            speed = _SPEEDS.get(attrs[4]) or _SPEEDS.get(attrs[5]) or 0
        odd = bool(cflag & termios.PARODD) and not cflag & _CMSPAR
        if odd:
            parity = "O"
        elif cflag & termios.PARENB or iflag & termios.INPCK:
            parity = "E"
        else:
            parity = "N"
        return cls(
            baud=speed,
            parity=parity,
            bytesize=_CSIZE_BITS.get(cflag & termios.CSIZE, 8),
            check_parity=bool(iflag & termios.INPCK),
            ignore_errors=bool(iflag & termios.IGNPAR),
            mark_errors=bool(iflag & termios.PARMRK),
            ignore_break=bool(iflag & termios.IGNBRK),
        )

    def matches(self, sender: SerialSettings) -> bool:
        # A receiver checks one stop bit only, so the sender's stop bits never matter.
        return (self.baud, self.parity, self.bytesize) == (sender.baud, sender.parity, sender.bytesize)


def _char_table(s: SerialSettings) -> list[bytes]:
    """Line levels of each byte value: start bit, data LSB first, parity, stop bits."""
    table = []
    for value in range(256):
        value &= (1 << s.bytesize) - 1
        bits = [0] + [(value >> k) & 1 for k in range(s.bytesize)]
        if s.parity != "N":
            ones = value.bit_count()
            bits.append(ones & 1 if s.parity == "E" else 1 - (ones & 1))
        bits += [1] * s.stopbits
        table.append(bytes(bits))
    return table


DEFAULT_SETTINGS = SerialSettings()  # Aidon and Kaifa: 2400 8E1
_TABLES: dict[SerialSettings, list[bytes]] = {}


def uart_receive(data: bytes, sender: SerialSettings, receiver: Receiver) -> bytes:
    """What ``receiver`` reads when ``sender`` transmits ``data`` back to back, the line idle around it.

    Deterministic. The receiver hunts for a low level in steps of 1/16 of its bit, confirms it half a
    bit later and samples each bit in its middle. After a low stop bit (framing error) it takes that low
    level as the next start bit; after a break it waits for the idle level, as a 16550 does. Errored
    characters follow the Linux rules: passed on as received unless INPCK, then dropped (IGNPAR),
    marked FF 00 c (PARMRK) or replaced by 00.
    """
    if receiver.matches(sender) or not data:
        return bytes(data)
    if receiver.baud <= 0:
        return b""  # B0: the receiver hung up the line
    table = _TABLES.get(sender)
    if table is None:
        table = _TABLES[sender] = _char_table(sender)
    bits = b"".join(table[b] for b in data)
    r = sender.baud / receiver.baud  # the receiver's bit, in sender bit times
    out = bytearray()
    t = 0.0
    start: float | None = None
    while True:
        if start is None:
            start = _find_start(bits, t, r)
            if start is None:
                break
        char = _sample(bits, start, r, receiver)
        pos = char.stop_at
        if char.framing_error and char.value == 0 and char.parity_bit == 0:  # a break: the line held low
            if not receiver.ignore_break:
                out += b"\xff\x00\x00" if receiver.mark_errors else b"\x00"
            # After a break the receiver waits for the line to return to idle before hunting again.
            j = bits.find(1, int(pos))
            t = float(j if j >= 0 else len(bits))
            start = None
            continue
        if (char.parity_error or char.framing_error) and receiver.check_parity:
            out += _errored(char.value, receiver)
        else:
            out.append(char.value)
        if char.framing_error:
            start = pos - r / 2  # the low stop bit is taken as the next start bit
        else:
            start = None
            t = pos
    return bytes(out)


def _level(bits: bytes, t: float) -> int:
    i = int(t)
    return bits[i] if i < len(bits) else 1  # idle after the burst


def _find_start(bits: bytes, t: float, r: float) -> float | None:
    """The next start bit at or after ``t`` (hunting in steps of 1/16 of the receiver's bit ``r``)."""
    step = r / 16
    n = len(bits)
    while True:
        i = int(t)
        if i >= n:
            return None
        if bits[i]:
            j = bits.find(0, i + 1)
            if j < 0:
                return None
            t += max(1, math.ceil((j - t) / step)) * step
            continue
        if _level(bits, t + r / 2):
            t += step  # a glitch, not a start bit
            continue
        return t


@dataclass(frozen=True, slots=True)
class _Char:
    value: int
    parity_bit: int
    parity_error: bool
    framing_error: bool
    stop_at: float  # where the stop bit was sampled


def _sample(bits: bytes, start: float, r: float, receiver: Receiver) -> _Char:
    """One character from the start bit at ``start``: data bits, parity and stop bit in their middles."""
    value = 0
    for k in range(receiver.bytesize):
        if _level(bits, start + (1.5 + k) * r):
            value |= 1 << k
    pos = start + (1.5 + receiver.bytesize) * r
    parity_bit = 0
    parity_error = False
    if receiver.parity != "N":
        parity_bit = _level(bits, pos)
        ones = value.bit_count() + parity_bit
        parity_error = (ones & 1) != (receiver.parity == "O")
        pos += r
    return _Char(value, parity_bit, parity_error, not _level(bits, pos), pos)


def _errored(value: int, receiver: Receiver) -> bytes:
    """What Linux hands over for a character with a parity or framing error when INPCK is on."""
    if receiver.ignore_errors:
        return b""
    return b"\xff\x00" + bytes((value,)) if receiver.mark_errors else b"\x00"


def read_receiver(fd: int) -> Receiver:
    """The receiving side's settings, read from any fd of the pty."""
    attrs = termios.tcgetattr(fd)
    speed = None
    if attrs[4] == _BOTHER or attrs[5] == _BOTHER:  # a non-standard rate: ask termios2
        with contextlib.suppress(OSError):
            raw = fcntl.ioctl(fd, _TCGETS2, bytes(_TERMIOS2.size))
            *_, ispeed, ospeed = _TERMIOS2.unpack(raw)
            speed = ispeed or ospeed
    return Receiver.from_termios(attrs, speed)


def _make_raw(fd: int) -> None:
    """No line editing, echo, CR/LF mapping or XON/XOFF: the bytes pass as they are (until a program sets its own)."""
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INLCR | termios.IGNCR | termios.INPCK
                  | termios.ISTRIP | termios.IXON | termios.IXOFF | termios.PARMRK)
    attrs[1] &= ~termios.OPOST
    attrs[2] = (attrs[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8 | termios.CREAD | termios.CLOCAL
    attrs[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN | termios.ISIG)
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class VirtualSerialPort:
    """A pty whose slave side (``path``) is what a serial program opens. A context manager."""

    def __init__(self, settings: SerialSettings = DEFAULT_SETTINGS, *, pace: float = 1.0,
                 link: str | None = None, overflow_wait: float = 1.0) -> None:
        if pace < 0:
            raise ValueError(f"pace must be >= 0, got {pace}")
        self.settings = settings
        self.pace = pace
        self.overflow_wait = overflow_wait
        self.bytes_written = 0  # as sent by the sender
        self.bytes_delivered = 0  # as received (after garbling)
        self.bytes_dropped = 0  # did not fit the receiver's buffer in time
        self._master, self._slave = os.openpty()
        self.path: str = os.ttyname(self._slave)
        self.link: str | None = None
        self._lock = threading.Lock()
        self._alock: asyncio.Lock | None = None
        self._free_at = 0.0  # monotonic time the line finishes what it was given
        self._closed = False
        try:
            _make_raw(self._slave)
            os.set_blocking(self._master, False)
            if link is not None:
                self._make_link(link)
        except BaseException:
            self.close()
            raise

    def _make_link(self, link: str) -> None:
        if os.path.islink(link):
            os.unlink(link)  # a stale link from an earlier run
        os.symlink(self.path, link)
        self.link = link

    def __enter__(self) -> VirtualSerialPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> VirtualSerialPort:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def char_time(self) -> float:
        """Seconds one character occupies the line (0 when unpaced)."""
        return self.settings.bits_per_char / self.settings.baud / self.pace if self.pace else 0.0

    def receiver(self) -> Receiver:
        """The receiving program's settings, as the pty reports them now."""
        self._check_open()
        return read_receiver(self._slave)

    def write(self, data: bytes) -> None:
        """Send ``data`` on the line; returns when the last byte has arrived (paced) or was dropped."""
        with self._lock:
            budget = self.overflow_wait  # total wait for room in this call
            for due, chunk in self._schedule(data):
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                out = self._write_some(self._garble(chunk))
                while out and budget > 0:
                    t = time.monotonic()
                    room = select.select([], [self._master], [], budget)[1]
                    budget -= time.monotonic() - t
                    if not room:
                        break
                    out = self._write_some(out)
                self.bytes_dropped += len(out)

    async def awrite(self, data: bytes) -> None:
        """``write`` for asyncio: sleeps and waits for room without blocking the loop."""
        if self._alock is None:
            self._alock = asyncio.Lock()
        async with self._alock:
            budget = self.overflow_wait
            for due, chunk in self._schedule(data):
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                out = self._write_some(self._garble(chunk))
                while out and budget > 0:
                    t = time.monotonic()
                    room = await self._writable(budget)
                    budget -= time.monotonic() - t
                    if not room:
                        break
                    out = self._write_some(out)
                self.bytes_dropped += len(out)

    def close(self) -> None:
        """Wait for the receiver to take what it was sent (see ``_draining``), then hang up the line."""
        if self._closed:
            return
        for pause in self._draining():
            time.sleep(pause)
        self._hang_up()

    async def aclose(self) -> None:
        if self._closed:
            return
        for pause in self._draining():
            await asyncio.sleep(pause)
        self._hang_up()

    def _draining(self):
        """Pauses while the receiver still has unread bytes, as a UART's close waits for its output.

        Closing the master hangs up the slave, and Linux discards what its reader had not read yet.
        Gives up when nothing is taken for NO_READER_S (nobody reading) or after CLOSE_WAIT_S.
        """
        if not self.bytes_delivered:
            return
        yield 0.01  # bytes just written may still be on their way into the receiver's queue
        end = time.monotonic() + CLOSE_WAIT_S
        last, progress_at = self._unread(), time.monotonic()
        while last and time.monotonic() < end:
            yield 0.01
            now, n = time.monotonic(), self._unread()
            if n < last:
                last, progress_at = n, now
            elif now - progress_at >= NO_READER_S:
                return

    def _unread(self) -> int:
        try:
            return struct.unpack("i", fcntl.ioctl(self._slave, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return 0

    def _hang_up(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.link and os.path.islink(self.link) and os.readlink(self.link) == self.path:
            os.unlink(self.link)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- internals -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the virtual serial port is closed")

    def _schedule(self, data: bytes) -> list[tuple[float, bytes]]:
        """(due time, chunk) pairs; a chunk is due when its last character has crossed the line."""
        self._check_open()
        data = bytes(data)
        self.bytes_written += len(data)
        now = time.monotonic()
        char_time = self.char_time
        if not char_time:
            return [(now, data[i : i + _UNPACED_CHUNK]) for i in range(0, len(data), _UNPACED_CHUNK)]
        size = max(1, int(_CHUNK_SECONDS / char_time))
        t = max(now, self._free_at)
        out = []
        for i in range(0, len(data), size):
            chunk = data[i : i + size]
            t += len(chunk) * char_time
            out.append((t, chunk))
        self._free_at = t
        return out

    def _garble(self, chunk: bytes) -> bytes:
        self._check_open()
        self._drain_receiver_output()
        return uart_receive(chunk, self.settings, read_receiver(self._slave))

    def _drain_receiver_output(self) -> None:
        # The HAN port is push-only: what the receiver sends goes nowhere, but must not block it.
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._master, 65536):
                pass

    def _write_some(self, out: bytes) -> bytes:
        """One non-blocking write; returns what did not fit."""
        try:
            n = os.write(self._master, out)
        except BlockingIOError:
            n = 0
        self.bytes_delivered += n
        return out[n:]

    async def _writable(self, seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_writer(self._master, lambda: ready.done() or ready.set_result(True))
        try:
            await asyncio.wait_for(ready, seconds)
            return True
        except TimeoutError:
            return False
        finally:
            loop.remove_writer(self._master)
