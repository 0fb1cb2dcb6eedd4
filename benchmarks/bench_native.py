"""The native lane's per-core cost model, and a 1-vs-2 lane scaling check.

    sudo .venv/bin/python benchmarks/bench_native.py [--quick] [--lanes 1,2] [--repeats 3]

Compiles ``benchmarks/bench_native.c`` with gcc -O2 against the lane's pure C
(``bridger/native/src/bn_*.c`` without the bindings) and libsodium, then, in a
throwaway network namespace (lo up, a veth pair v0/v1 with MTU 9000 as the
"WAN": frames sent to 10.99.0.2 leave v0 and are dropped by v1 at L2):

(a) ``cpu``: ns per call of the per-packet functions (seal/open+replay,
    segment_tcp and coalesce per segment, guard fast checks, counters) and of
    the lane's whole tap -> WAN step without syscalls; best of --repeats runs;
(b) ``sys``: the syscalls on this kernel: tap read() and write()/writev(),
    UDP sendto vs UDP_SEGMENT sendmsg, recvmsg with and without UDP_GRO,
    epoll_wait wake-ups;
(c) the model built from them: CPU-ns per packet per direction and frame size,
    packets/s and Gbit/s per core, N lanes = N x per core;
(d) ``scale``: N lanes (threads), each its own bn_lane, session, SO_REUSEPORT
    UDP socket and queue of one IFF_MULTI_QUEUE tap, the same total packets
    split between them: throughput and CPU per packet for N = 1 and 2.

Prints figures (Markdown); asserts nothing. Needs root (netns, tap).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "bridger" / "native" / "src"
C_FILE = Path(__file__).resolve().parent / "bench_native.c"
#: The pure C parts (not the CPython bindings), as scripts/fuzz.sh links them.
LANE_SOURCES = tuple(sorted(p.name for p in SRC.glob("bn_*.c")
                           if not p.name.startswith("bn_py_") and p.name != "bn_module.c"))

#: Frame bytes on the LAN side per kind (what a packet/s figure carries).
FRAME_BYTES = {"udp64": 106, "full": 1514, "tcp": 1514}
KIND_LABEL = {
    "udp64": "64-byte UDP (106 B frames)",
    "full": "1514 B frames",
    "tcp": "TCP segments via 64 KB superframes",
}
Figures = dict[str, float]


def run(cmd: list[str], **kw: object) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout  # type: ignore[call-overload, no-any-return]


def build(out: Path) -> None:
    cmd = ["gcc", "-O2", "-std=gnu11", "-Wall", "-I", str(SRC), str(C_FILE),
           *(str(SRC / s) for s in LANE_SOURCES), "-lsodium", "-lpthread", "-o", str(out)]
    subprocess.run(cmd, check=True)


def parse(text: str) -> Figures:
    figures: Figures = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            figures.setdefault(parts[0], float(parts[1]))
    return figures


def best(runs: list[Figures], larger: tuple[str, ...] = ()) -> Figures:
    """Per key the minimum over runs (the maximum for keys in ``larger``)."""
    out: Figures = {}
    for key in runs[0]:
        values = [r[key] for r in runs if key in r]
        out[key] = max(values) if key in larger else min(values)
    return out


class Netns:
    def __init__(self) -> None:
        self.name = f"bnbench{os.getpid()}"

    def __enter__(self) -> Netns:
        n = self.name
        run(["ip", "netns", "add", n])
        for cmd in (["link", "set", "lo", "up"],
                    ["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                    ["link", "set", "v0", "mtu", "9000", "up"],
                    ["link", "set", "v1", "mtu", "9000", "up"],
                    ["addr", "add", "10.99.0.1/24", "dev", "v0"],
                    ["neigh", "add", "10.99.0.2", "lladdr", "02:bb:00:00:00:09", "dev", "v0",
                     "nud", "permanent"]):
            run(["ip", "-n", n, *cmd])
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def exec(self, args: list[str]) -> Figures:
        return parse(run(["ip", "netns", "exec", self.name, *args]))


def cpu_busy() -> tuple[float, float]:
    """(busy CPU-seconds of the whole machine, wall seconds) from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / hz, float(os.times().elapsed)


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}"


