"""Microseconds per frame to seal (send_frame) and open (receive_datagram).

Run: python3 benchmarks/bench_protocol.py [iterations]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridger.protocol import Output, Tunnel, TunnelConfig, public_key

A_ADDR, B_ADDR = ("192.0.2.1", 55555), ("198.51.100.2", 55555)


def pair() -> tuple[Tunnel, Tunnel]:
    ka, kb = bytes(range(1, 33)), bytes(range(7, 39))
    a = Tunnel(
        TunnelConfig(ka, public_key(kb), endpoint=B_ADDR, pmtu_probing=False),
        now=0.0,
        wall_clock=1e9,
    )
    b = Tunnel(TunnelConfig(kb, public_key(ka), pmtu_probing=False), now=0.0, wall_clock=1e9)
    init = a.send_frame(b"\0" * 64, 0.0).datagrams[0][0]
    resp = b.receive_datagram(init, A_ADDR, 0.0, 1e9).datagrams[0][0]
    for d, _ in a.receive_datagram(resp, B_ADDR, 0.0, 1e9).datagrams:
        b.receive_datagram(d, A_ADDR, 0.0, 1e9)
    return a, b


def bench(size: int, n: int) -> tuple[float, float, int]:
    a, b = pair()
    frame = bytes(range(256)) * (size // 256) + bytes(size % 256)
    out = Output()
    t0 = time.perf_counter()
    for _ in range(n):
        a.send_frame(frame, 1.0, out)
    seal = (time.perf_counter() - t0) / n * 1e6
    datagrams = [d for d, _ in out.datagrams]
    t0 = time.perf_counter()
    received = 0
    for d in datagrams:
        received += len(b.receive_datagram(d, A_ADDR, 1.0, 1e9).frames)
    opened = (time.perf_counter() - t0) / n * 1e6
    assert received == n, (received, n)
    return seal, opened, len(datagrams) // n


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    print(f"{'frame':>6} {'datagrams':>9} {'seal us/frame':>14} {'open us/frame':>14}")
    for size in (64, 1514):
        seal, opened, per = bench(size, n)
        print(f"{size:>6} {per:>9} {seal:>14.2f} {opened:>14.2f}")


if __name__ == "__main__":
    main()
