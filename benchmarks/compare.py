"""bridger against the tunnels a user would pick instead, same lab, same run.

    .venv/bin/python benchmarks/compare.py [--duration 10] [--only attack|storm]
                                       [--attack-rounds 3]
                                       [--tunnels bridger,bridger-python,openvpn,fastd,
                                                  tinc,wireguard-vxlan]
                                       [--loss 1 --delay 10] [--no-lossy]
                                       [--path-mtu 1400 [--filter-icmp]]
                                       [--no-attack] [--no-storm]

Builds the namespace lab (engine ``direct``: routed in-kernel, so the WAN is
not the bottleneck; with ``--loss``/``--delay`` the impairing engine), then for
each tunnel, in a fresh lab of the same topology: TCP throughput both ways
(iperf3, one stream hostA1 <-> hostB1), 64-byte UDP packets/s delivered, RTT
added over the bare WAN, CPU seconds of the tunnel processes per Gbit carried,
and peak RSS per gateway. Unless the whole run is impaired (or ``--no-lossy``),
each tunnel then gets a second lab with 1% loss and 10 ms delay each way (the
impairing engine: netem, or without it the lab's userspace wire) for the rows
"TCP, 1% loss 10 ms". The bridger tunnels get a lab "under attack" (TCP while
scripts/attack.py sprays gwB's port); every tunnel gets one "during a storm"
(a LAN host at site A broadcasts at line rate, tests/e2e/flood.py: ping loss
and TCP A->B across, and how much of the storm reaches site B). Prints a
table with the ratios bridger/peer and writes it as Markdown and JSON to
benchmarks/results/ (gitignored).

``--path-mtu N`` narrows the router's link towards site B to N bytes in every
lab of the run (``LabOptions.path_mtu_b``): a hop in the middle of the path
that neither gateway's interface shows; ``--filter-icmp`` also makes the
router drop the ICMP "fragmentation needed" it would send (a PMTU black
hole). The peers are then set up as their manuals advise a user who knows
the path MTU (the notes under the table say what each was given); bridger
gets no MTU option and has to find the path MTU itself.

The bridger rows: ``bridger`` runs the default data path (``auto``: the
native one when the extension is built), ``bridger-native`` passes
``--data-path native``, ``bridger-python`` ``--data-path python`` (the
pure-Python reference); the table's header names the data path each row's
gateways reported in ``bridger status``. ``bridger-base`` is another checkout
(``BRIDGER_BASE=DIR``), see benchmarks/peers.py.

Figures are measurements of this machine at this moment, never pass/fail.
Peers missing from the system are installed with ``apt-get install -y``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import Bridger, Runner, make

from bridger.guard.constants import DEFAULT_FLOOD_RATE, DEFAULT_ND_SHARE
from bridger.keys import encode_key, public_key
from bridger.lab import Lab, LabOptions
from bridger.lab.hub import family

RESULTS = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Tunnel (or tool) name -> {program it needs: Debian package that ships it}.
PACKAGES: dict[str, dict[str, str]] = {
    "iperf3": {"iperf3": "iperf3"},
    "openvpn": {"openvpn": "openvpn"},
    "openvpn-mssfix": {"openvpn": "openvpn"},
    "fastd": {"fastd": "fastd"},
    "tinc": {"tincd": "tinc"},
    "wireguard-vxlan": {"wireguard-go": "wireguard-go", "wg": "wireguard-tools"},
}
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
    ("tcp_lossy_a_to_b_mbit", "TCP A->B, 1% loss 10 ms", "Mbit/s", True),
    ("tcp_lossy_b_to_a_mbit", "TCP B->A, 1% loss 10 ms", "Mbit/s", True),
    ("tcp_attack_base_mbit", "TCP A->B, same lab, no attack", "Mbit/s", True),
    ("tcp_attack4k_ratio", "TCP A->B under attack 4k/s (x unattacked)", "ratio", True),
    ("tcp_attack20k_ratio", "TCP A->B under attack 20k/s (x unattacked)", "ratio", True),
    ("tcp_attack20k_closed_ratio", "TCP A->B, 20k/s at a closed port (x unattacked)", "ratio",
     True),
    ("attack_answered", "answers to the attack the issue forbids", "datagrams", False),
    ("tcp_storm_base_mbit", "TCP A->B, same lab, no storm", "Mbit/s", True),
    ("storm_ping_loss_pct", "ping loss A->B during a storm", "%", False),
    ("tcp_storm_mbit", "TCP A->B during a storm", "Mbit/s", True),
    ("tcp_storm_ratio", "TCP A->B during a storm (x calm)", "ratio", True),
    ("storm_far_fps", "storm frames/s reaching site B", "frames/s", False),
    ("storm_far_bound_fps", "... bridger's bound there (budget + burst over the window)",
     "frames/s", False),
]
#: The lab of the "1% loss 10 ms" rows: one-way knobs on the router's egress to each gateway.
LOSSY = LabOptions(loss_pct=1.0, delay_ms=10.0)
#: Tunnel name -> ``bridger up --data-path`` value, next to the runners of peers.py.
DATA_PATHS = {"bridger-native": "native", "bridger-python": "python"}


def make_runner(name: str, lab: Lab, workdir: Path) -> Runner:
    """The runner of tunnel ``name``: the data-path rows here, the others from peers.py."""
    if name in DATA_PATHS:
        return Bridger(lab, workdir, name=name, extra=("--data-path", DATA_PATHS[name]))
    return make(name, lab, workdir)


def ensure_installed(names: list[str]) -> None:
    """apt-get the peers (and iperf3) whose programs are not on PATH yet.

    Without recommends: wireguard-tools would otherwise pull in a kernel image.
    """
    missing = sorted({pkg for n in names for prog, pkg in PACKAGES.get(n, {}).items()
                      if shutil.which(prog) is None})
    if missing:
        print(f"installing {' '.join(missing)} ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                       check=True, stdout=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process, its descendants and their reaped children, in seconds."""
    total = 0
    for p in family(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, in MB."""
    total = 0.0
    for p in family(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


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


@contextlib.contextmanager
def iperf_server(lab: Lab) -> Iterator[None]:
    """iperf3 -s on the server host, warmed up: handshakes, ARP, bridge learning, path MTU."""
    server = lab.popen(SERVER, "iperf3", "-s", stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        iperf(lab, duration=2)
        yield
    finally:
        server.terminate()
        server.wait()


def data_path(runner: Runner) -> str:
    """The data path gwA's bridger reports in its status ("-" for other tunnels)."""
    if not isinstance(runner, Bridger):
        return "-"
    env = dict(os.environ, PYTHONPATH=str(runner.root))
    out = subprocess.run(
        [sys.executable, "-m", "bridger", "status", "--json",
         "--state-dir", str(runner.workdir / f"{runner.name}-stateA")],
        capture_output=True, text=True, timeout=20, env=env, cwd=runner.root, check=False,
    )
    try:
        return str(json.loads(out.stdout).get("data_path", "?"))
    except json.JSONDecodeError:
        return "?"


def measure(runner: Runner, lab: Lab, duration: float) -> dict[str, float]:
    res: dict[str, float] = {}
    with iperf_server(lab):
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
    wan = ping_avg_ms(lab, "gwA", lab.gateway_wan_address("B"))
    lan = ping_avg_ms(lab, CLIENT, lab.lan_address(SERVER))
    res["rtt_ms"] = lan
    res["rtt_added_ms"] = lan - wan
    return res


def measure_lossy(runner: Runner, lab: Lab, duration: float) -> dict[str, float]:
    """TCP both ways over the LOSSY lab."""
    with iperf_server(lab):
        up = iperf(lab, duration=duration)
        down = iperf(lab, "-R", duration=duration)
    return {"tcp_lossy_a_to_b_mbit": up["end"]["sum_received"]["bits_per_second"] / 1e6,
            "tcp_lossy_b_to_a_mbit": down["end"]["sum_received"]["bits_per_second"] / 1e6}


#: Datagrams/s of scripts/attack.py at gwB's port for the "under attack" rows.
ATTACK_RATES = (4000, 20000)
#: The control of each round: the same spray at a port of gwB where nothing listens (the
#: kernel answers ICMP): what the attacker and the kernel cost the transfer without bridger.
CLOSED_RATE, CLOSED_PORT = 20000, 55556
#: Rounds of (no attack, each of ATTACK_RATES, the control) in the "under attack" lab, alternated so
#: that a shared machine's load falls on all of them alike (``--attack-rounds``).
ATTACK_ROUNDS = 3
#: Answer kinds an attack may get (scripts/attack.py's classes): cookie replies (type 3)
#: and, to a replayed authentic initiation that beat its original, one response (type 2).
#: Any other answer is counted in the "answered" figure, which must be 0 (issue 21).
SILENT_CLASSES = ("junk", "flip", "replay", "hs_badmac", "other")


def forbidden_answers(answers: dict[str, dict[str, int]]) -> int:
    """Datagrams gwB sent to the attacker that the issue does not allow: any answer
    to a silent class, anything but cookie replies to the handshake classes, more
    than one kind of response to the replayed handshakes."""
    bad = 0
    for cls, row in answers.items():
        kinds = {k: n for k, n in row.items() if k not in ("datagrams", "bytes")}
        if cls in SILENT_CLASSES:
            bad += sum(kinds.values())
            continue
        for kind, n in kinds.items():
            if kind.startswith("type3_"):
                continue
            if cls == "hs_replay" and kind.startswith("type2_"):
                continue  # an authenticated handshake (tests/e2e/test_wan_attack_lab.py)
            bad += n
    return bad


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


def median(values: list[float]) -> float:
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return math.nan
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def measure_attacked(runner: Runner, lab: Lab, duration: float,
                     rounds: int | None = None) -> dict[str, float]:
    """bridger only: TCP A->B alone and while scripts/attack.py sprays gwB's port at
    each of ATTACK_RATES (junk, flips and replays of captured tunnel traffic,
    handshakes with bad and valid mac1, spoofed sources) and at a closed port
    (the control), in ``rounds`` rounds (ATTACK_ROUNDS) that alternate: alone,
    4k, 20k, closed, alone, 4k, ... Each attacked
    run's ratio is to the unattacked run of its round; a row is the median of its
    rounds. Also counts the answers the issue forbids (``attack_answered``)."""
    if not isinstance(runner, Bridger):
        return {}
    rounds = ATTACK_ROUNDS if rounds is None else rounds
    attack = Path(__file__).resolve().parents[1] / "scripts" / "attack.py"
    res: dict[str, float] = {}
    bases: list[float] = []
    ratios: dict[int, list[float]] = {rate: [] for rate in ATTACK_RATES}
    closed: list[float] = []
    answered = 0
    with iperf_server(lab):
        pcap = runner.workdir / "attack-capture.pcap"
        dump = lab.popen("wan", "tcpdump", "-i", "wB", "-nn", "-U", "-c", "400", "-w", str(pcap),
                         "udp port 55555", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        iperf(lab, duration=1)
        dump.terminate()
        dump.wait()
        for turn in range(rounds):
            base = iperf(lab, duration=duration)["end"]["sum_received"]["bits_per_second"] / 1e6
            bases.append(base)
            print(f"round {turn + 1}: no attack {base:,.0f} Mbit/s ({load()})", flush=True)
            for rate, port in (*((r, 55555) for r in ATTACK_RATES), (CLOSED_RATE, CLOSED_PORT)):
                out = runner.workdir / f"attack-{rate}-{port}-{turn}.json"
                proc = lab.popen(
                    "wan", sys.executable, str(attack), "--iface", "wB",
                    "--target", f"{lab.gateway_wan_address('B')}:{port}",
                    "--peer", lab.gateway_wan_address("A"),
                    "--target-key", encode_key(public_key(runner.keys["B"])),
                    "--source-base", f"{lab.gateway_wan_address('B').rsplit('.', 1)[0]}.200",
                    "--capture", str(pcap), "--duration", str(duration + 10),
                    "--rate", str(rate), "--seed", str(turn + 1), "--json", str(out),
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                try:
                    assert proc.stdout is not None
                    proc.stdout.readline()  # "spraying"
                    time.sleep(1.0)
                    got = iperf(lab, duration=duration)["end"]["sum_received"]["bits_per_second"]
                finally:
                    proc.terminate()
                    text, _ = proc.communicate(timeout=60)
                summary = json.loads(text.strip().splitlines()[-1]) if text.strip() else {}
                ratio = got / 1e6 / base if base else math.nan
                if port == CLOSED_PORT:
                    closed.append(ratio)
                    print(f"round {turn + 1}: {rate}/s at closed port {port} {got / 1e6:,.0f} "
                          f"Mbit/s = {ratio:.2f}x ({load()})", flush=True)
                    continue
                bad = forbidden_answers(summary.get("answers", {}))
                answered += bad
                ratios[rate].append(ratio)
                print(f"round {turn + 1}: attack {summary.get('rate', '?')}/s (asked {rate}) "
                      f"{got / 1e6:,.0f} Mbit/s = {ratio:.2f}x, forbidden answers {bad} "
                      f"({load()})", flush=True)
    res["tcp_attack_base_mbit"] = median(bases)
    for rate in ATTACK_RATES:
        res[f"tcp_attack{rate // 1000}k_ratio"] = median(ratios[rate])
    res["tcp_attack20k_closed_ratio"] = median(closed)
    res["attack_answered"] = answered
    print("under attack (median of " + str(rounds) + " rounds): " + ", ".join(
        f"{rate}/s {median(ratios[rate]):.2f}x [{' '.join(f'{r:.2f}' for r in ratios[rate])}]"
        for rate in ATTACK_RATES) + f"; {CLOSED_RATE}/s at a closed port {median(closed):.2f}x "
        f"[{' '.join(f'{r:.2f}' for r in closed)}]; forbidden answers {answered}", flush=True)
    return res


#: The broadcast storm of the "during a storm" rows: tests/e2e/flood.py (one frame, sent
#: as fast as AF_PACKET takes it) from STORM_HOST, a LAN host at site A that is neither end
#: of the measured traffic.
FLOOD = Path(__file__).resolve().parents[1] / "tests" / "e2e" / "flood.py"
STORM_HOST, STORM_WITNESS = "hostA2", "hostB2"
STORM_PINGS = 200
#: bridger's budget for a broadcast storm at the defaults (docs/guard.md): the general
#: share of flood_rate, and its burst (flood_burst 0: one second's worth).
STORM_RATE = DEFAULT_FLOOD_RATE * (1 - DEFAULT_ND_SHARE)
STORM_BURST = STORM_RATE


#: IEEE local experimental EtherType 2: no host's stack takes it up.
STORM_ETHERTYPE = 0x88B6


def storm_frame(src_mac: str) -> bytes:
    """A broadcast no host's stack takes up (STORM_ETHERTYPE), as in
    tests/e2e/test_storm_lab.py: it costs the sender and the bridges alone."""
    mac = bytes.fromhex(src_mac.replace(":", ""))
    return (b"\xff" * 6 + mac + STORM_ETHERTYPE.to_bytes(2, "big")
            + b"bridger-bench-storm").ljust(60, b"\0")


def storm_counter(lab: Lab, ifname: str) -> bool:
    """An nftables counter of the storm's EtherType at the witness's ingress (False,
    one line printed, when nft refuses: the interface's whole counter is used)."""
    script = (f"table netdev bench_witness {{\n  counter storm {{ }}\n"
              f"  chain ingress {{\n    type filter hook ingress device \"{ifname}\" "
              f"priority 0; policy accept;\n"
              f"    ether type 0x{STORM_ETHERTYPE:04x} counter name storm\n  }}\n}}\n")
    done = lab.run(STORM_WITNESS, "nft", "-f", "-", input=script, check=False)
    if done.returncode != 0:
        print(f"storm counter at {STORM_WITNESS}: nft failed ({done.stderr.strip()}); "
              "counting every frame it receives", flush=True)
    return done.returncode == 0


def storm_count(lab: Lab) -> int:
    out = lab.run(STORM_WITNESS, "nft", "-j", "list", "counter", "netdev", "bench_witness",
                  "storm").stdout
    for item in json.loads(out)["nftables"]:
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise RuntimeError(f"no storm counter at {STORM_WITNESS}: {out}")


def rx_packets(lab: Lab, role: str, ifname: str) -> int:
    out = lab.run(role, "ip", "-s", "-j", "link", "show", "dev", ifname).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


def measure_storm(runner: Runner, lab: Lab, duration: float) -> dict[str, float]:
    """TCP A->B alone, then while STORM_HOST broadcasts at line rate: ping loss
    hostA1 -> hostB1 (STORM_PINGS at 10 ms), TCP A->B, and the storm frames per
    second that reach STORM_WITNESS at site B. Each tunnel runs with its defaults
    (bridger: storm control at the default flood_rate; the peers have none).

    The storm host would be another machine; here it shares the VM's CPUs, so
    it is held to the last one (the bridge's flooding of the storm runs there
    too, in its sender's softirq); the tunnels and the measured hosts run where
    the scheduler puts them."""
    storm_cpu = str(max(os.sched_getaffinity(0)))
    storm_if, witness_if = lab.lan_ifname(STORM_HOST), lab.lan_ifname(STORM_WITNESS)
    mac = lab.run(STORM_HOST, "cat", f"/sys/class/net/{storm_if}/address").stdout.strip()
    frame = storm_frame(mac)
    dst = lab.lan_address(SERVER)
    res: dict[str, float] = {}
    with iperf_server(lab):
        base = iperf(lab, duration=duration)["end"]["sum_received"]["bits_per_second"] / 1e6
        res["tcp_storm_base_mbit"] = base
        # The storm's frames alone, counted by the witness's kernel (the interface's
        # counter also counts whatever else reaches it, e.g. unicast a bridge floods).
        counting = storm_counter(lab, witness_if)
        storm0 = storm_count(lab) if counting else 0
        far0, lan0 = rx_packets(lab, STORM_WITNESS, witness_if), rx_packets(lab, "gwA", "eth1")
        flooder = lab.popen(STORM_HOST, "taskset", "-c", storm_cpu, sys.executable, str(FLOOD),
                            storm_if, str(duration + 60), frame.hex(), stdout=subprocess.DEVNULL)
        started = time.monotonic()
        try:
            time.sleep(1.0)  # the storm is on (and any queue it fills is full)
            out = lab.run(CLIENT, "ping", "-q", "-c", str(STORM_PINGS), "-i", "0.01", "-W", "1",
                          dst, check=False, timeout=120).stdout
            received = re.search(r"(\d+) received", out)
            got = int(received[1]) if received else 0
            try:
                doc = iperf(lab, duration=duration)
                stormy = doc["end"]["sum_received"]["bits_per_second"] / 1e6
            except (RuntimeError, json.JSONDecodeError, subprocess.SubprocessError) as exc:
                print(f"TCP during the storm: {exc}", flush=True)
                stormy = 0.0  # no transfer got through the storm
            seconds = time.monotonic() - started
            storm = storm_count(lab) - storm0 if counting else -1
            far = rx_packets(lab, STORM_WITNESS, witness_if) - far0
            storm = far if storm < 0 else storm
            lan = rx_packets(lab, "gwA", "eth1") - lan0
        finally:
            flooder.terminate()
            flooder.wait(timeout=60)
        res["storm_ping_loss_pct"] = 100.0 * (STORM_PINGS - got) / STORM_PINGS
        res["tcp_storm_mbit"] = stormy
        res["tcp_storm_ratio"] = stormy / base if base else math.nan
        res["storm_far_fps"] = storm / seconds
        res["storm_far_other_fps"] = (far - storm) / seconds  # not the storm (JSON only)
        if isinstance(runner, Bridger):
            # The guard's general budget at the default flood_rate, as frames/s over
            # this window: rate + burst / seconds (a short window shows the burst).
            res["storm_far_bound_fps"] = STORM_RATE + STORM_BURST / seconds
        res["storm_lan_fps"] = lan / seconds  # the storm offered to gwA (JSON only)
        print(f"during a storm of {lan / seconds:,.0f} frames/s into gwA: ping "
              f"{got}/{STORM_PINGS}, TCP {base:,.0f} -> {stormy:,.0f} Mbit/s, "
              f"{storm / seconds:,.0f} storm frames/s at {STORM_WITNESS} in {seconds:.1f} s "
              f"(and {(far - storm) / seconds:,.0f}/s other frames)"
              + (f" (bound {res['storm_far_bound_fps']:,.0f}/s)"
                 if "storm_far_bound_fps" in res else ""), flush=True)
    return res


Measure = Callable[[Runner, Lab, float], dict[str, float]]


def run_one(name: str, options: LabOptions, duration: float, workdir: Path,
            how: Measure = measure) -> tuple[dict[str, float], str, list[str]]:
    """``how``'s figures for tunnel ``name`` in a fresh lab, the data path it ran,
    and the runner's notes (what it was configured with for the path)."""
    with Lab(options) as lab:
        runner = make_runner(name, lab, workdir)
        try:
            runner.start()
            wait_link(lab, runner)
            runner.settle()
            return how(runner, lab, duration), data_path(runner), runner.notes
        finally:
            runner.stop()


def run_or_note(name: str, options: LabOptions, duration: float, workdir: Path,
                how: Measure = measure) -> tuple[dict[str, float], str, list[str]]:
    """:func:`run_one`, but a tunnel that fails (it may, on a narrow path) leaves
    empty figures and a note instead of ending the run."""
    try:
        return run_one(name, options, duration, workdir, how)
    except (RuntimeError, subprocess.SubprocessError, json.JSONDecodeError, KeyError) as exc:
        detail = f"{exc} {getattr(exc, 'stderr', None) or ''}".strip() or type(exc).__name__
        print(f"{name}: failed: {detail}", flush=True)
        what = getattr(how, "__name__", None) or getattr(how, "func", how).__name__
        return {}, "-", [f"failed ({what}): {detail.splitlines()[0]}"]


def fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"  # not measured, or nothing carried to divide by (a stalled TCP run)
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def table(results: dict[str, dict[str, float]], base: str = "bridger") -> str:
    """Markdown: one column per tunnel, then ``base``/peer ratios (``base`` absent:
    bridger-native if measured)."""
    if base not in results and "bridger-native" in results:
        base = "bridger-native"
    names = list(results)
    peers = [n for n in names if n != base and not n.startswith("bridger")]
    head = ["metric", "unit", *names, *(f"{base}/{p}" for p in peers if base in results)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, unit, _ in METRICS:
        if all(results[n].get(key) is None for n in names):
            continue  # not measured in this run (the lossy rows of an impaired run)
        row = [label, unit, *(fmt(results[n].get(key)) for n in names)]
        if base in results:
            for p in peers:
                a, b = results[base].get(key), results[p].get(key)
                if a is None or not b or math.isnan(a) or math.isnan(b):
                    row.append("-")
                else:
                    row.append(f"{a / b:.2f}x")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def notes_table(notes: dict[str, list[str]]) -> str:
    """Markdown: what each tunnel was given (or found) for the path."""
    lines = ["| tunnel | MTU settings for this path |", "|---|---|"]
    lines += [f"| {name} | {'; '.join(dict.fromkeys(n))} |" for name, n in notes.items() if n]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tunnels",
                   default="bridger,bridger-python,openvpn,fastd,tinc,wireguard-vxlan",
                   help="comma-separated: bridger (default data path), bridger-native, "
                   "bridger-python, bridger-nooffload, bridger-noguard, bridger-base "
                   "(BRIDGER_BASE=DIR), openvpn, openvpn-mssfix, fastd, tinc, wireguard-vxlan")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--loss", type=float, default=0.0, help="WAN loss %% each way")
    p.add_argument("--delay", type=float, default=0.0, help="WAN delay ms each way")
    p.add_argument("--lossy", action=argparse.BooleanOptionalAction, default=True,
                   help="also TCP over 1%% loss and 10 ms delay each way, in a second lab "
                   "per tunnel (default on; off when --loss/--delay impair the whole run)")
    p.add_argument("--path-mtu", type=int, default=None, metavar="N",
                   help="narrow the router's link towards site B to N bytes (every lab of "
                   "the run); the peers get the MTU settings their manuals advise")
    p.add_argument("--filter-icmp", action="store_true",
                   help="the router drops ICMP fragmentation-needed / packet-too-big")
    p.add_argument("--attack", action=argparse.BooleanOptionalAction, default=True,
                   help="also the bridger rows under a WAN attack at gwB's port (scripts/"
                   "attack.py at 4k and 20k datagrams/s), in another lab per bridger tunnel")
    p.add_argument("--storm", action=argparse.BooleanOptionalAction, default=True,
                   help="also every tunnel during a broadcast storm from a LAN host at site "
                   "A (ping loss, TCP A->B), in another lab per tunnel")
    p.add_argument("--attack-rounds", type=int, default=ATTACK_ROUNDS, metavar="N",
                   help="rounds of (no attack, 4k/s, 20k/s), alternated, in the 'under attack' "
                   "lab; its rows are the medians (default %(default)s)")
    p.add_argument("--only", choices=("attack", "storm"),
                   help="only the 'under attack' (bridger tunnels) or 'during a storm' labs: "
                   "e.g. --only attack --tunnels bridger-native prints the attack ratios")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.attack_rounds < 1:
        p.error("--attack-rounds must be at least 1")
    names = [n.strip() for n in args.tunnels.split(",") if n.strip()]
    ensure_installed(["iperf3", *names])
    impaired = bool(args.loss or args.delay)
    path = {"path_mtu_b": args.path_mtu, "filter_icmp": args.filter_icmp}
    options = LabOptions(loss_pct=args.loss, delay_ms=args.delay,
                         engine="auto" if impaired else "direct", **path)
    lossy_options = dataclasses.replace(LOSSY, **path)
    lossy = args.lossy and not impaired
    results: dict[str, dict[str, float]] = {}
    paths: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="bridger-bench-") as tmp:
        for name in names:
            print(f"== {name}", flush=True)
            if args.only is None:
                results[name], paths[name], notes[name] = run_or_note(
                    name, options, args.duration, Path(tmp))
            else:
                results[name], paths[name], notes[name] = {}, "-", []
            if lossy and args.only is None:
                figures, _, more = run_or_note(name, lossy_options, args.duration, Path(tmp),
                                               measure_lossy)
                results[name].update(figures)
                notes[name] += more
            if args.attack and name.startswith("bridger") and args.only in (None, "attack"):
                attacked = functools.partial(measure_attacked, rounds=args.attack_rounds)
                figures, ran, more = run_or_note(name, options, args.duration, Path(tmp),
                                                 attacked)
                results[name].update(figures)
                paths[name] = paths[name] if paths[name] != "-" else ran
                notes[name] += more
            if args.storm and args.only in (None, "storm"):
                figures, ran, more = run_or_note(name, options, args.duration, Path(tmp),
                                                 measure_storm)
                results[name].update(figures)
                paths[name] = paths[name] if paths[name] != "-" else ran
                notes[name] += more
            print(f"data path: {paths[name]}", json.dumps(results[name]),
                  "; ".join(dict.fromkeys(notes[name])), flush=True)
    when = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    wan = f"loss {args.loss}% delay {args.delay} ms each way" if impaired else "no impairment"
    mtu = (f"path MTU {args.path_mtu} (the router's link to gwB)" if args.path_mtu
           else "path MTU 1500") + (", ICMP too-big dropped" if args.filter_icmp else "")
    ran = ", ".join(f"{n} {p}" for n, p in paths.items() if p != "-")
    header = (f"# bridger vs peers ({when})\n\n{os.cpu_count()} CPUs, kernel "
              f"{os.uname().release}, WAN: {wan}, {mtu}, iperf3 {args.duration:.0f} s per test"
              + (f", data paths: {ran}" if ran else "") + "\n\n")
    text = header + table(results) + "\n\n" + notes_table(notes) + "\n"
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"when": when, "wan": wan, "path_mtu": args.path_mtu or 1500,
           "filter_icmp": args.filter_icmp, "duration": args.duration, "data_paths": paths,
           "results": results, "notes": {n: list(dict.fromkeys(v)) for n, v in notes.items()}}
    tag = ("impaired" if impaired else "clean") + (
        f"-pmtu{args.path_mtu}" if args.path_mtu else "") + (
        "-noicmp" if args.filter_icmp else "")
    for stem in (f"compare-{tag}-{when}", f"latest-{tag}"):
        (args.out / f"{stem}.md").write_text(text)
        (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
