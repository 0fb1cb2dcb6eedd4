"""The Linux kernel WireGuard replay-counter self-test, against replay.py and
its C twin (bn_session.c's bn_replay_check, through Session.check).

The cases are those of drivers/net/wireguard/selftest/counter.c (ported to
wireguard-go's replay tests too): a table of (counter, accepted) steps, then six
bulk sequences.  The kernel answers yes/no; bridger's window answers OK,
REPLAY or TOO_OLD, and "accepted" here means OK.  Adaptations, none of which
changes a case's meaning:

* Window-relative counters are written with bridger's window size,
  ``replay.WINDOW_SIZE`` ((REPLAY_BLOCKS - 1) * 64) in place of the kernel's
  COUNTER_WINDOW_SIZE, and T_LIM = WINDOW_SIZE + 1 as in the kernel.  Today
  both are 8128 (128 blocks of 64 bits), but the cases follow the constant.
* The limit cases use bridger's REJECT_AFTER_MESSAGES, 2^64 - 2^13 - 1 (as
  wireguard-go's); the kernel's is U64_MAX - COUNTER_WINDOW_SIZE - 1.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bridger.native import lane
from bridger.protocol.constants import REJECT_AFTER_MESSAGES
from bridger.protocol.replay import WINDOW_SIZE, ReplayWindow, Verdict

T_LIM = WINDOW_SIZE + 1
R = REJECT_AFTER_MESSAGES

#: counter.c's first table, in order, numbered as there.
TABLE: list[tuple[int, bool]] = [
    (0, True),  # 1
    (1, True),  # 2
    (1, False),  # 3
    (9, True),  # 4
    (8, True),  # 5
    (7, True),  # 6
    (7, False),  # 7
    (T_LIM, True),  # 8
    (T_LIM - 1, True),  # 9
    (T_LIM - 1, False),  # 10
    (T_LIM - 2, True),  # 11
    (2, True),  # 12
    (2, False),  # 13
    (T_LIM + 16, True),  # 14
    (3, False),  # 15
    (T_LIM + 16, False),  # 16
    (T_LIM * 4, True),  # 17
    (T_LIM * 4 - (T_LIM - 1), True),  # 18
    (10, False),  # 19
    (T_LIM * 4 - T_LIM, False),  # 20
    (T_LIM * 4 - (T_LIM + 1), False),  # 21
    (T_LIM * 4 - (T_LIM - 2), True),  # 22
    (T_LIM * 4 + 1 - T_LIM, False),  # 23
    (0, False),  # 24
    (R, False),  # 25
    (R - 1, True),  # 26
    (R, False),  # 27
    (R - 1, False),  # 28
    (R - 2, True),  # 29
    (R + 1, False),  # 30
    (R + 2, False),  # 31
    (R - 2, False),  # 32
    (R - 3, True),  # 33
    (0, False),  # 34
]


def _ascending(first: int, last: int) -> list[tuple[int, bool]]:
    return [(i, True) for i in range(first, last + 1)]


def _descending(first: int, last: int) -> list[tuple[int, bool]]:
    return [(i, True) for i in range(first, last - 1, -1)]


#: counter.c's bulk sequences, each on a fresh window.
BULK: dict[str, list[tuple[int, bool]]] = {
    "1..W then 0": [*_ascending(1, WINDOW_SIZE), (0, True), (0, False)],
    "2..W+1 then 1, 0": [*_ascending(2, WINDOW_SIZE + 1), (1, True), (0, False)],
    "W..0 descending": _descending(WINDOW_SIZE, 0),
    "W+1..1 descending then 0": [*_descending(WINDOW_SIZE + 1, 1), (0, False)],
    "W..1 descending then W+1, 0": [
        *_descending(WINDOW_SIZE, 1), (WINDOW_SIZE + 1, True), (0, False)
    ],
    "W..1 descending then 0, W+1": [
        *_descending(WINDOW_SIZE, 1), (0, True), (WINDOW_SIZE + 1, True)
    ],
}

SEQUENCES = {"table": TABLE, **{f"bulk {k}": v for k, v in BULK.items()}}


def python_window() -> Callable[[int], bool]:
    window = ReplayWindow()
    return lambda counter: window.check(counter) is Verdict.OK


def native_window() -> Callable[[int], bool]:
    assert lane is not None
    session = lane.Session(1, 2, bytes(32), bytes(32), 0.0)
    return lambda counter: session.check(counter) == 0


WINDOWS = {"python": python_window}
if lane is not None:
    WINDOWS["native"] = native_window


def test_window_size_is_the_kernels() -> None:
    """Not required by the cases (they follow WINDOW_SIZE), but worth knowing when
    it changes: the kernel's COUNTER_WINDOW_SIZE is 8192 - 64."""
    assert WINDOW_SIZE == 8128


@pytest.mark.parametrize("impl", sorted(WINDOWS))
@pytest.mark.parametrize("sequence", sorted(SEQUENCES))
def test_kernel_counter_selftest(sequence: str, impl: str) -> None:
    accept = WINDOWS[impl]()
    for step, (counter, expected) in enumerate(SEQUENCES[sequence], start=1):
        assert accept(counter) is expected, f"{sequence} step {step}: counter {counter}"
