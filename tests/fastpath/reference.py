"""Independent reference code for the fast-path tests: RFC 1071 word loop and
header builders written from the RFCs, sharing nothing with bridger.fastpath."""

from __future__ import annotations

import struct


def rfc1071(data: bytes) -> int:
    """Internet checksum (complemented), one 16-bit word at a time."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_header(src: bytes, dst: bytes, payload_len: int, ident: int, proto: int = 6) -> bytes:
    head = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ident, 0x4000, 64, proto, 0,
                       src, dst)
    return head[:10] + struct.pack(">H", rfc1071(head)) + head[12:]


def ipv6_header(src: bytes, dst: bytes, payload_len: int, nxt: int = 6) -> bytes:
    return struct.pack(">IHBB16s16s", 0x60000000, payload_len, nxt, 64, src, dst)


def pseudo(src: bytes, dst: bytes, length: int, proto: int = 6) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack(">BBH", 0, proto, length)
    return src + dst + struct.pack(">IxxxB", length, proto)


def tcp_header(sport: int, dport: int, seq: int, ack: int, flags: int, options: bytes) -> bytes:
    doff = (20 + len(options)) // 4
    return struct.pack(">HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 502, 0, 0) + options


def with_tcp_checksum(tcp: bytes, src: bytes, dst: bytes, *, partial: bool) -> bytes:
    """``tcp`` (header + payload) with its checksum: complete, or the pseudo-header
    sum a kernel leaves for offload (not complemented)."""
    if partial:
        value = ~rfc1071(pseudo(src, dst, len(tcp))) & 0xFFFF
    else:
        value = rfc1071(pseudo(src, dst, len(tcp)) + tcp[:16] + b"\0\0" + tcp[18:])
    return tcp[:16] + struct.pack(">H", value) + tcp[18:]


def tcp_checksum_ok(frame: bytes, l3: int, v4: bool) -> bool:
    if v4:
        ihl = (frame[l3] & 0x0F) * 4
        total = struct.unpack_from(">H", frame, l3 + 2)[0]
        src, dst, tcp = frame[l3 + 12:l3 + 16], frame[l3 + 16:l3 + 20], frame[l3 + ihl:l3 + total]
    else:
        plen = struct.unpack_from(">H", frame, l3 + 4)[0]
        src, dst, tcp = frame[l3 + 8:l3 + 24], frame[l3 + 24:l3 + 40], frame[l3 + 40:l3 + 40 + plen]
    return rfc1071(pseudo(src, dst, len(tcp)) + tcp) == 0
