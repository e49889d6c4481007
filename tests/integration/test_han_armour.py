"""No HAN frame can crash or fool the device (issue 13, item 6).

Every frame fed to ``HanReader`` ends as a reading within the physical ranges or as a counted,
named problem: over the malformed-frame corpus (``tests.malformed``), over hypothesis-mutated real
frames with their checksums recomputed, and through ``apm decode`` / ``apm replay`` on files that
mix such frames with good ones. ``make fuzz`` runs the whole corpus and 200,000 mutated frames.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from han import HanReader, Reading
from han.errors import ImplausibleReading
from han.hdlc import build_frame
from han.plausibility import MAX_CURRENT_A, RANGES, CounterGuard, check_ranges
from tests.malformed import corpus, info_of, mutate
from tests.unit.test_hdlc_properties import mangled_frame
from tests.vectors import frame, records

CORE = records("core")
CORE_FRAMES = [frame(r) for r in CORE]


def _one_per_layout() -> list[dict]:
    seen: dict[tuple, dict] = {}
    for rec in CORE:
        seen.setdefault((rec["meter"], rec["list"], rec["phases"]), rec)
    return list(seen.values())


LAYOUTS = _one_per_layout()


def _outcome(reader: HanReader, data: bytes) -> list[Reading]:
    """Feed ``data``; what a caller may rely on whatever the bytes were."""
    out = reader.feed(data)
    for reading in out:
        check_ranges(reading)  # raises ImplausibleReading for a value outside its range
    assert reader.errors["internal"] == 0, reader.pop_problems()  # the safety net was never needed
    return out


def _check_alone(frames) -> dict[str, int]:
    kinds: dict[str, int] = {"reading": 0}
    for what, data in frames:
        reader = HanReader()
        out = _outcome(reader, data)
        problems = reader.pop_problems()
        assert len(out) + len(problems) == 1, what
        for p in problems:
            assert p.reason and p.kind in ("malformed", "unsupported", "implausible", "encrypted"), (what, p)
            kinds[p.kind] = kinds.get(p.kind, 0) + 1
        kinds["reading"] += len(out)
    return kinds


# --- the corpus ---------------------------------------------------------------------------------


def test_every_broken_element_of_every_layout_is_a_reading_or_a_named_problem():
    frames = list(corpus([frame(r) for r in LAYOUTS]))
    assert len(frames) > 10_000
    kinds = _check_alone(frames)
    # The corpus reaches every check: types, lengths, layouts, ranges.
    assert kinds["malformed"] and kinds["unsupported"] and kinds["implausible"] and kinds["reading"]


def test_the_real_frames_still_decode_between_broken_ones():
    """One stream, as a meter with bad firmware would send it: the reader's memory (compiled
    layouts, the meter's identity, its counters) is not poisoned by a broken frame."""
    for rec in LAYOUTS:
        good = frame(rec)
        want = HanReader().feed(good)
        reader = HanReader()
        for what, data in corpus([good]):
            _outcome(reader, data)
            reader.pop_problems()
            got = _outcome(reader, good)
            if got == want:
                continue
            problem = reader.pop_problems()[-1]
            # By design: list 1 carries no identity, so after a list that named another meter it is
            # refused until a list 2 names ours.
            assert rec["list"] == 1 and "list 1 from a meter" in problem.reason, (rec["id"], what, problem)


def test_layouts_of_broken_frames_do_not_keep_a_real_one_off_the_fast_path():
    reader = HanReader()
    good = frame(next(r for r in LAYOUTS if r["list"] == 2))
    broken = [f for _, f in corpus([good])]
    for data in broken:
        _outcome(reader, data)
    decoder = reader.decoder
    assert len(decoder._compiled) <= 64  # memory stays bounded
    assert _outcome(reader, good) == HanReader().feed(good)
    assert any(t.apply(info_of(good)) for t in decoder._compiled)  # compiled again, fast from now on


FAST = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))


