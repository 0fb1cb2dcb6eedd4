"""The sans-I/O impairment core: seeded randomness, a virtual clock, no root."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bridger.lab.impair import QUEUE_LIMIT, ImpairedLink, Impairment, ImpairmentError


def link(seed: int = 1, **knobs: Any) -> ImpairedLink:
    return ImpairedLink(Impairment(**knobs), random.Random(seed))


def test_no_impairment_delivers_at_once_in_order() -> None:
    ln = link()
    for i in range(5):
        ln.submit(bytes([i]), now=10.0)
    assert ln.next_deadline() == 10.0
    assert ln.pop_due(10.0) == [bytes([i]) for i in range(5)]
    assert ln.next_deadline() is None


def test_delay_holds_frames_until_due() -> None:
    ln = link(delay_ms=100)
    ln.submit(b"a", now=1.0)
    assert ln.pop_due(1.099) == []
    assert ln.next_deadline() == pytest.approx(1.1)
    assert ln.pop_due(1.1) == [b"a"]


def test_jitter_stays_within_bounds() -> None:
    ln = link(delay_ms=50, jitter_ms=20)
    for i in range(500):
        ln.submit(i.to_bytes(2, "big"), now=0.0)
    deadlines = sorted(d for d, _, _ in ln._queue)
    assert 0.030 <= deadlines[0] < 0.035
    assert 0.065 < deadlines[-1] <= 0.070


@pytest.mark.parametrize("loss", [0, 10, 50, 100])
def test_loss_rate_matches_knob(loss: float) -> None:
    ln = link(seed=7, loss_pct=loss)
    for _ in range(10_000):
        ln.submit(b"x", now=0.0)
    got = len(ln.pop_due(0.0))
    assert got + ln.counters.dropped_loss == 10_000
    assert abs(ln.counters.dropped_loss / 100 - loss) < 2.0


def test_duplicate_sends_a_second_copy() -> None:
    ln = link(seed=3, duplicate_pct=100)
    ln.submit(b"d", now=0.0)
    assert ln.pop_due(0.0) == [b"d", b"d"]
    assert ln.counters.duplicated == 1


def test_reorder_lets_frames_overtake_delayed_ones() -> None:
    ln = link(seed=5, delay_ms=10, reorder_pct=30)
    frames = [i.to_bytes(2, "big") for i in range(200)]
    for f in frames:
        ln.submit(f, now=0.0)
    out = ln.pop_due(1.0)
    assert sorted(out) == frames
    assert out != frames
    assert 30 <= ln.counters.reordered <= 90


def test_rate_serialises_frames() -> None:
    ln = link(rate_mbit=8)  # 1 byte per microsecond
    for _ in range(3):
        ln.submit(b"\0" * 1000, now=0.0)
    deadlines = [d for d, _, _ in sorted(ln._queue)]
    assert deadlines == pytest.approx([0.0, 0.001, 0.002])


def test_full_queue_drops_and_counts() -> None:
    ln = link(delay_ms=1000)
    for _ in range(QUEUE_LIMIT + 5):
        ln.submit(b"q", now=0.0)
    assert len(ln) == QUEUE_LIMIT
    assert ln.counters.dropped_queue_full == 5


def test_same_seed_same_fate() -> None:
    def run(seed: int) -> list[bytes]:
        ln = link(seed=seed, loss_pct=30, duplicate_pct=10, delay_ms=5, reorder_pct=20)
        for i in range(300):
            ln.submit(i.to_bytes(2, "big"), now=i / 1000)
        return ln.pop_due(10.0)

    assert run(11) == run(11)
    assert run(11) != run(12)


@pytest.mark.parametrize(
    "knobs",
    [
        {"delay_ms": -1},
        {"loss_pct": 101},
        {"duplicate_pct": -0.5},
        {"rate_mbit": 0},
        {"reorder_pct": 10},  # reorder without delay means nothing
        {"delay_ms": 10, "jitter_ms": 20},
    ],
)
def test_bad_knobs_rejected(knobs: dict[str, float]) -> None:
    with pytest.raises(ImpairmentError):
        Impairment(**knobs)


def test_noop_detection() -> None:
    assert Impairment().is_noop
    assert not Impairment(delay_ms=1).is_noop
    assert not Impairment(rate_mbit=1).is_noop
