"""The emulated flash: one image file holding everything the device keeps across power loss.

Contents: the configuration, the subscription token, the issuer's public key, the revocations
received, the outbox of hourly-energy records not yet acknowledged by the cloud, and the hourly
baseline (the counters of the last hourly list, `apm.core.meter_state.Baseline`), so that the first hour
after a restart is recorded too, and the capacity guard's month (its daily peak hours,
`apm.core.capacity_guard.month_doc`), so that a restart does not forget the month's peaks. An image
written before the baseline or the month was kept reads as one without.

Room: each part has a fixed budget in a slot (`BUDGETS`, bytes of its JSON); a configuration, token,
key, revocation or baseline that would exceed its budget is refused (`PartTooLarge`) and nothing is
written. The outbox gets the rest of the slot (`OUTBOX_BUDGET`): when a record would not fit, the
OLDEST records are dropped, and counted (`FlashContents.outbox_dropped`). So a month or two of hourly
records with the broker away never keeps a new configuration or a revocation out. The records are
kept as rows under one key list (format 2); format 1 images (a list of objects) still read.

The issuer key is pinned: `with_issuer_key` refuses another key unless asked to replace it.
A stored configuration that this version's schema refuses (an image from another version) does not
make the image unreadable: `Flash.read` raises `StoredConfigRefused` naming the key, while `update`
(so `apm flash write`) sees no configuration and keeps the rest.

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
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from apm.core import config as cfg
from apm.core.meter_state import Baseline
from apm.io.storage import paths

SLOT_SIZE = 256 * 1024
SLOTS = 2
IMAGE_SIZE = SLOT_SIZE * SLOTS
MAGIC = b"APMFLSH1"
HEADER = struct.Struct("<8sQII")  # magic, sequence, payload length, crc32
FORMAT = 2  # 2: the outbox as rows under one key list; 1 (still read): a list of {"id", "data"}
# Bytes of a slot each part may take, as JSON (measured: a configuration with three chargers ~700,
# a token ~500, an Ed25519 key 113, a revocation ~420, a baseline ~110).
BUDGETS: dict[str, int] = {
    "config": 8 * 1024,
    "token": 2 * 1024,
    "issuer_key": 1024,
    "revocations": 24 * 1024,  # some 55 revocations
    "baseline": 512,
    "capacity": 2048,  # 31 daily peaks of ~32 bytes each, with the month
    "envelope": 1024,  # the keys, format, record counters and punctuation
}
# The rest is the outbox's: about 1,500 hourly records (some 64 days) of ~145 bytes each.
OUTBOX_BUDGET = SLOT_SIZE - HEADER.size - sum(BUDGETS.values())
ERASED = 0xFF
ENV_VAR = "APM_FLASH"


class FlashError(Exception):
    """The image cannot be used; the message says why."""


class CorruptImage(FlashError):
    pass


class FlashFull(FlashError):
    pass


class PartTooLarge(FlashFull):
    """A configuration, token, key, revocation or baseline larger than the room reserved for it."""


class IssuerKeyPinned(FlashError):
    """Another issuer key than the one the image holds, without asking to replace it."""


class StoredConfigRefused(FlashError):
    """The stored configuration does not pass this version's schema; the rest of the image is fine."""


@dataclass(frozen=True, slots=True)
class UnreadableConfig:
    """A stored configuration this version refuses: kept as it was (``raw``) until replaced."""

    raw: Any
    problem: str


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
    outbox_dropped: int = 0  # records dropped unsent (the oldest, when the outbox was full) since the erase
    capacity: dict[str, Any] | None = None  # the capacity guard's month (`apm.core.capacity_guard.month_doc`)
    unreadable_config: UnreadableConfig | None = None  # set only when ``config`` is None

    @property
    def blank(self) -> bool:
        return self == FlashContents()


