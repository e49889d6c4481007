from __future__ import annotations

import math
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from apm.io.storage.flash import OutboxRecord
from apm.io.storage.outbox import FileOutbox, FlashOutbox, MemoryOutbox, Outbox, OutboxLocked

ROOT = Path(__file__).resolve().parents[2]


def rec(i: int) -> dict:
    return {"id": f"h{i}", "import_wh": 100.0 * i, "export_wh": 0.0}


def test_add_pending_ack_in_order(tmp_path: Path) -> None:
    with FileOutbox(tmp_path / "o.jsonl") as box:
        ids = [box.add(rec(i)) for i in range(5)]
        assert ids == sorted(ids) and len(set(ids)) == 5
        assert [e.data for e in box.pending()] == [rec(i) for i in range(5)]
        box.ack(ids[1])
        box.ack(ids[1])  # acknowledgements may repeat
        box.ack(999)
        assert [e.id for e in box.pending()] == [ids[0], *ids[2:]]


def test_contents_survive_reopen_and_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    with FileOutbox(path, compact_after=2) as box:
        a, b, c = (box.add(rec(i)) for i in range(3))
        box.ack(a)
        box.ack(b)
    with FileOutbox(path, compact_after=2) as box:
        assert box.pending() == [OutboxRecord(c, rec(2))]
        box.ack(c)  # now empty: compaction must still remember the next id
        assert len(box) == 0
    with FileOutbox(path) as box:
        assert box.add(rec(9)) == c + 1


def test_compaction_keeps_the_file_small(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    with FileOutbox(path, compact_after=16) as box:
        for i in range(500):
            box.ack(box.add(rec(i)))
        keep = box.add(rec(500))
        assert len(path.read_bytes().splitlines()) < 40
        assert not (tmp_path / "o.jsonl.tmp").exists()
    with FileOutbox(path) as box:
        assert box.pending() == [OutboxRecord(keep, rec(500))]


def test_a_torn_write_at_any_byte_loses_nothing_that_was_complete(tmp_path: Path) -> None:
    full = tmp_path / "full.jsonl"
    with FileOutbox(full) as box:
        ids = [box.add(rec(i)) for i in range(3)]
        box.ack(ids[0])
    data = full.read_bytes()
    line_ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    # What each complete prefix of lines holds: live ids after 1, 2, 3, 4 lines.
    expected_after = {0: [], line_ends[0]: ids[:1], line_ends[1]: ids[:2], line_ends[2]: ids[:3],
                      line_ends[3]: ids[1:3]}
    for cut in range(len(data) + 1):
        path = tmp_path / f"cut{cut}.jsonl"
        path.write_bytes(data[:cut])
        whole = max(end for end in expected_after if end <= cut)
        with FileOutbox(path) as box:
            assert [e.id for e in box.pending()] == expected_after[whole], cut
            assert path.stat().st_size == whole  # the torn tail is cut off...
            new = box.add(rec(7))  # ...so the next line starts clean
        with FileOutbox(path) as box:
            assert [e.id for e in box.pending()] == [*expected_after[whole], new]


def test_zero_filled_tail_after_a_crash_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    with FileOutbox(path) as box:
        a = box.add(rec(1))
    with open(path, "ab") as f:
        f.write(b"\x00" * 4096)  # some file systems show unwritten blocks as zeros
    with FileOutbox(path) as box:
        assert [e.id for e in box.pending()] == [a]


def test_one_process_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    with FileOutbox(path, compact_after=1) as box:
        with pytest.raises(OutboxLocked):
            FileOutbox(path)
        box.ack(box.add(rec(1)))  # compaction swaps the file: the lock must hold on the new one
        with pytest.raises(OutboxLocked):
            FileOutbox(path)
    FileOutbox(path).close()


def test_records_must_be_plain_json(tmp_path: Path) -> None:
    with FileOutbox(tmp_path / "o.jsonl") as box:
        for bad in ({"x": math.nan}, {"x": object()}, ["not", "a", "dict"]):
            with pytest.raises(TypeError):
                box.add(bad)  # type: ignore[arg-type]
        assert len(box) == 0


def test_survives_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    script = textwrap.dedent(f"""
        import os, signal
        from apm.io.storage.outbox import FileOutbox
        box = FileOutbox({str(path)!r})
        ids = [box.add({{"id": "h%d" % i, "import_wh": i}}) for i in range(6)]
        box.ack(ids[0]); box.ack(ids[3])
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush, lock still held
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with FileOutbox(path) as box:
        assert [e.data["id"] for e in box.pending()] == ["h1", "h2", "h4", "h5"]
        assert box.add(rec(9)) == 7


def test_every_backend_is_an_outbox(tmp_path: Path) -> None:
    from apm.io.storage.flash import Flash

    flash = FlashOutbox(Flash(tmp_path / "flash.img"))
    with FileOutbox(tmp_path / "o.jsonl") as file_box:
        for box in (MemoryOutbox(), flash, file_box):
            assert isinstance(box, Outbox)
            a, b = box.add(rec(1)), box.add(rec(2))
            assert b > a
            box.ack(a)
            assert [(e.id, e.data) for e in box.pending()] == [(b, rec(2))]
    # The flash outbox lives in the image: a new handle sees it.
    again = FlashOutbox(Flash(tmp_path / "flash.img"))
    assert [e.data for e in again.pending()] == [rec(2)]
    again.ack(again.pending()[0].id)
    assert flash.pending() == []


def test_a_failed_write_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    """Disk full in the middle of a line (RLIMIT_FSIZE in a child): the partial line is cut off."""
    path = tmp_path / "o.jsonl"
    script = textwrap.dedent(f"""
        import os, resource, signal
        from apm.io.storage.outbox import FileOutbox
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        box = FileOutbox({str(path)!r})
        box.add({{"id": "h0"}})
        size = os.path.getsize({str(path)!r})
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, hard))
        try:
            box.add({{"id": "h1", "pad": "x" * 100}})
        except OSError:
            print("full")
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        box.add({{"id": "h2"}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=30)
    assert proc.stdout == b"full\n", proc.stderr.decode()
    with FileOutbox(path) as box:
        assert [e.data["id"] for e in box.pending()] == ["h0", "h2"]
