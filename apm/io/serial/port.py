"""The device's HAN port edge: the serial port (pyserial), its settings, auto-detection, diagnoses.

Decoding is `han.HanReader`'s. This module moves bytes from the port into it, finds the serial
settings under which frames pass both CRCs (as amsreader does: parity and baud rate are tried in turn
until two frames pass), remembers per port what worked, and says in words why nothing decodes.

    port = open_port("/dev/ttyUSB0", SerialSettings(2400, "E"))
    detection = autodetect(port, candidates(), probe_seconds=12)
    link = detection.link            # keeps reading with the settings that worked
    readings = link.poll()
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import serial

from han import HanReader, Reading

PARITIES = ("E", "N", "O")
BAUDS = (2400, 9600, 115200)
MIN_FRAMES = 2  # frames that must pass both CRCs before a setting counts as right
READ_TIMEOUT = 0.05  # longest a single read waits, so loops stay responsive
try:
    import termios

    _TERMIOS_ERRORS: tuple[type[Exception], ...] = (termios.error,)
except ImportError:  # not POSIX
    termios = None  # type: ignore[assignment]
    _TERMIOS_ERRORS = ()
_SAMPLE = 2048  # bytes kept from the start of an attempt, to recognise text (P1) ports
_MAX_REASONS = 16  # distinct decoder problems kept per attempt


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """Serial line settings of the HAN port: baud, parity ("E" | "N" | "O"), data bits, stop bits."""

    baud: int = 2400
    parity: str = "E"
    bytesize: int = 8
    stopbits: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.baud, int) or self.baud <= 0:
            raise ValueError(f"baud must be a positive integer, got {self.baud!r}")
        if self.parity not in PARITIES:
            raise ValueError(f"parity must be E, N or O, got {self.parity!r}")
        if self.bytesize not in (7, 8):
            raise ValueError(f"bytesize must be 7 or 8, got {self.bytesize!r}")
        if self.stopbits not in (1, 2):
            raise ValueError(f"stopbits must be 1 or 2, got {self.stopbits!r}")

    @property
    def bits_per_char(self) -> int:
        """Start bit, data bits, parity bit, stop bits: what one byte costs on the line."""
        return 1 + self.bytesize + (self.parity != "N") + self.stopbits

    def __str__(self) -> str:
        return f"{self.baud} {self.bytesize}{self.parity}{self.stopbits}"

    def to_json_dict(self) -> dict[str, Any]:
        return {"baud": self.baud, "parity": self.parity, "bytesize": self.bytesize, "stopbits": self.stopbits}

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> SerialSettings:
        return cls(int(d["baud"]), str(d["parity"]), int(d.get("bytesize", 8)), int(d.get("stopbits", 1)))


DEFAULT_SETTINGS = SerialSettings()  # 2400 8E1, as amsreader defaults
# Baud 2400 is in every vendor's list sheet; parity is community practice (see research han-readers 0.1).
VENDOR_SETTINGS: dict[str, SerialSettings] = {
    "aidon": SerialSettings(2400, "E"),
    "kaifa": SerialSettings(2400, "E"),
    "kamstrup": SerialSettings(2400, "N"),
}


def candidates(*first: SerialSettings | None, bauds: Sequence[int] = BAUDS,
               parities: Sequence[str] = PARITIES) -> list[SerialSettings]:
    """The settings to try, in order: ``first`` (remembered, given), then each baud with each parity."""
    out: list[SerialSettings] = []
    for s in (*first, *(SerialSettings(b, p) for b in bauds for p in parities)):
        if s is not None and s not in out:
            out.append(s)
    return out


# -- opening the port ------------------------------------------------------------------------------


class PortError(Exception):
    """The port cannot be opened or configured; the message says why and what to do."""


def port_error_message(path: str, exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOENT or "No such file" in text:
        return f"no such port {path}: is the adapter plugged in?{_ports_hint()}"
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        group = _group_of(path)
        return (f"permission denied on {path}: add your user to the group that owns the port ({group}): "
                f"sudo usermod -aG {group} $USER, then log out and in again")
    if code == errno.EBUSY or "busy" in text.lower():
        return f"{path} is busy: another program (ModemManager, another monitor) holds the port"
    if "Inappropriate ioctl" in text or code == errno.ENOTTY:
        return f"{path} is not a serial port"
    return f"cannot open {path}: {text}"


def _group_of(path: str) -> str:
    """The port's group when it is one a user can join; else dialout, which owns serial ports on Debian."""
    try:
        import grp

        name = grp.getgrgid(os.stat(path).st_gid).gr_name
    except (ImportError, KeyError, OSError):
        return "dialout"
    return "dialout" if name in ("root", "nogroup", "nobody") else name


