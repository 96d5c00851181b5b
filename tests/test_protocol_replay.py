"""ReplayGuard: window, duplicates, bounded memory with a rising floor, and restore."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ReplayDetected
from protocol.replay import RECORD_LEN, ReplayGuard

NOW = 1_800_000_000_000


def xid(i: int) -> bytes:
    return i.to_bytes(16, "big")


def test_accepts_fresh_and_refuses_duplicates() -> None:
    g = ReplayGuard(window_ms=1000)
    g.check(xid(1), NOW, NOW)
    g.check(xid(2), NOW - 999, NOW)
    with pytest.raises(ReplayDetected):
        g.check(xid(1), NOW + 5, NOW + 5)
    assert len(g) == 2


def test_window_both_ways_and_expiry() -> None:
    g = ReplayGuard(window_ms=1000)
    with pytest.raises(ReplayDetected, match="outside"):
        g.check(xid(1), NOW - 1001, NOW)
    with pytest.raises(ReplayDetected, match="outside"):
        g.check(xid(1), NOW + 1001, NOW)
    g.check(xid(1), NOW, NOW)
    g.check(xid(2), NOW + 1500, NOW + 1500)
    assert len(g) == 1  # xid(1) fell out of the window; the window check refuses it anyway
    with pytest.raises(ReplayDetected):
        g.check(xid(1), NOW, NOW + 1500)


def test_capacity_raises_the_floor_instead_of_forgetting_silently() -> None:
    g = ReplayGuard(window_ms=10_000, capacity=3)
    for i in range(4):
        g.check(xid(i), NOW + i, NOW + i)
    assert len(g) == 3 and g.floor_ms == NOW
    with pytest.raises(ReplayDetected, match="older"):
        g.check(xid(0), NOW, NOW + 4)  # forgotten, but still refused
    with pytest.raises(ReplayDetected, match="older"):
        g.check(xid(99), NOW, NOW + 4)  # fresh id, but at the floor: cannot be told apart


def test_dump_restore_round_trip_and_torn_record() -> None:
    g = ReplayGuard(window_ms=1000)
    for i in range(5):
        g.check(xid(i), NOW + i * 100, NOW + i * 100)
    data = g.dump()
    assert len(data) == 5 * RECORD_LEN
    r = ReplayGuard.restore(data + b"\x01\x02", now_ms=NOW + 1000, window_ms=1000)
    assert len(r) == 5
    for i in range(5):
        with pytest.raises(ReplayDetected):
            r.check(xid(i), NOW + 1000, NOW + 1000)
    later = ReplayGuard.restore(data, now_ms=NOW + 1150, window_ms=1000)
    assert len(later) == 3  # records older than the window are dropped at restore


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=10 * RECORD_LEN + 7), st.integers(0, 2**63 - 1))
def test_restore_takes_any_bytes(data: bytes, now: int) -> None:
    g = ReplayGuard.restore(data, now_ms=now)
    assert len(g) <= len(data) // RECORD_LEN
