"""TCP superframes cut into wire-sized segments, and joined again on the far side.

Segmenting works like the kernel's tcp_gso_segment: every segment gets the
superframe's headers with the IP length (and IPv4 id and header checksum),
the TCP sequence number and flags rewritten (CWR only on the first segment,
FIN/PSH only on the last), and the TCP checksum left *partial*: the field
holds the pseudo-header sum and the receiver completes it (FRAME_CSUM).

Coalescing is the inverse (a small GRO): consecutive partial-checksum TCP
segments of one flow with contiguous sequence numbers and identical headers
become one superframe written to the tap with gso_type set.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from bridger.fastpath.vnet import GSO_ECN, PLAIN_HDR, VNET_HDR, GsoType, VnetFlag, VnetHdr, csum_hdr
from bridger.protocol.checksum import ones_sum

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
#: 802.1Q, 802.1ad (QinQ) and the old QinQ tag protocol ids.
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))
VLAN_HLEN = 4
MAX_VLAN_TAGS = 2
IPPROTO_TCP = 6
TCP_CSUM_OFFSET = 16
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_CWR = 1, 2, 4, 8, 0x10, 0x20, 0x80
#: Largest superframe coalesce builds (IPv4 total length is 16 bits).
MAX_SUPERFRAME = 65000
#: Most segments joined into one superframe (the kernel's UDP/TCP GSO limit).
MAX_SEGMENTS = 64

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_pack_u16 = _U16.pack_into
_pack_u32 = _U32.pack_into


class SegmentError(Exception):
    """A frame that cannot be segmented (the caller counts it as a drop)."""


def _fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def l3_offset_untrusted(frame: bytes) -> tuple[int, int]:
    """(offset of the network header, ethertype), skipping up to two VLAN tags."""
    offset = ETH_HLEN - 2
    for _ in range(MAX_VLAN_TAGS + 1):
        if len(frame) < offset + 2:
            raise SegmentError("truncated Ethernet header")
        (ethertype,) = _U16.unpack_from(frame, offset)
        if ethertype not in VLAN_TPIDS:
            return offset + 2, ethertype
        offset += VLAN_HLEN
    raise SegmentError("too many VLAN tags")


def _tcp_layout(frame: bytes, csum_start: int | None) -> tuple[int, int, int, bool]:
    """(l3, l4, header length, is IPv4) of a TCP/IP frame."""
    l3, ethertype = l3_offset_untrusted(frame)
    if ethertype == ETH_P_IP:
        if len(frame) < l3 + 20 or frame[l3] >> 4 != 4 or frame[l3 + 9] != IPPROTO_TCP:
            raise SegmentError("not TCP over IPv4")
        l4 = l3 + (frame[l3] & 0x0F) * 4
        v4 = True
    elif ethertype == ETH_P_IPV6:
        if len(frame) < l3 + 40 or frame[l3] >> 4 != 6:
            raise SegmentError("bad IPv6 header")
        if csum_start is None:
            if frame[l3 + 6] != IPPROTO_TCP:
                raise SegmentError("IPv6 extension headers without csum_start")
            csum_start = l3 + 40
        l4 = csum_start
        v4 = False
    else:
        raise SegmentError("not IP")
    if csum_start is not None and csum_start != l4:
        raise SegmentError("csum_start is not the TCP header")
    if len(frame) < l4 + 20:
        raise SegmentError("truncated TCP header")
    hdrlen = l4 + (frame[l4 + 12] >> 4) * 4
    if hdrlen < l4 + 20 or hdrlen > len(frame):
        raise SegmentError("bad TCP data offset")
    return l3, l4, hdrlen, v4


def _addr_sum(frame: bytes, l3: int, v4: bool) -> int:
    """Ones' complement sum of the pseudo-header addresses plus the protocol."""
    addrs = frame[l3 + 12:l3 + 20] if v4 else frame[l3 + 8:l3 + 40]
    return ones_sum(addrs) + IPPROTO_TCP


def _set_ipv4_csum(h: bytearray, l3: int, l4: int) -> None:
    h[l3 + 10] = h[l3 + 11] = 0
    _pack_u16(h, l3 + 10, (~ones_sum(h[l3:l4])) & 0xFFFF)


