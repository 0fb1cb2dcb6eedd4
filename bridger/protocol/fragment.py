"""Fragmentation of frames too large for one datagram, and bounded reassembly.

The fragment header lives inside the encrypted payload, so fragments are
authenticated and replay-checked like any transport message; each fragment is
its own datagram with its own counter.  Pieces are equal-sized except the last.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import REASSEMBLY_MAX_BYTES, REASSEMBLY_MAX_FRAMES, REASSEMBLY_TIMEOUT
from .events import DropReason
from .messages import FRAGMENT_HEADER, FRAGMENT_HEADER_LEN, Fragment, InnerType

MAX_FRAGMENTS = 255


def split(frame: bytes, frame_id: int, max_plaintext: int) -> list[bytes]:
    """Fragment plaintexts for ``frame``, each at most ``max_plaintext`` bytes."""
    room = max_plaintext - FRAGMENT_HEADER_LEN
    n = len(frame)
    count = -(-n // room)
    if count > MAX_FRAGMENTS or count < 2:
        raise ValueError("frame cannot be fragmented to this size")
    per = -(-n // count)
    pack = FRAGMENT_HEADER.pack
    view = memoryview(frame)
    return [
        pack(InnerType.FRAGMENT, frame_id, i, count, n) + view[i * per : (i + 1) * per]
        for i in range(count)
    ]


@dataclass(slots=True)
class _Partial:
    deadline: float
    count: int
    total: int
    pieces: list[bytes | None]
    have: int = 0
    size: int = 0


class Reassembler:
    """Partial frames keyed by sender frame id; bounded count, bytes and age."""

    def __init__(self, drops: dict[DropReason, int], max_frame: int) -> None:
        self._drops = drops
        self._max_frame = max_frame
        self._partials: dict[int, _Partial] = {}
        self._bytes = 0
        self.reassembled = 0

    def __len__(self) -> int:
        return len(self._partials)

    def _evict(self, frame_id: int, reason: DropReason) -> None:
        partial = self._partials.pop(frame_id)
        self._bytes -= partial.total
        self._drops[reason] += 1

    def add(self, frag: Fragment, now: float) -> bytes | None:
        """Store a fragment; the whole frame once its last piece arrives."""
        if frag.total_len > self._max_frame or len(frag.data) > frag.total_len:
            self._drops[DropReason.MALFORMED] += 1
            return None
        partial = self._partials.get(frag.frame_id)
        if partial is not None and (partial.count != frag.count or partial.total != frag.total_len):
            self._evict(frag.frame_id, DropReason.REASSEMBLY_CONFLICT)
            partial = None
        if partial is None:
            while self._partials and (
                len(self._partials) >= REASSEMBLY_MAX_FRAMES
                or self._bytes + frag.total_len > REASSEMBLY_MAX_BYTES
            ):
                self._evict(next(iter(self._partials)), DropReason.REASSEMBLY_OVERFLOW)
            partial = _Partial(
                now + REASSEMBLY_TIMEOUT, frag.count, frag.total_len, [None] * frag.count
            )
            self._partials[frag.frame_id] = partial
            self._bytes += frag.total_len
        if partial.pieces[frag.index] is not None:
            self._drops[DropReason.REASSEMBLY_CONFLICT] += 1
            return None
        partial.pieces[frag.index] = frag.data
        partial.have += 1
        partial.size += len(frag.data)
        if partial.size > partial.total:
            self._evict(frag.frame_id, DropReason.MALFORMED)
            return None
        if partial.have < partial.count:
            return None
        del self._partials[frag.frame_id]
        self._bytes -= partial.total
        if partial.size != partial.total:
            self._drops[DropReason.MALFORMED] += 1
            return None
        self.reassembled += 1
        return b"".join(p for p in partial.pieces if p is not None)

    def expire(self, now: float) -> None:
        while self._partials:
            frame_id, partial = next(iter(self._partials.items()))
            if partial.deadline > now:
                break
            self._evict(frame_id, DropReason.REASSEMBLY_TIMEOUT)

    def next_deadline(self) -> float | None:
        for partial in self._partials.values():
            return partial.deadline
        return None
