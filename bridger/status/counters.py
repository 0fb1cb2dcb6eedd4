"""Traffic counters bumped by the data plane and read by every status view.

The forwarding loop calls :meth:`Counters.lan_to_wan` / :meth:`Counters.wan_to_lan`
once per frame, so those two methods are the hot path: a handful of integer
attribute increments, one bounded MAC-table update, no locks (everything runs
on the single trio thread) and no per-frame allocation beyond the 6-byte MAC
key.  Views (dashboard, ``bridger status``, Prometheus) never touch the
counters directly: they take a :meth:`Counters.snapshot`, a plain JSON-able
dict whose layout is the stable document described in ``docs/status.md``.

Direction names: ``tx`` is LAN->WAN (read from the tap, sent to the peer) and
``rx`` is WAN->LAN (received from the peer, written to the tap).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

#: Version of the snapshot document; bumped only on incompatible changes.
SCHEMA_VERSION = 1

#: Link states the daemon may report (``LinkInfo.state``).
LINK_STATES = ("down", "handshaking", "up", "stale")

# Ethernet constants (IEEE 802.3 / IANA ethertypes).
ETH_HEADER_LEN = 14
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100  # 802.1Q C-tag
ETHERTYPE_QINQ = 0x88A8  # 802.1ad S-tag
_BROADCAST = b"\xff\xff\xff\xff\xff\xff"

#: Frame kinds counted per direction, in display order.  ``unicast`` /
#: ``broadcast`` / ``multicast`` partition frames by destination MAC; ``arp`` /
#: ``ipv4`` / ``ipv6`` / ``other`` partition them by (inner) ethertype; ``vlan``
#: counts tagged frames on top of that; ``runt`` frames (shorter than an
#: Ethernet header) are counted in neither partition.
KINDS = ("unicast", "broadcast", "multicast", "arp", "ipv4", "ipv6", "vlan", "other", "runt")

#: Daemon-level drop reasons that always appear in a snapshot, even at zero,
#: so dashboards and alerts can rely on them.
DAEMON_DROP_REASONS = ("tap_write_failed", "udp_send_failed")

#: How many top talkers per side a snapshot lists.
TOP_TALKERS = 10


@dataclass
class LinkInfo:
    """What the daemon knows about the tunnel at snapshot time (filled from the core)."""

    state: str  # one of LINK_STATES
    endpoint: str | None = None  # "203.0.113.5:55555"
    peer_name: str | None = None  # DNS name given by the user, if any
    session_age: float | None = None  # seconds since the current session started
    last_handshake_age: float | None = None
    handshakes: int = 0
    rekeys: int = 0
    rtt_ms: float | None = None
    path_mtu: int = 0
    drops: dict[str, int] = field(default_factory=dict)  # from the core, every reason
    fragments: dict[str, int] = field(default_factory=dict)  # e.g. sent/received/reassembled
    interface: dict[str, str] = field(default_factory=dict)  # lan/bridge/tap/listen


class _Direction:
    """Counters for one direction; plain int slots so increments stay cheap."""

    __slots__ = ("frames", "bytes", *KINDS)

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.unicast = 0
        self.broadcast = 0
        self.multicast = 0
        self.arp = 0
        self.ipv4 = 0
        self.ipv6 = 0
        self.vlan = 0
        self.other = 0
        self.runt = 0

    def as_kinds(self) -> dict[str, int]:
        return {kind: getattr(self, kind) for kind in KINDS}


class MacTable:
    """Bounded LRU of source MACs seen on one side: mac -> [frames, bytes, last_seen].

    New MACs evict the least recently seen one when full, so a MAC flood
    costs at most ``capacity`` entries; evictions are counted.
    """

    __slots__ = ("_entries", "capacity", "evicted")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("MAC table capacity must be at least 1")
        self.capacity = capacity
        self.evicted = 0
        self._entries: OrderedDict[bytes, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def seen(self, mac: bytes, nbytes: int, now: float, frames: int = 1) -> None:
        entries = self._entries
        entry = entries.get(mac)
        if entry is None:
            if len(entries) >= self.capacity:
                entries.popitem(last=False)
                self.evicted += 1
            entries[mac] = [frames, nbytes, now]
        else:
            entry[0] += frames
            entry[1] += nbytes
            entry[2] = now
            entries.move_to_end(mac)

    def top(self, n: int, now: float) -> list[dict[str, Any]]:
        """The ``n`` biggest talkers by bytes, as JSON-able rows."""
        ranked = sorted(self._entries.items(), key=lambda item: item[1][1], reverse=True)[:n]
        return [
            {
                "mac": mac.hex(":"),
                "frames": int(frames),
                "bytes": int(nbytes),
                "last_seen_age": round(max(0.0, now - last), 3),
            }
            for mac, (frames, nbytes, last) in ranked
        ]

    def as_dict(self, now: float, top: int) -> dict[str, Any]:
        return {
            "count": len(self._entries),
            "capacity": self.capacity,
            "evicted": self.evicted,
            "top": self.top(top, now),
        }


def _account(
    d: _Direction, macs: MacTable, frame: bytes | memoryview, now: float, count: int, nbytes: int
) -> None:
    """Count ``count`` frames of ``nbytes`` in all, headed like ``frame``, in direction
    ``d`` and note their source MAC in ``macs``.

    One function (not several small ones) because calls dominate the per-frame cost.
    """
    d.frames += count
    d.bytes += nbytes
    n = len(frame)
    if n < ETH_HEADER_LEN:
        d.runt += count
        return
    if frame[0] & 1:  # group bit of the destination MAC
        if frame[0:6] == _BROADCAST:
            d.broadcast += count
        else:
            d.multicast += count
    else:
        d.unicast += count
    ethertype = (frame[12] << 8) | frame[13]
    if ethertype in (ETHERTYPE_VLAN, ETHERTYPE_QINQ):
        d.vlan += count
        # Look through the tag (and a second one for 802.1ad QinQ) at the payload type.
        ethertype = (frame[16] << 8) | frame[17] if n >= 18 else -1
        if ethertype in (ETHERTYPE_VLAN, ETHERTYPE_QINQ):
            ethertype = (frame[20] << 8) | frame[21] if n >= 22 else -1
    if ethertype == ETHERTYPE_IPV4:
        d.ipv4 += count
    elif ethertype == ETHERTYPE_IPV6:
        d.ipv6 += count
    elif ethertype == ETHERTYPE_ARP:
        d.arp += count
    else:
        d.other += count
    macs.seen(bytes(frame[6:12]), nbytes, now, count)


class Counters:
    """All data-plane counters of one daemon; see the module docstring for the rules."""

    def __init__(self, mac_table_size: int = 1024) -> None:
        self._tx = _Direction()
        self._rx = _Direction()
        self._local = MacTable(mac_table_size)
        self._remote = MacTable(mac_table_size)
        self._drops: dict[str, int] = dict.fromkeys(DAEMON_DROP_REASONS, 0)

    def lan_to_wan(
        self, frame: bytes | memoryview, now: float, count: int = 1, nbytes: int = -1
    ) -> None:
        """Count a frame read from the tap and sent to the peer; its source MAC is local.

        ``count``/``nbytes``: count that many frames of that total length which
        share ``frame``'s Ethernet header at once (the segments of one
        superframe), so the fast path pays for one call per superframe.
        """
        _account(self._tx, self._local, frame, now, count, len(frame) if nbytes < 0 else nbytes)

    def wan_to_lan(
        self, frame: bytes | memoryview, now: float, count: int = 1, nbytes: int = -1
    ) -> None:
        """Count a frame received from the peer and written to the tap; its source MAC is
        remote. ``count``/``nbytes`` as for :meth:`lan_to_wan`."""
        _account(self._rx, self._remote, frame, now, count, len(frame) if nbytes < 0 else nbytes)

    def tap_write_failed(self) -> None:
        """A frame from the peer could not be written to the tap."""
        self._drops["tap_write_failed"] += 1

    def drop(self, reason: str) -> None:
        """Count a daemon-level drop (the core counts its own; both show in snapshots)."""
        self._drops[reason] = self._drops.get(reason, 0) + 1

    def snapshot(self, link: LinkInfo, now: float, *, top: int = TOP_TALKERS) -> dict[str, Any]:
        """The stable status document (``docs/status.md``); ``now`` is on the same clock
        as the per-frame ``now`` values.  Core and daemon drops with the same reason are summed."""
        drops = dict(self._drops)
        for reason, value in link.drops.items():
            drops[reason] = drops.get(reason, 0) + int(value)
        return {
            "version": SCHEMA_VERSION,
            "link": {
                "state": link.state,
                "endpoint": link.endpoint,
                "peer_name": link.peer_name,
                "session_age": link.session_age,
                "last_handshake_age": link.last_handshake_age,
                "handshakes": int(link.handshakes),
                "rekeys": int(link.rekeys),
                "rtt_ms": link.rtt_ms,
                "path_mtu": int(link.path_mtu),
            },
            "interface": {str(k): str(v) for k, v in link.interface.items()},
            "frames": {"tx": self._tx.frames, "rx": self._rx.frames},
            "bytes": {"tx": self._tx.bytes, "rx": self._rx.bytes},
            "kinds": {"tx": self._tx.as_kinds(), "rx": self._rx.as_kinds()},
            "drops": dict(sorted(drops.items())),
            "fragments": {str(k): int(v) for k, v in sorted(link.fragments.items())},
            "macs": {
                "local": self._local.as_dict(now, top),
                "remote": self._remote.as_dict(now, top),
            },
        }
