"""How a hub's idle cost grows with the number of spokes (issue 26). Run as root.

    .venv/bin/python benchmarks/scale.py                 # N = 4 12 24 50 100
    .venv/bin/python benchmarks/scale.py --sizes 4 12 --idle 5

For each N: build the hub lab (:mod:`bridger.lab.hub`: a hub and N spokes, each
with one LAN host), start every gateway at once and time until the hub has all
spokes up; leave it idle and measure over ``--idle`` seconds the hub's CPU (share
of one core, from /proc/PID/stat), the spokes' mean CPU, the RSS, and the
frames per second the hub sends each spoke by kind (from ``status --json``);
ping sampled spoke pairs through the hub; time one ``status --json`` of the hub;
then restart every spoke at the same moment and time until all are back, with the
handshake messages on the hub's link counted (tcpdump): per spoke, per spoke
within one second, and the hub's busiest second.  Last, what one more site
costs: the hub's idle CPU and RSS per added spoke between consecutive sizes.

Prints figures only (the machine may be shared: CPU figures are noisy); it
never passes or fails.  Memory: about 80 MB per gateway (monitor and data plane), so
N = 100 wants ~9 GB;
sizes the free memory cannot hold are skipped with a line saying so.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bridger.lab.gateways import TomlValue
from bridger.lab.hub import HUB, HubLab, hub_handshakes, peer_name, sample_pairs
from bridger.native import contract

#: A gateway is two processes since issue 25 (the root monitor and the data plane).
MB_PER_GATEWAY = 85


#: What every gateway process imports before it can do anything: the chosen
#: dependencies (trio, pyroute2, PyNaCl), without a line of bridger.
DEPENDENCIES = "import trio, pyroute2.iproute.linux, nacl.bindings"


def import_floor(runs: int = 5) -> float:
    """CPU-seconds (user + system, the least of ``runs``) of a fresh interpreter
    that imports :data:`DEPENDENCIES` and exits.  N gateways started at once on
    C cores cannot all answer before N x this / C seconds, whatever bridger does."""
    best = float("inf")
    for _ in range(runs):
        before = os.times()
        subprocess.run([sys.executable, "-c", DEPENDENCIES], check=True)
        after = os.times()
        best = min(best, (after.children_user - before.children_user)
                   + (after.children_system - before.children_system))
    return best


def free_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def per_peer_rates(a: dict[str, Any], b: dict[str, Any], seconds: float) -> dict[str, float]:
    """Mean frames/s the hub sent one spoke, by kind, between two status documents."""
    before = {p["name"]: p for p in a.get("peers", ())}
    sums: dict[str, list[float]] = {}
    for peer in b.get("peers", ()):
        old = before.get(peer["name"])
        if old is None:
            continue
        for kind, count in peer["kinds"]["tx"].items():
            sums.setdefault(kind, []).append((count - old["kinds"]["tx"][kind]) / seconds)
        sums.setdefault("frames", []).append(
            (peer["frames"]["tx"] - old["frames"]["tx"]) / seconds)
    return {kind: statistics.fmean(v) for kind, v in sums.items() if v}


def status_time(lab: HubLab) -> float:
    """Wall seconds of one `bridger status --json` of the hub (a fresh process)."""
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "bridger", "status", "--json", "--state-dir",
                    str(lab.gateways[HUB].state_dir)], capture_output=True, check=False)
    return time.monotonic() - began


def load_average() -> str:
    """The 1-minute load average (the machine may be shared: figures go with it)."""
    return Path("/proc/loadavg").read_text().split()[0]


def measure(spokes: int, idle: float, pairs: int, settle: float,
            gateway_ipv6: bool = True) -> dict[str, Any]:
    row: dict[str, Any] = {"spokes": spokes}
    # The native lane serves at most contract.MAX_PORTS taps (a bigger hub stops
    # with ENOSPC): beyond that the hub runs the pure-Python data path.
    hub_local: dict[str, TomlValue] = (
        {"data_path": "python"} if spokes > contract.MAX_PORTS else {})
    row["hub_data_path"] = hub_local.get("data_path", "native")
    with tempfile.TemporaryDirectory(prefix="bridger-scale-") as tmp, \
            HubLab(spokes, Path(tmp), gateway_ipv6=gateway_ipv6, hub_local=hub_local) as lab:
        row["hub_start_s"] = round(lab.start_hub(), 2)
        began = lab.start(list(lab.sites)[1:])
        up = lab.wait_up(within=180, since=began)
        if up is None:
            row["missing"] = [peer_name(s) for s in lab.waiting()][:5]
            print(lab.logs([HUB], tail=10), file=sys.stderr)
            return row
        row["up_s"], row["ready_s"], row["handshake_s"] = (
            round(up.all_up, 2), round(up.last_ready, 2), round(up.handshake, 2))
        time.sleep(settle)  # start-up chatter (DAD, MLD, first ARP) dies down
        hub = lab.gateways[HUB]
        doc_a, at_a = hub.status(), time.monotonic()
        spoke_sites = list(lab.sites)[1:]
        row["load"] = load_average()
        cpu = lab.idle_cpu([HUB, *spoke_sites], idle)
        row["load_after"] = load_average()
        doc_b, at_b = hub.status(), time.monotonic()
        row["hub_cpu_pct"] = round(100 * cpu[HUB], 2)
        row["spoke_cpu_pct"] = round(100 * statistics.fmean(cpu[s] for s in spoke_sites), 2)
        row["hub_rss_mb"] = round(lab.rss_mb(HUB), 1)
        row["spoke_rss_mb"] = round(statistics.fmean(lab.rss_mb(s) for s in spoke_sites), 1)
        if doc_a and doc_b:
            rates = per_peer_rates(doc_a, doc_b, at_b - at_a)
            row["to_each_spoke_fps"] = {k: round(v, 1) for k, v in rates.items() if v >= 0.05}
        began_q = time.monotonic()
        hub.status(timeout=10)
        row["status_query_s"] = round(time.monotonic() - began_q, 3)
        row["status_json_s"] = round(status_time(lab), 3)
        tried = list(sample_pairs(spokes, pairs))
        row["reach"] = f"{sum(lab.wait_ping(a, b, within=10) is not None for a, b in tried)}" \
                       f"/{len(tried)}"
        # Every spoke restarted at the same moment, the hub's link captured.
        hs_before = hub_handshakes(hub.status())
        back, capture = lab.restart_spokes(within=180)
        if back is not None:
            row["restart_s"], row["restart_ready_s"], row["restart_handshake_s"] = (
                round(back.all_up, 2), round(back.last_ready, 2), round(back.handshake, 2))
            hs_after = hub_handshakes(hub.status())
            row["restart_handshakes_max"] = max(
                (hs_after.get(k, 0) - hs_before.get(k, 0) for k in hs_after), default=0)
        else:
            row["restart_s"] = None
            missing = lab.waiting()
            row["restart_missing"] = [peer_name(s) for s in missing][:5]
            row["restart_missing_count"] = len(missing)
            states = {peer_name(s): lab.spoke_state(s) for s in missing[:5]}
            print(f"N = {spokes}: not back after the restart: {states}\n"
                  f"{lab.logs(missing[:2], tail=8)}", file=sys.stderr)
        per_spoke = capture.per_spoke()
        row["restart_msgs_per_spoke_max"] = max(per_spoke.values(), default=0)
        row["restart_msgs_per_spoke_second"] = capture.most_in_a_second()[1]
        row["restart_msgs_hub_second"] = capture.busiest_second()
    return row


LEGEND = """\
N: spokes.  up: seconds from starting every spoke at once until all had their tunnel
  up (ready: until the last spoke process answered, which on a small loaded machine is
  most of it; hs: the longest a spoke then took).  reach: spoke pairs that pinged each
  other through the hub.  hub CPU: share of one core over the idle window (the hub's
  monitor and data plane); /site: the same divided by N.  RSS: resident memory.
  restart: every spoke restarted at the same moment: seconds until all were back
  (ready/hs as above); msgs: handshake messages on the hub's link (tcpdump), the most
  one spoke exchanged in all, the most within any one second, and the most the hub's
  link carried within one second.  load: 1-minute load average at the idle window.
  status: seconds for the hub's status document (q: the query alone, cli: a whole
  `bridger status --json`).  fps: frames/s the hub sent each spoke while idle, by kind.
  floor: N x the CPU-seconds of importing trio, pyroute2 and PyNaCl in a fresh
  interpreter, over the number of cores: the least time in which N gateways started at
  once on this machine can all be ready (every gateway here shares its cores; a real
  site has its own)."""


def print_row(row: dict[str, Any]) -> None:
    n = row["spokes"]
    if row.get("up_s") is None:
        print(f"{n:>4} not all up within 180 s (missing e.g. {row.get('missing')})", flush=True)
        return
    up = f"{row['up_s']:.1f} ({row['ready_s']:.1f}/{row['handshake_s']:.1f})"
    back = (f"{row['restart_s']:.1f} ({row['restart_ready_s']:.1f}/"
            f"{row['restart_handshake_s']:.1f})" if row.get("restart_s") is not None
            else f"{row.get('restart_missing_count', '?')} not back")
    msgs = (f"{row['restart_msgs_per_spoke_max']}/{row['restart_msgs_per_spoke_second']}/"
            f"{row['restart_msgs_hub_second']}")
    note = " (hub: python data path)" if row["hub_data_path"] == "python" else ""
    print(f"{n:>4} {up:>17} {row['reach']:>6} {row['hub_cpu_pct']:>7.2f}% "
          f"{row['hub_cpu_pct'] / n:>6.3f}% {row['hub_rss_mb']:>6.1f}M "
          f"{row['spoke_cpu_pct']:>7.2f}% {row['spoke_rss_mb']:>6.1f}M {back:>17} {msgs:>9} "
          f"{row['load']:>5} {row['status_query_s']:>5.2f}/{row['status_json_s']:<5.2f}{note}",
          flush=True)


def print_per_site(rows: list[dict[str, Any]]) -> None:
    """What one more site costs the hub, between consecutive sizes."""
    done = [r for r in rows if r.get("up_s") is not None]
    if len(done) < 2:
        return
    print("\nper site, between consecutive sizes: the hub's extra idle CPU and RSS per added"
          " spoke; a spoke's own idle CPU and RSS", flush=True)
    print(f"{'N':>9} {'hub CPU/site':>13} {'hub RSS/site':>13} {'spoke CPU':>10} "
          f"{'spoke RSS':>10}", flush=True)
    for a, b in itertools.pairwise(done):
        added = b["spokes"] - a["spokes"]
        cpu = (b["hub_cpu_pct"] - a["hub_cpu_pct"]) / added
        rss = (b["hub_rss_mb"] - a["hub_rss_mb"]) / added
        print(f"{a['spokes']:>4}->{b['spokes']:<4} {cpu:>12.3f}% {rss:>11.2f}MB "
              f"{b['spoke_cpu_pct']:>9.2f}% {b['spoke_rss_mb']:>8.1f}MB", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", "--spokes", dest="sizes", type=int, nargs="+",
                        default=[4, 12, 24, 50, 100], metavar="N", help="numbers of spokes")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measured")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds before measuring")
    parser.add_argument("--pairs", type=int, default=8, help="spoke pairs pinged")
    parser.add_argument("--json", action="store_true", help="one JSON line per N as well")
    parser.add_argument("--no-gateway-ipv6", action="store_true",
                        help="taps and bridges the gateways make get no IPv6 stack (as if"
                             " bridger made its taps without one)")
    args = parser.parse_args(argv)
    print(LEGEND, flush=True)
    floor = import_floor()
    cores = os.cpu_count() or 1
    print(f"\nload average at the start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
          f"; {cores} CPUs; the dependencies' imports cost {floor:.2f} CPU-s per process:"
          f" floor {', '.join(f'{n} spokes {n * floor / cores:.1f} s' for n in args.sizes)}\n",
          flush=True)
    print(f"{'N':>4} {'up (ready/hs) s':>17} {'reach':>6} {'hub CPU':>8} {'/site':>7} "
          f"{'hub RSS':>7} {'spoke CPU':>8} {'RSS':>7} {'restart (ready/hs)':>17} "
          f"{'msgs':>9} {'load':>5} {'status q/cli':>11}", flush=True)
    rows = []
    for n in args.sizes:
        need = (n + 1) * MB_PER_GATEWAY
        if free_mb() < need + 500:
            print(f"{n:>4} skipped: needs ~{need} MB, {free_mb()} MB available", flush=True)
            continue
        row = measure(n, args.idle, args.pairs, args.settle, not args.no_gateway_ipv6)
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        print_row(row)
    print_per_site(rows)
    fps = [(r["spokes"], r.get("to_each_spoke_fps")) for r in rows if r.get("to_each_spoke_fps")]
    if fps:
        print("\nframes/s the hub sent each spoke while idle, by kind:", flush=True)
        for n, kinds in fps:
            print(f"{n:>4} " + " ".join(f"{k} {v}" for k, v in kinds.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
