"""Files only the service user may read: credentials (the broker's users, the chargers' OCPP passwords).

    raw = read_private(path)          # None when there is no file; a file others could read is made 0600
    write_private(path, data)         # atomic, 0600 in a 0700 directory, synced

Only ``os`` and ``pathlib``: every command may import this without cost.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def read_private(path: str | os.PathLike[str]) -> bytes | None:
    """The file's bytes, None when it does not exist; OSError when it cannot be read."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read()
    except FileNotFoundError:
        return None
    if mode & 0o077:
        log.warning("%s was readable by others; made it 0600", p)
        with contextlib.suppress(OSError):
            os.chmod(p, 0o600)
    return raw


def write_private(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically (a crash leaves the old file or the new one), created 0600 in a 0700 directory."""
    p = Path(path)
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an old .tmp may have had other bits
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)
    with contextlib.suppress(OSError):  # the rename durable too
        dfd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
