"""bridger against the tunnels a user would pick instead, same lab, same run.

    python3 benchmarks/compare.py [--duration 10] [--tunnels bridger,openvpn,fastd]
                                  [--loss 1 --delay 10]

Builds the namespace lab (engine ``direct``: routed in-kernel, so the WAN is
not the bottleneck; with ``--loss``/``--delay`` the impairing engine), then for
each tunnel, in a fresh lab of the same topology: TCP throughput both ways
(iperf3, one stream hostA1 <-> hostB1), 64-byte UDP packets/s delivered, RTT
added over the bare WAN, CPU seconds of the tunnel processes per Gbit carried,
and peak RSS per gateway. Prints a table with the ratios bridger/peer and
writes it as Markdown and JSON to benchmarks/results/ (gitignored).

Figures are measurements of this machine at this moment, never pass/fail.
Peers missing from the system are installed with ``apt-get install -y``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import Runner, make

from bridger.lab import Lab, LabOptions

RESULTS = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PACKAGES = {"openvpn": "openvpn", "fastd": "fastd", "iperf3": "iperf3"}
SERVER, CLIENT = "hostB1", "hostA1"

#: (key, label, unit, higher is better)
METRICS = [
    ("tcp_a_to_b_mbit", "TCP A->B", "Mbit/s", True),
    ("tcp_b_to_a_mbit", "TCP B->A", "Mbit/s", True),
    ("udp64_pps", "64-byte UDP delivered", "packets/s", True),
    ("rtt_added_ms", "RTT added", "ms", False),
    ("cpu_s_per_gbit", "CPU per Gbit (both gateways)", "CPU-s/Gbit", False),
    ("rss_mb", "peak RSS per gateway", "MB", False),
    ("tcp_retransmits", "TCP retransmits A->B", "segments", False),
]


def ensure_installed(names: list[str]) -> None:
    """apt-get the peers (and iperf3) that are not on PATH yet."""
    missing = [PACKAGES[n] for n in names if n in PACKAGES and shutil.which(n) is None]
    if missing:
        print(f"installing {' '.join(missing)} ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True,
                       stdout=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process and its reaped children, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RssSampler:
    """Peak RSS of each gateway's tunnel process, sampled in the background."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for site, pid in self.pids.items():
                self.peak[site] = max(self.peak[site], rss_mb(pid))

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.peak


def wait_link(lab: Lab, runner: Runner, timeout: float = 40.0) -> None:
    dst = lab.lan_address(SERVER)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.run(CLIENT, "ping", "-c", "1", "-W", "1", dst, check=False).returncode == 0:
            return
        for proc in runner.procs.values():
            if proc.poll() is not None:
                raise RuntimeError(f"{runner.name} exited\n{runner.logs()}")
    raise RuntimeError(f"{runner.name}: no ping across the tunnel\n{runner.logs()}")


def ping_avg_ms(lab: Lab, role: str, dst: str, count: int = 200) -> float:
    out = lab.run(role, "ping", "-q", "-c", str(count), "-i", "0.01", dst, timeout=120).stdout
    stats = out.strip().splitlines()[-1].split("=")[1].split("/")
    return float(stats[1])


def iperf(lab: Lab, *args: str, duration: float) -> dict[str, Any]:
    out = lab.run(
        CLIENT, "iperf3", "-c", lab.lan_address(SERVER), "-J", "-t", str(duration), *args,
        timeout=duration + 60, check=False,
    )
    doc: dict[str, Any] = json.loads(out.stdout)
    if "error" in doc:
        raise RuntimeError(f"iperf3: {doc['error']}")
    return doc


def measure(runner: Runner, lab: Lab, duration: float) -> dict[str, float]:
    res: dict[str, float] = {}
    server = lab.popen(SERVER, "iperf3", "-s", stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        iperf(lab, duration=2)  # warm-up: handshakes, ARP, bridge learning, path MTU
        pids = runner.pids()
        sampler = RssSampler(pids)
        cpu0 = sum(cpu_seconds(p) for p in pids.values())
        up = iperf(lab, duration=duration)
        cpu1 = sum(cpu_seconds(p) for p in pids.values())
        down = iperf(lab, "-R", duration=duration)
        peak = sampler.stop()
        res["tcp_a_to_b_mbit"] = up["end"]["sum_received"]["bits_per_second"] / 1e6
        res["tcp_b_to_a_mbit"] = down["end"]["sum_received"]["bits_per_second"] / 1e6
        res["tcp_retransmits"] = up["end"]["sum_sent"].get("retransmits", 0)
        gbit = up["end"]["sum_received"]["bytes"] * 8 / 1e9
        res["cpu_s_per_gbit"] = (cpu1 - cpu0) / gbit if gbit else float("nan")
        res["rss_mb"] = max(peak.values())
        udp = iperf(lab, "-u", "-l", "64", "-b", "0", duration=min(duration, 5.0))
        s = udp["end"]["sum"]
        res["udp64_pps"] = (s["packets"] - s["lost_packets"]) / s["seconds"]
    finally:
        server.terminate()
        server.wait()
    wan = ping_avg_ms(lab, "gwA", lab.gateway_wan_address("B"))
    lan = ping_avg_ms(lab, CLIENT, lab.lan_address(SERVER))
    res["rtt_ms"] = lan
    res["rtt_added_ms"] = lan - wan
    return res


def run_one(name: str, options: LabOptions, duration: float, workdir: Path) -> dict[str, float]:
    with Lab(options) as lab:
        runner = make(name, lab, workdir)
        try:
            runner.start()
            wait_link(lab, runner)
            return measure(runner, lab, duration)
        finally:
            runner.stop()


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def table(results: dict[str, dict[str, float]], base: str = "bridger") -> str:
    names = list(results)
    peers = [n for n in names if n != base and not n.startswith("bridger")]
    head = ["metric", "unit", *names, *(f"{base}/{p}" for p in peers if base in results)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, unit, _ in METRICS:
        row = [label, unit, *(fmt(results[n].get(key)) for n in names)]
        if base in results:
            for p in peers:
                a, b = results[base].get(key), results[p].get(key)
                row.append(f"{a / b:.2f}x" if a is not None and b else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tunnels", default="bridger,openvpn,fastd")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--loss", type=float, default=0.0, help="WAN loss %% each way")
    p.add_argument("--delay", type=float, default=0.0, help="WAN delay ms each way")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.tunnels.split(",") if n.strip()]
    ensure_installed(["iperf3", *names])
    impaired = bool(args.loss or args.delay)
    options = LabOptions(loss_pct=args.loss, delay_ms=args.delay,
                         engine="auto" if impaired else "direct")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bridger-bench-") as tmp:
        for name in names:
            print(f"== {name}", flush=True)
            results[name] = run_one(name, options, args.duration, Path(tmp))
            print(json.dumps(results[name]), flush=True)
    when = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    wan = f"loss {args.loss}% delay {args.delay} ms each way" if impaired else "no impairment"
    header = (f"# bridger vs peers ({when})\n\n{os.cpu_count()} CPUs, kernel "
              f"{os.uname().release}, WAN: {wan}, iperf3 {args.duration:.0f} s per test\n\n")
    text = header + table(results) + "\n"
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"when": when, "wan": wan, "duration": args.duration, "results": results}
    tag = "impaired" if impaired else "clean"
    for stem in (f"compare-{tag}-{when}", f"latest-{tag}"):
        (args.out / f"{stem}.md").write_text(text)
        (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