def _ports_hint() -> str:
    try:
        from serial.tools import list_ports

        names = sorted(p.device for p in list_ports.comports())
    except Exception:  # only a hint
        return ""
    return f" serial ports here: {', '.join(names)}" if names else " no serial ports found"


def open_port(path: str, settings: SerialSettings = DEFAULT_SETTINGS, *,
              read_timeout: float = READ_TIMEOUT) -> serial.Serial:
    """Open ``path`` with ``settings`` (input discarded, as pyserial does on open). Raises ``PortError``."""
    try:
        # Opened without parity, which any tty holds; configure() then sets it (see there for ptys).
        port = serial.Serial(path, baudrate=settings.baud, timeout=read_timeout)
    except (serial.SerialException, OSError, ValueError, *_TERMIOS_ERRORS) as exc:
        raise PortError(port_error_message(path, exc)) from exc
    try:
        configure(port, settings)
    except (serial.SerialException, OSError, ValueError) as exc:
        port.close()
        raise PortError(port_error_message(path, exc)) from exc
    return port


def configure(port: serial.Serial, settings: SerialSettings) -> None:
    """Switch an open port to ``settings`` and discard what was received under the old ones."""
    for name, value in (("baudrate", settings.baud), ("bytesize", settings.bytesize),
                        ("stopbits", settings.stopbits), ("parity", settings.parity)):
        if getattr(port, name) == value:
            continue
        try:
            setattr(port, name, value)
        except _TERMIOS_ERRORS as exc:
            # A pseudo-terminal (socat, ser2net clients, the simulator) cannot hold parity or a size
            # other than 8 bits: Linux clears them, and glibc reports EINVAL when that leaves the
            # settings unchanged. Everything a pty can hold is set; a real UART never gets here.
            if name not in ("parity", "bytesize") or exc.args[0] != errno.EINVAL:
                raise serial.SerialException(f"cannot set {name} {value}: {exc.args[-1]}") from exc
    _check_parity(port, settings.parity != "N")
    port.reset_input_buffer()


def _check_parity(port: serial.Serial, on: bool) -> None:
    # Linux hands over characters with parity or framing errors as if they were good unless INPCK is
    # set (then they arrive as NUL): without it, a wrong parity can pass for data on some UARTs.
    # pyserial clears INPCK on every reconfiguration, so this follows each one.
    fileno = getattr(port, "fileno", None)
    if fileno is None or termios is None:
        return
    with contextlib.suppress(OSError, termios.error):
        fd = fileno()
        attrs = termios.tcgetattr(fd)
        iflag = (attrs[0] | termios.INPCK) if on else (attrs[0] & ~termios.INPCK)
        if iflag != attrs[0]:
            attrs[0] = iflag
            termios.tcsetattr(fd, termios.TCSANOW, attrs)


# -- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one stretch of reading with one setting gave."""

    settings: SerialSettings
    seconds: float
    bytes_in: int
    frames_ok: int
    frames_bad: int
    readings: int
    problems: tuple[tuple[str, str, int], ...] = ()  # decoder (kind, reason, count), most frequent first
    sample: bytes = b""  # the first bytes received

    @property
    def ok(self) -> bool:
        return self.frames_ok >= MIN_FRAMES

    def merge(self, later: Attempt) -> Attempt:
        """This attempt and a later one with the same settings, as one."""
        problems: Counter[tuple[str, str]] = Counter()
        for kind, reason, n in (*self.problems, *later.problems):
            problems[(kind, reason)] += n
        return Attempt(
            settings=self.settings,
            seconds=self.seconds + later.seconds,
            bytes_in=self.bytes_in + later.bytes_in,
            frames_ok=self.frames_ok + later.frames_ok,
            frames_bad=self.frames_bad + later.frames_bad,
            readings=self.readings + later.readings,
            problems=tuple((k, r, n) for (k, r), n in problems.most_common(_MAX_REASONS)),
            sample=self.sample or later.sample,
        )

    def describe(self) -> str:
        if not self.bytes_in:
            return f"{self.settings}: no bytes in {self.seconds:.1f} s"
        head = f"{self.settings}: {self.bytes_in} bytes in {self.seconds:.1f} s, "
        if not self.frames_ok:
            return head + f"no valid frame ({self.frames_bad} bad)"
        tail = f", {self.readings} readings" if self.readings else ""
        if self.problems and not self.readings:
            kind, reason, _ = self.problems[0]
            tail = f", {kind}: {reason}"
        return head + f"{self.frames_ok} valid frames ({self.frames_bad} bad){tail}"


