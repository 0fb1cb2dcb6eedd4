"""Sans-I/O link impairment: frames in, (deadline, frame) out.

The kernel's ``netem`` qdisc is not built into every kernel (CONFIG_NET_SCH_NETEM
is often a module shipped separately, or missing). When it is absent the lab
routes WAN frames through a userspace wire (:mod:`bridger.lab.wire`) that uses
this core. The semantics follow netem so both engines mean the same thing:

1. loss: the frame is dropped with probability ``loss_pct``;
2. duplicate: with probability ``duplicate_pct`` a second copy is scheduled;
3. reorder: with probability ``reorder_pct`` the frame skips the delay
   (sent at once, overtaking delayed frames); needs ``delay_ms > 0``;
4. otherwise the frame leaves after ``delay_ms`` ± uniform ``jitter_ms``;
5. rate: frames then serialise at ``rate_mbit``, one after another.

Time comes in as ``now`` (seconds, any monotonic origin); randomness comes from
the caller's seeded :class:`random.Random`. Every drop is counted.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sized
from dataclasses import dataclass, field, fields
from typing import Generic, TypeVar

#: Frames waiting in one direction before new ones are dropped (netem's default
#: limit is 1000; a long-delay, high-rate test needs more headroom).
QUEUE_LIMIT = 10_000

#: What travels on a link: frames (the wire), or anything whose size the
#: caller gives (the protocol simulation's addressed datagrams).
T = TypeVar("T", bound=Sized)


class ImpairmentError(ValueError):
    """An impairment knob is out of range."""


@dataclass(frozen=True)
class ImpairmentKnobs:
    """The knobs, declared once: :class:`Impairment` validates them, the lab's
    ``LabOptions`` and the protocol simulation's link take them from here.
    Percentages are 0..100, times in milliseconds, one direction."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    reorder_pct: float = 0.0
    duplicate_pct: float = 0.0
    rate_mbit: float | None = None


@dataclass(frozen=True)
class Impairment(ImpairmentKnobs):
    """One direction's knobs, validated."""

    @classmethod
    def of(cls, knobs: ImpairmentKnobs) -> Impairment:
        """The validated record of ``knobs`` (ImpairmentError when out of range)."""
        return cls(**{f.name: getattr(knobs, f.name) for f in fields(ImpairmentKnobs)})

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms"):
            if not 0 <= getattr(self, name) <= 60_000:
                raise ImpairmentError(f"{name} must be between 0 and 60000")
        for name in ("loss_pct", "reorder_pct", "duplicate_pct"):
            if not 0 <= getattr(self, name) <= 100:
                raise ImpairmentError(f"{name} must be between 0 and 100")
        if self.rate_mbit is not None and not self.rate_mbit > 0:
            raise ImpairmentError("rate_mbit must be positive")
        if self.reorder_pct > 0 and self.delay_ms <= 0:
            raise ImpairmentError("reorder_pct needs delay_ms > 0 (reordered frames skip it)")
        if self.jitter_ms > self.delay_ms:
            raise ImpairmentError("jitter_ms must not exceed delay_ms")

    @property
    def is_noop(self) -> bool:
        """True when frames pass untouched (the fast path: no impairment at all)."""
        return (
            self.delay_ms == 0
            and self.loss_pct == 0
            and self.duplicate_pct == 0
            and self.rate_mbit is None
        )


@dataclass
class LinkCounters:
    """Why frames left the link or did not."""

    received: int = 0
    delivered: int = 0
    dropped_loss: int = 0
    dropped_queue_full: int = 0
    duplicated: int = 0
    reordered: int = 0


@dataclass
class ImpairedLink(Generic[T]):
    """One direction of an impaired wire."""

    impairment: Impairment
    rng: random.Random
    counters: LinkCounters = field(default_factory=LinkCounters)
    _queue: list[tuple[float, int, T]] = field(default_factory=list)
    _seq: int = 0
    _link_free_at: float = 0.0

    def submit(self, frame: T, now: float, size: int | None = None) -> None:
        """A frame entered the link at ``now``; schedule it (or count its drop).
        ``size`` (bytes, for the rate) defaults to ``len(frame)``."""
        if size is None:
            size = len(frame)
        self.counters.received += 1
        imp = self.impairment
        if imp.loss_pct and self.rng.random() * 100 < imp.loss_pct:
            self.counters.dropped_loss += 1
            return
        copies = 1
        if imp.duplicate_pct and self.rng.random() * 100 < imp.duplicate_pct:
            copies = 2
            self.counters.duplicated += 1
        for _ in range(copies):
            self._schedule(frame, size, now)

    def _schedule(self, frame: T, size: int, now: float) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            self.counters.dropped_queue_full += 1
            return
        imp = self.impairment
        if imp.reorder_pct and self.rng.random() * 100 < imp.reorder_pct:
            self.counters.reordered += 1
            due = now
        else:
            delay = imp.delay_ms
            if imp.jitter_ms:
                delay += self.rng.uniform(-imp.jitter_ms, imp.jitter_ms)
            due = now + max(0.0, delay) / 1000.0
        if imp.rate_mbit is not None:
            due = max(due, self._link_free_at)
            self._link_free_at = due + size * 8 / (imp.rate_mbit * 1e6)
        self._seq += 1
        heapq.heappush(self._queue, (due, self._seq, frame))

    def next_deadline(self) -> float | None:
        """When the next frame is due, or None if nothing is queued."""
        return self._queue[0][0] if self._queue else None

    def pop_due(self, now: float) -> list[T]:
        """Frames whose time has come, in departure order."""
        out: list[T] = []
        while self._queue and self._queue[0][0] <= now:
            out.append(heapq.heappop(self._queue)[2])
        self.counters.delivered += len(out)
        return out

    def __len__(self) -> int:
        return len(self._queue)
