"""Any path MTU (issue 20): real `bridger up` processes, a narrow hop between two routers.

::

  hostA1 ─ [swA] ─ gwA ── wA [ wan ] wB ══ wan0 [ispB] lan0 ── wan0 gwB ─ [swB] ─ hostB1
                                     └─ MTU N ─┘     (natB instead of ispB: the NAT box is
                                                      the second router)

The narrow link joins the WAN router and ispB, so neither gateway can read it
off an interface; each direction meets it while being forwarded, and the
routers' ICMP "fragmentation needed" / "packet too big" can be dropped
(``filter_icmp``).  Hosts keep MTU 1500 throughout and no ``--wan-mtu`` is
given: bridger must find the path MTU itself, on both data paths.

1. Narrow from the start (1492, 1452, 1400; 1280 over an IPv6 underlay;
   behind NAT): each gateway's status shows the exact path MTU, learnt by
   probe; DF pings of every size up to the LAN MTU are answered; TCP is
   byte-exact both ways; a UDP bulk stream of full-size datagrams arrives.
2. Shrinking mid-session, with and without ICMP: a TCP stream stalls for
   less than 5 s; then (once, it takes half a minute) the path grows back and
   is used again.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridger.lab import Lab, LabOptions
from bridger.protocol.constants import PMTU_RAISE_INTERVAL
from tests.e2e.bridged import BridgedLab
from tests.e2e.test_multisite import Transfer

pytestmark = pytest.mark.netns

HERE = Path(__file__).resolve().parent
DFSWEEP = str(HERE / "dfsweep.py")
XFER = str(HERE / "tcpxfer.py")
#: Largest echo payload that fills a 1500-byte LAN packet.
MAX_PING = {4: 1500 - 28, 6: 1500 - 48}
NBYTES = 4_000_000
#: The issue's promise: TCP flows again this soon after the path shrank.
RECOVERY = 5.0


@dataclass(frozen=True)
class Case:
    mtu: int
    data_path: str
    family: int = 4
    nat: bool = False
    filter_icmp: bool = False

    def __str__(self) -> str:
        extra = ("-nat" if self.nat else "") + ("-noicmp" if self.filter_icmp else "")
        return f"v{self.family}-{self.mtu}-{self.data_path}{extra}"


@pytest.fixture
def bridged(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Lab, BridgedLab]]:
    case: Case = request.param
    opts = LabOptions(path_mtu_b=case.mtu, nat_b=case.nat, filter_icmp=case.filter_icmp,
                      engine="direct")
    with Lab(opts) as lab:
        peers = None
        b_dials_only = case.nat
        if case.family == 6:
            peers = {"A": f"[{lab.gateway_wan_address6('B')}]:55555",
                     "B": f"[{lab.gateway_wan_address6('A')}]:55555"}
        with BridgedLab(lab, tmp_path, extra_args=["--data-path", case.data_path],
                        peers=peers, b_dials_only=b_dials_only) as gws:
            gws.start_all()
            yield lab, gws


def peer_status(gws: BridgedLab, site: str) -> dict[str, Any]:
    doc = gws.status(site)
    assert doc is not None
    peer: dict[str, Any] = doc["peers"][0]
    return peer


def wait_path_mtu(gws: BridgedLab, mtu: int, within: float,
                  sites: tuple[str, ...] = ("A", "B")) -> float:
    """Seconds until the gateways of ``sites`` show ``mtu``, learnt by probe."""
    start = time.monotonic()
    seen: dict[str, tuple[int, str]] = {}
    while time.monotonic() - start < within:
        for site in sites:
            peer = peer_status(gws, site)
            seen[site] = (peer["path_mtu"], peer["path_mtu_source"])
        if all(v == (mtu, "probe") for v in seen.values()):
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"path MTU {mtu} not learnt within {within}s: {seen}\n{gws.logs()}")


def wait_logged(gws: BridgedLab, line: str, within: float) -> None:
    start = time.monotonic()
    while line not in (logs := gws.logs()):
        assert time.monotonic() - start < within, (line, logs)
        time.sleep(0.2)


def df_sweep(lab: Lab, family: int) -> dict[str, Any]:
    out = lab.run("hostA1", sys.executable, DFSWEEP, lab.lan_address("hostB1", family),
                  str(MAX_PING[family]), timeout=120)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def udp_bulk(lab: Lab, family: int) -> dict[str, Any]:
    """iperf3: 2 s of full-size UDP datagrams (1472 / 1452 bytes) hostA1 -> hostB1,
    at a rate every data path carries on a loaded 2-core machine (this checks
    that they cross, in fragments; speeds are benchmarks/compare.py's)."""
    server = lab.popen("hostB1", "iperf3", "-s", "-p", "5301",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        length = MAX_PING[family]
        for _ in range(50):  # the server needs a moment to listen
            out = lab.run("hostA1", "iperf3", "-c", lab.lan_address("hostB1", family), "-p",
                          "5301", "-u", "-b", "50M", "-w", "4M", "-l", str(length), "-t", "2",
                          "-J", check=False, timeout=60)
            try:
                end: dict[str, Any] = json.loads(out.stdout)["end"]["sum"]
            except (ValueError, KeyError):  # not listening yet, or a run cut short
                time.sleep(0.2)
                continue
            return end
        raise AssertionError(f"iperf3 never ran: {out.stdout} {out.stderr}")
    finally:
        server.kill()
        server.wait()


NARROW = [
    Case(1492, "native"),
    Case(1452, "python"),
    Case(1400, "native", filter_icmp=True),
    Case(1280, "native", family=6),
    Case(1280, "python", family=6, filter_icmp=True),
    Case(1400, "native", nat=True),
]


@pytest.mark.parametrize("bridged", NARROW, ids=str, indirect=True)
def test_a_narrow_path_carries_everything_with_hosts_at_1500(
    bridged: tuple[Lab, BridgedLab], request: pytest.FixtureRequest
) -> None:
    lab, gws = bridged
    case: Case = request.node.callspec.params["bridged"]
    wait_path_mtu(gws, case.mtu, within=15.0)
    swept = df_sweep(lab, case.family)
    assert swept["missing"] == [], swept
    for pair in (("A", "B"), ("B", "A")):
        transfer = Transfer(lab, pair, 5001, NBYTES, case.family)
        try:
            sent, received = transfer.result(timeout=60)
        finally:
            transfer.kill()
        assert sent == received and sent.startswith(f"{NBYTES} "), (pair, sent, received)
    udp = udp_bulk(lab, case.family)
    assert udp["packets"] > 1000 and udp["lost_percent"] < 2.0, udp
    # Frames too big for the path crossed in fragments; nothing was dropped for size.
    for site in gws.sites:
        peer = peer_status(gws, site)
        assert peer["fragments"]["sent"] > 0, peer
        assert peer["drops"].get("frame_size", 0) == 0, peer
    logs = gws.logs()
    assert f"path MTU 1280 -> {case.mtu}" in logs or case.mtu == 1280, logs


def stream_gaps(lines: list[str]) -> list[tuple[float, float]]:
    """(start, length) of each stall between two of the receiver's progress lines."""
    times = [float(line.split()[0]) for line in lines if line and line[0].isdigit()]
    return [(a, b - a) for a, b in itertools.pairwise(times)]


SHRINK = [
    Case(1500, "native", filter_icmp=True),
    Case(1500, "python", filter_icmp=True),
    Case(1500, "native"),
    Case(1500, "python"),
]


@pytest.mark.parametrize("bridged", SHRINK, ids=str, indirect=True)
def test_tcp_flows_again_within_seconds_when_the_path_shrinks(
    bridged: tuple[Lab, BridgedLab], request: pytest.FixtureRequest
) -> None:
    """A TCP stream A->B runs while the narrow hop goes from 1500 to 1400 (and,
    with ICMP filtered on the native path, back to 1500 half a minute later)."""
    lab, gws = bridged
    case: Case = request.node.callspec.params["bridged"]
    grow = case.filter_icmp and case.data_path == "native"
    wait_path_mtu(gws, 1500, within=15.0)
    rx = lab.popen("hostB1", sys.executable, XFER, "recv", "5002", "progress",
                   stdout=subprocess.PIPE, text=True)
    assert rx.stdout is not None and rx.stdout.readline().strip() == "listening"
    tx = lab.popen("hostA1", sys.executable, XFER, "send", lab.lan_address("hostB1"),
                   "5002", "stdin", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(3.0)  # the stream runs at full speed first (the scenario, not a wait)
        shrunk = time.time()
        lab.set_path_mtu("B", 1400)
        # Only A sends large datagrams (B's are ACKs, which fit any path): only A
        # has to notice; B learns it when it has something large to send.
        wait_path_mtu(gws, 1400, within=RECOVERY, sites=("A",))
        # In use at once; the search settles (one log line) a round or two later.
        wait_logged(gws, "path MTU 1500 -> 1400", within=5.0)
        if grow:
            lab.set_path_mtu("B", None)
            wait_path_mtu(gws, 1500, within=PMTU_RAISE_INTERVAL + 10.0, sites=("A",))
        time.sleep(2.0)  # and on at the size it settled on (the scenario, not a wait)
        sent = tx.communicate("stop\n", timeout=60)[0].strip()
        out = rx.communicate(timeout=30)[0].splitlines()
    finally:
        for proc in (tx, rx):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert out and out[-1] == f"done {sent}", (out[-3:], sent)
    gaps = [(start, length) for start, length in stream_gaps(out) if start >= shrunk - 1.0]
    worst = max((length for _, length in gaps), default=0.0)
    assert worst < RECOVERY, (worst, gaps[:5])
