"""Where bridger's CPU goes under iperf3: cProfile of both gateways.

    python3 benchmarks/profile_daemon.py [--duration 8] [--reverse] [--udp64] [--top 25]

Builds the direct lab, runs ``bridger up`` under cProfile on each gateway,
drives one iperf3 TCP stream hostA1 -> hostB1 (``--reverse``: B -> A;
``--udp64``: a flood of 64-byte UDP datagrams instead), stops
the daemons with SIGTERM (their profiles are written on the clean exit) and
prints the top functions by own time for each side.
"""

from __future__ import annotations

import argparse
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import iperf, wait_link
from peers import SITES, Bridger

from bridger.lab import Lab, LabOptions


class ProfiledBridger(Bridger):
    def _popen(self, site: str, *argv: str, env: dict[str, str] | None = None) -> None:
        argv = (argv[0], "-m", "cProfile", "-o", str(self.workdir / f"prof-{site}.out"),
                *argv[1:])
        super()._popen(site, *argv, env=env)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--reverse", action="store_true")
    p.add_argument("--udp64", action="store_true", help="64-byte UDP flood instead of TCP")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bridger-prof-") as tmp, \
            Lab(LabOptions(engine="direct")) as lab:
        work = Path(tmp)
        runner = ProfiledBridger(lab, work)
        runner.start()
        try:
            wait_link(lab, runner)
            server = lab.popen("hostB1", "iperf3", "-s", stdout=subprocess.DEVNULL)
            time.sleep(0.5)
            flags = ["-R"] if args.reverse else []
            if args.udp64:
                flags += ["-u", "-l", "64", "-b", "0"]
            res = iperf(lab, *flags, duration=args.duration)
            server.terminate()
            server.wait()
            if args.udp64:
                s = res["end"]["sum"]
                print(f"{(s['packets'] - s['lost_packets']) / s['seconds']:,.0f} packets/s"
                      f" delivered of {s['packets'] / s['seconds']:,.0f} sent")
            else:
                print(f"{res['end']['sum_received']['bits_per_second'] / 1e6:.0f} Mbit/s")
        finally:
            runner.stop()
        for site in SITES:
            print(f"==== gw{site} ====")
            stats = pstats.Stats(str(work / f"prof-{site}.out"))
            stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
