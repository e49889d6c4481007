"""Deep fuzzing of the decoder (make fuzz): many more examples of the robustness properties."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from han import HanReader
from tests.unit.test_hdlc_properties import mangled_frame
from tests.vectors import frame, records

pytestmark = pytest.mark.fuzz
CORE = [frame(r) for r in records("core")]
DEEP = settings(max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))


@DEEP
@given(st.sampled_from(CORE), st.data())
def test_mangled_payloads_never_raise(raw, data):
    reader = HanReader()
    out = reader.feed(mangled_frame(raw, data, edits=6))
    assert len(out) + sum(reader.errors.values()) == 1


@DEEP
@given(st.binary(max_size=5000))
def test_arbitrary_streams_never_raise(data):
    reader = HanReader()
    reader.feed(data)
    reader.close()