def segment_tcp(frame: bytes, hdr: VnetHdr, max_frame: int) -> tuple[list[bytes], int]:
    """Cut a TSO superframe into frames of at most ``max_frame`` bytes.

    Returns (segments, csum_start); each segment's TCP checksum is partial at
    csum_start + 16. Segments carry at most ``hdr.gso_size`` payload bytes (the
    sender's MSS), fewer when ``max_frame`` demands it. A header layout that does
    not add up (e.g. an IPv6 csum_start in front of the real TCP header) is a
    SegmentError like any other malformed superframe.
    """
    try:
        return _segment_tcp(frame, hdr, max_frame)
    except struct.error as exc:
        raise SegmentError(f"inconsistent header layout: {exc}") from None


def _segment_tcp(frame: bytes, hdr: VnetHdr, max_frame: int) -> tuple[list[bytes], int]:
    csum_start = hdr.csum_start if hdr.flags & VnetFlag.NEEDS_CSUM else None
    l3, l4, hdrlen, v4 = _tcp_layout(frame, csum_start)
    mss = min(hdr.gso_size or max_frame, max_frame - hdrlen)
    if mss <= 0:
        raise SegmentError("headers leave no room for payload")
    payload_len = len(frame) - hdrlen
    base = _addr_sum(frame, l3, v4) + hdrlen - l4
    h = bytearray(frame[:hdrlen])
    ip_fixed = hdrlen - l3 if v4 else hdrlen - l3 - 40
    (ip_id,) = _U16.unpack_from(frame, l3 + 4)
    (seq,) = _U32.unpack_from(frame, l4 + 4)
    flags = frame[l4 + 13]
    first_flags = flags & ~(TCP_FIN | TCP_PSH)
    middle_flags = first_flags & ~TCP_CWR
    if v4:
        # IPv4 header checksum per segment from a sum taken once with the
        # length, id and checksum fields zeroed (RFC 1624 style).
        h[l3 + 2:l3 + 6] = bytes(4)
        h[l3 + 10:l3 + 12] = bytes(2)
        ip_base = ones_sum(h[l3:l4])
    out: list[bytes] = []
    offset = 0
    index = 0
    view = memoryview(frame)
    while True:
        n = min(mss, payload_len - offset)
        last = offset + n >= payload_len
        if v4:
            ident = (ip_id + index) & 0xFFFF
            _pack_u16(h, l3 + 2, ip_fixed + n)
            _pack_u16(h, l3 + 4, ident)
            _pack_u16(h, l3 + 10, ~_fold(ip_base + ip_fixed + n + ident) & 0xFFFF)
        else:
            _pack_u16(h, l3 + 4, ip_fixed + n)
        _pack_u32(h, l4 + 4, (seq + offset) & 0xFFFFFFFF)
        f = flags if last else first_flags
        h[l4 + 13] = f if index == 0 else f & ~TCP_CWR if last else middle_flags
        _pack_u16(h, l4 + TCP_CSUM_OFFSET, _fold(base + n))
        out.append(b"".join((h, view[hdrlen + offset:hdrlen + offset + n])))
        offset += n
        index += 1
        if last:
            return out, l4


class _Run:
    """Segments of one flow waiting to be joined."""

    __slots__ = (
        "first",
        "hdrlen",
        "key",
        "l3",
        "l4",
        "last_flags",
        "next_seq",
        "open",
        "payloads",
        "size",
        "total",
        "v4",
    )

    def __init__(self, frame: bytes, key: bytes, l3: int, l4: int, hdrlen: int, v4: bool) -> None:
        self.first = frame
        self.key = key
        self.l3, self.l4, self.hdrlen, self.v4 = l3, l4, hdrlen, v4
        self.size = len(frame) - hdrlen
        self.next_seq = (_U32.unpack_from(frame, l4 + 4)[0] + self.size) & 0xFFFFFFFF
        self.payloads = [frame[hdrlen:]]
        self.total = self.size
        self.open = not frame[l4 + 13] & (TCP_FIN | TCP_PSH)
        self.last_flags = frame[l4 + 13]

    def build(self) -> tuple[bytes, bytes, int, int]:
        frame, l3, l4, hdrlen = self.first, self.l3, self.l4, self.hdrlen
        count = len(self.payloads)
        if count == 1:
            return csum_hdr(l4, TCP_CSUM_OFFSET), frame, 1, len(frame)
        h = bytearray(frame[:hdrlen])
        total = self.total
        if self.v4:
            _pack_u16(h, l3 + 2, hdrlen - l3 + total)
            _set_ipv4_csum(h, l3, l4)
        else:
            _pack_u16(h, l3 + 4, hdrlen - l3 - 40 + total)
        h[l4 + 13] = frame[l4 + 13] | (self.last_flags & (TCP_FIN | TCP_PSH))
        pseudo = _addr_sum(frame, l3, self.v4) + hdrlen - l4 + total
        _pack_u16(h, l4 + TCP_CSUM_OFFSET, _fold(pseudo))
        gso = int(GsoType.TCPV4 if self.v4 else GsoType.TCPV6)
        if frame[l4 + 13] & TCP_CWR:
            gso |= GSO_ECN
        vh = VNET_HDR.pack(VnetFlag.NEEDS_CSUM, gso, hdrlen, self.size, l4, TCP_CSUM_OFFSET)
        return vh, bytes(h) + b"".join(self.payloads), count, count * hdrlen + total


