"""Three and four sites joined by bridger: real lab, real `bridger up` processes (issue 13).

Each gateway runs from the ``[[peers]]`` config that
:func:`bridger.lab.write_gateway_configs` wrote for it: one tap per peer (named
after the peer, ``site-b``), mode mesh or hub. The first test uses the legacy
one-peer command line instead: it joins two sites of a three-site lab.

  mesh:  A ── B        hub:   B ── A ── C    (B and C know only A)
          \\  /
           C
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import bridger.config
from bridger.lab import Lab, LabOptions
from bridger.lab.gateways import peer_states
from bridger.lab.ping import PingResult, parse_ping_output, ping_pairs
from tests.e2e.bridged import (
    BRIDGER,
    BridgedLab,
    Capture,
    SitesLab,
    data_datagrams,
    host_mac,
    wait_ping,
)

pytestmark = pytest.mark.netns


HERE = Path(__file__).parent
XFER = str(HERE / "tcpxfer.py")
RAW = str(HERE / "rawframe.py")
#: An address on the LAN segment that no host holds: an ARP for it gets no answer.
NOBODY = "192.168.1.250"
#: Seconds a restarted gateway may take until its pairs pass traffic again.
RECOVERY = 20.0


def arp_request(src_mac: str, src_ip: str, marker: bytes) -> bytes:
    """A broadcast ARP request for NOBODY, with ``marker`` in its trailing padding."""
    mac = bytes.fromhex(src_mac.replace(":", ""))
    arp = struct.pack(
        "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1,
        mac, socket.inet_aton(src_ip), bytes(6), socket.inet_aton(NOBODY),
    )
    return b"\xff" * 6 + mac + b"\x08\x06" + arp + marker


def broadcast_from(lab: Lab, role: str, marker: bytes) -> None:
    frame = arp_request(host_mac(lab, role), lab.lan_address(role), marker)
    lab.run(role, sys.executable, RAW, "send", lab.lan_ifname(role), frame.hex())


def unique_marker() -> bytes:
    return b"bridger-multisite-" + time.monotonic_ns().to_bytes(8, "big")


def all_ok(results: list[PingResult]) -> None:
    failed = [r for r in results if not r.ok]
    assert not failed, failed


# -- works with today's single-peer daemon -------------------------------------------------------


def test_one_link_joins_two_sites_of_three_and_leaves_the_third_apart(tmp_path: Path) -> None:
    """The three-site lab carries a link between A and C; B sees none of it."""
    with Lab(LabOptions(sites=3, engine="direct")) as lab, \
            BridgedLab(lab, tmp_path, sites=("A", "C")) as link:
        link.start_all()
        all_ok(ping_pairs(lab, [("hostA1", "hostC1"), ("hostC2", "hostA2")]))
        apart = ping_pairs(lab, [("hostB1", "hostA1"), ("hostB1", "hostC1")], count=1, wait=1)
        assert not any(r.ok for r in apart), apart
        marker = unique_marker()
        with Capture(lab, "hostC1", "eth0") as at_c, Capture(lab, "hostB1", "eth0") as at_b, \
                Capture(lab, "wan", "wC") as wan_c, Capture(lab, "wan", "wB") as wan_b:
            broadcast_from(lab, "hostA1", marker)
            time.sleep(1.5)
        assert (at_c.count(marker), at_b.count(marker)) == (1, 0), link.logs()
        assert data_datagrams(wan_c.frames), "the broadcast crossed C's WAN link as data"
        assert data_datagrams(wan_b.frames) == []


# -- three sites, full mesh ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SitesLab]:
    # The userspace wire: a capture on the router sees each datagram (a veth routed
    # in-kernel passes a UDP GSO batch whole, as one frame).
    with Lab(LabOptions(sites=3)) as lab, \
            SitesLab(lab, tmp_path_factory.mktemp("mesh3")) as mesh:
        mesh.start_all()
        yield mesh


@pytest.mark.parametrize("family", [4, 6])
def test_mesh3_every_pair_of_hosts_pings(mesh3: SitesLab, family: int) -> None:
    lab = mesh3.lab
    pairs = list(itertools.combinations(lab.hosts(), 2))
    assert len(pairs) == 15
    results = ping_pairs(lab, pairs, (family,))
    assert not [r for r in results if not r.ok], mesh3.logs()


def test_mesh3_broadcast_reaches_each_other_site_exactly_once(mesh3: SitesLab) -> None:
    """Split horizon: B must not pass A's broadcast on to C (nor C to B)."""
    lab = mesh3.lab
    marker = unique_marker()
    with Capture(lab, "hostB1", "eth0") as at_b, Capture(lab, "hostC1", "eth0") as at_c, \
            Capture(lab, "hostA2", "eth0") as at_a:
        broadcast_from(lab, "hostA1", marker)
        time.sleep(2)  # a copy looping through a second peer would arrive by now
    assert at_b.count(marker) == 1, (at_b.count(marker), mesh3.logs())
    assert at_c.count(marker) == 1, (at_c.count(marker), mesh3.logs())
    assert at_a.count(marker) == 1  # and none came back to site A


