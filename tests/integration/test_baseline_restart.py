"""A restart mid-hour loses no hour: `apm run --replay` keeps the hourly baseline in the flash image.

One simulated Kaifa dump around two full hours (its hourly lists at 10:00:10 and 11:00:10). The device
replays the part up to 10:01 (the replay's end stops it mid-hour), then, as a new process on the same
image, the part from 10:59: the hourly list at 11:00:10 closes the hour 10:00 -> 11:00, which is
published on ``energy/hourly``. Without the image's baseline (a fresh image) that hour is lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from apm.io.storage.flash import Flash
from sim.frames import MeterSpec
from sim.meter import Meter
from tests.mqtt_broker import Mosquitto, Observer

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
SERIAL = "APMHOUR01"
CONFIG = f"""
serial = "{SERIAL}"
[grid]
network = "TN"
fuse_a = 25
"""
START = datetime.fromisoformat("2025-01-15T09:59:00+01:00")


def dump_parts(tmp: Path) -> tuple[Path, Path]:
    """The same meter's frames from 09:59:00 to 10:01:00 and from 10:59:00 to 11:01:00, one file each."""
    meter = Meter(MeterSpec("kaifa", "3p-tn"), START, seed=3)
    parts = []
    for name, t0 in (("before.hex", 0.0), ("after.hex", 3600.0)):
        pushes = meter.pushes_between(t0, t0 + 120.0)
        assert [p.list for p in pushes].count(3) == 1  # each part holds one hourly list
        path = tmp / name
        path.write_text("".join(f"{p.frame.hex()}\n" for p in pushes), encoding="utf-8")
        parts.append(path)
    return parts[0], parts[1]


def replay(dump: Path, config: Path, image: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "APM_SERIAL_CACHE": str(image.parent / "serial.json")}
    return subprocess.run([sys.executable, "-m", "apm", "run", "--replay", str(dump), "--speed", "60",
                           "--config", str(config), "--image", str(image), "--broker", url, "--plain"],
                          capture_output=True, text=True, timeout=90, cwd=ROOT, env=env)


def hourly_records(mosquitto: Mosquitto, steps: list[tuple[Path, Path]], config: Path,
                   expect: int) -> tuple[list[dict], list[str]]:
    """Run each (dump, image) in turn while a persistent subscriber collects ``energy/hourly`` until it
    has ``expect`` records: the records, and each run's stderr."""

    async def main() -> tuple[list[dict], list[str]]:
        topic = f"apm/{SERIAL}/energy/hourly"
        logs = []
        async with Observer(mosquitto.url, topic, client_id="hourly-cloud", persistent=True) as cloud:
            for dump, image in steps:
                r = await asyncio.to_thread(replay, dump, config, image, mosquitto.url)
                assert r.returncode == 0, r.stderr
                logs.append(r.stderr)
            if expect:
                await cloud.wait_until(lambda: len(cloud.payloads(topic)) >= expect, timeout=10)
            return [json.loads(p) for p in cloud.payloads(topic)], logs

    return asyncio.run(main())


def test_the_hour_open_at_a_restart_is_published_after_it(tmp_path: Path, mosquitto: Mosquitto) -> None:
    before, after = dump_parts(tmp_path)
    config = tmp_path / "apm.toml"
    config.write_text(CONFIG, encoding="utf-8")
    image = tmp_path / "flash.img"
    records, logs = hourly_records(mosquitto, [(before, image), (after, image)], config, expect=1)
    assert ", 0 hourly records" in logs[0] and ", 1 hourly records" in logs[1]
    # A Kaifa meter's clock has no offset: the record carries it as the meter sends it.
    assert [(r["hour_start"], r["hour_end"], r["hours"]) for r in records] == [
        ("2025-01-15T10:00:00", "2025-01-15T11:00:00", 1)]
    assert records[0]["id"] == f"{SERIAL}/2025-01-15T10:00:00" and records[0]["import_wh"] > 0
    kept = Flash(image).read().baseline
    assert kept is not None and kept.meter_time is not None and kept.meter_time.startswith("2025-01-15T11:00")
    assert Flash(image).read().outbox == ()  # delivered, so acknowledged


def test_without_the_kept_baseline_that_hour_is_lost(tmp_path: Path, mosquitto: Mosquitto) -> None:
    before, after = dump_parts(tmp_path)
    config = tmp_path / "apm.toml"
    config.write_text(CONFIG, encoding="utf-8")
    steps = [(before, tmp_path / "one.img"), (after, tmp_path / "other.img")]
    records, logs = hourly_records(mosquitto, steps, config, expect=0)
    assert all(", 0 hourly records" in log for log in logs) and records == []