_JOINABLE = TCP_ACK | TCP_PSH | TCP_FIN


def _flow_key(frame: bytes, l3: int, l4: int, hdrlen: int, v4: bool) -> bytes:
    """Every header byte that must match for two segments to join (not lengths,
    ids, checksums, sequence numbers or flags)."""
    ip = (frame[l3:l3 + 2] + frame[l3 + 6:l3 + 10] + frame[l3 + 12:l4] if v4
          else frame[l3:l3 + 4] + frame[l3 + 6:l4])
    return (frame[:l3] + ip + frame[l4:l4 + 4] + frame[l4 + 8:l4 + 13]
            + frame[l4 + 14:l4 + 16] + frame[l4 + 18:hdrlen])


def coalesce(
    frames: list[bytes], csum: dict[int, tuple[int, int]], udp: bool = False
) -> Iterator[tuple[bytes, bytes, int, int]]:
    """(virtio-net header, frame, count, nbytes) to write, with TCP segment runs joined
    (and, with ``udp``, runs of UDP datagrams: :class:`_UdpRun`).

    Only frames whose checksum is partial (``csum``) are joined: their sender
    vouched for the data and the kernel completes the sum of the whole.
    Complete frames pass through unchanged, in order. ``count`` and ``nbytes``
    are how many of ``frames`` went into the written frame and their total
    length, so the caller counts a run once instead of once per segment.
    """
    run: _Run | None = None
    urun: _UdpRun | None = None
    for index, frame in enumerate(frames):
        meta = csum.get(index)
        if udp and meta is not None and meta[1] == UDP_CSUM_OFFSET:
            if run is not None:
                yield run.build()
                run = None
            if urun is not None and urun.take(frame, meta[0]):
                continue
            if urun is not None:
                yield urun.build()
                urun = None
            layout = _udp_layout(frame, meta[0])
            if layout is None or len(frame) <= layout[2]:
                yield csum_hdr(*meta), frame, 1, len(frame)
            else:
                urun = _UdpRun(frame, *layout)
            continue
        if urun is not None:
            yield urun.build()
            urun = None
        if meta is None or meta[1] != TCP_CSUM_OFFSET:
            if run is not None:
                yield run.build()
                run = None
            yield (PLAIN_HDR if meta is None else csum_hdr(*meta)), frame, 1, len(frame)
            continue
        if run is not None and meta[0] == run.l4 and len(frame) > run.hdrlen:
            l3, l4, hdrlen, v4 = run.l3, run.l4, run.hdrlen, run.v4
            flags = frame[l4 + 13]
            size = len(frame) - hdrlen
            # The key holds the Ethernet header (tags, ethertype), the IP version
            # / header length and the TCP data offset: equal keys, equal layout.
            if (run.open and size <= run.size and not flags & ~_JOINABLE
                    and run.total + size <= MAX_SUPERFRAME - hdrlen
                    and len(run.payloads) < MAX_SEGMENTS
                    and _U32.unpack_from(frame, l4 + 4)[0] == run.next_seq
                    and _flow_key(frame, l3, l4, hdrlen, v4) == run.key):
                run.payloads.append(frame[hdrlen:])
                run.total += size
                run.next_seq = (run.next_seq + size) & 0xFFFFFFFF
                run.last_flags = flags
                run.open = not flags & (TCP_FIN | TCP_PSH) and size == run.size
                continue
        try:
            l3, l4, hdrlen, v4 = _tcp_layout(frame, meta[0])
        except SegmentError:
            if run is not None:
                yield run.build()
                run = None
            yield csum_hdr(*meta), frame, 1, len(frame)
            continue
        flags = frame[l4 + 13]
        size = len(frame) - hdrlen
        if run is not None:
            yield run.build()
            run = None
        if size and not flags & ~(_JOINABLE | TCP_CWR):
            run = _Run(frame, _flow_key(frame, l3, l4, hdrlen, v4), l3, l4, hdrlen, v4)
        else:
            yield csum_hdr(*meta), frame, 1, len(frame)
    if run is not None:
        yield run.build()
    if urun is not None:
        yield urun.build()