def test_mesh3_learned_unicast_puts_no_data_on_the_third_sites_wan(mesh3: SitesLab) -> None:
    lab = mesh3.lab
    b1 = lab.lan_address("hostB1")
    # Earlier pings left neighbour entries whose unicast re-probes (to and from C's
    # hosts) would cross C's link: start from empty caches.
    for role in lab.hosts():
        for family in ("-4", "-6"):
            lab.run(role, "ip", family, "neigh", "flush", "all")
    wait_ping(lab, "hostA1", b1)  # both bridges learn hostA1 and hostB1
    with Capture(lab, "wan", "wC") as wan_c, Capture(lab, "wan", "wB") as wan_b:
        out = lab.run("hostA1", "ping", "-q", "-c", "200", "-i", "0.01", "-s", "1000", "-W", "2",
                      b1, check=False, timeout=60).stdout
    sent, received, _ = parse_ping_output(out)
    assert sent == 200 and received >= 190, out
    to_b = [size for size in data_datagrams(wan_b.frames) if size > 1000]
    assert len(to_b) >= 2 * received, len(to_b)  # requests and replies crossed B's WAN link
    # Keepalives, handshakes, loop-protection probes (93 bytes) and the LAN's own
    # floods (ARP, IPv6 ND/MLD: small) may cross C's link; nothing of the stream may.
    stream_at_c = [size for size in data_datagrams(wan_c.frames) if size > 1000]
    assert stream_at_c == [], mesh3.logs()
    assert all(size < 300 for size in data_datagrams(wan_c.frames))


def test_mesh3_fdb_shows_remote_hosts_on_their_peers_tap(mesh3: SitesLab) -> None:
    lab = mesh3.lab
    for host in ("hostB1", "hostC1"):
        wait_ping(lab, "hostA1", lab.lan_address(host))
    out = lab.run("gwA", "bridge", "-j", "fdb", "show", "br", bridger.config.DEFAULT_BRIDGE).stdout
    fdb = {(e.get("mac"), e.get("ifname")) for e in json.loads(out)}
    for host, site in (("hostB1", "B"), ("hostC1", "C")):
        tap = mesh3.files["A"].tap(site)
        assert (host_mac(lab, host), tap) in fdb, (host, tap, sorted(fdb))
    assert (host_mac(lab, "hostB1"), mesh3.files["A"].tap("C")) not in fdb


# -- four sites: one restarts while every pair transfers ----------------------------------------

_PING_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from", re.M)
Pair = tuple[str, str]


def reply_times(output: str) -> list[float]:
    """Epoch seconds of each reply in the output of ``ping -D``."""
    return [float(t) for t in _PING_REPLY.findall(output)]