@FAST
@given(st.sampled_from(CORE_FRAMES), st.data())
def test_mutated_real_frames_give_a_physical_reading_or_a_problem(raw, data):
    reader = HanReader()
    out = _outcome(reader, mangled_frame(raw, data, edits=6))
    assert len(out) + sum(reader.errors.values()) == 1


@FAST
@given(st.sampled_from(CORE_FRAMES), st.integers(0, 2**32))
def test_randomly_mutated_frames_give_a_physical_reading_or_a_problem(raw, seed):
    reader = HanReader()
    out = _outcome(reader, build_frame(mutate(info_of(raw), random.Random(seed))))
    assert len(out) + sum(reader.errors.values()) == 1


# --- what was seen in the field -----------------------------------------------------------------


AIDON_LIST2 = next(r for r in CORE if r["meter"] == "aidon" and r["list"] == 2)
KAIFA_LIST2 = next(r for r in CORE if r["meter"] == "kaifa" and r["list"] == 2 and r["phases"] == 3)


def _problem(data: bytes) -> str:
    reader = HanReader()
    assert _outcome(reader, data) == []
    [problem] = reader.pop_problems()
    return f"{problem.kind}: {problem.reason}"


def _replace(rec: dict, old: bytes, new: bytes) -> bytes:
    """The frame with the first ``old`` element replaced by ``new``, its checksums recomputed."""
    info = info_of(frame(rec))
    assert old in info
    return build_frame(info.replace(old, new, 1))


def test_a_list_id_sent_as_a_number_is_a_problem_not_a_4_gb_allocation():
    # Was bytes(0xFFFFFFFF): MemoryError, or TypeError/ValueError for null and negative numbers.
    for value in (b"\x06\xff\xff\xff\xff", b"\x00", b"\x0f\x80", b"\x18" + bytes(8)):
        assert _problem(_replace(AIDON_LIST2, b"\x0a\x0bAIDON_V0001", value)) == (
            "unsupported: list id sent as " + {0x06: "double-long-unsigned", 0x00: "null-data",
                                               0x0F: "integer", 0x18: "float64"}[value[0]]
            + ", a string was expected")


def test_a_scaler_beyond_a_float_is_a_problem():
    # Aidon's in-band scaler as a long: 10.0 ** 32767 overflows, 10.0 ** -32768 divides by zero.
    info = info_of(frame(AIDON_LIST2))
    scaler_unit = b"\x02\x02\x0f\x00\x16\x1b"  # (scaler 0, unit W) of the power registers
    assert scaler_unit in info
    for long in (b"\x10\x7f\xff", b"\x10\x80\x00"):
        problem = _problem(build_frame(info.replace(scaler_unit, b"\x02\x02" + long + b"\x16\x1b", 1)))
        assert problem.startswith("unsupported: active_import_w: scaler 10^"), problem


@pytest.mark.parametrize(("field", "count", "shown"), [
    ("current_l1_a", 88_000_000, "88000"),  # mA: 88 kA
    ("voltage_l1_v", 3_540_000, "354000"),  # 0.1 V: 354 kV
    ("active_import_w", 4_000_000_000, "4e+09"),  # W: 4 GW
])
def test_corrupted_values_with_a_valid_crc_are_refused(field, count, shown):
    reading = HanReader().feed(frame(KAIFA_LIST2))[0]
    scale = {"current_l1_a": 1000, "voltage_l1_v": 10, "active_import_w": 1}[field]
    old = b"\x06" + round(getattr(reading, field) * scale).to_bytes(4, "big")
    problem = _problem(_replace(KAIFA_LIST2, old, b"\x06" + count.to_bytes(4, "big")))
    assert problem.startswith(f"implausible: {field} = {shown} is outside the physical range"), problem


