"""Adaptive exchange deadlines (gossipd/deadlines.py)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from gossipd import deadlines as dl


def test_ceiling_until_enough_evidence() -> None:
    s = dl.deadline_init()
    for _ in range(dl.MIN_SAMPLES - 1):
        s = dl.observe(s, 0.02)
        assert dl.deadline(s, 10.0) == 10.0
    s = dl.observe(s, 0.02)
    assert dl.deadline(s, 10.0) == dl.FLOOR_S  # 4 * 20 ms + 0.5 s is under the floor


def test_follows_slow_exchanges_and_caps_at_the_ceiling() -> None:
    s = dl.deadline_init()
    for _ in range(10):
        s = dl.observe(s, 1.0)
    assert math.isclose(dl.deadline(s, 10.0), 4.5)
    for _ in range(10):
        s = dl.observe(s, 5.0)
    assert dl.deadline(s, 10.0) == 10.0


def test_timeouts_widen_the_deadline_again() -> None:
    s = dl.deadline_init()
    for _ in range(dl.WINDOW):
        s = dl.observe(s, 0.1)
    tight = dl.deadline(s, 30.0)
    for _ in range(4):
        s = dl.observe_timeout(s, dl.deadline(s, 30.0))
    assert dl.deadline(s, 30.0) > 3 * tight


def test_window_forgets_old_samples() -> None:
    s = dl.deadline_init()
    for _ in range(dl.WINDOW):
        s = dl.observe(s, 3.0)
    for _ in range(dl.WINDOW):
        s = dl.observe(s, 0.05)
    assert len(s.samples) == dl.WINDOW and dl.deadline(s, 30.0) == dl.FLOOR_S


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=80),
       st.floats(min_value=0.1, max_value=600))
def test_deadline_is_always_between_floor_and_ceiling(xs: list[float], ceiling: float) -> None:
    s = dl.deadline_init()
    for x in xs:
        s = dl.observe(s, x)
    d = dl.deadline(s, ceiling)
    assert min(dl.FLOOR_S, ceiling) <= d <= ceiling
