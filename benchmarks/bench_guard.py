"""Nanoseconds per frame in the guards, one process, no I/O.

    python3 benchmarks/bench_guard.py [frames]

Each line is one call the daemon makes on its data path (Guard.outbound for a
tap read, Guard.inbound / inbound_batch for frames from a peer) with a typical
frame, under the default settings and with every guard on; plus the full
classifier alone and a bare method call for scale.  A TCP superframe pays one
outbound call for all its segments (``count``); the per-segment figure divides
by the 46 segments of a 62 KB superframe on a 1500-byte WAN.
"""

from __future__ import annotations

import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridger.guard import Guard, GuardConfig, LoopDetector, MacFlaps, classify_untrusted

HOST_A = bytes.fromhex("02000000000a")
HOST_B = bytes.fromhex("02000000000b")
SEGMENTS = 46


def ipv4(proto: int, payload: bytes, src: bytes = b"\xc0\xa8\x01\x0b") -> bytes:
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0,
                       src, b"\xc0\xa8\x01\x15") + payload


def tcp(size: int) -> bytes:
    return struct.pack(">HHIIBBHHH", 40000, 5201, 1, 1, 5 << 4, 0x10, 502, 0, 0) + bytes(size)


def eth(dst: bytes, ethertype: int, payload: bytes, vlan: int | None = None) -> bytes:
    tag = struct.pack(">HH", 0x8100, vlan) if vlan is not None else b""
    return dst + HOST_A + tag + struct.pack(">H", ethertype) + payload


def ipv6_tcp(size: int) -> bytes:
    seg = tcp(size)
    return struct.pack(">IHBB16s16s", 6 << 28, len(seg), 6, 64, bytes(15) + b"\x01",
                       bytes(15) + b"\x02") + seg


def timed(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - start) / n


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    known = {HOST_B}
    tcp4 = eth(HOST_B, 0x0800, ipv4(6, tcp(1380)))
    tcp6 = eth(HOST_B, 0x86DD, ipv6_tcp(1360))
    tagged = eth(HOST_B, 0x0800, ipv4(6, tcp(1380)), vlan=10)
    ack = eth(HOST_B, 0x0800, ipv4(6, tcp(0)))
    arp = eth(b"\xff" * 6, 0x0806, bytes(28))
    udp_bcast = eth(b"\xff" * 6, 0x0800, ipv4(17, struct.pack(">HHHH", 5000, 5000, 8, 0)))
    dhcp = ipv4(17, struct.pack(">HHHH", 67, 68, 308, 0) + bytes(300))
    offer = eth(b"\xff" * 6, 0x0800, dhcp, vlan=10)
    batch = [tcp4] * SEGMENTS

    default = Guard(GuardConfig(), "b", LoopDetector(), known=known)
    strict = GuardConfig(dhcp="local", ra="local", vlans=(10, 20), untagged=False)
    everything = Guard(strict, "b", LoopDetector(), known=known)
    flaps = MacFlaps()
    with_flaps = Guard(GuardConfig(), "b", LoopDetector(), known=known, flaps=flaps)
    unlimited = Guard(GuardConfig(flood_rate=1 << 30), "b", LoopDetector(), known=known)

    class Bare:
        def call(self, frame: bytes, now: float) -> None:
            return None

    bare = Bare()
    out, into = default.outbound, default.inbound
    rows: list[tuple[str, float]] = [
        ("bare method call (for scale)", timed(lambda: bare.call(tcp4, 1.0), n)),
        ("outbound, defaults, IPv4 TCP known unicast", timed(lambda: out(tcp4, 1.0), n)),
        ("outbound, defaults, IPv6 TCP known unicast", timed(lambda: out(tcp6, 1.0), n)),
        ("outbound, defaults, 64-byte TCP ACK", timed(lambda: out(ack, 1.0), n)),
        ("outbound, all guards on, VLAN 10 TCP",
         timed(lambda: everything.outbound(tagged, 1.0), n)),
        ("outbound, all guards on, untagged TCP (dropped)",
         timed(lambda: everything.outbound(tcp4, 1.0), n)),
        ("outbound, defaults + MAC flaps, IPv4 TCP",
         timed(lambda: with_flaps.outbound(tcp4, 1.0), n)),
        ("outbound, broadcast ARP (budget)", timed(lambda: unlimited.outbound(arp, 1.0), n)),
        ("outbound, broadcast UDP (budget)", timed(lambda: unlimited.outbound(udp_bcast, 1.0), n)),
        ("outbound, all guards on, VLAN 10 DHCP offer (dropped)",
         timed(lambda: everything.outbound(offer, 1.0), n)),
        ("inbound, defaults, IPv4 TCP", timed(lambda: into(tcp4, 1.0), n)),
        ("inbound, all guards on, VLAN 10 TCP", timed(lambda: everything.inbound(tagged, 1.0), n)),
        ("inbound_batch, defaults, per frame of 46",
         timed(lambda: default.inbound_batch(batch, 1.0), n // SEGMENTS) / SEGMENTS),
        ("inbound_batch + MAC flaps, per frame of 46",
         timed(lambda: with_flaps.inbound_batch(batch, 1.0), n // SEGMENTS) / SEGMENTS),
        ("classify_untrusted, IPv4 TCP", timed(lambda: classify_untrusted(tcp4), n)),
        ("classify_untrusted, VLAN 10 DHCP offer", timed(lambda: classify_untrusted(offer), n)),
    ]
    superframe = timed(lambda: default.outbound(tcp4, 1.0, SEGMENTS), n) / SEGMENTS
    rows.append(("outbound, defaults, per segment of a 46-segment superframe", superframe))
    width = max(len(label) for label, _ in rows)
    print(f"ns per frame ({n} calls each, Python {sys.version.split()[0]}):")
    for label, ns in rows:
        print(f"  {label:<{width}}  {ns:7.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