def test_the_ranges_hold_every_real_value_and_a_ct_installation():
    for rec in records():
        for field, value in (rec.get("expected") or {}).items():
            if field in RANGES and value is not None:
                low, high = RANGES[field]
                assert low <= value <= high, (rec["id"], field, value)
    # A 5000/5 CT at its rated current: 5 A on the secondary, 5 kA on the primary.
    rec = next(r for r in CORE if r["meter"] == "kaifa" and r["list"] == 2)
    ct = HanReader(ct_ratio=1000).feed(frame(rec))[0]
    assert ct.current_l1_a is not None and ct.current_l1_a <= MAX_CURRENT_A


# --- counters that only grow --------------------------------------------------------------------


def _hourly(wh: float, time: str = "2024-01-01T10:00:00", meter_id: str = "1") -> Reading:
    return Reading(meter="aidon", list=3, meter_id=meter_id, meter_time=time, active_import_wh=wh,
                   active_export_wh=0.0)


def _accepted(guard: CounterGuard, reading: Reading) -> bool:
    try:
        guard.check(reading)
    except ImplausibleReading as exc:
        assert str(exc).startswith(("active_import_wh went back", "active_import_wh grew"))
        return False
    return True


def test_a_counter_that_goes_back_is_refused_and_a_rounding_step_is_not():
    guard = CounterGuard()
    assert _accepted(guard, _hourly(1_000_000, "2024-01-01T10:00:00"))
    assert _accepted(guard, _hourly(999_990, "2024-01-01T11:00:00"))  # one 10 Wh count lower
    assert not _accepted(guard, _hourly(900_000, "2024-01-01T12:00:00"))
    assert _accepted(guard, _hourly(1_002_000, "2024-01-01T13:00:00"))  # the reference was right
    assert _accepted(guard, _hourly(5, "2024-01-01T13:00:00", meter_id="2"))  # another meter


def test_a_wrong_reference_is_replaced_once_two_lists_agree_against_it():
    guard = CounterGuard()
    assert _accepted(guard, _hourly(1_000_000, "2024-01-01T10:00:00"))
    assert _accepted(guard, _hourly(20_000_000, "2024-01-01T11:00:00"))  # corrupted, but plausible
    assert not _accepted(guard, _hourly(1_002_000, "2024-01-01T12:00:00"))
    assert _accepted(guard, _hourly(1_003_000, "2024-01-01T13:00:00"))  # agrees with the refused one
    assert _accepted(guard, _hourly(1_004_000, "2024-01-01T14:00:00"))


def test_a_counter_cannot_grow_faster_than_the_largest_power():
    guard = CounterGuard()
    assert _accepted(guard, _hourly(1_000_000, "2024-01-01T10:00:00"))
    assert not _accepted(guard, _hourly(1_000_200, "2024-01-01T10:00:00"))  # same time, more energy
    assert not _accepted(guard, _hourly(90_000_000, "2024-01-01T11:00:00"))  # 89 MWh in an hour
    assert _accepted(guard, _hourly(90_000_000, "2024-01-01T14:00:00"))  # 3 h later: at most 90 MWh


def test_no_order_is_checked_when_the_meter_clock_went_back():
    guard = CounterGuard()
    assert _accepted(guard, _hourly(1_000_000, "2024-06-01T10:00:00"))
    assert _accepted(guard, _hourly(500_000, "2023-01-01T10:00:00"))  # an older capture joined on
    assert not _accepted(guard, _hourly(400_000, "2023-01-01T11:00:00"))


def test_a_hourly_list_whose_counter_went_back_is_refused_by_the_reader():
    rec = next(r for r in CORE if r["meter"] == "kaifa" and r["list"] == 3 and r["phases"] == 3)
    reading = HanReader().feed(frame(rec))[0]
    assert reading.active_import_wh is not None
    old = b"\x06" + round(reading.active_import_wh).to_bytes(4, "big")
    lower = b"\x06" + round(reading.active_import_wh - 1000).to_bytes(4, "big")
    reader = HanReader()
    assert _outcome(reader, frame(rec)) == [reading]
    assert _outcome(reader, _replace(rec, old, lower)) == []
    assert reader.pop_problems()[-1].reason.startswith("active_import_wh went back from")


