"""Persistent outbox: records that must reach the broker (hourly energy) wait here until it has them.

`Outbox` is the small interface `apm.io.mqtt.link.MqttLink` needs; three implementations:

- `FileOutbox`: an append-only JSON-lines file, the default for the device;
- `FlashOutbox`: the outbox inside the emulated flash image (`apm.io.storage.flash.Flash`);
- `MemoryOutbox`: for simulations that need no persistence.

Ids are integers given by the outbox, increasing, never reused: `pending()` is in delivery order.
``ack`` of an unknown or already acknowledged id does nothing (acknowledgements may repeat).
``add`` may carry the hourly baseline that follows the record: `FlashOutbox` keeps both in one flash
write (so a power cut cannot keep one without the other); the others leave the baseline to its store.
``dropped`` counts records given up unsent: the flash outbox drops its oldest when full.

Why a JSON-lines log rather than sqlite3: the log is append-only (one ``write`` and one ``fsync`` per
record, like the flash it emulates), its only failure mode is a torn last line, which loading drops
and truncates (tested at every byte offset), it leaves no journal files beside it, and it reads with
``cat``. The file, one JSON object a line:

    {"op":"base","next_id":7}          first line after a compaction (ids are never reused)
    {"op":"add","id":7,"data":{...}}   fsync'ed before add() returns
    {"op":"ack","id":7}                not fsync'ed: a crash may resend a record, never lose one

Compaction rewrites the live records to a temporary file, fsyncs it, renames it over the log and
fsyncs the directory, when acknowledged lines outnumber live ones (and there are at least
``compact_after`` of them). An exclusive ``flock`` keeps a second process from appending meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from apm.io.storage.flash import OutboxRecord

if TYPE_CHECKING:
    from apm.core.meter_state import Baseline
    from apm.io.storage.flash import Flash

log = logging.getLogger(__name__)


class OutboxError(Exception):
    """The outbox cannot be used; the message says why."""


class OutboxLocked(OutboxError):
    pass


@runtime_checkable
class Outbox(Protocol):
    """Records waiting for an acknowledgement. ``pending()`` items have ``.id`` and ``.data``."""

    def add(self, record: Mapping[str, Any], *, baseline: Baseline | None = None) -> int:
        """Store a record durably; its id. ``baseline``: kept in the same write where the outbox can."""
        ...

    @property
    def dropped(self) -> int:
        """Records dropped unsent (the oldest, when full)."""
        ...

    def pending(self) -> Sequence[OutboxRecord]:
        """Unacknowledged records, oldest first."""
        ...

    def ack(self, id: int) -> None:
        """Forget a delivered record."""
        ...


class MemoryOutbox:
    """The records in memory; `FileOutbox` adds the file through the two ``_store_*`` hooks."""

    dropped = 0  # unbounded: nothing is dropped

    def __init__(self) -> None:
        self._live: dict[int, OutboxRecord] = {}
        self._next = 1

    def add(self, record: Mapping[str, Any], *, baseline: Baseline | None = None) -> int:
        entry = OutboxRecord(self._next, _plain(record))
        self._store_add(entry)  # durable first: a record is only added once it is stored
        self._live[entry.id] = entry
        self._next += 1
        return entry.id

    def pending(self) -> list[OutboxRecord]:
        return list(self._live.values())

    def ack(self, id: int) -> None:
        if self._live.pop(id, None) is not None:
            self._store_ack(id)

    def __len__(self) -> int:
        return len(self._live)

    def _store_add(self, entry: OutboxRecord) -> None:
        pass

    def _store_ack(self, id: int) -> None:
        pass


class FileOutbox(MemoryOutbox):
    """The JSON-lines outbox. Open it with ``with FileOutbox(path) as box:`` (or call `close`)."""

    def __init__(self, path: str | os.PathLike[str], *, compact_after: int = 256) -> None:
        super().__init__()
        self.path = Path(path)
        self.compact_after = compact_after
        self._dead_lines = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise OutboxLocked(f"{self.path}: the outbox is in use by another process") from None
        try:
            self._load()
            if self._should_compact():
                self.compact()
        except BaseException:
            self.close()
            raise

    # --- storage ---------------------------------------------------------------------------------

    def _store_add(self, entry: OutboxRecord) -> None:
        self._append({"op": "add", "id": entry.id, "data": entry.data}, sync=True)

    def _store_ack(self, id: int) -> None:
        try:
            self._append({"op": "ack", "id": id}, sync=False)
        except OSError as exc:  # the record stays in the file: sent again after a restart, not lost
            log.warning("%s: cannot record the acknowledgement of %d: %s", self.path, id, exc)
            return
        self._dead_lines += 2
        if self._should_compact():
            try:
                self.compact()
            except OSError as exc:  # the log is still whole; compaction is tried again at the next ack
                log.warning("%s: compaction failed: %s", self.path, exc)

    # --- the rest --------------------------------------------------------------------------------

    def __enter__(self) -> FileOutbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the flock
            self._fd = -1

    def compact(self) -> None:
        """Rewrite the log with only the live records (atomic: old or new file, never a mix)."""
        self._check_open()
        lines = [_line({"op": "base", "next_id": self._next})]
        lines += [_line({"op": "add", "id": e.id, "data": e.data}) for e in self._live.values()]
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, b"".join(lines))
            os.fsync(fd)
        finally:
            os.close(fd)
        # Take the lock on the new file before it replaces the old one, so no other process can
        # slip in between the rename and the lock.
        new_fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        try:
            fcntl.flock(new_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(new_fd)
            raise
        os.close(self._fd)
        self._fd = new_fd
        self._dead_lines = 0
        _fsync_dir(self.path.parent)

    def _should_compact(self) -> bool:
        return self._dead_lines >= self.compact_after and self._dead_lines > len(self._live)

    def _append(self, obj: Mapping[str, Any], sync: bool) -> None:
        self._check_open()
        size = os.fstat(self._fd).st_size
        try:
            _write_all(self._fd, _line(obj))
            if sync:
                os.fsync(self._fd)
        except OSError:
            # A partial line (disk full) would swallow the next one: cut it off again.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            raise

    def _check_open(self) -> None:
        if self._fd < 0:
            raise OutboxError(f"{self.path}: the outbox is closed")

    def _load(self) -> None:
        raw = _read_all(self._fd)
        good_end = 0  # end of the last complete, valid line
        pos = 0
        while pos < len(raw):
            nl = raw.find(b"\n", pos)
            if nl < 0:
                break  # torn last line: never acknowledged to anyone, drop it
            line = raw[pos:nl]
            pos = nl + 1
            try:
                self._apply(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                if pos >= len(raw):
                    break  # a garbled last line is a torn write, too
                log.warning("%s: skipping unreadable line at byte %d: %s", self.path, pos - len(line) - 1, exc)
                self._dead_lines += 1
                good_end = pos
                continue
            good_end = pos
        if good_end < len(raw):
            log.warning("%s: dropping %d bytes of a torn last write", self.path, len(raw) - good_end)
            os.ftruncate(self._fd, good_end)
            os.fsync(self._fd)

    def _apply(self, obj: Any) -> None:
        op = obj["op"]
        if op == "add":
            rid, data = obj["id"], obj["data"]
            if not isinstance(rid, int) or not isinstance(data, dict):
                raise ValueError("bad add line")
            self._live[rid] = OutboxRecord(rid, data)
            self._next = max(self._next, rid + 1)
        elif op == "ack":
            if self._live.pop(obj["id"], None) is not None:
                self._dead_lines += 1
            self._dead_lines += 1
        elif op == "base":
            next_id = obj["next_id"]
            if not isinstance(next_id, int):
                raise ValueError("bad base line")
            self._next = max(self._next, next_id)
        else:
            raise ValueError(f"unknown op {op!r}")


class FlashOutbox:
    """The outbox kept in the emulated flash image (`apm.io.storage.flash.Flash`), bounded by the room the image
    keeps for it (`apm.io.storage.flash.OUTBOX_BUDGET`): when full, the oldest records are dropped and counted."""

    def __init__(self, flash: Flash) -> None:
        self.flash = flash
        self._dropped: int | None = None  # read from the image on first use

    def add(self, record: Mapping[str, Any], *, baseline: Baseline | None = None) -> int:
        done = self.flash.append_record(_plain(record), baseline=baseline)
        self._dropped = done.dropped_total
        if done.dropped_now:
            log.warning("%s: outbox full, dropped the %d oldest unsent record(s) (%d since the image was erased)",
                        self.flash.path, done.dropped_now, done.dropped_total)
        return done.record.id

    @property
    def dropped(self) -> int:
        if self._dropped is None:
            self._dropped = self.flash.read(lenient=True).outbox_dropped
        return self._dropped

    def pending(self) -> Sequence[OutboxRecord]:
        contents = self.flash.read(lenient=True)
        self._dropped = contents.outbox_dropped
        return [OutboxRecord(r.id, dict(r.data)) for r in contents.outbox]

    def ack(self, id: int) -> None:
        self.flash.outbox_remove([id])


def _plain(record: Mapping[str, Any]) -> dict[str, Any]:
    """A copy that is JSON and survives a round trip through the file unchanged."""
    if not isinstance(record, Mapping):
        raise TypeError(f"an outbox record is a JSON object (a Mapping), not {type(record).__name__}")
    try:
        return json.loads(json.dumps(record, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"an outbox record must be plain JSON: {exc}") from None


def _line(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
