"""How a hub's idle cost grows with the number of spokes (issue 26). Run as root.

    .venv/bin/python benchmarks/scale.py                 # N = 4 12 24 50 100
    .venv/bin/python benchmarks/scale.py --spokes 4 12 --idle 5

For each N: build the hub lab (:mod:`bridger.lab.hub`: a hub and N spokes, each
with one LAN host), start every gateway at once and time until the hub has all
spokes up; leave it idle and measure over ``--idle`` seconds the hub's CPU (share
of one core, from /proc/PID/stat), the spokes' mean CPU, the RSS, and the
frames per second the hub sends each spoke by kind (from ``status --json``);
ping sampled spoke pairs through the hub; time one ``status --json`` of the hub;
then restart every spoke at the same moment and time until all are back.

Prints figures only (the machine may be shared: CPU figures are noisy); it
never passes or fails.  Memory: about 40 MB per gateway, so N = 100 wants ~5 GB;
sizes the free memory cannot hold are skipped with a line saying so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bridger.lab.gateways import TomlValue
from bridger.lab.hub import HUB, HubLab, peer_name, sample_pairs
from bridger.native import contract

MB_PER_GATEWAY = 45


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


def handshakes(doc: dict[str, Any] | None) -> dict[str, int]:
    """Peer name -> handshakes completed, from a status document."""
    return {p["name"]: int(p["handshakes"]) for p in (doc or {}).get("peers", ())}


def status_time(lab: HubLab) -> float:
    """Wall seconds of one `bridger status --json` of the hub (a fresh process)."""
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "bridger", "status", "--json", "--state-dir",
                    str(lab.gateways[HUB].state_dir)], capture_output=True, check=False)
    return time.monotonic() - began


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
        cpu = lab.idle_cpu([HUB, *spoke_sites], idle)
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
        # Every spoke restarted at the same moment.
        hs_before = handshakes(hub.status())
        lab.stop(spoke_sites)
        began = lab.start(spoke_sites)
        back = lab.wait_up(within=180, since=began)
        if back is not None:
            row["restart_s"], row["restart_ready_s"], row["restart_handshake_s"] = (
                round(back.all_up, 2), round(back.last_ready, 2), round(back.handshake, 2))
            time.sleep(2)
            hs_after = handshakes(hub.status())
            row["restart_handshakes_max"] = max(
                (hs_after.get(k, 0) - hs_before.get(k, 0) for k in hs_after), default=0)
        else:
            row["restart_s"] = None
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spokes", type=int, nargs="+", default=[4, 12, 24, 50, 100])
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measured")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds before measuring")
    parser.add_argument("--pairs", type=int, default=8, help="spoke pairs pinged")
    parser.add_argument("--json", action="store_true", help="one JSON line per N as well")
    parser.add_argument("--no-gateway-ipv6", action="store_true",
                        help="taps and bridges the gateways make get no IPv6 stack (as if"
                             " bridger made its taps without one)")
    args = parser.parse_args(argv)
    print("N: spokes; hub: seconds until the hub answered, started alone; up: seconds from"
          " starting every spoke at once until all had their tunnel up (ready: until the last"
          " spoke process answered, handshake: the longest a spoke then took); restart: the"
          " same with every spoke restarted at once, hs: most handshakes one spoke made;"
          " CPU: share of one core over the idle window; fps: frames/s the hub's bridge sent"
          " each spoke (its own probes not counted); status: seconds for the hub's status document"
          " (q: the query alone, cli: `bridger status --json`, a Python start on a loaded"
          " machine)", flush=True)
    head = (f"{'N':>4} {'hub':>5} {'up (ready/hs)':>18} {'reach':>6} {'hub CPU%':>8} "
            f"{'/spoke':>7} {'spoke CPU%':>10} {'hub RSS':>8} {'spoke RSS':>9} "
            f"{'status q/cli':>11} "
            f"{'restart (ready/hs)':>19} {'hs':>3}  fps to each spoke")
    print(head, flush=True)
    for n in args.spokes:
        need = (n + 1) * MB_PER_GATEWAY
        if free_mb() < need + 500:
            print(f"{n:>4} skipped: needs ~{need} MB, {free_mb()} MB available", flush=True)
            continue
        row = measure(n, args.idle, args.pairs, args.settle, not args.no_gateway_ipv6)
        if args.json:
            print(json.dumps(row), flush=True)
        if row.get("up_s") is None:
            print(f"{n:>4} not all up within 180 s (missing e.g. {row.get('missing')})",
                  flush=True)
            continue
        up = f"{row['up_s']} ({row['ready_s']}/{row['handshake_s']})"
        back = (f"{row['restart_s']} ({row['restart_ready_s']}/{row['restart_handshake_s']})"
                if row.get("restart_s") is not None else "-")
        fps = " ".join(f"{k} {v}" for k, v in (row.get("to_each_spoke_fps") or {}).items())
        note = " (hub: python data path)" if row["hub_data_path"] == "python" else ""
        print(f"{n:>4} {row['hub_start_s']:>5} {up:>18} {row['reach']:>6} "
              f"{row['hub_cpu_pct']:>8} {row['hub_cpu_pct'] / n:>7.3f} "
              f"{row['spoke_cpu_pct']:>10} {row['hub_rss_mb']:>7}M {row['spoke_rss_mb']:>8}M "
              f"{row['status_query_s']:>5}/{row['status_json_s']:<5} {back:>19} "
              f"{row.get('restart_handshakes_max', '-')!s:>3}"
              f"  {fps}{note}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