@dataclass(frozen=True, slots=True)
class Appended:
    """What `Flash.append_record` did: the record queued, and the oldest records dropped to make room."""

    record: OutboxRecord
    dropped_now: int
    dropped_total: int


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
    """``--image`` if given, else ``$APM_FLASH``, else the per-user default (see `apm.io.storage.paths`)."""
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

    def read(self, *, lenient: bool = False) -> FlashContents:
        """The current version; a missing or blank image reads as empty contents.

        A stored configuration this version refuses raises `StoredConfigRefused` (it says which key),
        unless ``lenient``: then the contents come back without it (``unreadable_config`` says why).
        """
        if not self.path.exists():
            return FlashContents()
        with self._locked(exclusive=False) as fd:
            contents = self._read(fd)[0]
        if contents.unreadable_config is not None and not lenient:
            raise StoredConfigRefused(f"{self.path}: {refused_config_message(contents.unreadable_config)}")
        return contents

    def inspect(self) -> ImageReport:
        if not self.path.exists():
            return ImageReport(self.path, False, 0)
        with self._locked(exclusive=False) as fd:
            size = os.fstat(fd).st_size
            return ImageReport(self.path, True, size, tuple(_scan_slot(fd, i)[0] for i in range(SLOTS)))

    def update(self, change: Callable[[FlashContents], FlashContents]) -> FlashContents:
        """Read, change and write back under one lock; raises if the image is corrupt (and leaves it).

        What is written is made to fit first: a part over its budget is refused (`PartTooLarge`, nothing
        written), the oldest outbox records go if the outbox is over its own (and are counted).
        A stored configuration this version refuses reaches ``change`` as ``unreadable_config``.
        """
        with self._locked(exclusive=True, create=True) as fd:
            current, report = self._read(fd)
            new = change(current)
            if new != current:
                new = fit(new, current)
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
        """Store ``config``; it also replaces a stored configuration this version refuses."""
        return self.update(lambda c: replace(c, config=config, unreadable_config=None))

    def write_token(self, token: str | None) -> FlashContents:
        return self.update(lambda c: replace(c, token=token))

    def write_issuer_key(self, pem: str, *, replace_key: bool = False) -> FlashContents:
        """Store the issuer key; `IssuerKeyPinned` if the image holds another and not ``replace_key``."""
        return self.update(lambda c: with_issuer_key(c, pem, replace_key=replace_key))

    def write_baseline(self, baseline: Baseline | None) -> FlashContents:
        return self.update(lambda c: replace(c, baseline=baseline))

    def write_capacity(self, month: Mapping[str, Any] | None) -> FlashContents:
        doc = None if month is None else json.loads(json.dumps(dict(month), allow_nan=False))
        return self.update(lambda c: replace(c, capacity=doc))

    def add_revocation(self, revocation: str) -> FlashContents:
        return self.update(
            lambda c: c if revocation in c.revocations else replace(c, revocations=(*c.revocations, revocation))
        )

    def outbox_append(self, data: Mapping[str, Any]) -> OutboxRecord:
        """Queue one record; when the outbox is full the oldest records are dropped (and counted)."""
        return self.append_record(data).record

    def append_record(self, data: Mapping[str, Any], *, baseline: Baseline | None = None) -> Appended:
        """Queue one record and, if given, the hourly baseline that follows it, in ONE write: a power
        loss leaves both or neither, so an hour is never recorded twice nor lost between the two."""
        record_data = json.loads(json.dumps(dict(data), allow_nan=False))  # a JSON value, copied
        seen: list[tuple[OutboxRecord, int]] = []  # the record, and the drop count before it

        def change(c: FlashContents) -> FlashContents:
            record = OutboxRecord(c.next_record_id, record_data)
            seen.append((record, c.outbox_dropped))
            return replace(c, outbox=(*c.outbox, record), next_record_id=c.next_record_id + 1,
                           baseline=c.baseline if baseline is None else baseline)

        after = self.update(change)
        record, dropped_before = seen[-1]
        return Appended(record, after.outbox_dropped - dropped_before, after.outbox_dropped)

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
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
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
        "config": _config_doc(c),
        "token": c.token,
        "issuer_key": c.issuer_key,
        "revocations": list(c.revocations),
        "outbox": _outbox_doc(c.outbox),
        "next_record_id": c.next_record_id,
        "outbox_dropped": c.outbox_dropped,
        "baseline": c.baseline.to_dict() if c.baseline is not None else None,
    }
    if c.capacity is not None:  # absent rather than null: an image without it reads as before
        doc["capacity"] = c.capacity
    return _json(doc).encode()