# --- through the command line -------------------------------------------------------------------


def _apm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apm", *args], capture_output=True, timeout=600)


def _json_lines(proc: subprocess.CompletedProcess) -> list[dict]:
    # JSON lines end at "\n" only: str.splitlines would also cut at U+0085 or U+2028, which JSON leaves
    # unescaped inside a string (a mutated meter id can carry them).
    return [json.loads(line) for line in proc.stdout.decode().split("\n") if line]


def _assert_survived(proc: subprocess.CompletedProcess, data: bytes) -> None:
    """One process, no exception out of it, and exactly the readings ``HanReader`` gives."""
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr and "unhandled" not in stderr, stderr[-2000:]
    want = [r.to_json_dict() for r in HanReader().feed(data)]
    assert _json_lines(proc) == want


def _crash_file(tmp_path) -> tuple[bytes, list[dict]]:
    """The core frames with, in the middle, the frames that crashed the decoder before."""
    bad = [_replace(AIDON_LIST2, b"\x0a\x0bAIDON_V0001", b"\x06\xff\xff\xff\xff"),
           _replace(AIDON_LIST2, b"\x0a\x0bAIDON_V0001", b"\x00")]
    half = len(CORE_FRAMES) // 2
    data = b"".join(CORE_FRAMES[:half] + bad + CORE_FRAMES[half:])
    (tmp_path / "dump.bin").write_bytes(data)
    return data, [r.to_json_dict() for r in HanReader().feed(b"".join(CORE_FRAMES))]


def test_apm_decode_of_a_file_with_a_crashing_frame_prints_every_good_reading(tmp_path):
    data, good = _crash_file(tmp_path)
    proc = _apm("decode", "-q", str(tmp_path / "dump.bin"))
    _assert_survived(proc, data)
    assert _json_lines(proc) == good


def test_apm_replay_of_a_file_with_a_crashing_frame_replays_every_good_reading(tmp_path):
    data, good = _crash_file(tmp_path)
    proc = _apm("replay", "--fast", "--json", "-q", str(tmp_path / "dump.bin"))
    _assert_survived(proc, data)
    assert _json_lines(proc) == good


# --- make fuzz ----------------------------------------------------------------------------------

MUTATED_FRAMES = 200_000


def _mutated_stream(count: int, seed: int = 13) -> tuple[list[bytes], bytes]:
    """``count`` mutated real frames, a good frame after every tenth; and all of it as one stream."""
    rng = random.Random(seed)
    infos = [info_of(f) for f in CORE_FRAMES]
    frames = [build_frame(mutate(rng.choice(infos), rng)) for _ in range(count)]
    parts = []
    for k, f in enumerate(frames):
        parts.append(f)
        if k % 10 == 9:
            parts.append(CORE_FRAMES[k // 10 % len(CORE_FRAMES)])
    return frames, b"".join(parts)


@pytest.mark.fuzz
def test_fuzz_the_whole_corpus_of_every_core_frame():
    kinds = _check_alone(corpus(CORE_FRAMES))
    assert sum(kinds.values()) > 100_000


@pytest.mark.fuzz
def test_fuzz_200k_mutated_frames_through_the_reader_and_the_command_line(tmp_path):
    frames, stream = _mutated_stream(MUTATED_FRAMES)
    _check_alone((f"mutated frame {k}", f) for k, f in enumerate(frames))
    reader = HanReader()
    out = _outcome(reader, stream)
    good_list2 = sum(1 for k in range(MUTATED_FRAMES // 10) if CORE[k % len(CORE)]["list"] == 2)
    assert sum(1 for r in out if r.list == 2) >= good_list2
    path = tmp_path / "mutated.bin"
    path.write_bytes(stream)
    _assert_survived(_apm("decode", "-q", str(path)), stream)
    _assert_survived(_apm("replay", "--fast", "--json", "-q", str(path)), stream)
