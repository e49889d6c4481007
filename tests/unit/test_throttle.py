"""The status messages' throttle (apm/core/throttle.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apm.core.throttle import Throttle


def test_news_goes_at_once_and_the_rest_at_most_every_period() -> None:
    t: Throttle[str] = Throttle(10.0)
    assert t.due("a", 0.0, ("open",), 1.0)
    assert not t.due("a", 3.0, ("open",), 2.0)  # only the value moved: wait
    assert t.due("a", 4.0, ("closed",), 2.0)  # what matters changed: at once
    assert not t.due("a", 13.9, ("closed",), 3.0)
    assert t.due("a", 14.0, ("closed",), 3.0)
    assert t.due("b", 14.0, ("open",), 3.0)  # keys are independent


def test_an_identical_value_is_never_sent_twice_but_without_a_value_it_repeats() -> None:
    t: Throttle[str] = Throttle(5.0)
    assert t.due("a", 0.0, 1, "same")
    assert not t.due("a", 100.0, 1, "same")
    assert t.due("b", 0.0, 1)
    assert t.due("b", 5.0, 1)


def test_a_negative_period_is_refused() -> None:
    with pytest.raises(ValueError, match="every_s"):
        Throttle(-1.0)


@given(st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(0, 1), st.integers(0, 3)), max_size=60))
def test_sends_with_unchanged_fields_are_at_least_a_period_apart(steps: list[tuple[float, int, int]]) -> None:
    t: Throttle[str] = Throttle(10.0)
    now, last = 0.0, None  # (time, fields) of the last send
    for dt, fields, value in steps:
        now += dt
        if t.due("k", now, fields, value):
            if last is not None and last[1] == fields:
                assert now - last[0] >= 10.0
            last = (now, fields)