def _json(value: Any) -> str:
    """The one JSON form of the image (ASCII, so its length is its size in bytes)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)


def _config_doc(c: FlashContents) -> Any:
    if c.config is not None:
        return cfg.to_dict(c.config)
    return c.unreadable_config.raw if c.unreadable_config is not None else None


def _outbox_doc(records: tuple[OutboxRecord, ...]) -> dict[str, Any]:
    """Rows ``[id, [values]]`` under the newest record's keys (a record with other keys: ``[id, {data}]``):
    the keys, written once instead of in every record, were a third of a record's bytes."""
    keys = sorted(records[-1].data) if records else []
    names = set(keys)
    rows = [[r.id, [r.data[k] for k in keys]] if r.data.keys() == names else [r.id, r.data] for r in records]
    return {"keys": keys, "rows": rows}


def _decode(payload: bytes) -> FlashContents:
    doc = json.loads(payload)
    if doc.get("format") not in (1, FORMAT):
        raise ValueError(f"unknown format {doc.get('format')!r}")
    config, unreadable = None, None
    if doc["config"] is not None:
        try:
            config = cfg.from_dict(doc["config"])
        except cfg.ConfigError as exc:
            unreadable = UnreadableConfig(doc["config"], str(exc))
    if doc["format"] == 1:
        outbox = tuple(OutboxRecord(int(r["id"]), dict(r["data"])) for r in doc["outbox"])
    else:
        keys = doc["outbox"]["keys"]
        outbox = tuple(OutboxRecord(int(rid), dict(zip(keys, body, strict=True)) if isinstance(body, list)
                                    else dict(body)) for rid, body in doc["outbox"]["rows"])
    return FlashContents(
        config=config,
        token=doc["token"],
        issuer_key=doc["issuer_key"],
        revocations=tuple(doc["revocations"]),
        outbox=outbox,
        next_record_id=int(doc["next_record_id"]),
        baseline=Baseline.from_dict(doc["baseline"]) if doc.get("baseline") is not None else None,
        outbox_dropped=int(doc.get("outbox_dropped", 0)),
        capacity=doc["capacity"] if isinstance(doc.get("capacity"), dict) else None,
        unreadable_config=unreadable,
    )


# --- room ----------------------------------------------------------------------------------------

_PART_NAMES = {"config": "the configuration", "token": "the token", "issuer_key": "the issuer key",
               "revocations": "the revocations", "baseline": "the hourly baseline",
               "capacity": "the capacity guard's month"}


def _parts(c: FlashContents) -> dict[str, Any]:
    """Each budgeted part as it is written (see `BUDGETS`)."""
    return {"config": _config_doc(c), "token": c.token, "issuer_key": c.issuer_key,
            "revocations": list(c.revocations),
            "baseline": c.baseline.to_dict() if c.baseline is not None else None,
            "capacity": c.capacity}


def fit(new: FlashContents, current: FlashContents | None = None) -> FlashContents:
    """``new`` as it can be written: `PartTooLarge` if a part changed from ``current`` exceeds its budget
    (a part written by an older version is left as it is); the oldest outbox records dropped, and
    counted in ``outbox_dropped``, while the outbox exceeds `OUTBOX_BUDGET`."""
    old = _parts(current) if current is not None else {}
    for name, value in _parts(new).items():
        size = len(_json(value))
        if name in old and value == old[name] or size <= BUDGETS[name]:
            continue
        extra = f" ({len(new.revocations)})" if name == "revocations" else ""
        raise PartTooLarge(f"{_PART_NAMES[name]}{extra} would take {size:,} bytes of the flash image, more "
                           f"than the {BUDGETS[name]:,} kept for it")
    return _trim_outbox(new)


def outbox_size(records: tuple[OutboxRecord, ...]) -> int:
    """Bytes the outbox takes in the image."""
    return len(_json(_outbox_doc(records)))