def model(c: Figures, s: Figures) -> dict[tuple[str, str], dict[str, float]]:
    """ns per packet per (direction, kind), split into CPU work and syscalls."""
    small = c["guard_fast_in"] + c["account"] + c["macset_add_has"]
    segs = c["segments_per_superframe"]
    ready = s["epoll_wait_ready"]
    m = {
        ("tx", "udp64"): {"cpu": c["lane_tx_udp64"],
                          "sys": s["tap_read_udp64"] + s["udp_gso_send_139"] + ready / 64},
        ("tx", "full"): {"cpu": c["lane_tx_full"],
                         "sys": s["tap_read_full"] + s["udp_gso_send_1400"] + ready / 64},
        ("tx", "tcp"): {"cpu": c["lane_tx_tcp_per_seg"],
                        "sys": s["tap_read_64k"] / segs + s["udp_gso_send_1400"] + ready / segs},
        ("rx", "udp64"): {"cpu": c["open_64"] + small,
                          "sys": s["udp_recvmsg_gro_139"] + s["tap_write_udp64"] + ready / 64},
        ("rx", "full"): {"cpu": c["open_1400"] + small,
                         "sys": s["udp_recvmsg_gro_1400"] + s["tap_write_full"] + ready / 64},
        ("rx", "tcp"): {"cpu": c["open_1400"] + small + c["coalesce_per_seg"],
                        "sys": s["udp_recvmsg_gro_1400"]
                        + c["coalesce_writes"] * s["tap_writev_64k_gso"] / segs + ready / segs},
    }
    for v in m.values():
        v["total"] = v["cpu"] + v["sys"]
    return m


def fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="about 20 s instead of about 2 min")
    ap.add_argument("--lanes", default="1,2", help="lane counts of the scaling check")
    ap.add_argument("--repeats", type=int, default=0, help="runs per figure (best kept)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_native.py needs root (network namespace, tap)", file=sys.stderr)
        return 1
    scale = 0.3 if args.quick else 1.0
    repeats = args.repeats or (2 if args.quick else 3)
    packets = 300_000 if args.quick else 1_000_000
    lanes = [int(x) for x in args.lanes.split(",")]
    kinds = ("udp64", "full", "tcp")

    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "bench_native"
        build(exe)
        with Netns() as ns:
            c = best([ns.exec([str(exe), "cpu", str(scale)]) for _ in range(repeats)])
            s = best([ns.exec([str(exe), "sys", str(scale)]) for _ in range(repeats)],
                     larger=tuple(k for k in ("udp_recvmsg_gro_139_per_call",
                                              "udp_recvmsg_gro_1400_per_call")))
            sc: dict[tuple[str, str, int], Figures] = {}
            for kind in kinds:
                for d in ("tx", "rx"):
                    for n in lanes:
                        runs = []
                        for _ in range(repeats):
                            b0, w0 = cpu_busy()
                            r = ns.exec([str(exe), "scale", str(n), d, kind, str(packets)])
                            b1, w1 = cpu_busy()
                            ours = r["cpu_ns_per_packet"] * r["packets"] / 1e9
                            r["others"] = max(0.0, (b1 - b0) - ours) / max(w1 - w0, 1e-3)
                            runs.append(r)
                        sc[d, kind, n] = max(runs, key=lambda r: r["pps"])

    print(f"# bench_native: {machine()}\n")
    print("## (a) CPU per call, single thread (ns, best of", repeats, "runs)\n")
    print("| function | ns |\n|---|---:|")
    for key in ("seal_64", "seal_1400", "open_64", "open_1400", "segment_tcp_per_seg",
                "coalesce_per_seg", "guard_fast_out", "guard_fast_in", "account",
                "macset_add_has", "clock_gettime", "lane_tx_udp64", "lane_tx_full",
                "lane_tx_tcp_per_seg"):
        print(f"| {key} | {fmt(c[key], 1)} |")
    print(f"\n(open = open + replay check; segment/coalesce per segment of a "
          f"{int(c['segments_per_superframe'])}-segment superframe, coalesce making "
          f"{int(c['coalesce_writes'])} writes; lane_tx_* = bn_lane_tap_read per frame/segment, "
          "no syscalls)\n")
    print("## (b) syscalls on this kernel (ns per call or per datagram)\n")
    print("| syscall | ns |\n|---|---:|")
    for key in ("tap_read_udp64", "tap_read_full", "tap_read_64k", "tap_write_udp64",
                "tap_write_full", "tap_writev_64k_gso", "udp_sendto_139", "udp_gso_send_139",
                "udp_sendto_1400", "udp_gso_send_1400", "udp_recvmsg_139", "udp_recvmsg_1400",
                "udp_recvmsg_gro_139", "udp_recvmsg_gro_1400", "epoll_wait_ready",
                "epoll_wakeup_same_cpu", "epoll_wakeup_cross_cpu"):
        if key in s:
            print(f"| {key} | {fmt(s[key], 1)} |")
    print("\n(udp_gso_send_* and udp_recvmsg_gro_* per datagram, "
          f"{int(s.get('udp_recvmsg_gro_1400_per_call', 0))} x 1400 B / "
          f"{int(s.get('udp_recvmsg_gro_139_per_call', 0))} x 139 B per call; "
          "wake-ups = half an eventfd ping-pong between two threads blocked in epoll_wait)\n")

    m = model(c, s)
    print("## (c) the model: one core, saturated (batches of 64 / one superframe per wake-up)\n")
    print("| direction | traffic | CPU work ns | syscalls ns | total ns/packet | packets/s per core"
          " | Gbit/s per core | " + " | ".join(f"{n} lanes Gbit/s" for n in (2, 4, 8, 16)) + " |")
    print("|---|---|---:|---:|---:|---:|---:|" + "---:|" * 4)
    for (d, kind), v in m.items():
        pps = 1e9 / v["total"]
        gbit = pps * FRAME_BYTES[kind] * 8 / 1e9
        label = "LAN->WAN" if d == "tx" else "WAN->LAN"
        print(f"| {label} | {KIND_LABEL[kind]} | {fmt(v['cpu'])} | {fmt(v['sys'])} | "
              f"{fmt(v['total'])} | {fmt(pps)} | {fmt(gbit, 2)} | "
              + " | ".join(fmt(n * gbit, 1) for n in (2, 4, 8, 16)) + " |")
    print("\n(N lanes = N x one core: needs N cores free for lanes, a NIC/underlay that "
          "spreads flows over N queues, and flows that hash to different lanes)\n")

    print("## (d) measured: N lanes, same total load "
          f"({packets:,} packets split evenly, best of {repeats})\n")
    print(f"load average before the runs: {Path('/proc/loadavg').read_text().split()[0]}\n")
    print("| direction | traffic | lanes | packets/s | x 1 lane | CPU ns/packet | "
          "model ns/packet (CPU + this test's syscalls) | other processes' CPUs | failed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind in kinds:
        for d in ("tx", "rx"):
            base = sc[d, kind, lanes[0]]["pps"]
            v = m[d, kind]
            # the scale test reads frames from memory (tx) / copies datagrams
            # from memory (rx): the model without tap reads / recvmsg
            if d == "tx":
                read = s["tap_read_64k"] / c["segments_per_superframe"] if kind == "tcp" else \
                    s["tap_read_udp64" if kind == "udp64" else "tap_read_full"]
                expect = v["total"] - read - s["epoll_wait_ready"] / 64
            else:
                recv = s["udp_recvmsg_gro_139" if kind == "udp64" else "udp_recvmsg_gro_1400"]
                expect = v["total"] - recv - s["epoll_wait_ready"] / 64
            for n in lanes:
                r = sc[d, kind, n]
                label = "LAN->WAN" if d == "tx" else "WAN->LAN"
                print(f"| {label} | {kind} | {n} | {fmt(r['pps'])} | {r['pps'] / base:.2f} | "
                      f"{fmt(r['cpu_ns_per_packet'])} | {fmt(expect)} | {r['others']:.2f} | "
                      f"{int(r['failed'])} |")
    print("\n(other processes' CPUs: the machine's busy CPU-seconds during the run minus "
          "the lanes', per second of the whole run including setup; "
          "lanes read their input from memory in this test: LAN->WAN frames as a tap "
          "read returns them, WAN->LAN datagrams copied as a receive would; sends and tap "
          "writes are real syscalls on per-lane sockets / tap queues)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
