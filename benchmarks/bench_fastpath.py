"""Microseconds per TCP segment in each fast-path stage, one process, no I/O.

    python3 benchmarks/bench_fastpath.py [rounds]

A 62 KB TSO superframe is cut for a 1500-byte WAN (1435-byte frames), counted,
sealed, opened and joined again: the per-segment cost of every Python stage a
segment crosses between two taps, against the cipher alone.
"""

from __future__ import annotations

import random
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import nacl.bindings  # noqa: F401  (sodium_init)
from bench_protocol import A_ADDR, pair
from nacl._sodium import ffi, lib

from bridger.dataplane.accounting import Counters
from bridger.fastpath.segment import coalesce, segment_tcp
from bridger.fastpath.vnet import GsoType, VnetFlag, VnetHdr
from bridger.protocol import Output


def superframe(size: int) -> bytes:
    """Ethernet + IPv4 + TCP (timestamps) + payload, checksum fields as a kernel leaves them."""
    payload = random.Random(size).randbytes(size)
    tcp = struct.pack(">HHIIBBHHH", 40000, 5201, 1, 1, 8 << 4, 0x18, 502, 0, 0)
    tcp += bytes([1, 1, 8, 10]) + bytes(8)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + size, 1, 0x4000, 64, 6, 0,
                     bytes([192, 168, 1, 11]), bytes([192, 168, 1, 21]))
    return bytes(12) + b"\x08\x00" + ip + tcp + payload


def per_segment(fn, rounds: int, segments: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - start) / rounds / segments * 1e6


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    frame = superframe(62000)
    hdr = VnetHdr(VnetFlag.NEEDS_CSUM, GsoType.TCPV4, 66, 1448, 34, 16)
    segs, start = segment_tcp(frame, hdr, 1435)
    n = len(segs)
    peer = Counters().peer("b")
    a, b = pair()
    sealed = a.send_frames(segs, 1.0, Output(), (start, 16))
    datagrams = [d for d, _ in sealed.datagrams]
    got = b.receive_datagrams(datagrams, A_ADDR, 1.0, 1e9)
    assert len(got.frames) == n

    # Fresh counters for every round (the replay window rejects repeats), sealed untimed.
    batches = iter([[d for d, _ in a.send_frames(segs, 1.0, Output(), (start, 16)).datagrams]
                    for _ in range(rounds)])

    def receive() -> None:
        got = b.receive_datagrams(next(batches), A_ADDR, 1.0, 1e9)
        assert len(got.frames) == n

    def count() -> None:
        for s in segs:
            peer.lan_to_wan(s, 1.0)

    def count_run() -> None:
        peer.lan_to_wan(segs[0], 1.0, len(segs), sum(map(len, segs)))

    key, nonce = bytes(32), bytes(12)
    out = bytearray(1500)
    seg = segs[0]

    def cipher() -> None:
        for _ in range(n):
            lib.crypto_aead_chacha20poly1305_ietf_encrypt(
                ffi.from_buffer(out), ffi.NULL, seg, len(seg), ffi.NULL, 0, ffi.NULL, nonce, key)

    rows = [
        ("segment_tcp (cut + headers)", lambda: segment_tcp(frame, hdr, 1435)),
        ("PeerCounters.lan_to_wan, each segment", count),
        ("PeerCounters.lan_to_wan, once a superframe", count_run),
        ("Tunnel.send_frames (seal)", lambda: a.send_frames(segs, 1.0, Output(), (start, 16))),
        ("Tunnel.receive_datagrams (open)", receive),
        ("coalesce (join)", lambda: list(coalesce(got.frames, got.csum))),
        ("ChaCha20-Poly1305 alone, 1435 B", cipher),
    ]
    print(f"{n} segments of {len(segs[0])} bytes per superframe; us per segment:")
    for name, fn in rows:
        print(f"  {name:<36} {per_segment(fn, rounds, n):7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
