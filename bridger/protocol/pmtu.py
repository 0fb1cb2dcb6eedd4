"""Path MTU of one peer: discovery, tracking, black holes (RFC 8899 in spirit).

The value is the largest outer IP packet (IP + UDP + transport message) that
is known to reach the peer; the peer sizes its datagrams by it and sends what
does not fit through the tunnel's own fragmentation, so hosts keep their MTU.
Probes are authenticated transport messages padded to a size; the peer acks
each with its id and the size received.  Only an ack raises the value.

Flow (the peer feeds the event verbs and seals what :meth:`PathMtu.due` asks):
 1. ``restart`` (session up, new endpoint): the value becomes the safe base
    (1280, or less where the ceiling or an IPv4 floor says so) and a search
    starts with one round of probes at once: the ceiling and the sizes real
    paths have (PPPoE 1492, DS-Lite 1452, LTE/IPsec ~1400, the IPv6 minimum).
 2. An ack larger than the value becomes the value at once (proof).  A round
    ends when no probe larger than the largest acked is still out, or at its
    deadline (a few round trips): probes larger than that are lost.  A size
    must be lost twice to bound the search from above (one loss may be just
    loss): a size lost once is probed again in the next round.
 3. Following rounds probe evenly between the largest acked and the smallest
    lost until they are ``PMTU_PRECISION`` apart; the value is then settled
    and one ``settled`` report is made when it differs from the last one.
 4. While settled and data flows, the value is re-confirmed every
    ``PMTU_CONFIRM_INTERVAL``; a lost confirmation starts a search from the
    value downwards (the path shrank and large datagrams vanish): when the
    value is lost again and a smaller size is acked, that size is the value.
 5. ``kernel_report`` (ICMP "fragmentation needed" / "packet too big", which
    anybody can forge) lowers the value at once, never below the floor, and
    starts a search that raises it again if the report was false; reports are
    ignored for a while after one was found false.
 6. The ceiling is the bound (the largest size worth using: what carries
    the largest frame whole, within the configured ``wan_mtu``) and, once the
    kernel refused a datagram as larger than the local interface
    (``local_limit``, EMSGSIZE), that interface's MTU.  Below the ceiling, a
    search upwards runs every ``PMTU_RAISE_INTERVAL`` (the path grew back, or
    the interface did: the local limit is forgotten for it).
A round where nothing at all is acked proves nothing (the path may be down):
it is repeated a few times, then the search ends with the value unchanged.
Never reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .constants import (
    IPV6_MIN_MTU,
    MIN_WAN_MTU,
    PMTU_BASE,
    PMTU_CONFIRM_INTERVAL,
    PMTU_KERNEL_DISTRUST,
    PMTU_LADDER,
    PMTU_PRECISION,
    PMTU_RAISE_INTERVAL,
    PMTU_ROUND_MAX,
    PMTU_ROUND_MIN,
    PMTU_ROUND_PROBES,
    PMTU_ROUND_RETRIES,
)


class Source(StrEnum):
    """How the value in use was learnt (shown in status and logs)."""

    #: The safe starting value; nothing learnt yet.
    BASE = "base"
    #: Confirmed by an authenticated probe.
    PROBE = "probe"
    #: Lowered on the kernel's report of an ICMP error; a search verifies it.
    ICMP = "icmp"
    #: Probing is off: the configured value, never changed.
    CONFIGURED = "configured"


class Search(StrEnum):
    START = "start"
    CONFIRM = "confirm"
    SHRINK = "shrink"
    RAISE = "raise"
    ICMP = "icmp"


@dataclass(frozen=True, slots=True)
class Settled:
    """A search ended on a value other than the last settled one."""

    old: int
    new: int
    source: Source


def floor_for(ipv6: bool) -> int:
    """The smallest path MTU a path may have: IPv6's minimum link MTU, else IPv4's."""
    return IPV6_MIN_MTU if ipv6 else MIN_WAN_MTU


class PathMtu:
    """Sans-I/O path-MTU state of one peer (see the module docstring)."""

    def __init__(self, bound: int, floor: int, *, probing: bool = True) -> None:
        self.probing = probing
        self.bound = bound
        self.floor = min(floor, bound)
        #: The local interface's MTU, once the kernel refused a larger datagram.
        self.local: int | None = None
        self.value = bound if not probing else min(PMTU_BASE, bound)
        self.source = Source.CONFIGURED if not probing else Source.BASE
        #: Smoothed round trip of probe acks (None: not measured yet).
        self.srtt: float | None = None
        self._settled = self.value
        self._search: Search | None = None
        self._lo = 0  # largest size acked in this search (0: none)
        self._hi = bound + 1  # smallest size known lost in this search
        self._out: dict[int, tuple[int, float]] = {}  # probe id -> (size, sent at)
        self._lost_once: set[int] = set()  # sizes lost once in this search
        self._queued: list[int] = []  # sizes of the next round, sent by due()
        self._deadline: float | None = None  # end of the round in flight
        self._retries = 0
        self._next_id = 1
        self._confirm_at: float | None = None
        self._raise_at: float | None = None
        self._data_since_confirm = False
        self._distrust_until = 0.0
        self._report: Settled | None = None

    # --- event verbs -----------------------------------------------------------

    @property
    def ceiling(self) -> int:
        """The largest size a search looks at."""
        return self.bound if self.local is None else min(self.bound, self.local)

    def restart(self, now: float, bound: int, floor: int) -> None:
        """A new path (session up, endpoint moved): forget it all and search."""
        self.bound = bound
        self.floor = min(floor, bound)
        self.local = None
        if not self.probing:
            self._set(bound, Source.CONFIGURED)
            return
        self._set(min(PMTU_BASE, bound), Source.BASE)
        self._confirm_at = self._raise_at = None
        self._begin(Search.START, now, self._ladder(self.floor, self.ceiling, top=True))

    def local_limit(self, mtu: int, now: float) -> None:
        """The kernel refused to send a datagram to the peer: the local interface
        (or the route) carries at most ``mtu``.  Probes above it are lost."""
        if not self.probing:
            return
        self.local = max(mtu, self.floor)
        ceiling = self.ceiling
        self._hi = min(self._hi, ceiling + 1)
        if self.value > ceiling:
            self._set(ceiling, self.source)
        self._out = {k: v for k, v in self._out.items() if v[0] <= ceiling}
        self._queued = [s for s in self._queued if s <= ceiling]
        if self._search is not None and not self._queued and not any(
            s > self._lo for s, _ in self._out.values()
        ):
            self._end_round(now)

    def kernel_report(self, mtu: int, now: float) -> None:
        """The kernel says a datagram to the peer needed a path MTU of ``mtu``
        (ICMP fragmentation needed / packet too big): unauthenticated news."""
        if not self.probing or mtu >= self.value or now < self._distrust_until:
            return
        if self._search is Search.ICMP:
            return
        old = self.value
        self._set(max(mtu, self.floor), Source.ICMP)
        sizes = [old, self.value, *self._ladder(self.floor, self.value)]
        self._begin(Search.ICMP, now, sizes, hi=old + 1)

    def data_sent(self, now: float) -> None:
        """Frames left for the peer: the value in use needs confirming."""
        self._data_since_confirm = True
        if self._confirm_at is None and self._search is None and self.probing:
            self._confirm_at = now + PMTU_CONFIRM_INTERVAL

    def acked(self, probe_id: int, size: int, now: float) -> bool:
        """An authenticated ack of probe ``probe_id`` reporting ``size`` bytes
        of IP packet; False for one that answers nothing outstanding."""
        sent = self._out.pop(probe_id, None)
        if sent is None or sent[0] != size:
            return False
        sample = now - sent[1]
        self.srtt = sample if self.srtt is None else 0.875 * self.srtt + 0.125 * sample
        self._lo = max(self._lo, size)
        self._retries = 0
        if size > self.value or (self.source is not Source.PROBE and size >= self.value):
            self._set(size, Source.PROBE)
        if not any(s > self._lo for s, _ in self._out.values()):
            self._end_round(now)
        return True

    def peer_lost(self) -> None:
        """The peer stopped answering: no probe in flight means anything."""
        self._out.clear()
        self._queued.clear()
        self._search = None
        self._deadline = self._confirm_at = self._raise_at = None

    # --- timers ------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if self._queued:
            return 0.0
        if self._search is not None:
            return self._deadline
        best = None
        for when in (self._confirm_at, self._raise_at):
            if when is not None and (best is None or when < best):
                best = when
        return best

    def due(self, now: float) -> list[tuple[int, int]]:
        """Run what is due and return the probes to send now, as (id, size of
        the IP packet); the caller seals each, padded, and sends it."""
        if self._deadline is not None and now >= self._deadline:
            self._end_round(now)
        if self._search is None:
            if self._raise_at is not None and now >= self._raise_at:
                self._raise_at = None
                self.local = None  # the interface may have grown too
                if self.value < self.ceiling:
                    sizes = [self.ceiling, *self._ladder(self.value + 1, self.ceiling)]
                    self._begin(Search.RAISE, now, sizes, lo=self.value)
            elif self._confirm_at is not None and now >= self._confirm_at:
                self._confirm_at = None
                if self._data_since_confirm and self.value > self.floor:
                    self._begin(Search.CONFIRM, now, [self.value], hi=self.value + 1)
        return self._send_queued(now)

    def postpone(self, now: float) -> None:
        """Nothing can be sent now (no session): a search in progress ends, as
        nothing can be proven without acks; the value stays (a value never
        proven stays the safe base, and :attr:`proven` tells the peer to search
        again when a session is up)."""
        if self._search is not None:
            self._search = None
            self._out.clear()
            self._queued = []
            self._deadline = None
        self._confirm_at = None
        if self._raise_at is not None and now >= self._raise_at:
            self._raise_at = now + PMTU_RAISE_INTERVAL

    def take_settled(self) -> Settled | None:
        """The last search's result, once, if it changed the settled value."""
        report, self._report = self._report, None
        return report

    @property
    def searching(self) -> bool:
        return self._search is not None

    @property
    def probes_waiting(self) -> bool:
        """Probes of a round are ready to go (:meth:`due` returns them now)."""
        return bool(self._queued)

    @property
    def proven(self) -> bool:
        """Whether the value in use was ever confirmed by a probe (or configured)."""
        return self.source in (Source.PROBE, Source.CONFIGURED)

    # --- inside ------------------------------------------------------------------

    def _set(self, value: int, source: Source) -> None:
        self.value = value
        self.source = source

    def _begin(
        self, kind: Search, now: float, sizes: list[int], *, lo: int = 0, hi: int | None = None
    ) -> None:
        """Start a search: ``lo`` is a size known to pass (0: none), ``hi`` one
        above the largest size it looks at (default: above the ceiling)."""
        self._search = kind
        self._confirm_at = None  # the search confirms, or replaces, the value
        self._lo = lo
        self._hi = self.ceiling + 1 if hi is None else min(hi, self.ceiling + 1)
        self._lost_once = set()
        self._retries = 0
        self._out.clear()
        self._deadline = None
        self._queued = sorted({s for s in sizes if self.floor <= s <= self.ceiling}, reverse=True)
        if not self._queued:
            self._finish(now)

    def _send_queued(self, now: float) -> list[tuple[int, int]]:
        if not self._queued:
            return []
        probes = []
        for size in self._queued:
            probe_id = self._next_id
            self._next_id = self._next_id % 0xFFFFFFFF + 1
            self._out[probe_id] = (size, now)
            probes.append((probe_id, size))
        self._queued = []
        self._deadline = now + self._round_time()
        return probes

    def _round_time(self) -> float:
        if self.srtt is None:
            return PMTU_ROUND_MAX / 2
        return min(max(4 * self.srtt, PMTU_ROUND_MIN), PMTU_ROUND_MAX)

    def _end_round(self, now: float) -> None:
        if self._search is None:
            return
        lost = {s for s, _ in self._out.values() if s > self._lo}
        self._out.clear()
        self._deadline = None
        twice = lost & self._lost_once
        again = sorted((s for s in lost - twice if s < self._hi), reverse=True)
        self._lost_once |= lost
        if twice:
            self._hi = min(self._hi, min(twice))
        again = [s for s in again if s < self._hi]
        kind = self._search
        if kind is Search.CONFIRM:
            self._finish(now)  # lost: a shrink search follows
            return
        if self._lo == 0:
            # Nothing acked: no proof of anything (the path may be down).
            self._retries += 1
            if self._retries <= PMTU_ROUND_RETRIES and lost:
                self._queued = sorted(lost, reverse=True)
                return
            self._finish(now)
            return
        if kind is Search.ICMP and self._lo >= self._settled:
            # The report was false: the old value still passes.
            self._distrust_until = now + PMTU_KERNEL_DISTRUST
        if self.value != self._lo:
            # Every size above lo is lost in this search: lo is the value.
            self._set(self._lo, Source.PROBE)
        elif self.source is not Source.PROBE:
            self._set(self._lo, Source.PROBE)
        if self._hi - self._lo > PMTU_PRECISION or again:
            self._queued = sorted({*self._between(self._lo, self._hi), *again}, reverse=True)
            return
        self._finish(now)

    def _finish(self, now: float) -> None:
        kind = self._search
        self._search = None
        self._out.clear()
        self._queued = []
        self._deadline = None
        if kind is Search.CONFIRM and self._lo == 0:
            # The value in use was lost: look below it (a shrunken path).
            sizes = [self.value, *self._ladder(self.floor, self.value)]
            self._begin(Search.SHRINK, now, sizes, hi=self.value + 1)
            # The confirmation was the value's first loss; it is probed twice
            # more now, so that only three losses in a row (not plain loss)
            # lower it.
            self._lost_once = {self.value}
            self._queued.insert(0, self.value)
            return
        self._data_since_confirm = False
        self._confirm_at = None
        if self.value < self.ceiling and self._raise_at is None:
            self._raise_at = now + PMTU_RAISE_INTERVAL  # (confirmations never delay it)
        if self.value != self._settled and self.source is Source.PROBE:
            self._report = Settled(self._settled, self.value, self.source)
            self._settled = self.value

    def _between(self, lo: int, hi: int) -> list[int]:
        """Up to PMTU_ROUND_PROBES sizes spread evenly strictly between lo and hi."""
        if hi - lo <= PMTU_PRECISION:
            return []
        n = PMTU_ROUND_PROBES
        sizes = {lo + (hi - lo) * k // (n + 1) for k in range(1, n + 1)}
        return sorted((s for s in sizes if lo < s < hi), reverse=True)

    @staticmethod
    def _ladder(low: int, high: int, *, top: bool = False) -> list[int]:
        """The common path MTUs in [low, high), and ``high`` itself if ``top``."""
        sizes = [s for s in PMTU_LADDER if low <= s < high]
        return [high, *sizes] if top else sizes
