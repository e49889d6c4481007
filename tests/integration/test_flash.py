"""The emulated flash: contents, slots and CRCs, corruption, and power loss (SIGKILL) during writes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import msgspec
import pytest

from apm.core import config as cfg
from apm.core.meter_state import Baseline
from apm.io.storage import flash as fl
from apm.io.storage.flash import CorruptImage, Flash, FlashBaseline, FlashContents, FlashFull

REPO = Path(__file__).resolve().parents[2]
CONFIG_A = cfg.DeviceConfig(serial="APMA", installation_id="inst-a", port="/dev/ttyAPM",
                            grid=cfg.GridConfig(network="IT", fuse_a=40.0),
                            chargers=(cfg.ChargerConfig("garage", rotation=("L2", "L3", "L1")),))
CONFIG_B = cfg.DeviceConfig(serial="APMB", installation_id="inst-b", fixed_current_a=16.0,
                            grid=cfg.GridConfig(fuse_a=63.0, ct_ratio=2.0),
                            chargers=(cfg.ChargerConfig("one", phases=1), cfg.ChargerConfig("two", max_a=16.0)),
                            balancer=cfg.BalancerSettings(hold_s=120.0))


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != fl.ENV_VAR}
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def test_missing_image_reads_blank(tmp_path):
    image = Flash(tmp_path / "flash.img")
    assert image.read() == FlashContents() and image.read().blank
    assert not image.inspect().exists


def test_contents_round_trip(tmp_path):
    image = Flash(tmp_path / "sub" / "flash.img")  # the folder is made on the first write
    contents = FlashContents(config=CONFIG_B, token="a.b.c", issuer_key="PEM", revocations=("r1",))
    image.write(contents)
    assert image.read() == contents
    assert Flash(image.path).read() == contents
    assert image.path.stat().st_size == fl.IMAGE_SIZE


def test_versions_alternate_between_slots_with_rising_sequence(tmp_path):
    image = Flash(tmp_path / "flash.img")
    seen = []
    for i in range(5):
        image.write_config(CONFIG_A if i % 2 == 0 else CONFIG_B)
        report = image.inspect()
        seen.append((report.active.index, report.active.sequence))
    assert seen == [(0, 1), (1, 2), (0, 3), (1, 4), (0, 5)]
    assert image.inspect().slots[1].status == "valid"  # the previous version is still there, intact


def test_outbox_append_list_remove(tmp_path):
    image = Flash(tmp_path / "flash.img")
    image.write_config(CONFIG_A)
    r1 = image.outbox_append({"hour": "2030-01-01T00:00:00Z", "import_wh": 1200})
    r2 = image.outbox_append({"hour": "2030-01-01T01:00:00Z", "import_wh": 900})
    assert (r1.id, r2.id) == (1, 2)
    assert [r.data["import_wh"] for r in image.outbox_list()] == [1200, 900]
    assert image.outbox_remove([1, 99]) == 1
    assert [r.id for r in image.outbox_list()] == [2]
    assert image.outbox_append({"x": 1}).id == 3  # ids are never reused
    assert image.read().config == CONFIG_A
    with pytest.raises(TypeError):
        image.outbox_append({"not json": object()})


def test_outbox_keeps_the_newest_records_when_full_and_counts_the_dropped(tmp_path, monkeypatch):
    three = tuple(fl.OutboxRecord(i, {"i": i}) for i in (7, 8, 9))
    monkeypatch.setattr(fl, "OUTBOX_BUDGET", fl.outbox_size(three))  # room for three such records
    image = Flash(tmp_path / "flash.img")
    done = [image.append_record({"i": i}) for i in range(5)]
    assert [r.data["i"] for r in image.outbox_list()] == [2, 3, 4]
    assert [(d.dropped_now, d.dropped_total) for d in done] == [(0, 0), (0, 0), (0, 0), (1, 1), (1, 2)]
    assert image.read().outbox_dropped == 2
    image.outbox_remove([4])
    assert Flash(image.path).read().outbox_dropped == 2  # kept in the image, not only counted in memory


def test_revocations_are_stored_once(tmp_path):
    image = Flash(tmp_path / "flash.img")
    image.add_revocation("r1")
    image.add_revocation("r1")
    image.add_revocation("r2")
    assert image.read().revocations == ("r1", "r2")


def test_hourly_baseline_is_kept_and_images_from_before_it_still_read(tmp_path):
    img = Flash(tmp_path / "f.img")
    kept = Baseline("2025-01-15T10:00:10", 5000.0, 12.5, "6970631400000033")
    store = FlashBaseline(img)
    assert store.load() is None
    img.outbox_append({"id": "r1"})
    store.save(replace(kept, at=123.0))  # the arrival time is not part of what is kept
    assert store.load() == kept and img.read().outbox[0].data == {"id": "r1"}
    # An image written before the baseline was kept: the same format without the key.
    old = tmp_path / "old.img"
    doc = json.loads(fl._encode(FlashContents(token="t")))
    del doc["baseline"]
    old.write_bytes(fl._slot_bytes(1, json.dumps(doc).encode()).ljust(fl.IMAGE_SIZE, b"\xff"))
    assert Flash(old).read() == FlashContents(token="t")
    assert FlashBaseline(Flash(old)).load() is None


def test_contents_too_big_for_a_slot(tmp_path):
    image = Flash(tmp_path / "flash.img")
    image.write_config(CONFIG_A)
    before = image.path.read_bytes()
    with pytest.raises(FlashFull):
        image.write_token("x" * fl.SLOT_SIZE)
    assert image.path.read_bytes() == before


def _image_with(tmp_path: Path, *configs: cfg.DeviceConfig) -> Flash:
    image = Flash(tmp_path / "flash.img")
    for c in configs:
        image.write_config(c)
    return image


def test_torn_write_at_any_byte_leaves_the_old_version(tmp_path):
    """Cut the next version's write after every few bytes: the image reads back old, or new once complete."""
    image = _image_with(tmp_path, CONFIG_B, CONFIG_A)  # slot 0: B (v1), slot 1: A (v2, current)
    base = image.path.read_bytes()
    # A third configuration: the bytes of the slot being overwritten must differ from the new ones.
    payload = fl._encode(FlashContents(config=msgspec.structs.replace(CONFIG_A, serial="APMC")))
    blob = fl._slot_bytes(3, payload)
    cuts = sorted({*range(0, fl.HEADER.size + 2), *range(0, len(blob), 7), len(blob) - 1})
    for cut in cuts:
        torn = bytearray(base)
        torn[0:cut] = blob[:cut]
        image.path.write_bytes(bytes(torn))
        assert image.read().config == CONFIG_A, f"cut at {cut}"
    torn = bytearray(base)
    torn[0:len(blob)] = blob
    image.path.write_bytes(bytes(torn))
    assert image.read().config == msgspec.structs.replace(CONFIG_A, serial="APMC")
    assert image.inspect().active.sequence == 3


