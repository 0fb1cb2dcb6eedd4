"""What a relay costs (issue 23): iperf3 between sites of the NAT lab, over
direct paths and over pairs relayed through site A.

    sudo .venv/bin/python benchmarks/nat_relay.py [--duration 10] [--delay MS]

The NAT lab (bridger/lab/nat.py): A public, B behind a NAT that keeps ports,
C behind one that randomises them, D behind two.  B-D punch through (direct);
B-C and D-C go through A.  Each pair: one TCP stream for ``--duration``
seconds, Mbit/s received, and the average ping RTT.  Prints; never fails on
a speed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridger.lab.nat import NatLab, nat_lab_options, write_nat_configs  # noqa: E402
from bridger.status.control import control_path, query_status  # noqa: E402

PAIRS = (("A", "B", "direct, public <-> NAT"), ("B", "D", "direct, punched"),
         ("B", "C", "relayed via A"), ("D", "C", "relayed via A"))


def path_of(state_dir: Path, peer: str) -> str:
    try:
        doc = query_status(control_path(state_dir), timeout=2.0)
    except Exception:  # a benchmark: print what is known
        return "?"
    for entry in doc.get("peers", []):
        if entry.get("name") == peer:
            via = entry.get("via")
            return f"{entry.get('path')}{' via ' + via if via else ''}"
    return "?"


def iperf(lab: NatLab, src: str, dst: str, duration: float) -> float:
    server = lab.popen(f"host{dst}1", "iperf3", "-s", "-1", stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = lab.run(f"host{src}1", "iperf3", "-c", lab.lan_address(f"host{dst}1"), "-J",
                      "-t", str(duration), timeout=duration + 60, check=False)
        doc: dict[str, Any] = json.loads(out.stdout or "{}")
        if "error" in doc or "end" not in doc:
            return float("nan")
        return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e6
    finally:
        server.kill()
        server.wait()


def ping_ms(lab: NatLab, src: str, dst: str) -> float:
    out = lab.run(f"host{src}1", "ping", "-q", "-c", "20", "-i", "0.05",
                  lab.lan_address(f"host{dst}1"), check=False, timeout=60).stdout
    try:
        return float(out.strip().splitlines()[-1].split("=")[1].split("/")[1])
    except (IndexError, ValueError):
        return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--delay", type=float, default=0.0, help="one-way WAN delay, ms")
    args = parser.parse_args()
    engine = "direct" if args.delay == 0 else "auto"
    with tempfile.TemporaryDirectory(prefix="bridger-nat-bench-") as tmp, \
            NatLab(nat_lab_options(4, delay_ms=args.delay, engine=engine)) as lab:
        files = write_nat_configs(lab, Path(tmp))
        procs = []
        for f in files.values():
            log = (Path(tmp) / f"gw{f.site}.log").open("wb")
            procs.append(lab.popen(f"gw{f.site}", *f.up_argv(), stdout=log,
                                   stderr=subprocess.STDOUT))
        try:
            time.sleep(8.0)  # start-up, introductions, the punch window, path MTU
            for src, dst in ((a, b) for a, b, _ in PAIRS):
                ping_ms(lab, src, dst)  # ARP and bridge learning
            print(f"NAT lab, WAN delay {args.delay:g} ms each way, engine {lab.engine}, "
                  f"iperf3 {args.duration:g} s, one TCP stream")
            print(f"{'pair':<6} {'path (as the sender sees it)':<30} {'Mbit/s':>8} {'RTT ms':>8}")
            for src, dst, what in PAIRS:
                path = path_of(files[src].state_dir, files[dst].name)
                mbit = iperf(lab, src, dst, args.duration)
                rtt = ping_ms(lab, src, dst)
                print(f"{src}->{dst:<3} {path + ' (' + what + ')':<30} {mbit:8.0f} {rtt:8.2f}",
                      flush=True)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
