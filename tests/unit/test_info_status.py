"""`apm info` judges the HAN state the device wrote: by the writer's pid and the time the status was written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from apm.cli.commands.info import STATUS_STALE_S, han_state
from apm.cli.main import main
from apm.io.storage.flash import status_path

NOW = 1_900_000_000.0  # 2030-03-17T17:46:40Z
FRESH = {"meter": "aidon", "han_state": "fresh", "last_frame_at": "2030-03-17T17:46:38.000Z", "pid": 4242}


def test_a_running_device_with_a_current_status_is_believed() -> None:
    assert han_state(FRESH, NOW, NOW - 1, True) == "fresh (last frame 2030-03-17T17:46:38.000Z)"
    assert han_state(FRESH, NOW, NOW - 1, None) == "fresh (last frame 2030-03-17T17:46:38.000Z)"
    assert han_state({}, NOW, None, None) == "no HAN data yet"


def test_a_stopped_device_is_never_fresh() -> None:
    state = han_state(FRESH, NOW, NOW - 1, False)
    assert state.startswith("stale: the device is not running (pid 4242 ended")
    assert "status written 2030-03-17T17:46:39Z" in state and "last frame 2030-03-17T17:46:38.000Z" in state


def test_a_status_nobody_rewrites_is_stale_even_if_the_pid_exists() -> None:
    """A pid can be reused; a running device rewrites its status every few seconds."""
    state = han_state(FRESH, NOW, NOW - STATUS_STALE_S - 5, True)
    assert state.startswith("stale: the status was last written 2030-03-17T17:46:25Z, 15 s ago")


def test_a_last_frame_in_the_future_is_not_fresh() -> None:
    """A replay or simulation at --speed runs its own clock ahead of the wall clock."""
    ahead = {**FRESH, "last_frame_at": "2030-03-17T18:46:40.000Z"}
    state = han_state(ahead, NOW, NOW - 1, True)
    assert not state.startswith("fresh") and state.startswith("simulated: ")
    assert "last frame 2030-03-17T18:46:40.000Z" in state


def _dead_pid() -> int:
    """A pid above the kernel's limit: no process can have it."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    except OSError:
        return 2**22 + 1


@pytest.mark.parametrize(("pid", "start"), [(None, "stale: the device is not running"),
                                            (os.getpid(), "simulated: ")])
def test_apm_info_after_the_device_stopped(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           pid: int | None, start: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The newcomer's case: a replay at --speed ended; its status says fresh, with a last frame ahead of now."""
    monkeypatch.setenv("APM_FLASH", str(tmp_path / "flash.img"))
    status = {"meter": "aidon", "han_state": "fresh", "last_frame_at": "2099-01-01T00:00:00.000Z",
              "pid": _dead_pid() if pid is None else pid}
    status_path(tmp_path / "flash.img").write_text(json.dumps(status))
    assert main(["info", "--json", "--image", str(tmp_path / "flash.img")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["han_state"].startswith(start), doc["han_state"]
    assert "status_written" in doc


def test_each_chargers_link_as_the_running_device_wrote_it() -> None:
    from apm.cli.commands.info import charger_link

    link = {"protocol": "ocpp", "connected": True, "last_report_at": "2030-03-17T17:46:38.000Z", "limit_a": 16.0}
    assert charger_link("ocpp", link, True) == "ocpp connected, last report 2030-03-17T17:46:38.000Z, limit 16.0 A"
    assert charger_link("goe", {"protocol": "goe", "connected": False}, True) == \
        "goe NOT connected, no report yet, no limit sent yet"
    assert charger_link("mqtt", {"protocol": "mqtt", "connected": None, "limit_a": 6}, True) == \
        "mqtt, no report yet, limit 6.0 A"
    assert charger_link("ocpp", link, False) == "ocpp (the device is not running)"
    assert charger_link("ocpp", None, True) == "ocpp"
    # The charging session, as the device keeps it (apm.core.sessions).
    session = {"energy_kwh": 7.25, "started_at": "2030-03-17T17:00:00.000Z", "ended_at": None, "duration_s": 2798,
               "source": "charger", "active": True}
    assert charger_link("ocpp", {**link, "session": session}, True).endswith(
        ", session 7.25 kWh since 2030-03-17T17:00:00.000Z (charger's register)")
    ended = {**session, "active": False, "source": "integrated"}
    assert "last session 7.25 kWh since 2030-03-17T17:00:00.000Z (integrated)" in \
        charger_link("ocpp", {**link, "session": ended}, True)
    assert charger_link("ocpp", {**link, "session": None}, True) == charger_link("ocpp", link, True)