def test_one_bad_slot_falls_back_to_the_other(tmp_path):
    image = _image_with(tmp_path, CONFIG_B, CONFIG_A)
    data = bytearray(image.path.read_bytes())
    data[fl.SLOT_SIZE + fl.HEADER.size + 5] ^= 0x40  # bit rot in the current version (slot 1)
    image.path.write_bytes(bytes(data))
    assert image.inspect().slots[1].detail == "CRC mismatch"
    assert image.read().config == CONFIG_B
    image.write_config(CONFIG_A)  # the next write goes to the bad slot, never over the good one
    assert image.read().config == CONFIG_A and image.inspect().slots[0].status == "valid"


def test_both_slots_bad_is_a_clear_error_and_nothing_is_written(tmp_path):
    image = _image_with(tmp_path, CONFIG_B, CONFIG_A)
    data = bytearray(image.path.read_bytes())
    data[fl.HEADER.size + 3] ^= 0x01
    data[fl.SLOT_SIZE:fl.SLOT_SIZE + 8] = b"GARBAGE!"
    image.path.write_bytes(bytes(data))
    with pytest.raises(CorruptImage, match=r"corrupt image.*slot 0: CRC mismatch; slot 1: bad magic"):
        image.read()
    for change in (lambda: image.write_config(CONFIG_A), lambda: image.outbox_append({"x": 1})):
        with pytest.raises(CorruptImage):
            change()
        assert image.path.read_bytes() == bytes(data)
    assert image.inspect().corrupt
    image.erase()
    assert image.read().blank
    image.write_config(CONFIG_A)
    assert image.read().config == CONFIG_A


def test_valid_crc_with_unreadable_contents_is_reported(tmp_path):
    image = Flash(tmp_path / "flash.img")
    image.path.write_bytes(fl._slot_bytes(1, b'{"format": 99}') + b"\xff" * 100)
    with pytest.raises(CorruptImage, match="unknown format 99"):
        image.read()


def test_short_image_from_an_interrupted_creation_is_blank(tmp_path):
    image = Flash(tmp_path / "flash.img")
    image.path.write_bytes(b"\xff" * 1000)
    assert image.read().blank
    image.write_config(CONFIG_A)
    assert image.read().config == CONFIG_A and image.path.stat().st_size == fl.IMAGE_SIZE


