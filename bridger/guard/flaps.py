"""MAC flap counting: a source MAC that keeps changing sides.

A side is "lan" (the frame was read from a tap, so it came from this site's
LAN) or the name of the peer it arrived from.  A host sits on one side; a MAC
seen alternately on two sides many times a second means a loop (the LAN's own
frames come back through a peer) or two hosts sharing a MAC.

Memory is bounded (an LRU of ``capacity`` MACs: a MAC flood evicts, it cannot
grow the table); the per-MAC count is over a tumbling window, the device rate
over the last ``window`` seconds in one-second buckets.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import Any

from bridger.guard.constants import FLAP_ALERT, FLAP_CAPACITY, FLAP_LOG_INTERVAL, FLAP_WINDOW
from bridger.guard.events import MacFlapping

# Entry fields (a list: updated in place on the hot path).
_SIDE, _PREV, _TOTAL, _START, _RECENT, _LAST = range(6)


class MacFlaps:
    """Where each recently seen source MAC is, and how often it moved."""

    __slots__ = (
        "_alert", "_buckets", "_events", "_last_log", "_macs", "capacity", "evicted", "total",
        "window",
    )

    def __init__(
        self, capacity: int = FLAP_CAPACITY, window: float = FLAP_WINDOW, alert: int = FLAP_ALERT
    ) -> None:
        if capacity < 1 or window <= 0:
            raise ValueError("MAC flap table needs a capacity and a window")
        self.capacity = capacity
        self.window = window
        self._alert = alert
        self._macs: OrderedDict[bytes, list[Any]] = OrderedDict()
        self._buckets: deque[list[int]] = deque()  # [second, flaps]
        self._events: list[MacFlapping] = []
        self._last_log = -math.inf
        #: Flaps since start.
        self.total = 0
        #: MACs dropped from the table to keep it bounded.
        self.evicted = 0

    def seen(self, mac: bytes, side: str, now: float) -> None:
        """``mac`` was the source of a frame on ``side`` at ``now``."""
        entry = self._macs.get(mac)
        if entry is not None and entry[_SIDE] == side:
            return  # the common case: a host stays where it is
        if entry is None:
            self._macs[mac] = [side, "", 0, now, 0, -math.inf]
            if len(self._macs) > self.capacity:
                self._macs.popitem(last=False)
                self.evicted += 1
            return
        self._flap(mac, entry, side, now)

    def _flap(self, mac: bytes, entry: list[Any], side: str, now: float) -> None:
        entry[_PREV] = entry[_SIDE]
        entry[_SIDE] = side
        entry[_TOTAL] += 1
        if now - entry[_START] > self.window:
            entry[_START] = now
            entry[_RECENT] = 0
        entry[_RECENT] += 1
        entry[_LAST] = now
        self._macs.move_to_end(mac)
        self.total += 1
        second = int(now)
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += 1
        else:
            buckets.append([second, 1])
            while buckets and buckets[0][0] <= second - self.window:
                buckets.popleft()
        if entry[_RECENT] >= self._alert and now - self._last_log >= FLAP_LOG_INTERVAL:
            self._last_log = now
            self._events.append(
                MacFlapping(mac, (entry[_PREV], side), entry[_RECENT], now - entry[_START])
            )

    def rate(self, now: float) -> float:
        """Flaps per second over the last ``window`` seconds."""
        cutoff = now - self.window
        return sum(n for second, n in self._buckets if second + 1 > cutoff) / self.window

    def side(self, mac: bytes) -> str | None:
        """Where ``mac`` was last seen (None: not in the table)."""
        entry = self._macs.get(mac)
        return None if entry is None else str(entry[_SIDE])

    def worst(self, now: float, n: int = 5) -> list[dict[str, Any]]:
        """The ``n`` MACs with the most flaps in their current window, JSON-able."""
        live = [
            (mac, e) for mac, e in self._macs.items()
            if e[_RECENT] and now - e[_START] <= 2 * self.window
        ]
        live.sort(key=lambda item: (item[1][_RECENT], item[1][_LAST]), reverse=True)
        return [
            {
                "mac": mac.hex(":"),
                "flaps": int(e[_TOTAL]),
                "recent": int(e[_RECENT]),
                "sides": [str(e[_PREV]), str(e[_SIDE])],
                "last_flap_age": round(max(0.0, now - e[_LAST]), 3),
            }
            for mac, e in live[:n]
        ]

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def take_events(self) -> list[MacFlapping]:
        events, self._events = self._events, []
        return events

    def snapshot(self, now: float, top: int = 5) -> dict[str, Any]:
        return {
            "total": self.total,
            "rate": round(self.rate(now), 3),
            "tracked": len(self._macs),
            "evicted": self.evicted,
            "worst": self.worst(now, top),
        }
