"""Latency from the meter to an OCPP charger: a frame's last byte on the pty -> SetChargingProfile at the
charge point.

The device runs as in a house: `apm run --port PTY` in its own process, its configuration and
subscription in a flash image (`sim.cloud.provision`: without a subscription the chargers share the
fixed current and no frame changes a limit), one charger with ``protocol = "ocpp"``. This process is
the meter and the charger: it writes Aidon 3p-tn list 2 frames (each with per-phase currents, so each
gives a headroom) to a pty without line pacing, noting when each write returned (the last byte is in
the pty), and runs a `SimOcppChargePoint` (the `ocpp` library) whose EV waits for current. A limit is
sent only when it changes, so the house is a staircase that moves every frame (8, 9, ... 17 A per line,
then 8 again) and the balancer is told to follow at once (no hold, no minimum interval or increase,
no deadband). A frame's latency is the time to the next limit profile whose limit differs from the one
before; frames go out ``interval`` seconds apart, far more than the latency, so each is measured alone.

Median and p99 over ``frames`` frames (1,000; BENCH_OCPP_FRAMES overrides for a smoke run), against
mosquitto when it is installed (the device publishes on MQTT too), else the embedded broker.
Target: p99 under 50 ms.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.bench_latency import (
    ROOT,
    Result,
    _free_port,
    _listening,
    on_a_broker,
    result_of,
    stop_device,
    table,
)

SERIAL = "APMBENCHO1"
HOUSE_A = tuple(8.0 + k for k in range(10))  # per line, one step per list 2


def config_toml(ocpp_port: int) -> str:
    return f"""
serial = "{SERIAL}"
installation_id = "inst-bench"
[grid]
network = "TN"
fuse_a = 40
[[chargers]]
id = "a"
phases = 3
protocol = "ocpp"
[balancer]
hold_s = 0
min_interval_s = 0
min_increase_a = 0
max_step_up_a = 32
decrease_deadband_a = 0
ev_settle_s = 600
[ocpp]
listen = "127.0.0.1"
port = {ocpp_port}
validity_s = 120
renew_s = 60
"""


def frames_to_send(n: int) -> list[bytes]:
    """``n`` Aidon 3p-tn list 2 frames; the house on every line steps through HOUSE_A, one step a frame."""
    from sim.frames import MeterSpec
    from sim.meter import Meter

    def staircase(t: float) -> tuple[float, float, float]:
        a = HOUSE_A[int(t // 10) % len(HOUSE_A)]  # Aidon's list 2 comes every 10 s
        return (a, a, a)

    meter = Meter(MeterSpec("aidon", "3p-tn"), datetime.fromisoformat("2025-01-15T10:00:05+01:00"),
                  currents=staircase, seed=3)
    out: list[bytes] = []
    t = 0.0
    while len(out) < n:
        out += [p.frame for p in meter.pushes_between(t, t + 600.0) if p.list == 2]
        t += 600.0
    return out[:n]


class _Arrivals:
    """The charge point's limit profiles as they arrive: (perf_counter, limit A)."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float]] = []

    def store(self) -> Any:
        from apm.io.chargers.ocpp_policy import LIMIT_PROFILE_ID
        from sim.ocpp_charger import Profile, ProfileStore

        seen = self.seen

        class TimedStore(ProfileStore):
            def set(self, profile: Profile) -> str:
                if profile.id == LIMIT_PROFILE_ID:
                    seen.append((time.perf_counter(), profile.periods[0][1]))
                return super().set(profile)

        return TimedStore()


def _charge_point(url: str, arrivals: _Arrivals) -> Any:
    from apm.core.config import ChargerConfig
    from sim.charger import SimCharger
    from sim.ev import EV
    from sim.ocpp_charger import SimOcppChargePoint

    charger = SimCharger(ChargerConfig(id="a", max_a=32.0, phases=3, protocol="ocpp"), "TN")
    charger.plug(0.0, EV(id="ev", phases=3))  # never stepped: it waits for current, draws none
    cp = SimOcppChargePoint(charger, url, steps=False, reconnect_s=0.2)
    cp.store = arrivals.store()
    return cp