def test_erase_forgets_everything_including_the_old_slot(tmp_path):
    image = _image_with(tmp_path, CONFIG_A)
    image.write_token("secret.token.value")
    image.erase()
    assert image.read().blank
    assert b"secret.token.value" not in image.path.read_bytes()


def test_image_path_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(fl.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert fl.resolve_image_path() == tmp_path / "xdg" / "apm" / "flash.img"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fl.resolve_image_path() == tmp_path / "home" / ".local" / "share" / "apm" / "flash.img"
    monkeypatch.setenv(fl.ENV_VAR, str(tmp_path / "env.img"))
    assert fl.resolve_image_path() == tmp_path / "env.img"
    assert fl.resolve_image_path(tmp_path / "arg.img") == tmp_path / "arg.img"
    assert fl.status_path(tmp_path / "env.img") == tmp_path / "env.img.status.json"


def test_concurrent_writers_lose_nothing(tmp_path):
    """The device loop and the CLI may write at once: the lock keeps each read-modify-write whole."""
    image = tmp_path / "flash.img"
    Flash(image).write_config(CONFIG_A)
    script = textwrap.dedent(f"""
        import sys
        from apm.io.storage.flash import Flash
        f = Flash({str(image)!r})
        for i in range(40):
            f.outbox_append({{"writer": sys.argv[1], "i": i}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, name], env=env()) for name in ("a", "b")]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    records = Flash(image).outbox_list()
    assert len(records) == 80 and len({r.id for r in records}) == 80


# --- power loss ----------------------------------------------------------------------------------

# A fork server: imports apm once, then for each request forks a child that runs `apm flash write`
# (the CLI's own main()) in a loop, alternating the two configurations. The child reports on a pipe
# where it is: b"p" before each page it programs, b"f" once a write's fsync returned, b"." after each
# completed `apm flash write`. The server SIGKILLs the child once it has seen the requested number of
# one marker, so the kill lands at a random moment shortly after, and sends the test everything the
# child reported. The kill's position comes from the markers, not the clock: a slow machine only
# changes where the kills land, and the test counts the ones that landed inside a write.
WRITER_SERVER = textwrap.dedent("""
    import os, signal, sys, time
    import apm.core.config, apm.io.storage.flash
    from apm.cli.main import build_parser, main
    build_parser()  # import every command module once, before forking
    image, configs = sys.argv[1], sys.argv[2:4]
    for line in sys.stdin:
        first, marker, count = line.split()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            # Emulate flash programmed one 256-byte page at a time, so that a kill can land inside a write.
            real_pwrite, real_fsync = os.pwrite, os.fsync
            def page_pwrite(fd, data, offset):
                os.write(w, b"p")
                time.sleep(0.0001)
                return real_pwrite(fd, bytes(data[:256]), offset)
            def reporting_fsync(fd):
                real_fsync(fd)
                os.write(w, b"f")
                time.sleep(0.001)  # the write is on the medium, not yet acknowledged
            os.pwrite, os.fsync = page_pwrite, reporting_fsync
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            i = int(first)
            while True:
                if main(["flash", "write", configs[i % 2], "--image", image]) != 0:
                    os._exit(3)
                os.write(w, b".")
                i += 1
        os.close(w)
        seen, left = b"", int(count)
        while left > 0 and (chunk := os.read(r, 65536)):
            seen += chunk
            left -= chunk.count(marker.encode())
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        while chunk := os.read(r, 65536):
            seen += chunk
        os.close(r)
        print(seen.decode() or "-", status, flush=True)
""")


def _write_configs(tmp_path: Path) -> tuple[list[str], list[cfg.DeviceConfig]]:
    paths = []
    for name, c in (("a.toml", CONFIG_A), ("b.toml", CONFIG_B)):
        p = tmp_path / name
        p.write_text(cfg.dumps(c))
        paths.append(str(p))
    return paths, [CONFIG_A, CONFIG_B]


def _check_after_kill(image: Flash, before_seq: int, done: int, written: list[cfg.DeviceConfig]) -> bool:
    """The image reads back as the last completed version or the one being written; True if the latter."""
    contents = image.read()  # raises CorruptImage if neither version is readable
    seq = image.inspect().active.sequence
    assert seq in (before_seq + done, before_seq + done + 1), (before_seq, done, seq)
    assert contents.config == written[seq - before_seq], f"version {seq} holds the wrong configuration"
    return seq == before_seq + done + 1


def _power_loss(tmp_path: Path, inside: int, seed: int) -> None:
    """Kill the writer until ``inside`` kills landed inside a write; check the image after every kill."""
    paths, configs = _write_configs(tmp_path)
    image = Flash(tmp_path / "flash.img")
    image.write_config(CONFIG_A)
    for hour in range(24):  # a day of unsent energy records: a payload of several pages
        image.outbox_append({"hour": f"2030-01-01T{hour:02}:00:00Z", "import_wh": 1000 + hour})
    outbox = image.outbox_list()
    rng = random.Random(seed)
    server = subprocess.Popen([sys.executable, "-c", WRITER_SERVER, str(image.path), *paths],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env())
    torn = unreported = kills = 0
    try:
        while torn + unreported < inside:
            kills += 1
            # Only a broken writer (or checker) misses this many; a slow machine does not.
            assert kills <= 4 * inside, f"only {torn + unreported} of {kills} kills landed inside a write"
            before = image.read().config
            before_seq = image.inspect().active.sequence
            first = 1 if before == CONFIG_A else 0
            # Most kills go after a random page; some just after a write reached the medium.
            target = ("f", rng.randint(1, 3)) if rng.random() < 0.25 else ("p", rng.randint(1, 40))
            server.stdin.write(f"{first} {target[0]} {target[1]}\n")
            server.stdin.flush()
            seen, status = server.stdout.readline().split()
            assert os.WIFSIGNALED(int(status)) and os.WTERMSIG(int(status)) == signal.SIGKILL, "writer failed"
            done = seen.count(".")
            tail = seen[seen.rfind(".") + 1:]  # what the child did of the write it was killed in
            # written[k]: what version before_seq + k holds (k = 0: the version before this round)
            written = [before] + [configs[(first + k) % 2] for k in range(done + 1)]
            landed_new = _check_after_kill(image, before_seq, done, written)
            if "f" in tail:  # synced: the write must survive the kill
                assert landed_new, f"a synced write was lost ({seen!r})"
                unreported += 1
            elif "p" in tail:  # killed between its first page and its fsync: either version is right
                torn += 1
            else:  # killed between two writes: nothing of the next one may show
                assert not landed_new, f"a write that never started shows in the image ({seen!r})"
            assert image.outbox_list() == outbox
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    # Both kinds of kill inside a write happened: mid-write, and after the sync but before the report.
    assert torn > 0 and unreported > 0, (torn, unreported)


def test_power_loss_500_kills_during_flash_writes(tmp_path):
    _power_loss(tmp_path, inside=500, seed=5)


def test_power_loss_killing_real_apm_processes(tmp_path):
    """The plain thing, fewer times: `python -m apm flash write` killed at random, startup included."""
    paths, configs = _write_configs(tmp_path)
    image = Flash(tmp_path / "flash.img")
    image.write_config(CONFIG_A)
    rng = random.Random(7)
    for _ in range(25):
        before = image.read().config
        before_seq = image.inspect().active.sequence
        k = 1 if before == CONFIG_A else 0  # always write the other configuration
        proc = subprocess.Popen([sys.executable, "-m", "apm", "flash", "write", paths[k], "--image",
                                 str(image.path)], stdout=subprocess.DEVNULL, env=env())
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=30)
        assert rc in (0, -signal.SIGKILL)
        _check_after_kill(image, before_seq, 1 if rc == 0 else 0, [before, configs[k]])
    assert image.read().config in (CONFIG_A, CONFIG_B)


def test_contents_value_is_frozen():
    c = FlashContents(config=CONFIG_A)
    with pytest.raises(AttributeError):
        c.token = "x"  # type: ignore[misc]
    assert replace(c, token="x").token == "x"


def test_the_capacity_guards_month_is_kept_beside_the_rest(tmp_path):
    """The guard's month (its daily peak hours) survives a restart; a full month fits its budget; an
    image without it reads as one without, and a write of something else keeps it."""
    from datetime import UTC, datetime, timedelta

    from apm.core.capacity_guard import month_doc, month_from_doc
    from apm.core.eco.capacity import CapacityGoal, MonthLog

    flash = Flash(tmp_path / "flash.img")
    flash.write_baseline(Baseline("2026-01-31T23:00:00+01:00", 1.0e6, 0.0))
    assert flash.read().capacity is None
    log = MonthLog(2026, 1)
    for day in range(31):
        log = log.with_hour(datetime(2026, 1, 1, 17, tzinfo=UTC) + timedelta(days=day), 4.987654 - day / 100)
    store = fl.FlashCapacity(flash)
    store.save(month_doc(log))
    flash.write_token("x.y.z")
    back = month_from_doc(store.load(), CapacityGoal(5.0))
    assert back.daily_peaks() == {d: round(k, 4) for d, k in log.daily_peaks().items()}
    assert len(json.dumps(flash.read().capacity, separators=(",", ":"))) <= fl.BUDGETS["capacity"]
    assert flash.read().baseline is not None and flash.read().token == "x.y.z"