class HanLink:
    """An open HAN port being read into a ``HanReader``, with the counts a diagnosis needs."""

    def __init__(self, port: serial.Serial, settings: SerialSettings, ct_ratio: float = 1.0) -> None:
        self.port = port
        self.settings = settings
        self.reader = HanReader(ct_ratio=ct_ratio)
        self.started = time.monotonic()
        self.bytes_in = 0
        self.sample = bytearray()
        self.problems: Counter[tuple[str, str]] = Counter()
        self.last_problem: str | None = None

    def poll(self) -> list[Reading]:
        """Read what has arrived, waiting at most the port's read timeout; the readings it completes."""
        data = self.port.read(self.port.in_waiting or 1)
        if not data:
            return []
        self.bytes_in += len(data)
        if len(self.sample) < _SAMPLE:
            self.sample += data[: _SAMPLE - len(self.sample)]
        readings = self.reader.feed(data)
        for p in self.reader.pop_problems():
            self.last_problem = f"{p.kind}: {p.reason}"
            key = (p.kind, p.reason)
            if p.kind != "frame" and (key in self.problems or len(self.problems) < _MAX_REASONS):
                self.problems[key] += 1
        return readings

    @property
    def frames_ok(self) -> int:
        return self.reader.frames.frames_ok

    def attempt(self) -> Attempt:
        frames = self.reader.frames
        return Attempt(
            settings=self.settings,
            seconds=time.monotonic() - self.started,
            bytes_in=self.bytes_in,
            frames_ok=frames.frames_ok,
            frames_bad=frames.frames_bad,
            readings=self.reader.readings,
            problems=tuple((k, r, n) for (k, r), n in self.problems.most_common()),
            sample=bytes(self.sample),
        )


def probe(port: serial.Serial, settings: SerialSettings, seconds: float, *, ct_ratio: float = 1.0,
          deadline: float | None = None) -> tuple[HanLink, list[Reading]]:
    """Read with ``settings`` until MIN_FRAMES frames pass or ``seconds`` end (once more after one frame).

    One valid frame already says the settings are right (two CRCs do not pass by chance), so its
    window is extended once: a meter that pushes every 10 s (Kamstrup) still gets its second frame.
    """
    configure(port, settings)
    link = HanLink(port, settings, ct_ratio)
    readings: list[Reading] = []
    end = link.started + seconds
    extended = False
    while link.frames_ok < MIN_FRAMES:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        if now >= end:
            if link.frames_ok == 0 or extended:
                break
            end, extended = now + seconds, True
        readings += link.poll()
    return link, readings


@dataclass(frozen=True, slots=True)
class Detection:
    """The outcome of one round of auto-detection."""

    attempts: tuple[Attempt, ...]
    link: HanLink | None = None  # reading with the settings that worked
    readings: tuple[Reading, ...] = ()  # decoded while probing

    @property
    def settings(self) -> SerialSettings | None:
        return self.link.settings if self.link else None


def autodetect(port: serial.Serial, settings: Iterable[SerialSettings], probe_seconds: float, *,
               ct_ratio: float = 1.0, deadline: float | None = None,
               on_attempt: Callable[[Attempt], None] | None = None) -> Detection:
    """Try each setting in turn for up to ``probe_seconds``; stop at the first where frames pass."""
    attempts = []
    for s in settings:
        if deadline is not None and time.monotonic() >= deadline:
            break
        link, readings = probe(port, s, probe_seconds, ct_ratio=ct_ratio, deadline=deadline)
        attempt = link.attempt()
        attempts.append(attempt)
        if on_attempt:
            on_attempt(attempt)
        # Cut short by the deadline, one frame that passed both CRCs is enough to keep what it gave.
        if attempt.ok or (attempt.frames_ok and deadline is not None and time.monotonic() >= deadline):
            return Detection(tuple(attempts), link, tuple(readings))
    return Detection(tuple(attempts))


# -- diagnoses -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """Why nothing decodes: a stable code and a message for a human."""

    code: str  # "silent" | "no-frames" | "p1" | "few-frames" | "encrypted" | "unsupported" | "malformed"
    message: str
    settings: SerialSettings | None = None  # the settings frames came with, when any did

    def __str__(self) -> str:
        return self.message


def _looks_like_p1(sample: bytes) -> bool:
    # P1/DSMR telegrams are text: "/XXX5..." header, then OBIS lines "1-0:1.8.0(...)".
    if len(sample) < 16 or not (b"1-0:" in sample or b"0-0:" in sample):
        return False
    printable = sum(32 <= b < 127 or b in (10, 13) for b in sample)
    return printable >= 0.9 * len(sample)