UDP_CSUM_OFFSET = 6
IPPROTO_UDP = 17
UDP_HLEN = 8


def _udp_layout(frame: bytes, csum_start: int) -> tuple[int, int, int, bool] | None:
    """(l3, l4, header length, is IPv4) of a whole UDP datagram in ``frame`` whose
    partial checksum starts at ``csum_start``; None for anything else (IPv4
    fragments, IPv6 extension headers, a UDP length that is not the rest of
    the frame)."""
    try:
        l3, ethertype = l3_offset_untrusted(frame)
    except SegmentError:
        return None
    if ethertype == ETH_P_IP:
        if (len(frame) < l3 + 20 or frame[l3] >> 4 != 4 or frame[l3] & 0x0F < 5
                or frame[l3 + 9] != IPPROTO_UDP
                or _U16.unpack_from(frame, l3 + 6)[0] & 0x3FFF):  # MF or an offset
            return None
        l4, v4 = l3 + (frame[l3] & 0x0F) * 4, True
    elif ethertype == ETH_P_IPV6:
        if len(frame) < l3 + 40 or frame[l3] >> 4 != 6 or frame[l3 + 6] != IPPROTO_UDP:
            return None
        l4, v4 = l3 + 40, False
    else:
        return None
    if l4 != csum_start or len(frame) < l4 + UDP_HLEN:
        return None
    if _U16.unpack_from(frame, l4 + 4)[0] != len(frame) - l4:
        return None
    return l3, l4, l4 + UDP_HLEN, v4


class _UdpRun:
    """Datagrams of one UDP flow, all of one size but a shorter last one, to be
    written as one UDP_L4 superframe: the kernel cuts it into datagrams of
    that size with these headers (IPv4 ids counting up from the first's), so
    the receiver gets the same datagrams for one trip through the bridge and
    one wake-up of the receiving socket (the 64-byte packets case)."""

    __slots__ = ("count", "first", "hdrlen", "l3", "l4", "next_id", "open", "payloads",
                 "size", "total", "v4")

    def __init__(self, frame: bytes, l3: int, l4: int, hdrlen: int, v4: bool) -> None:
        self.first = frame
        self.l3, self.l4, self.hdrlen, self.v4 = l3, l4, hdrlen, v4
        self.size = len(frame) - hdrlen
        self.total = self.size
        self.count = 1
        self.payloads = [frame[hdrlen:]]
        self.next_id = (_U16.unpack_from(frame, l3 + 4)[0] + 1) & 0xFFFF if v4 else 0
        self.open = True

    def take(self, frame: bytes, csum_start: int) -> bool:
        """Join ``frame`` if it continues the run."""
        l3, l4, hdrlen = self.l3, self.l4, self.hdrlen
        size = len(frame) - hdrlen
        if (not self.open or csum_start != l4 or not 0 < size <= self.size
                or self.count >= MAX_SEGMENTS or self.total + size + hdrlen > MAX_SUPERFRAME):
            return False
        first = self.first
        # Every header byte but the lengths, the IPv4 id and checksums, and the
        # UDP checksum must match; the IPv4 id must count up by one.
        if self.v4:
            same = (frame[:l3 + 2] == first[:l3 + 2]
                    and frame[l3 + 6:l3 + 10] == first[l3 + 6:l3 + 10]
                    and frame[l3 + 12:l4 + 4] == first[l3 + 12:l4 + 4]
                    and _U16.unpack_from(frame, l3 + 4)[0] == self.next_id)
        else:
            same = (frame[:l3 + 4] == first[:l3 + 4]
                    and frame[l3 + 6:l4 + 4] == first[l3 + 6:l4 + 4])
        if not same or _U16.unpack_from(frame, l4 + 4)[0] != len(frame) - l4:
            return False
        self.payloads.append(frame[hdrlen:])
        self.total += size
        self.count += 1
        self.next_id = (self.next_id + 1) & 0xFFFF
        self.open = size == self.size
        return True

    def build(self) -> tuple[bytes, bytes, int, int]:
        frame, l3, l4, hdrlen = self.first, self.l3, self.l4, self.hdrlen
        if self.count == 1:
            return csum_hdr(l4, UDP_CSUM_OFFSET), frame, 1, len(frame)
        h = bytearray(frame[:hdrlen])
        total = self.total
        if self.v4:
            _pack_u16(h, l3 + 2, hdrlen - l3 + total)
            _set_ipv4_csum(h, l3, l4)
            addrs = frame[l3 + 12:l3 + 20]
        else:
            _pack_u16(h, l3 + 4, UDP_HLEN + total)
            addrs = frame[l3 + 8:l3 + 40]
        _pack_u16(h, l4 + 4, UDP_HLEN + total)
        _pack_u16(h, l4 + UDP_CSUM_OFFSET,
                  _fold(ones_sum(addrs) + IPPROTO_UDP + UDP_HLEN + total))
        vh = VNET_HDR.pack(VnetFlag.NEEDS_CSUM, GsoType.UDP_L4, hdrlen, self.size, l4,
                           UDP_CSUM_OFFSET)
        return (vh, bytes(h) + b"".join(self.payloads), self.count,
                self.count * hdrlen + total)


