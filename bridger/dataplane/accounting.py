"""The data plane's per-frame accounting: traffic counters, MAC tables, drops.

The forwarding loop (bridger.shell: ``port.py``, ``forward.py``, ``udp.py``) and
the native lane's hand-over (``shell/lane.py``) bump these; nothing else does.
1. One :class:`Counters` per daemon holds the device's table of local MACs, the
   drops not tied to a peer and one :class:`PeerCounters` per peer.
2. :meth:`PeerCounters.lan_to_wan` / :meth:`PeerCounters.wan_to_lan` run once per
   frame (or once per run of segments sharing a header): the hot path, a handful
   of integer increments and one bounded MAC-table update (:func:`account`), no
   locks (everything runs on the single trio thread), no per-frame allocation
   beyond the 6-byte MAC key.
3. A native lane's counts arrive in bulk (:meth:`PeerCounters.add_native`,
   :meth:`PeerCounters.native_source`), counted the way :func:`account` counts.
4. Views (bridger.status) never touch the counters: they read a
   :meth:`Counters.snapshot`, plain JSON-able data, and build the status
   document from it.

Direction names: ``tx`` is LAN->WAN (read from a peer's tap, sent to that
peer) and ``rx`` is WAN->LAN (received from a peer, written to its tap).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from bridger.guard.policy import Reason

if TYPE_CHECKING:
    from bridger.native.contract import DirCounts

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

#: Flooded frames the kernel dropped before a peer's tap queue (bridger.host.storm).
KERNEL_DROP_REASON = "storm_kernel"

#: Every drop reason the daemon (the I/O shell, not the protocol core) may
#: count, with its meaning.  This table is the single source of those names:
#: ``docs/status.md`` lists exactly these plus the core's ``DropReason``
#: values (a test compares them), and every snapshot carries all of them,
#: zero-valued ones included, so dashboards and alerts can rely on them.
DAEMON_DROP_REASONS: dict[str, str] = {
    "tap_write_failed": "a frame from the peer could not be written to its tap",
    "tap_short_read": "a tap read shorter than its virtio-net header",
    "gso_unsupported": "a tap superframe of a segmentation type other than TCP",
    "gso_malformed": "a tap TCP superframe that could not be segmented",
    "udp_send_failed": "a datagram could not be sent (an error other than the two below)",
    "udp_send_blocked": "a datagram dropped because the UDP socket buffer was full",
    "udp_send_too_big": "a datagram refused by the kernel as larger than the path MTU",
    "udp_truncated": "a UDP receive cut short by the kernel (the datagram or its control "
                     "messages did not fit the native lane's buffers), dropped",
    "handshake_shed": "a handshake message the native lane did not queue for the core: its "
                      "bounded queue was full, or more came from addresses that are no "
                      "peer's endpoint than it admits a second (the device is then under "
                      "load: cookies are required)",
    # The guards' reasons (bridger.guard.GUARD_DROP_REASONS, docs/guard.md).
    Reason.LOOP_BLOCKED: "the peer is blocked by loop protection: only loop probes cross",
    Reason.LOOP_PROBE: "one of our own loop probes came back and was consumed",
    Reason.VLAN: "the frame's outer VLAN id is not in `vlans` (or it is untagged with "
                 "`untagged = false`)",
    Reason.DHCP: 'a DHCPv4/DHCPv6 server message with `dhcp = "local"`',
    Reason.RA: 'an ICMPv6 router advertisement with `ra = "local"`',
    Reason.HIDDEN: "a DHCP or RA guard is on and the frame's upper-layer header cannot be "
                   "reached (RFC 7113)",
    Reason.STORM: "a flooded frame to the peer over its flood budget (`flood_rate`)",
    Reason.STORM_ND: "ARP or IPv6 neighbour discovery over its share and the flood budget",
    Reason.STORM_CTL: "a BPDU or another site's loop probe over the control budget",
    # Counted by the kernel before the peer's tap queue (bridger.host.storm), read
    # in the slow path (at most once a second).
    KERNEL_DROP_REASON: "a broadcast or multicast frame to the peer cut in the kernel, before "
                        "its tap queue: a storm far over the flood budget",
}

#: How many top talkers per MAC table a snapshot lists.
TOP_TALKERS = 10


class Direction:
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
    costs at most ``capacity`` entries; evictions are counted, and each is told
    to ``on_evict`` when set (a native lane's copy of the table forgets it).
    """

    __slots__ = ("_entries", "capacity", "evicted", "on_evict")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("MAC table capacity must be at least 1")
        self.capacity = capacity
        self.evicted = 0
        self.on_evict: Callable[[bytes], None] | None = None
        self._entries: OrderedDict[bytes, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def seen(self, mac: bytes, nbytes: int, now: float, frames: int = 1) -> None:
        entries = self._entries
        entry = entries.get(mac)
        if entry is None:
            if len(entries) >= self.capacity:
                old, _ = entries.popitem(last=False)
                self.evicted += 1
                if self.on_evict is not None:
                    self.on_evict(old)
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


def account(
    d: Direction, macs: MacTable, frame: bytes | memoryview, now: float, count: int, nbytes: int
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


def _count_drop(drops: dict[str, int], reason: str, n: int = 1) -> None:
    # Unregistered names are still counted (a drop is never lost, nothing raises
    # in the data plane); tests check the daemon only uses registered ones.
    drops[reason] = drops.get(reason, 0) + n


def _merge(into: dict[str, int], drops: dict[str, int]) -> None:
    for reason, value in drops.items():
        into[reason] = into.get(reason, 0) + int(value)


@dataclass(frozen=True)
class PeerCountsSnapshot:
    """One peer's counts at snapshot time (JSON-able values)."""

    frames: dict[str, int]  # {"tx": n, "rx": n}
    bytes: dict[str, int]
    kinds: dict[str, dict[str, int]]  # {"tx": {kind: n}, "rx": {kind: n}}
    #: Every daemon drop reason, zero-valued ones included.
    drops: dict[str, int]
    #: The MACs behind the peer: count, capacity, evicted, top talkers.
    remote_macs: dict[str, Any]


@dataclass(frozen=True)
class CountsSnapshot:
    """Every count of the data plane at one moment (see :meth:`Counters.snapshot`)."""

    frames: dict[str, int]  # device totals, removed peers included
    bytes: dict[str, int]
    kinds: dict[str, dict[str, int]]
    #: Daemon drops of the device, every peer and the removed peers, summed.
    drops: dict[str, int]
    #: Daemon drops not tied to a peer.
    device_drops: dict[str, int]
    #: The local MACs (read from any tap): count, capacity, evicted, top talkers.
    local_macs: dict[str, Any]
    #: Per peer name, for every peer counted so far.
    peers: dict[str, PeerCountsSnapshot]
    #: What a peer not counted yet shows (zeros, an empty table).
    idle_peer: PeerCountsSnapshot


def _directions(tx: Direction, rx: Direction) -> tuple[dict[str, int], dict[str, int],
                                                        dict[str, dict[str, int]]]:
    return ({"tx": tx.frames, "rx": rx.frames}, {"tx": tx.bytes, "rx": rx.bytes},
            {"tx": tx.as_kinds(), "rx": rx.as_kinds()})


class PeerCounters:
    """The data-plane counters of one peer: traffic both ways, its MACs, its drops."""

    __slots__ = ("_drops", "_local", "_remote", "_remote_view", "_rx", "_tx", "name")

    def __init__(self, name: str, local: MacTable, mac_table_size: int) -> None:
        self.name = name
        self._tx = Direction()
        self._rx = Direction()
        self._local = local  # the device's table, shared by every peer
        self._remote = MacTable(mac_table_size)  # MACs behind this peer
        self._remote_view = MappingProxyType(self._remote._entries)
        self._drops: dict[str, int] = dict.fromkeys(DAEMON_DROP_REASONS, 0)

    @property
    def remote_macs(self) -> Mapping[bytes, object]:
        """The MACs behind this peer (6-byte keys), live and read-only: what the
        peer's ``Guard`` takes as ``known``.  ``mac in remote_macs`` is one dict
        lookup; nothing is copied."""
        return self._remote_view

    def on_remote_evict(self, callback: Callable[[bytes], None] | None) -> None:
        """Call ``callback(mac)`` whenever a MAC leaves :attr:`remote_macs` (None:
        stop): a native lane keeps its own set of the known MACs and must never
        know one this table, the guards' ``known``, has evicted."""
        self._remote.on_evict = callback

    def lan_to_wan(
        self, frame: bytes | memoryview, now: float, count: int = 1, nbytes: int = -1
    ) -> None:
        """Count a frame read from this peer's tap and sent to it; its source MAC is local.

        ``count``/``nbytes``: count that many frames of that total length which
        share ``frame``'s Ethernet header at once (the segments of one
        superframe), so the fast path pays for one call per superframe.
        """
        account(self._tx, self._local, frame, now, count, len(frame) if nbytes < 0 else nbytes)

    def wan_to_lan(
        self, frame: bytes | memoryview, now: float, count: int = 1, nbytes: int = -1
    ) -> None:
        """Count a frame received from this peer and written to its tap; its source MAC
        is behind this peer. ``count``/``nbytes`` as for :meth:`lan_to_wan`."""
        account(self._rx, self._remote, frame, now, count, len(frame) if nbytes < 0 else nbytes)

    def add_native(self, tx: DirCounts, rx: DirCounts) -> None:
        """Add a native lane's counts per direction (frames, bytes, and the frame
        kinds in KINDS' order), as :func:`account` counts them (the MACs come
        through :meth:`native_source`)."""
        for d, counts in ((self._tx, tx), (self._rx, rx)):
            d.frames += counts.frames
            d.bytes += counts.bytes
            for kind, n in zip(KINDS, counts.kinds, strict=True):
                setattr(d, kind, getattr(d, kind) + n)

    def native_source(self, inbound: bool, mac: bytes, frames: int, nbytes: int,
                      now: float) -> None:
        """A source MAC a native lane saw: local (tx) or behind this peer (rx)."""
        (self._remote if inbound else self._local).seen(mac, nbytes, now, frames)

    def tap_write_failed(self) -> None:
        """A frame from this peer could not be written to its tap."""
        self._drops["tap_write_failed"] += 1

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` daemon-level drops for this peer (a dropped superframe: its
        segments); ``reason`` from DAEMON_DROP_REASONS."""
        _count_drop(self._drops, reason, n)

    def snapshot(self, now: float, top: int = TOP_TALKERS) -> PeerCountsSnapshot:
        frames, nbytes, kinds = _directions(self._tx, self._rx)
        return PeerCountsSnapshot(frames, nbytes, kinds, dict(self._drops),
                                  self._remote.as_dict(now, top))

    def _add_into(self, tx: Direction, rx: Direction, drops: dict[str, int]) -> None:
        """Add this peer's counts to totals (snapshot totals, or the retired peers)."""
        for mine, total in ((self._tx, tx), (self._rx, rx)):
            for slot in Direction.__slots__:
                setattr(total, slot, getattr(total, slot) + getattr(mine, slot))
        _merge(drops, self._drops)


class Counters:
    """All data-plane counters of one daemon; see the module docstring for the rules.

    ``Counters`` itself holds what belongs to the device: the table of local
    MACs (source MACs read from any tap), drops not tied to a peer, and the
    per-peer counters, created on first use by :meth:`peer`.
    """

    def __init__(self, mac_table_size: int = 1024) -> None:
        self._mac_table_size = mac_table_size
        self._local = MacTable(mac_table_size)
        self._peers: dict[str, PeerCounters] = {}
        self._drops: dict[str, int] = dict.fromkeys(DAEMON_DROP_REASONS, 0)
        # Counts of removed peers, so device totals never go backwards.
        self._retired_tx = Direction()
        self._retired_rx = Direction()
        self._retired_drops: dict[str, int] = {}

    def peer(self, name: str) -> PeerCounters:
        """The counters of peer ``name``, created at zero on first use."""
        counters = self._peers.get(name)
        if counters is None:
            counters = self._peers[name] = PeerCounters(name, self._local, self._mac_table_size)
        return counters

    def remove_peer(self, name: str) -> None:
        """Forget a peer (config reload); its counts stay in the device totals."""
        counters = self._peers.pop(name, None)
        if counters is not None:
            counters._add_into(self._retired_tx, self._retired_rx, self._retired_drops)

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` daemon-level drops not tied to a peer; ``reason`` from
        DAEMON_DROP_REASONS."""
        _count_drop(self._drops, reason, n)

    def snapshot(self, now: float, *, top: int = TOP_TALKERS) -> CountsSnapshot:
        """Every count now, as plain data; ``top`` talkers per MAC table.  ``now``
        is on the same clock as the per-frame ``now`` values (MAC ages)."""
        tx, rx = Direction(), Direction()
        for slot in Direction.__slots__:
            setattr(tx, slot, getattr(self._retired_tx, slot))
            setattr(rx, slot, getattr(self._retired_rx, slot))
        drops = dict(self._drops)
        _merge(drops, self._retired_drops)
        for counters in self._peers.values():
            counters._add_into(tx, rx, drops)
        frames, nbytes, kinds = _directions(tx, rx)
        idle = PeerCounters("", MacTable(self._mac_table_size), self._mac_table_size)
        return CountsSnapshot(
            frames=frames, bytes=nbytes, kinds=kinds, drops=drops,
            device_drops=dict(self._drops),
            local_macs=self._local.as_dict(now, top),
            peers={name: c.snapshot(now, top) for name, c in self._peers.items()},
            idle_peer=idle.snapshot(now, top),
        )