def _settings_list(attempts: Sequence[Attempt]) -> str:
    seen = list(dict.fromkeys(str(a.settings) for a in attempts))
    return ", ".join(seen[:9]) + (f" and {len(seen) - 9} more" if len(seen) > 9 else "")


def diagnose(attempts: Sequence[Attempt], port: str, *, auto: bool = True) -> Diagnosis | None:
    """What the attempts say about the port; None when something was decoded."""
    if not attempts or any(a.readings for a in attempts):
        return None
    seconds = sum(a.seconds for a in attempts)
    tried = _settings_list(attempts)
    framed = [a for a in attempts if a.frames_ok]
    if framed:
        best = max(framed, key=lambda a: a.frames_ok)
        frames = f"{best.frames_ok} frames passed their CRCs at {best.settings}"
        kinds: Counter[str] = Counter()
        reasons: dict[str, list[str]] = {}
        for a in framed:
            for kind, reason, n in a.problems:
                kinds[kind] += n
                if reason not in reasons.setdefault(kind, []):
                    reasons[kind].append(reason)
        if not kinds:
            return Diagnosis(
                "few-frames",
                f"{frames} in {seconds:.0f} s, too few to decode a list: the meter pushes rarely (Kamstrup: "
                "every 10 s); give it more time (--timeout, --probe-seconds)",
                best.settings,
            )
        kind = kinds.most_common(1)[0][0]
        said = "; ".join(reasons[kind][:3])
        if kind == "encrypted":
            message = (f"{frames}, but they are encrypted ({said}). Norwegian meters push plain text unless "
                       "encryption was ordered for the HAN port: ask the grid company to turn it off "
                       "(this reader has no decryption)")
        elif kind == "unsupported":
            message = (f"{frames}, but they carry a list this reader does not support ({said}): not an "
                       "Aidon, Kaifa or Kamstrup Norwegian HAN list (another meter, or another country's list)")
        else:
            message = f"{frames}, but their content is malformed ({said})"
        return Diagnosis(kind, message, best.settings)
    total = sum(a.bytes_in for a in attempts)
    if not total:
        return Diagnosis(
            "silent",
            f"no bytes at all on {port} in {seconds:.0f} s (tried {tried}). The HAN port sends nothing: "
            "the grid company has not opened (activated) the HAN port, so ask them to; a Kamstrup meter "
            "also needs its HAN module, and the M-Bus adapter needs external power (the meter supplies "
            f"too little). Check the cable (RJ45, pins 1 and 2) and that {port} is the adapter",
        )
    for a in attempts:
        if _looks_like_p1(a.sample):
            return Diagnosis(
                "p1",
                f"{port} sends text telegrams (P1/DSMR style, read at {a.settings}): a P1 port or a meter "
                "set up for P1, not the Norwegian M-Bus HAN port (DLMS in HDLC frames) this reader decodes",
                a.settings,
            )
    advice = ("the serial settings are wrong" if auto
              else "the serial settings are wrong (run without --parity to auto-detect)")
    return Diagnosis(
        "no-frames",
        f"{total} bytes in {seconds:.0f} s but no valid frame with {tried}: {advice}, or the meter or its "
        "HAN variant is unsupported (a P1 port at 115200 baud, an inverted signal, encrypted M-Bus "
        "telegrams, another country's meter)",
    )


# -- remembering what worked -----------------------------------------------------------------------

CACHE_ENV = "APM_SERIAL_CACHE"


def default_cache_path() -> Path:
    """``$APM_SERIAL_CACHE``, else beside ``$APM_FLASH``'s image, else the state directory (`apm.io.storage.paths`)."""
    from apm.io.storage import paths
    return paths.serial_settings()


class SettingsCache:
    """Serial settings that worked, per port path, in a small JSON file. A broken file is ignored."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else default_cache_path()

    @staticmethod
    def key(port: str) -> str:
        return os.path.abspath(port)  # not resolved: /dev/serial/by-id names stay stable across reboots

    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        ports = doc.get("ports") if isinstance(doc, dict) else None
        return ports if isinstance(ports, dict) else {}

    def get(self, port: str) -> SerialSettings | None:
        entry = self._load().get(self.key(port))
        try:
            return SerialSettings.from_json_dict(entry) if isinstance(entry, dict) else None
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, port: str, settings: SerialSettings) -> None:
        """Remember ``settings`` for ``port`` (atomically). Raises OSError when the file cannot be written."""
        ports = self._load()
        ports[self.key(port)] = settings.to_json_dict() | {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": 1, "ports": ports}, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
