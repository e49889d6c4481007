"""Deep fuzzing of the decoder (make fuzz): many more examples of the robustness properties."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from han import HanReader
from han.hdlc import FrameReader, build_frame
from tests.vectors import frame, records

pytestmark = pytest.mark.fuzz
CORE = [frame(r) for r in records("core")]
DEEP = settings(max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))


@DEEP
@given(st.sampled_from(CORE), st.data())
def test_mangled_payloads_never_raise(raw, data):
    info = bytearray(FrameReader().feed(raw)[0].info)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(info) - 1))
        op = data.draw(st.sampled_from(("set", "delete", "insert")))
        if op == "set":
            info[pos] = data.draw(st.integers(0, 255))
        elif op == "delete":
            del info[pos]
        else:
            info.insert(pos, data.draw(st.integers(0, 255)))
    reader = HanReader()
    out = reader.feed(build_frame(bytes(info[: data.draw(st.integers(1, len(info)))])))
    assert len(out) + sum(reader.errors.values()) == 1


@DEEP
@given(st.binary(max_size=5000))
def test_arbitrary_streams_never_raise(data):
    reader = HanReader()
    reader.feed(data)
    reader.close()