async def _measure(frames: list[bytes], interval: float, broker: str | None, tmp: Path) -> Result:
    from apm.core import config as cfg
    from apm.io.serial.port import VENDOR_SETTINGS, SettingsCache
    from apm.io.tasks import stop
    from sim.cloud import provision
    from sim.serial_line import VirtualSerialPort

    ocpp_port = _free_port()
    image, cache = tmp / "flash.img", tmp / "serial.json"
    provision(image, cfg.loads(config_toml(ocpp_port)), tmp, datetime.now(UTC))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "APM_FLASH": str(image), "APM_SERIAL_CACHE": str(cache)}
    args = ["--broker", broker] if broker else ["--broker-port", str(_free_port())]
    settings = VENDOR_SETTINGS["aidon"]
    arrivals = _Arrivals()
    with VirtualSerialPort(settings, pace=0) as line, (tmp / "device.log").open("w") as log:
        SettingsCache(cache).put(line.path, settings)
        command = [sys.executable, "-m", "apm", "run", "--port", line.path, "--image", str(image), "--plain",
                   "--http", "off", *args]
        device = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while not _listening(ocpp_port):
                if device.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"apm run did not start: {(tmp / 'device.log').read_text()}")
                await asyncio.sleep(0.05)
            cp = _charge_point(f"ws://127.0.0.1:{ocpp_port}", arrivals)
            task = asyncio.create_task(cp.run())
            try:
                written = await _write(line, frames, interval, arrivals)
            finally:
                await stop(task)
        finally:
            stop_device(device)
    return result_of(_answers(written, arrivals.seen), broker)


async def _write(line: Any, frames: list[bytes], interval: float, arrivals: _Arrivals) -> list[tuple[float, int]]:
    """Warm up until the meter's data moves the limit, then each frame: (when written, arrivals before)."""
    warm = frames_to_send(len(HOUSE_A) * 2)
    k = 0
    # Until the meter's data moves the limit (the fixed current came first), and on to the staircase's
    # top, so that the first measured frame (its bottom) changes the limit too.
    while len({limit for _, limit in arrivals.seen}) < 3 or k % len(HOUSE_A):
        await line.awrite(warm[k % len(warm)])
        k += 1
        await asyncio.sleep(0.1)
        if k > 300:
            raise RuntimeError("no limit from the meter's data after 30 s of frames")
    await asyncio.sleep(1.0)
    written: list[tuple[float, int]] = []
    for frame in frames:
        mark = len(arrivals.seen)
        await line.awrite(frame)  # unpaced: returns once the last byte is in the pty
        written.append((time.perf_counter(), mark))
        await asyncio.sleep(interval)
    await asyncio.sleep(0.5)
    return written


def _answers(written: list[tuple[float, int]], seen: list[tuple[float, float]]) -> Iterator[tuple[float, float | None]]:
    """Each frame's (when written, when the first limit unlike the one before it arrived): the staircase
    moves the limit on every frame, so the first change after a frame is its own."""
    for t, mark in written:
        before = seen[mark - 1][1] if mark else None
        yield t, next((at for at, limit in seen[mark:] if limit != before), None)


def measure(frames: int | None = None, interval: float = 0.05, broker: str | None = None) -> Result:
    """``broker``: "mosquitto" (when installed) or "embedded"; default $BENCH_LATENCY_BROKER or mosquitto."""
    data = frames_to_send(frames or int(os.environ.get("BENCH_OCPP_FRAMES", "1000")))
    return on_a_broker(lambda url, tmp: _measure(data, interval, url, tmp), broker, "apm-bench-ocpp-")


def render(r: Result, console: Console | None = None) -> None:
    console = console or Console()
    console.print("[bold]Latency to an OCPP charger[/bold]: frame's last byte written to the pty -> "
                  f"SetChargingProfile at the charge point (`apm run --port PTY`, OCPP 1.6J over a websocket, "
                  f"{r.broker}), {r.frames} Aidon list 2 frames, each moving the limit")
    console.print(table(r))
    if r.missing:
        console.print(f"{r.missing} frame(s) without a new limit at the charger within 1 s (counted as infinitely late).")


def run() -> None:
    render(measure())


if __name__ == "__main__":
    run()
