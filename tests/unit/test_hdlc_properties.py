"""Properties of the frame reader and decoder over real frames: split reads, garbage, corruption."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from han import HanReader
from han.hdlc import MAX_FRAME, FrameReader, build_frame
from tests.vectors import frame, records

CORE = [frame(r) for r in records("core")]
STREAM = b"".join(CORE)
EXPECTED = HanReader().feed(STREAM)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

frames_subset = st.lists(st.integers(0, len(CORE) - 1), min_size=1, max_size=12)


def _feed_chunks(data: bytes, cuts: list[int]) -> tuple[HanReader, list]:
    reader = HanReader()
    out = []
    last = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        out += reader.feed(data[last:cut])
        last = cut
    reader.close()
    return reader, out


@FAST
@given(st.lists(st.integers(0, len(STREAM)), max_size=60))
def test_any_split_of_the_stream_gives_the_same_readings(cuts):
    reader, out = _feed_chunks(STREAM, cuts)
    assert out == EXPECTED
    assert reader.frames.frames_bad == 0 and reader.bytes_discarded == 0


def test_one_byte_at_a_time():
    reader = HanReader()
    out = []
    for i in range(len(STREAM)):
        out += reader.feed(STREAM[i : i + 1])
    assert out == EXPECTED


@FAST
@given(frames_subset, st.lists(st.binary(max_size=300), min_size=13, max_size=13),
       st.lists(st.integers(0, 10_000), max_size=8))
def test_garbage_before_between_and_after_frames_loses_no_frame(picks, garbage, cuts):
    chosen = [CORE[i] for i in picks]
    data = garbage[0] + b"".join(f + g for f, g in zip(chosen, garbage[1:], strict=False))
    reader, out = _feed_chunks(data, [c % (len(data) + 1) for c in cuts])
    want = HanReader().feed(b"".join(chosen))
    assert out == want


@FAST
@given(frames_subset, st.data())
def test_a_corrupted_byte_gives_no_reading_from_that_frame_and_is_counted(picks, data):
    chosen = [CORE[i] for i in picks]
    victim = data.draw(st.integers(0, len(chosen) - 1))
    raw = bytearray(chosen[victim])
    pos = data.draw(st.integers(1, len(raw) - 2))  # inside the flags
    raw[pos] ^= data.draw(st.integers(1, 255))
    stream = b"".join(chosen[:victim]) + bytes(raw) + b"".join(chosen[victim + 1 :])
    reader = HanReader()
    out = reader.feed(stream)
    reader.close()
    others = HanReader().feed(b"".join(chosen[:victim] + chosen[victim + 1 :]))
    assert out == others
    assert reader.frames.frames_bad + reader.frames.garbage_runs >= 1


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=10))
def test_arbitrary_bytes_never_raise(data, cuts):
    _feed_chunks(data, [c % (len(data) + 1) for c in cuts])


def mangled_frame(raw: bytes, data, edits: int) -> bytes:
    """A frame with valid HCS/FCS around a payload changed in up to ``edits`` places, then cut."""
    info = bytearray(FrameReader().feed(raw)[0].info)
    for _ in range(data.draw(st.integers(1, edits))):
        pos = data.draw(st.integers(0, len(info) - 1))
        op = data.draw(st.sampled_from(("set", "delete", "insert")))
        if op == "set":
            info[pos] = data.draw(st.integers(0, 255))
        elif op == "delete":
            del info[pos]
        else:
            info.insert(pos, data.draw(st.integers(0, 255)))
    return build_frame(bytes(info[: data.draw(st.integers(1, len(info)))]))


@FAST
@given(st.sampled_from(CORE), st.data())
def test_well_framed_but_mangled_payloads_never_raise(raw, data):
    """Valid HCS/FCS around damaged DLMS: the decoder must refuse with a reason, not crash."""
    reader = HanReader()
    out = reader.feed(mangled_frame(raw, data, edits=4))
    assert len(out) + sum(reader.errors.values()) == 1


@FAST
@given(st.binary(min_size=1, max_size=600))
def test_random_payloads_in_valid_frames_never_raise(info):
    reader = HanReader()
    out = reader.feed(build_frame(info))
    assert len(out) + sum(reader.errors.values()) == 1


def test_flag_inside_payload_is_data():
    kaifa = next(f for f in CORE if b"\x15\x7e" in f[1:-1])
    reader = HanReader()
    assert len(reader.feed(kaifa)) == 1


def test_memory_is_bounded_by_the_largest_frame():
    reader = FrameReader()
    # A header that claims the longest frame, followed by a megabyte without a valid frame.
    reader.feed(b"\x7e\xa7\xff" + bytes(1 << 20))
    assert reader.buffered <= MAX_FRAME + 4096
    reader.feed(bytes(range(256)) * 4096)
    assert reader.buffered <= MAX_FRAME + 4096


def test_segmented_frames_are_reassembled():
    info = FrameReader().feed(CORE[0])[0].info
    parts = [info[:100], info[100:250], info[250:]]
    stream = b"".join(build_frame(p, segmented=i < 2) for i, p in enumerate(parts))
    reader = HanReader()
    assert reader.feed(stream) == HanReader().feed(CORE[0])


def test_frames_sharing_one_flag():
    shared = CORE[0][:-1] + CORE[1]
    assert HanReader().feed(shared) == HanReader().feed(CORE[0] + CORE[1])


def test_counters_on_a_clean_stream():
    reader = HanReader()
    reader.feed(STREAM)
    reader.close()
    assert reader.frames.frames_ok == len(CORE)
    assert reader.frames.frames_bad == reader.frames.garbage_runs == reader.bytes_discarded == 0
