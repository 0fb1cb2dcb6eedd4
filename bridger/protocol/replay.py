"""Sliding anti-replay window (RFC 6479 ring of 64-bit blocks).

Checked only after a packet authenticated, so forged counters cannot move it.
The window accepts any counter not seen before and greater than
``greatest - WINDOW_SIZE``; out-of-order arrival within the window is fine.
"""

from __future__ import annotations

from enum import Enum

from .constants import REJECT_AFTER_MESSAGES, REPLAY_BLOCKS

_BLOCK_BITS = 64
_BLOCK_SHIFT = 6
_BLOCK_MASK = REPLAY_BLOCKS - 1
_BIT_MASK = _BLOCK_BITS - 1
WINDOW_SIZE = (REPLAY_BLOCKS - 1) * _BLOCK_BITS

assert REPLAY_BLOCKS & _BLOCK_MASK == 0, "REPLAY_BLOCKS must be a power of two"


class Verdict(Enum):
    OK = "ok"
    REPLAY = "replay"
    TOO_OLD = "too_old"


class ReplayWindow:
    __slots__ = ("_blocks", "_last")

    def __init__(self) -> None:
        self._blocks = [0] * REPLAY_BLOCKS
        self._last = 0  # greatest counter accepted so far (+ nothing seen: all zero)

    def check(self, counter: int) -> Verdict:
        """Accept-and-record ``counter`` if it is new and inside the window."""
        if counter >= REJECT_AFTER_MESSAGES:
            return Verdict.TOO_OLD
        last = self._last
        index = counter >> _BLOCK_SHIFT
        if counter > last:
            current = last >> _BLOCK_SHIFT
            diff = index - current
            if diff:
                blocks = self._blocks
                for i in range(1, min(diff, REPLAY_BLOCKS) + 1):
                    blocks[(current + i) & _BLOCK_MASK] = 0
            self._last = counter
        elif last - counter > WINDOW_SIZE:
            return Verdict.TOO_OLD
        slot = index & _BLOCK_MASK
        bit = 1 << (counter & _BIT_MASK)
        old = self._blocks[slot]
        if old & bit:
            return Verdict.REPLAY
        self._blocks[slot] = old | bit
        return Verdict.OK