#: TCP option kinds (RFC 9293).
TCPOPT_EOL, TCPOPT_NOP, TCPOPT_MSS = 0, 1, 2
#: Frames longer than this are never SYNs worth parsing (60-byte TCP header max).
MAX_SYN_FRAME = ETH_HLEN + 2 * VLAN_HLEN + 40 + 60


def clamp_mss(frame: bytes, room: int, partial: bool) -> bytes | None:
    """A TCP SYN with its MSS option lowered so that full segments fit ``room``
    bytes of frame (one datagram); None when ``frame`` needs no change.

    Like OpenVPN's ``mssfix``: the hosts then send segments the tunnel never
    has to cut smaller than their own MSS, so a lost datagram is exactly one of
    the sender's segments.  A ``partial`` checksum holds only the pseudo-header
    sum, which the option does not enter; a complete one is recomputed.
    """
    if len(frame) > MAX_SYN_FRAME or not _may_be_tcp(frame):
        return None
    try:
        l3, l4, hdrlen, v4 = _tcp_layout(frame, None)
    except SegmentError:
        return None
    if not frame[l4 + 13] & TCP_SYN:
        return None
    # Linux MSS counts from after a 20-byte TCP header (options come out of it).
    limit = room - l4 - 20
    i = l4 + 20
    while i < hdrlen:
        kind = frame[i]
        if kind == TCPOPT_EOL:
            return None
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= hdrlen or frame[i + 1] < 2:
            return None
        if kind == TCPOPT_MSS and frame[i + 1] == 4 and i + 4 <= hdrlen:
            (mss,) = _U16.unpack_from(frame, i + 2)
            if mss <= limit or limit <= 0:
                return None
            out = bytearray(frame)
            _pack_u16(out, i + 2, limit)
            if not partial:
                _set_tcp_csum(out, l3, l4, v4)
            return bytes(out)
        i += frame[i + 1]
    return None


#: Untagged ethertypes (as bytes) and the IPv6 next headers that are never TCP.
_IPV4_TYPE, _IPV6_TYPE = b"\x08\x00", b"\x86\xdd"
_VLAN_TYPES = frozenset(t.to_bytes(2, "big") for t in VLAN_TPIDS)
_NOT_TCP_V6 = frozenset((17, 58))  # UDP, ICMPv6


def _may_be_tcp(frame: bytes) -> bool:
    """Cheap look at an untagged frame so that UDP, ICMP and ARP skip the TCP
    parser (and its exception) on the small-packet path; tagged frames and
    IPv6 with extension headers are left to the full parser."""
    ethertype = frame[12:14]
    if ethertype == _IPV4_TYPE:
        return len(frame) > 23 and frame[23] == IPPROTO_TCP
    if ethertype == _IPV6_TYPE:
        return len(frame) > 20 and frame[20] not in _NOT_TCP_V6
    return ethertype in _VLAN_TYPES


def _set_tcp_csum(f: bytearray, l3: int, l4: int, v4: bool) -> None:
    """Full TCP checksum of a frame whose IP header gives the segment length."""
    ip_len = _U16.unpack_from(f, l3 + 2)[0] if v4 else 40 + _U16.unpack_from(f, l3 + 4)[0]
    end = min(l3 + ip_len, len(f))
    f[l4 + TCP_CSUM_OFFSET:l4 + TCP_CSUM_OFFSET + 2] = bytes(2)
    total = _addr_sum(bytes(f), l3, v4) + (end - l4) + ones_sum(f[l4:end])
    _pack_u16(f, l4 + TCP_CSUM_OFFSET, (~_fold(total) & 0xFFFF) or 0xFFFF)
