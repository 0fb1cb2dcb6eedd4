"""A peer's port: its tap fd in the bridge, its counters, and the two per-frame
steps at the tap: turning a tap read into frames for the peer (fast path:
virtio-net header, TCP superframes cut into segments, MSS clamp) and writing
the peer's frames into the tap (fast path: segments re-joined).

The Linux bridge decides which port a LAN frame leaves by (learning, flooding,
isolated ports for split horizon), so a frame read from this tap goes to this
port's peer and nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bridger.dataplane.accounting import PeerCounters
from bridger.fastpath.segment import MAX_SYN_FRAME, SegmentError, clamp_mss, coalesce, segment_tcp
from bridger.fastpath.vnet import VNET_HDR_LEN, GsoType, VnetError, decode_vnet_hdr_untrusted
from bridger.guard.policy import Guard, without
from bridger.protocol import Output, Peer
from bridger.protocol.checksum import complete_checksum

#: TSO superframe types the fast path segments (ECN bit masked off).
_TCP_GSO = (GsoType.TCPV4, GsoType.TCPV6)
_GSO_NONE = int(GsoType.NONE)
_NEEDS_CSUM = 1


class SmallFrames:
    """Consecutive plain (non-superframe) tap frames with the same checksum
    state, sealed together by one ``Peer.send_frames`` call: the core then
    looks up the key, limits and timers once per run instead of per frame."""

    __slots__ = ("csum", "frames", "now", "out", "peer")

    def __init__(self, peer: Peer, now: float, out: Output) -> None:
        self.peer = peer
        self.now = now
        self.out = out
        self.frames: list[bytes] = []
        self.csum: tuple[int, int] | None = None

    def add(self, frame: bytes, csum: tuple[int, int] | None) -> None:
        if self.frames and csum != self.csum:
            self.flush()
        self.frames.append(frame)
        self.csum = csum

    def flush(self) -> None:
        """Seal the waiting frames into ``out``."""
        if self.frames:
            self.peer.send_frames(self.frames, self.now, self.out, self.csum)
            self.frames = []


@dataclass(eq=False)
class Port:
    """One peer's tap in the bridge."""

    peer: Peer
    counters: PeerCounters
    tap: str
    fd: int
    #: The tap carries a virtio-net header on every read and write.
    vnet: bool = False
    #: Loop, storm, DHCP/RA and VLAN guards for this peer (docs/guard.md).
    guard: Guard | None = None
    #: The tap takes UDP_L4 superframes: runs of one UDP flow's datagrams are
    #: written as one (segment.coalesce(udp=True)).
    udp_join: bool = False

    def plain_from_tap(self, frame: bytes, now: float, small: SmallFrames) -> None:
        """A tap read without a virtio-net header: one whole frame."""
        guard = self.guard
        if guard is not None:
            reason = guard.outbound(frame, now)
            if reason is not None:
                self.counters.drop(reason)
                return
        self.counters.lan_to_wan(frame, now)
        small.add(frame, None)

    def from_tap(self, data: bytes, now: float, room: int, small: SmallFrames) -> None:
        """Fast path: one tap read with its virtio-net header, maybe a TCP superframe.

        Plain frames wait in ``small`` so that a run of them is sealed in one
        ``send_frames`` call; a superframe first flushes them (order is kept).
        """
        counters = self.counters
        try:
            hdr = decode_vnet_hdr_untrusted(data)
        except VnetError:
            counters.drop("tap_short_read")
            return
        frame = data[VNET_HDR_LEN:]
        guard = self.guard
        if hdr.gso_type == _GSO_NONE:
            partial = bool(hdr.flags & _NEEDS_CSUM)
            if len(frame) <= MAX_SYN_FRAME:
                clamped = clamp_mss(frame, room, partial)
                if clamped is not None:
                    frame = clamped
            if guard is not None:
                reason = guard.outbound(frame, now)
                if reason is not None:
                    counters.drop(reason)
                    return
            counters.lan_to_wan(frame, now)
            small.add(frame, (hdr.csum_start, hdr.csum_offset) if partial else None)
            return
        small.flush()
        if hdr.gso_type & 0x7F not in _TCP_GSO:
            counters.drop("gso_unsupported")
            return
        try:
            segments, csum_start = segment_tcp(frame, hdr, room)
        except SegmentError:
            counters.drop("gso_malformed")
            return
        if guard is not None:
            reason = guard.outbound(segments[0], now, len(segments))
            if reason is not None:
                counters.drop(reason, len(segments))
                return
        counters.lan_to_wan(segments[0], now, len(segments), sum(map(len, segments)))
        self.peer.send_frames(segments, now, small.out, (csum_start, 16))

    def deliver(
        self, frames: list[bytes], csum: dict[int, tuple[int, int]], now: float
    ) -> None:
        """Write the peer's frames into the tap (``csum``: index -> partial checksum)."""
        fd = self.fd
        counters = self.counters
        if self.guard is not None:
            drops = self.guard.inbound_batch(frames, now)
            if drops:
                for _index, reason in drops:
                    counters.drop(reason)
                frames, csum = without(frames, csum, drops)
        if self.vnet:
            for hdr, frame, count, nbytes in coalesce(frames, csum, self.udp_join):
                try:
                    os.writev(fd, (hdr, frame))
                except OSError:
                    counters.tap_write_failed()
                    continue
                counters.wan_to_lan(frame, now, count, nbytes)
            return
        for index, frame in enumerate(frames):
            meta = csum.get(index) if csum else None
            if meta is not None:
                frame = complete_checksum(frame, meta[0], meta[1])
            try:
                os.write(fd, frame)
            except OSError:
                counters.tap_write_failed()
                continue
            counters.wan_to_lan(frame, now)
