"""The emulated flash: one image file holding everything the device keeps across power loss.

Contents: the configuration, the subscription token, the issuer's public key, the revocations
received, the outbox of hourly-energy records not yet acknowledged by the cloud, and the hourly
baseline (the counters of the last hourly list, `apm.meter_state.Baseline`), so that the first hour
after a restart is recorded too. An image written before the baseline was kept reads as one without.

Layout: two slots of SLOT_SIZE bytes. A slot is a header (magic, sequence number, length, CRC32 of
header and payload) followed by a JSON payload. A write goes to the slot that does NOT hold the
current version, in one pwrite, then fsync; the current version is never touched. Reading takes the
valid slot with the highest sequence number. So a power loss (or SIGKILL) at any moment leaves
either the old version (the new slot's CRC fails, or its write never started) or the new one.
Bytes 0xFF are erased flash: a slot that reads all 0xFF (or lies past the end of a short file) is
blank, not corrupt. A lock (flock) on the image serialises the device loop and the CLI.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from apm import config as cfg
from apm import paths
from apm.meter_state import Baseline

SLOT_SIZE = 256 * 1024
SLOTS = 2
IMAGE_SIZE = SLOT_SIZE * SLOTS
MAGIC = b"APMFLSH1"
HEADER = struct.Struct("<8sQII")  # magic, sequence, payload length, crc32
FORMAT = 1
# Two months of hourly records: the cloud being away longer than that costs the oldest hours.
OUTBOX_LIMIT = 24 * 62
ERASED = 0xFF
ENV_VAR = "APM_FLASH"


class FlashError(Exception):
    """The image cannot be used; the message says why."""


class CorruptImage(FlashError):
    pass


class FlashFull(FlashError):
    pass


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    id: int
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FlashContents:
    config: cfg.DeviceConfig | None = None
    token: str | None = None
    issuer_key: str | None = None  # PEM of the issuer's Ed25519 public key
    revocations: tuple[str, ...] = ()  # signed revocation tokens, as received
    outbox: tuple[OutboxRecord, ...] = ()
    next_record_id: int = 1
    baseline: Baseline | None = None  # the hourly energy baseline, kept across a restart

    @property
    def blank(self) -> bool:
        return self == FlashContents()


@dataclass(frozen=True, slots=True)
class SlotInfo:
    index: int
    status: str  # "valid" | "blank" | "corrupt"
    sequence: int | None = None
    length: int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ImageReport:
    path: Path
    exists: bool
    size: int
    slots: tuple[SlotInfo, ...] = field(default=())

    @property
    def active(self) -> SlotInfo | None:
        valid = [s for s in self.slots if s.status == "valid"]
        return max(valid, key=lambda s: s.sequence or 0) if valid else None

    @property
    def corrupt(self) -> bool:
        """No version is readable although something was written."""
        return self.active is None and any(s.status == "corrupt" for s in self.slots)


def default_image_path() -> Path:
    return paths.default_image()


def resolve_image_path(arg: str | os.PathLike[str] | None = None) -> Path:
    """``--image`` if given, else ``$APM_FLASH``, else the per-user default (see `apm.paths`)."""
    return paths.image(arg)


def status_path(image: str | os.PathLike[str]) -> Path:
    """Where the device loop writes its live status (detected meter, HAN state) beside the image."""
    return paths.status_file(image)


class Flash:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists()

    # --- whole image ---------------------------------------------------------------------------

    def read(self) -> FlashContents:
        """The current version; a missing or blank image reads as empty contents."""
        if not self.path.exists():
            return FlashContents()
        with self._locked(exclusive=False) as fd:
            return self._read(fd)[0]

    def inspect(self) -> ImageReport:
        if not self.path.exists():
            return ImageReport(self.path, False, 0)
        with self._locked(exclusive=False) as fd:
            size = os.fstat(fd).st_size
            return ImageReport(self.path, True, size, tuple(_scan_slot(fd, i)[0] for i in range(SLOTS)))

    def update(self, change: Callable[[FlashContents], FlashContents]) -> FlashContents:
        """Read, change and write back under one lock; raises if the image is corrupt (and leaves it)."""
        with self._locked(exclusive=True, create=True) as fd:
            current, report = self._read(fd)
            new = change(current)
            if new != current:
                self._write(fd, new, report)
            return new

    def write(self, contents: FlashContents) -> None:
        self.update(lambda _old: contents)

    def erase(self) -> None:
        """Forget everything. Works on a corrupt image too; a power loss midway leaves old or blank."""
        with self._locked(exclusive=True, create=True) as fd:
            report = ImageReport(self.path, True, os.fstat(fd).st_size,
                                 tuple(_scan_slot(fd, i)[0] for i in range(SLOTS)))
            target = self._write(fd, FlashContents(), report)
            # The previous version may hold a token: wipe it now that the blank version is safe.
            other = 1 - target
            _pwrite_all(fd, bytes([ERASED]) * SLOT_SIZE, other * SLOT_SIZE)
            os.fsync(fd)

    # --- parts ---------------------------------------------------------------------------------

    def write_config(self, config: cfg.DeviceConfig) -> FlashContents:
        return self.update(lambda c: replace(c, config=config))

    def write_token(self, token: str | None) -> FlashContents:
        return self.update(lambda c: replace(c, token=token))

    def write_issuer_key(self, pem: str) -> FlashContents:
        return self.update(lambda c: replace(c, issuer_key=pem))

    def write_baseline(self, baseline: Baseline | None) -> FlashContents:
        return self.update(lambda c: replace(c, baseline=baseline))

    def add_revocation(self, revocation: str) -> FlashContents:
        return self.update(
            lambda c: c if revocation in c.revocations else replace(c, revocations=(*c.revocations, revocation))
        )

    def outbox_append(self, data: Mapping[str, Any]) -> OutboxRecord:
        """Queue one record; when the outbox is full the oldest record is dropped."""
        record_data = json.loads(json.dumps(dict(data)))  # a JSON value, copied
        added: list[OutboxRecord] = []

        def change(c: FlashContents) -> FlashContents:
            record = OutboxRecord(c.next_record_id, record_data)
            added.append(record)
            outbox = (*c.outbox, record)[-OUTBOX_LIMIT:]
            return replace(c, outbox=outbox, next_record_id=c.next_record_id + 1)

        self.update(change)
        return added[0]

    def outbox_list(self) -> tuple[OutboxRecord, ...]:
        return self.read().outbox

    def outbox_remove(self, ids: Iterable[int]) -> int:
        """Drop acknowledged records; returns how many were removed."""
        gone = set(ids)
        removed = [0]

        def change(c: FlashContents) -> FlashContents:
            keep = tuple(r for r in c.outbox if r.id not in gone)
            removed[0] = len(c.outbox) - len(keep)
            return replace(c, outbox=keep)

        self.update(change)
        return removed[0]

    # --- internals -----------------------------------------------------------------------------

    @contextmanager
    def _locked(self, exclusive: bool, create: bool = False) -> Iterator[int]:
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        else:
            fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield fd
        finally:
            os.close(fd)  # also releases the lock

    def _read(self, fd: int) -> tuple[FlashContents, ImageReport]:
        scans = [_scan_slot(fd, i) for i in range(SLOTS)]
        report = ImageReport(self.path, True, os.fstat(fd).st_size, tuple(s[0] for s in scans))
        active = report.active
        if active is None:
            if report.corrupt:
                details = "; ".join(f"slot {s.index}: {s.detail}" for s in report.slots)
                raise CorruptImage(f"{self.path}: corrupt image, no readable version ({details}); "
                                   "`apm flash erase` starts it over")
            return FlashContents(), report
        payload = scans[active.index][1]
        try:
            return _decode(payload), report
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptImage(f"{self.path}: slot {active.index} (version {active.sequence}) passes its CRC "
                               f"but its contents are unreadable: {exc}") from None

    def _write(self, fd: int, contents: FlashContents, report: ImageReport) -> int:
        """Write ``contents`` as the next version into the slot not holding the current one."""
        payload = _encode(contents)
        if HEADER.size + len(payload) > SLOT_SIZE:
            raise FlashFull(f"{self.path}: {len(payload)} bytes do not fit a {SLOT_SIZE}-byte slot")
        size = os.fstat(fd).st_size
        if size < IMAGE_SIZE:
            # New (or short) image: extend it with erased bytes first, so both slots exist.
            _pwrite_all(fd, bytes([ERASED]) * (IMAGE_SIZE - size), size)
        active = report.active
        sequence = max((s.sequence or 0 for s in report.slots if s.status == "valid"), default=0) + 1
        target = 0 if active is None else 1 - active.index
        _pwrite_all(fd, _slot_bytes(sequence, payload), target * SLOT_SIZE)
        os.fsync(fd)
        return target


def _slot_bytes(sequence: int, payload: bytes) -> bytes:
    head = HEADER.pack(MAGIC, sequence, len(payload), 0)[:-4]
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + struct.pack("<I", crc) + payload


def _scan_slot(fd: int, index: int) -> tuple[SlotInfo, bytes]:
    base = index * SLOT_SIZE
    head = os.pread(fd, HEADER.size, base)
    if len(head) < HEADER.size or head == bytes([ERASED]) * HEADER.size:
        # Past the end of a short image (creation interrupted) or erased: nothing was written here.
        if head.strip(bytes([ERASED])):
            return SlotInfo(index, "corrupt", detail="truncated header"), b""
        return SlotInfo(index, "blank", detail="erased"), b""
    magic, sequence, length, crc = HEADER.unpack(head)
    if magic != MAGIC:
        return SlotInfo(index, "corrupt", detail="bad magic"), b""
    if length > SLOT_SIZE - HEADER.size:
        return SlotInfo(index, "corrupt", sequence, length, "length beyond the slot"), b""
    payload = os.pread(fd, length, base + HEADER.size)
    if len(payload) != length:
        return SlotInfo(index, "corrupt", sequence, length, "truncated payload"), b""
    if zlib.crc32(payload, zlib.crc32(head[:-4])) != crc:
        return SlotInfo(index, "corrupt", sequence, length, "CRC mismatch"), b""
    return SlotInfo(index, "valid", sequence, length, "CRC ok"), payload


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _encode(c: FlashContents) -> bytes:
    doc = {
        "format": FORMAT,
        "config": cfg.to_dict(c.config) if c.config is not None else None,
        "token": c.token,
        "issuer_key": c.issuer_key,
        "revocations": list(c.revocations),
        "outbox": [{"id": r.id, "data": r.data} for r in c.outbox],
        "next_record_id": c.next_record_id,
        "baseline": c.baseline.to_dict() if c.baseline is not None else None,
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _decode(payload: bytes) -> FlashContents:
    doc = json.loads(payload)
    if doc.get("format") != FORMAT:
        raise ValueError(f"unknown format {doc.get('format')!r}")
    try:
        config = cfg.from_dict(doc["config"]) if doc["config"] is not None else None
    except cfg.ConfigError as exc:
        raise ValueError(f"stored configuration: {exc}") from None
    return FlashContents(
        config=config,
        token=doc["token"],
        issuer_key=doc["issuer_key"],
        revocations=tuple(doc["revocations"]),
        outbox=tuple(OutboxRecord(int(r["id"]), dict(r["data"])) for r in doc["outbox"]),
        next_record_id=int(doc["next_record_id"]),
        baseline=Baseline.from_dict(doc["baseline"]) if doc.get("baseline") is not None else None,
    )


class FlashBaseline:
    """The hourly baseline kept in the flash image (a `apm.meter_state.BaselineStore`).

    Saved once an hour, when an hourly list moves it on: one more flash write beside the outbox's.
    """

    def __init__(self, flash: Flash) -> None:
        self.flash = flash

    def load(self) -> Baseline | None:
        return self.flash.read().baseline

    def save(self, baseline: Baseline) -> None:
        self.flash.write_baseline(baseline)