def max_gap(times: list[float], start: float, end: float) -> float:
    """Longest stretch of [start, end] (epoch seconds) without a reply."""
    points = [start, *(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(points))


class Transfer:
    """tcpxfer from host<a>1 to host<b>2; ``finished`` is the epoch second the sender ended."""

    def __init__(self, lab: Lab, pair: Pair, port: int, nbytes: int, family: int) -> None:
        a, b = pair
        self.nbytes = nbytes
        self.finished: float | None = None
        self.rx = lab.popen(f"host{b}2", sys.executable, XFER, "recv", str(port),
                            stdout=subprocess.PIPE, text=True)
        assert self.rx.stdout is not None and self.rx.stdout.readline().strip() == "listening"
        self.tx = lab.popen(f"host{a}1", sys.executable, XFER, "send",
                            lab.lan_address(f"host{b}2", family), str(port), str(nbytes),
                            stdout=subprocess.PIPE, text=True)
        self._watch = threading.Thread(target=self._wait, daemon=True)
        self._watch.start()

    def _wait(self) -> None:
        self.tx.wait()
        self.finished = time.time()

    def result(self, timeout: float) -> tuple[str, str]:
        """(sender's "<bytes> <sha256>", receiver's) once both are done."""
        sent = self.tx.communicate(timeout=timeout)[0].strip()
        received = self.rx.communicate(timeout=30)[0].strip()
        self._watch.join(5)
        return sent, received

    def kill(self) -> None:
        for proc in (self.tx, self.rx):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_mesh4_transfers_stay_exact_while_one_site_restarts(tmp_path: Path) -> None:
    """D is SIGKILLed, restored and restarted; transfers to D resume, the others never stall.

    The transfers of pairs without D run while D is down; those with D run
    across its restart. Pings every 0.1 s between all pairs show where traffic
    stalled: for pairs with D (as a check of the probe) and nowhere else.
    """
    nbytes = {"others": 16_000_000, "with_d": 64_000_000}  # D's pairs: longer than 0.2 s
    with Lab(LabOptions(sites=4, engine="direct")) as lab, SitesLab(lab, tmp_path) as mesh:
        mesh.start_all(timeout=60)
        pairs: list[Pair] = list(itertools.combinations(lab.sites, 2))
        with_d = [pair for pair in pairs if "D" in pair]
        others = [pair for pair in pairs if "D" not in pair]
        all_ok(ping_pairs(lab, [(f"host{a}2", f"host{b}1") for a, b in pairs], (4,), count=2))
        pingers: dict[Pair, subprocess.Popen[str]] = {}
        transfers: dict[Pair, Transfer] = {}
        try:
            for a, b in pairs:
                pingers[a, b] = lab.popen(
                    f"host{a}2", "ping", "-D", "-n", "-i", "0.1", "-W", "1",
                    lab.lan_address(f"host{b}1"), stdout=subprocess.PIPE, text=True,
                )
            for index, pair in enumerate(with_d):
                transfers[pair] = Transfer(lab, pair, 5001 + index, nbytes["with_d"],
                                           6 if index % 2 else 4)
            time.sleep(0.2)
            killed_at = time.time()
            mesh.stop("D", signal.SIGKILL)
            down = lab.run("gwD", *BRIDGER, "down", "--state-dir", str(mesh.state_dir("D")))
            assert "restored" in down.stdout, down.stdout + down.stderr
            for index, pair in enumerate(others):
                transfers[pair] = Transfer(lab, pair, 5101 + index, nbytes["others"],
                                           4 if index % 2 else 6)
            outage = {pair: transfers[pair].result(timeout=120) for pair in others}
            time.sleep(max(0.0, killed_at + 2.0 - time.time()))  # D down for 2 s at least
            restarted_at = time.time()
            mesh.start("D")
            mesh.wait_up(RECOVERY)
            for a, b in with_d:
                wait_ping(lab, f"host{a}2", lab.lan_address(f"host{b}1"), within=RECOVERY)
            recovered_at = time.time()
            time.sleep(0.5)
            results = {**outage, **{pair: transfers[pair].result(300) for pair in with_d}}
        finally:
            for proc in pingers.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            outputs = {pair: proc.communicate(timeout=10)[0] for pair, proc in pingers.items()}
            for transfer in transfers.values():
                transfer.kill()
        for pair, (sent, received) in results.items():
            assert sent.split()[:1] == [str(transfers[pair].nbytes)], (pair, sent, mesh.logs())
            assert received == sent, (pair, mesh.logs())
        for pair in others:  # done while D was down
            finished = transfers[pair].finished
            assert finished is not None and finished < restarted_at, pair
        for pair in with_d:  # they ran across the restart
            finished = transfers[pair].finished
            assert finished is not None and finished > restarted_at, pair
        for pair, output in outputs.items():
            gap = max_gap(reply_times(output), killed_at - 0.5, recovered_at)
            if pair in with_d:
                assert gap >= 1.5, (pair, gap)  # the probe sees a stall where there is one
            else:
                assert gap < 1.0, (pair, gap, output[-2000:])


# -- a hub and two spokes that know only the hub -------------------------------------------------


@pytest.mark.parametrize("hub_dials", [False, True], ids=["hub-waits", "hub-dials"])
def test_hub_joins_spokes_that_know_only_the_hub(tmp_path: Path, hub_dials: bool) -> None:
    with Lab(LabOptions(sites=3, engine="direct")) as lab, \
            SitesLab(lab, tmp_path, topology="hub", hub_dials=hub_dials) as hub:
        hub.start_all()
        for spoke in ("B", "C"):
            doc = hub.status(spoke)
            assert doc is not None and peer_states(doc) == {"site-a": "up"}
        all_ok(ping_pairs(lab, [("hostB1", "hostC1"), ("hostC2", "hostB2"), ("hostA1", "hostB2"),
                                ("hostC1", "hostA2")]))
        rx = lab.popen("hostC1", sys.executable, XFER, "recv", "5001",
                       stdout=subprocess.PIPE, text=True)
        try:
            assert rx.stdout is not None and rx.stdout.readline().strip() == "listening"
            sent = lab.run("hostB1", sys.executable, XFER, "send",
                           lab.lan_address("hostC1", 6), "5001", "4000000", timeout=120).stdout
            received = rx.communicate(timeout=30)[0]
        finally:
            if rx.poll() is None:
                rx.kill()
                rx.wait()
        assert sent.split()[:1] == ["4000000"] and received.strip() == sent.strip(), hub.logs()


# -- the demo ------------------------------------------------------------------------------------


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@pytest.mark.parametrize(("argv", "pairs"), [(["--sites", "3"], 3), (["--sites", "3", "--hub"], 3),
                                             (["--sites", "4"], 6)])
def test_lab_demo_with_several_sites_pings_every_pair(argv: list[str], pairs: int) -> None:
    out = subprocess.run([*BRIDGER, "lab", "demo", *argv, "--duration", "0"],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = re.findall(r"^host(\w)1 -> host(\w)1 .* 3/3 .* 3/3 ", out.stdout, re.M)
    assert len(rows) == pairs and len(set(rows)) == pairs, out.stdout
    assert f"{2 * pairs} of {2 * pairs} pair pings answered" in out.stdout
    prefix = re.search(r"^lab (bl[0-9a-f]{6}): ", out.stdout, re.M)
    assert prefix is not None, out.stdout
    assert not [n for n in _namespaces() if n.startswith(prefix[1] + "-")]  # torn down