# An hourly energy record (`apm.io.mqtt.messages.EnergyRecord`) as the device makes them, for `outbox_capacity`.
_TYPICAL_RECORD = {"id": "APM-00012345/2025-01-15T10:00:00+01:00", "hour_start": "2025-01-15T10:00:00+01:00",
                   "hour_end": "2025-01-15T11:00:00+01:00", "hours": 1, "import_wh": 12345.678,
                   "export_wh": 0.0, "meter_id": "7359992890941742"}


def outbox_capacity(records: tuple[OutboxRecord, ...] = ()) -> int:
    """About how many records like ``records`` (their average; default: a typical hourly record) the
    outbox holds."""
    sample = records or (OutboxRecord(1_000_000, _TYPICAL_RECORD),)
    empty = len(_json({"keys": _outbox_doc(sample)["keys"], "rows": []}))
    per_row = (outbox_size(sample) - empty + 1) / len(sample)  # n rows: their bytes and n - 1 commas
    return int((OUTBOX_BUDGET - empty + 1) // per_row)


def _trim_outbox(c: FlashContents) -> FlashContents:
    doc = _outbox_doc(c.outbox)
    rows = doc["rows"]
    total = len(_json(doc))
    drop = 0
    while total > OUTBOX_BUDGET and drop < len(rows) - 1:
        total -= len(_json(rows[drop])) + 1  # the rows are joined by commas: the size is exact
        drop += 1
    if total > OUTBOX_BUDGET:
        raise PartTooLarge(f"an outbox record of {total:,} bytes does not fit the {OUTBOX_BUDGET:,} bytes of the outbox")
    if drop == 0:
        return c
    return replace(c, outbox=c.outbox[drop:], outbox_dropped=c.outbox_dropped + drop)


# --- the issuer key and the stored configuration -------------------------------------------------


def with_issuer_key(c: FlashContents, pem: str, *, replace_key: bool = False) -> FlashContents:
    """``c`` holding ``pem`` as its issuer key. The first key stored is pinned: another one is refused
    (`IssuerKeyPinned`) unless ``replace_key``, since whoever changes the key decides which tokens are
    genuine and whose revocations count."""
    if c.issuer_key is not None and same_issuer_key(c.issuer_key, pem):
        return c
    if c.issuer_key is not None and not replace_key:
        raise IssuerKeyPinned("the image holds another issuer key, pinned when the first token was installed; "
                              "a token or revocation signed by another key is refused. `apm flash erase` "
                              "starts the device over; `apm token install ... --replace-issuer-key` replaces "
                              "the key on purpose")
    return replace(c, issuer_key=pem)


def same_issuer_key(a: str, b: str) -> bool:
    """The same key in two PEM texts (line breaks, surrounding text and a final newline aside)."""
    return _pem_body(a) == _pem_body(b)


def _pem_body(pem: str) -> str:
    m = re.search(r"-----BEGIN [^-]+-----(.*?)-----END", pem, re.S)
    return "".join((m.group(1) if m else pem).split())


def refused_config_message(u: UnreadableConfig) -> str:
    return (f"the stored configuration is refused by this version of apm: {u.problem}; "
            "`apm flash write CONFIG.toml` replaces it and keeps the token, issuer key, revocations and outbox")


class FlashBaseline:
    """The hourly baseline kept in the flash image (a `apm.core.meter_state.BaselineStore`).

    When an hour closes, the baseline goes into the image with the hour's record (`FlashOutbox.add`
    with ``baseline``); saving the same baseline again then writes nothing (`Flash.update` writes only a
    change). A baseline that moves without a record (the first hourly list) is written here.
    """

    def __init__(self, flash: Flash) -> None:
        self.flash = flash

    def load(self) -> Baseline | None:
        return self.flash.read().baseline

    def save(self, baseline: Baseline) -> None:
        self.flash.write_baseline(baseline)


class FlashCapacity:
    """The capacity guard's month kept in the flash image (`apm.services.device.CapacityStore`): written
    when the month's log changes (an hour closed, or the meter's list 3 corrected one), right after the
    hour's record; `Flash.update` writes nothing when it did not change."""

    def __init__(self, flash: Flash) -> None:
        self.flash = flash

    def load(self) -> dict[str, Any] | None:
        return self.flash.read().capacity

    def save(self, month: Mapping[str, Any]) -> None:
        self.flash.write_capacity(month)
