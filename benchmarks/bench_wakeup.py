"""The floor under bridger's added RTT: what one wakeup costs a Python process here.

    python3 benchmarks/bench_wakeup.py [--count 300]

A child process sends a 100-byte UDP datagram over loopback every GAP and
times the echo; the echo is served by (a) a plain blocking ``recvfrom`` loop
and (b) a Trio ``wait_readable`` loop, the way bridger's data-plane tasks wait.
Each echo is one process wakeup, so the round trip is about two wakeups plus
loopback.  Short gaps keep caches and the scheduler warm; gaps like
``ping -i 0.01`` (10 ms) and interactive traffic (100 ms) find them cold.
A bridged ping crosses a tunnel daemon four times, so four of these wakeups
(plus bridger's own per-frame work) are the least it can add.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import trio

GAPS_MS = (0.5, 2.0, 10.0, 100.0)


def serve_plain(sock: socket.socket) -> None:
    while True:
        data, addr = sock.recvfrom(2048)
        if data == b"q":
            return
        sock.sendto(data, addr)


def serve_trio(sock: socket.socket) -> None:
    sock.setblocking(False)

    async def loop() -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            while True:
                try:
                    data, addr = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                if data == b"q":
                    return
                sock.sendto(data, addr)

    trio.run(loop)


def ping(server: tuple[str, int], gap: float, count: int) -> tuple[float, float]:
    """(median, 90th percentile) echo round trip in microseconds."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)
    rtts = []
    for _ in range(count):
        time.sleep(gap)
        start = time.perf_counter()
        sock.sendto(b"x" * 100, server)
        sock.recv(2048)
        rtts.append((time.perf_counter() - start) * 1e6)
    sock.sendto(b"q", server)
    rtts.sort()
    return rtts[len(rtts) // 2], rtts[len(rtts) * 9 // 10]


def measure(kind: str, gap_ms: float, count: int) -> tuple[float, float]:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    addr = server.getsockname()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        server.close()
        median, p90 = ping(addr, gap_ms / 1000, count)
        os.write(write_end, f"{median} {p90}".encode())
        os._exit(0)
    os.close(write_end)
    (serve_plain if kind == "plain" else serve_trio)(server)
    server.close()
    result = os.read(read_end, 100).decode().split()
    os.close(read_end)
    os.waitpid(pid, 0)
    return float(result[0]), float(result[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=300, help="echoes per gap and server")
    args = p.parse_args()
    print(f"{os.cpu_count()} CPUs; UDP echo over loopback, {args.count} echoes each")
    print(f"{'gap':>8}  {'plain recvfrom':>22}  {'trio wait_readable':>22}")
    for gap in GAPS_MS:
        plain = measure("plain", gap, args.count)
        trio_ = measure("trio", gap, args.count)
        print(f"{gap:>6g}ms  {plain[0]:>8.0f} us (p90 {plain[1]:>4.0f})  "
              f"{trio_[0]:>8.0f} us (p90 {trio_[1]:>4.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
