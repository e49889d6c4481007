from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.mqtt_broker import Mosquitto, MosquittoMissing


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory):
    """A real mosquitto on a free local port (killed after the test); `.kill()`, `.start()`, `.url`."""
    try:
        broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    except MosquittoMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with broker:
        yield broker


def _apm_children() -> set[int]:
    """This process's children that run our own commands (`python -m apm ...`, `-m sim...`)."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me and any(a in (b"apm", b"sim.meter") or a.startswith(b"sim.") for a in argv[1:3]):
            found.add(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def no_leftover_apm_process():
    """A test that fails half-way must not leave an `apm run` behind: one that keeps retrying its serial
    port opens the next test's pseudo-terminal when the kernel hands out the same /dev/pts number, and
    steals its bytes. Kill what the test started and left running."""
    before = _apm_children()
    yield
    for pid in _apm_children() - before:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
