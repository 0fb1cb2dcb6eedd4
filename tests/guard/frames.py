"""Frame builders for the guard tests (the table tests use literal bytes; these
build the random frames of the property tests and the simulations)."""

from __future__ import annotations

import struct

BROADCAST = b"\xff" * 6
HOST_A = bytes.fromhex("02000000000a")
HOST_B = bytes.fromhex("02000000000b")
ALL_NODES = bytes.fromhex("333300000001")
IP_A = bytes([192, 168, 1, 10])
IP_B = bytes([192, 168, 1, 11])
IP6_A = bytes.fromhex("fe800000000000000000000000000001")
IP6_B = bytes.fromhex("ff020000000000000000000000000001")


def eth(dst: bytes, ethertype: int, payload: bytes, tags: tuple[tuple[int, int], ...] = (),
        src: bytes = HOST_A) -> bytes:
    """``tags``: (TPID, VLAN id) pairs, outermost first."""
    head = dst + src
    for tpid, vid in tags:
        head += struct.pack(">HH", tpid, vid)
    return head + struct.pack(">H", ethertype) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int = 40000, dport: int = 443) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x10, 502, 0, 0)


def ipv4(proto: int, payload: bytes, options: bytes = b"", frag_offset: int = 0,
         more: bool = False) -> bytes:
    """``frag_offset`` in 8-byte units; ``options`` padded to 4 bytes."""
    options += bytes(-len(options) % 4)
    ihl = 5 + len(options) // 4
    flags = (0x2000 if more else 0) | frag_offset
    return struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), 7, flags, 64,
                       proto, 0, IP_A, IP_B) + options + payload


def ipv6(next_header: int, payload: bytes) -> bytes:
    return struct.pack(">IHBB16s16s", 6 << 28, len(payload), next_header, 255, IP6_A,
                       IP6_B) + payload


def ext(next_header: int, body_len: int = 6) -> bytes:
    """A generic extension header (hop-by-hop, routing, destination options)
    of ``body_len`` + 2 bytes (a multiple of 8)."""
    assert (body_len + 2) % 8 == 0
    return bytes([next_header, (body_len + 2) // 8 - 1]) + bytes(body_len)


def frag6(next_header: int, offset: int = 0, more: bool = False) -> bytes:
    return struct.pack(">BBHI", next_header, 0, (offset << 3) | int(more), 0x1234)


def icmp6(icmp_type: int) -> bytes:
    return bytes([icmp_type, 0, 0, 0]) + bytes(12)


def dhcp_offer() -> bytes:
    """UDP 67 -> 68 with a BOOTP reply body (op 2)."""
    return udp(67, 68, bytes([2, 1, 6, 0]) + bytes(236) + b"\x63\x82\x53\x63\x35\x01\x02\xff")


def dhcp6_advertise() -> bytes:
    return udp(547, 546, bytes([2, 0, 0, 1]))
