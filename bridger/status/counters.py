"""Traffic counters bumped by the data plane and read by every status view.

The daemon keeps one :class:`Counters` for the device and, through it, one
:class:`PeerCounters` per peer.  The forwarding loop calls
:meth:`PeerCounters.lan_to_wan` / :meth:`PeerCounters.wan_to_lan` once per frame
(or once per run of segments sharing a header), so those two methods are the
hot path: a handful of integer attribute increments, one bounded MAC-table
update, no locks (everything runs on the single trio thread) and no per-frame
allocation beyond the 6-byte MAC key.  Views (dashboard, ``bridger status``,
Prometheus) never touch the counters directly: they take a
:meth:`Counters.snapshot`, a plain JSON-able dict whose layout is the stable
document described in ``docs/status.md``.

Direction names: ``tx`` is LAN->WAN (read from a peer's tap, sent to that
peer) and ``rx`` is WAN->LAN (received from a peer, written to its tap).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from bridger.guard.policy import Reason

if TYPE_CHECKING:
    from bridger.native.contract import DirCounts

#: Version of the snapshot document; bumped only on incompatible changes
#: (2: one ``peers`` element per peer instead of one ``link``).
SCHEMA_VERSION = 2

#: Peer states the daemon may report (``PeerInfo.state``).
PEER_STATES = ("down", "handshaking", "up", "stale")

#: Forwarding modes (``DeviceInfo.mode``).
MODES = ("mesh", "hub")

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


@dataclass
class DeviceInfo:
    """What the daemon knows about the whole device at snapshot time."""

    mode: str = "mesh"  # one of MODES
    data_path: str = "python"  # which forwarding implementation runs, e.g. "python"
    interface: dict[str, str] = field(default_factory=dict)  # lan / bridge / listen
    drops: dict[str, int] = field(default_factory=dict)  # core drops not tied to a peer
    #: ``LoopDetector.snapshot(now)`` (loops, blocked peers, MAC flaps); None: no guards.
    guard: dict[str, Any] | None = None


@dataclass
class PeerInfo:
    """What the daemon knows about one peer at snapshot time (filled from the core)."""

    name: str
    public_key: str  # base64, as in the config
    state: str = "down"  # one of PEER_STATES
    host: str | None = None  # configured host name or address; None: waits to be contacted
    tap: str = ""  # this peer's tap interface
    endpoint: str | None = None  # "203.0.113.5:55555"
    session_age: float | None = None  # seconds since the current session started
    last_handshake_age: float | None = None
    handshakes: int = 0
    rekeys: int = 0
    rtt_ms: float | None = None
    path_mtu: int = 0
    #: How path_mtu was learnt: "base", "probe", "icmp", "configured" ("": unknown).
    path_mtu_source: str = ""
    drops: dict[str, int] = field(default_factory=dict)  # from the core, every reason
    fragments: dict[str, int] = field(default_factory=dict)  # e.g. sent/received/reassembled
    #: ``Guard.snapshot(now)`` of this peer's guard (loop state, settings); None: no guard.
    guard: dict[str, Any] | None = None


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


def _count_drop(drops: dict[str, int], reason: str, n: int = 1) -> None:
    # Unregistered names are still counted (a drop is never lost, nothing raises
    # in the data plane); tests check the daemon only uses registered ones.
    drops[reason] = drops.get(reason, 0) + n


def _merge(into: dict[str, int], drops: dict[str, int]) -> None:
    for reason, value in drops.items():
        into[reason] = into.get(reason, 0) + int(value)


class PeerCounters:
    """The data-plane counters of one peer: traffic both ways, its MACs, its drops."""

    __slots__ = ("_drops", "_local", "_remote", "_remote_view", "_rx", "_tx", "name")

    def __init__(self, name: str, local: MacTable, mac_table_size: int) -> None:
        self.name = name
        self._tx = _Direction()
        self._rx = _Direction()
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
        _account(self._tx, self._local, frame, now, count, len(frame) if nbytes < 0 else nbytes)

    def wan_to_lan(
        self, frame: bytes | memoryview, now: float, count: int = 1, nbytes: int = -1
    ) -> None:
        """Count a frame received from this peer and written to its tap; its source MAC
        is behind this peer. ``count``/``nbytes`` as for :meth:`lan_to_wan`."""
        _account(self._rx, self._remote, frame, now, count, len(frame) if nbytes < 0 else nbytes)

    def add_native(self, tx: DirCounts, rx: DirCounts) -> None:
        """Add a native lane's counts per direction (frames, bytes, and the frame
        kinds in KINDS' order), as :func:`_account` counts them (the MACs come
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

    def _add_into(self, tx: _Direction, rx: _Direction, drops: dict[str, int]) -> None:
        """Add this peer's counts to totals (snapshot totals, or the retired peers)."""
        for mine, total in ((self._tx, tx), (self._rx, rx)):
            for slot in _Direction.__slots__:
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
        self._retired_tx = _Direction()
        self._retired_rx = _Direction()
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

    def snapshot(
        self, device: DeviceInfo, peers: Iterable[PeerInfo], now: float, *,
        top: int = TOP_TALKERS,
    ) -> dict[str, Any]:
        """The stable status document (``docs/status.md``), version 2.

        ``peers`` lists the peers in display (config) order; a peer without
        counters yet shows zeros.  ``now`` is on the same clock as the
        per-frame ``now`` values.  Core and daemon drops with the same reason
        are summed; the top level sums the device and every peer (removed
        peers included), ``device_drops`` holds the device's own.
        """
        tx, rx = _Direction(), _Direction()
        for slot in _Direction.__slots__:
            setattr(tx, slot, getattr(self._retired_tx, slot))
            setattr(rx, slot, getattr(self._retired_rx, slot))
        device_drops = dict(self._drops)
        _merge(device_drops, device.drops)
        drops = dict(device_drops)
        _merge(drops, self._retired_drops)
        for counters in self._peers.values():
            counters._add_into(tx, rx, drops)
        elements = []
        for info in peers:
            counters = self._peers.get(info.name) or PeerCounters(
                info.name, self._local, self._mac_table_size)
            peer_drops = dict(counters._drops)
            _merge(peer_drops, info.drops)
            _merge(drops, info.drops)
            elements.append(_peer_element(info, counters, peer_drops, now, top))
        return {
            "version": SCHEMA_VERSION,
            "mode": device.mode,
            "data_path": device.data_path,
            "interface": {str(k): str(v) for k, v in device.interface.items()},
            "frames": {"tx": tx.frames, "rx": rx.frames},
            "bytes": {"tx": tx.bytes, "rx": rx.bytes},
            "kinds": {"tx": tx.as_kinds(), "rx": rx.as_kinds()},
            "drops": dict(sorted(drops.items())),
            "device_drops": dict(sorted(device_drops.items())),
            "macs": {"local": self._local.as_dict(now, top)},
            "guard": None if device.guard is None else dict(device.guard),
            "peers": elements,
        }


def _peer_element(
    info: PeerInfo, counters: PeerCounters, drops: dict[str, int], now: float, top: int
) -> dict[str, Any]:
    return {
        "name": info.name,
        "public_key": info.public_key,
        "host": info.host,
        "tap": info.tap,
        "state": info.state,
        "endpoint": info.endpoint,
        "session_age": info.session_age,
        "last_handshake_age": info.last_handshake_age,
        "handshakes": int(info.handshakes),
        "rekeys": int(info.rekeys),
        "rtt_ms": info.rtt_ms,
        "path_mtu": int(info.path_mtu),
        "path_mtu_source": info.path_mtu_source,
        "frames": {"tx": counters._tx.frames, "rx": counters._rx.frames},
        "bytes": {"tx": counters._tx.bytes, "rx": counters._rx.bytes},
        "kinds": {"tx": counters._tx.as_kinds(), "rx": counters._rx.as_kinds()},
        "drops": dict(sorted(drops.items())),
        "fragments": {str(k): int(v) for k, v in sorted(info.fragments.items())},
        "macs": {"remote": counters._remote.as_dict(now, top)},
        "guard": None if info.guard is None else dict(info.guard),
    }
