"""Latency from the meter to the charger: a frame's last byte on the pty -> its setpoint at the broker.

The device runs as it does in a house: `apm run --port PTY` in its own process (pyserial, serial
settings auto-detected, the device and the balancer service as two MQTT clients), against mosquitto
when it is installed, else its own embedded amqtt broker. This process is the meter and the observer:
it writes Aidon 3p-it list 2 frames (each one reading with per-phase currents, so each gives a
headroom and a setpoint) to a pty without line pacing, notes when each write returned (the last byte
is in the pty), and subscribes to ``charger/+/setpoint``. A setpoint names the reading it answers
(``reading_seq``, see apm/io/mqtt/messages.py); its arrival at the observer is taken as its arrival at the
broker (the observer is on the same host; the hop adds well under a millisecond).

BENCH_LATENCY_BROKER=embedded measures with the embedded broker even when mosquitto is installed.
Frames go out every ``interval`` seconds, far apart compared with the latency, so each is measured
alone. Median and p99 over ``frames`` frames (1,000; BENCH_LATENCY_FRAMES overrides for a smoke run).
Target: p99 under 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
from rich import box
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
TARGET_P99_MS = 50.0
LATE_S = 1.0  # an answer this late is still measured; one that never came counts as infinitely late
SERIAL = "APMBENCH1"
CONFIG = f"""
serial = "{SERIAL}"
[grid]
network = "IT"
fuse_a = 40
[[chargers]]
id = "a"
phases = 3
"""
MOSQUITTO = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


@dataclass(frozen=True, slots=True)
class Result:
    broker: str
    frames: int
    latencies_ms: tuple[float, ...]
    missing: int  # frames whose setpoint never came

    def _all(self) -> list[float]:
        # A frame whose setpoint never came counts as infinitely late: leaving it out would flatter the p99.
        return sorted(self.latencies_ms) + [math.inf] * self.missing

    @property
    def median_ms(self) -> float:
        return statistics.median(self._all())

    @property
    def p99_ms(self) -> float:
        xs = self._all()
        return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


def frames_to_send(n: int) -> list[bytes]:
    from sim.frames import MeterSpec
    from sim.meter import Meter

    meter = Meter(MeterSpec("aidon", "3p-it"), datetime.fromisoformat("2025-01-15T10:00:30+01:00"), seed=2)
    out: list[bytes] = []
    t = 0.0
    while len(out) < n:
        out += [p.frame for p in meter.pushes_between(t, t + 600.0) if p.list == 2]
        t += 600.0
    return out[:n]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _mosquitto(tmp: Path):
    """mosquitto on a free port, or None when it is not installed."""
    binary = shutil.which("mosquitto") or next((p for p in MOSQUITTO if os.access(p, os.X_OK)), None)
    if binary is None:
        yield None
        return
    port = _free_port()
    conf = tmp / "mosquitto.conf"
    # set_tcp_nodelay: mosquitto's default (false) lets Nagle hold a forwarded message up to ~40 ms
    # behind the previous one; a broker serving an APM should turn it on (README).
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    f"set_tcp_nodelay true\nuser {pwd.getpwuid(os.getuid()).pw_name}\nlog_dest none\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                yield None
                return
            time.sleep(0.02)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


async def _measure(frames: list[bytes], interval: float, broker: str | None, tmp: Path) -> Result:
    from apm.io.serial.port import SerialSettings
    from sim.serial_line import VirtualSerialPort

    config = tmp / "apm.toml"
    config.write_text(CONFIG)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "APM_FLASH": str(tmp / "none.img"),
           "APM_SERIAL_CACHE": str(tmp / "serial.json")}
    url = broker
    args = []
    if url is None:
        port = _free_port()
        url = f"mqtt://127.0.0.1:{port}"
        args = ["--broker-port", str(port)]
    else:
        args = ["--broker", url]
    host, port_s = url.rsplit("//", 1)[1].rsplit(":", 1)
    arrivals: dict[int, float] = {}
    with VirtualSerialPort(SerialSettings(2400, "E"), pace=0) as line:
        command = [sys.executable, "-m", "apm", "run", "--port", line.path, "--config", str(config),
                   "--plain", "--probe-seconds", "3", *args]
        device = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 15
            while not _listening(int(port_s)):
                if device.poll() is not None or time.monotonic() > deadline:
                    said = device.stderr.read() if device.stderr else ""
                    raise RuntimeError(f"apm run did not start: {said}")
                await asyncio.sleep(0.05)
            nodelay = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
            async with aiomqtt.Client(host, int(port_s), identifier="bench-latency",
                                      socket_options=nodelay) as client:
                await client.subscribe(f"apm/{SERIAL}/charger/+/setpoint", qos=1)

                async def listen() -> None:
                    async for m in client.messages:
                        now = time.perf_counter()
                        seq = json.loads(bytes(m.payload)).get("reading_seq")  # type: ignore[arg-type]
                        if isinstance(seq, int) and seq not in arrivals:
                            arrivals[seq] = now

                listener = asyncio.create_task(listen())
                # Warm up: the device auto-detects 2400 8E1 and its MQTT clients connect; then wait for quiet.
                k = 0
                warm = frames_to_send(400)
                while not arrivals:
                    await line.awrite(warm[k % len(warm)])
                    k += 1
                    await asyncio.sleep(0.05)
                    if k > 300:
                        raise RuntimeError("no setpoint after 15 s of frames")
                await asyncio.sleep(1.0)
                base = max(arrivals)
                written: list[float] = []
                for frame in frames:
                    await line.awrite(frame)  # unpaced: returns once the last byte is in the pty
                    written.append(time.perf_counter())
                    await asyncio.sleep(interval)
                await asyncio.sleep(1.0)
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
        finally:
            stop_device(device)
    return result_of(((t, arrivals.get(base + i)) for i, t in enumerate(written, start=1)), broker)


def stop_device(device: subprocess.Popen[Any]) -> None:
    """SIGTERM, as a service manager stops it; SIGKILL if it has not ended within 10 s."""
    device.send_signal(signal.SIGTERM)
    try:
        device.wait(10)
    except subprocess.TimeoutExpired:
        device.kill()


def result_of(answers: Iterable[tuple[float, float | None]], broker: str | None) -> Result:
    """Each frame as (when written, when its answer came or None) -> Result. A late answer is still
    measured (up to LATE_S); only one that never came is missing."""
    latencies: list[float] = []
    frames = missing = 0
    for t, got in answers:
        frames += 1
        if got is None or not 0 <= got - t < LATE_S:
            missing += 1
        else:
            latencies.append((got - t) * 1000.0)
    return Result("mosquitto" if broker else "embedded amqtt (in the device's process)", frames,
                  tuple(latencies), missing)


def on_a_broker(measure_at: Callable[[str | None, Path], Coroutine[Any, Any, Result]], broker: str | None,
                prefix: str) -> Result:
    """``measure_at(broker URL or None for the embedded one, a temporary folder)`` run on the broker asked
    for: "mosquitto" (when installed) or "embedded"; default $BENCH_LATENCY_BROKER or mosquitto."""
    want = broker or os.environ.get("BENCH_LATENCY_BROKER", "mosquitto")
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        tmp_path = Path(tmp)
        if want == "embedded":
            return asyncio.run(measure_at(None, tmp_path))
        with _mosquitto(tmp_path) as url:
            return asyncio.run(measure_at(url, tmp_path))


def measure(frames: int | None = None, interval: float = 0.03, broker: str | None = None) -> Result:
    """``broker``: "mosquitto" (when installed) or "embedded"; default $BENCH_LATENCY_BROKER or mosquitto."""
    data = frames_to_send(frames or int(os.environ.get("BENCH_LATENCY_FRAMES", "1000")))
    return on_a_broker(lambda url, tmp: _measure(data, interval, url, tmp), broker, "apm-bench-")


def render(r: Result, console: Console | None = None) -> None:
    console = console or Console()
    console.print("[bold]Latency[/bold]: frame's last byte written to the pty -> charger setpoint at the "
                  f"broker (`apm run --port PTY`, {r.broker}), {r.frames} Aidon list 2 frames")
    console.print(table(r))
    if r.missing:
        console.print(f"{r.missing} frame(s) without a matching setpoint (lost, or answered late).")


def table(r: Result) -> Table:
    """frames, measured, median, p99, max and the target, as one row."""
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("frames", "measured", "median ms", "p99 ms", "max ms", "target p99"):
        table.add_column(name, justify="right")
    if r.latencies_ms:
        ok = "ok" if r.p99_ms < TARGET_P99_MS else "ABOVE"
        table.add_row(str(r.frames), str(len(r.latencies_ms)), f"{r.median_ms:.2f}", f"{r.p99_ms:.2f}",
                      f"{max(r.latencies_ms):.2f}", f"< {TARGET_P99_MS:g} ms {ok}")
    else:
        table.add_row(str(r.frames), "0", "-", "-", "-", "nothing measured")
    return table


def run() -> None:
    render(measure())


if __name__ == "__main__":
    run()
