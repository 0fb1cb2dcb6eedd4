"""The native data path against the pure-Python one: real lab, real `bridger up` processes.

One side of every link runs ``bridger up --data-path native``, the other
``--data-path python`` (issue 16); whatever crosses must cross byte-exact both
ways, and each side's status must name its data path and count what crossed.

1. Two sites, in two variants of the same lab (each a module-scoped fixture):
   offloads on over an IPv4 underlay (A native, B python), and ``--no-offload``
   over an IPv6 underlay with a ``vlans`` allow-list (A python, B native).
   In each: TCP both ways at once, lossless and with 2% WAN loss; raw
   802.1Q/QinQ frames both ways; 1500-byte IP packets with DF (fragments).
2. Three sites in a mesh running native, python, native: every pair pings
   and a transfer between the two native sites is byte-exact.

Until the native path lands, ``BRIDGER_TEST_DATA_PATH_OPTION=0`` leaves the
option out, so everything runs on the pure-Python path (and status must then
say "python" on every side).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridger.lab import Lab, LabOptions
from bridger.lab.ping import cross_site_pairs, ping_pairs
from tests.e2e.bridged import BridgedLab, Gateways, SitesLab, host_mac, ping
from tests.e2e.test_bridge_traffic import RAW
from tests.e2e.test_multisite import Transfer

pytestmark = pytest.mark.netns

#: "0": run without ``--data-path`` (today's daemon, pure Python on every side).
OPTION_ENV = "BRIDGER_TEST_DATA_PATH_OPTION"
#: Bytes of each TCP transfer (each direction).
NBYTES = 6_000_000
#: One-way WAN loss of the lossy runs, percent.
LOSS_PCT = 2.0
#: Frames one side may receive beyond what the other counted as sent: loop
#: probes (made by the sender's guard, not counted as sent; counted where they
#: arrive), 5-15 in a 3-second test here, one per allowed VLAN and second.
RX_SLACK = 50


def option_given() -> bool:
    return os.environ.get(OPTION_ENV, "1") != "0"


def data_path_args(path: str) -> list[str]:
    """``--data-path PATH`` for `bridger up`, or nothing under BRIDGER_TEST_DATA_PATH_OPTION=0."""
    return ["--data-path", path] if option_given() else []


def expected_data_path(path: str) -> str:
    """What status must report for a gateway started with ``data_path_args(path)``."""
    return path if option_given() else "python"


class MixedPair(BridgedLab):
    """Two gateways with one peer each, each on its own data path (``paths[site]``)."""

    def __init__(self, lab: Lab, workdir: Path, paths: Mapping[str, str], *,
                 extra_args: list[str] | None = None,
                 peers: dict[str, str] | None = None) -> None:
        super().__init__(lab, workdir, extra_args=extra_args, peers=peers)
        self.paths = dict(paths)

    def argv(self, site: str) -> list[str]:
        return [*super().argv(site), *data_path_args(self.paths[site])]


class MixedMesh(SitesLab):
    """Every site of the lab from its ``[[peers]]`` config, each on ``paths[site]``."""

    def __init__(self, lab: Lab, workdir: Path, paths: Mapping[str, str]) -> None:
        super().__init__(lab, workdir)
        self.paths = dict(paths)

    def argv(self, site: str) -> list[str]:
        return [*super().argv(site), *data_path_args(self.paths[site])]


# -- status: data path and counters ----------------------------------------------------------


def peer_entry(doc: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """The status entry of peer ``name`` (None: the only peer)."""
    peers = list(doc["peers"])
    if name is None:
        assert len(peers) == 1, peers
        return dict(peers[0])
    return dict(next(p for p in peers if p["name"] == name))


def statuses(gws: Gateways, sites: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    docs = {}
    for site in sites:
        doc = gws.status(site)
        assert doc is not None, f"no status from gw{site}:\n{gws.logs()}"
        docs[site] = doc
    return docs


def wait_status(gws: Gateways, sites: tuple[str, ...],
                check: Callable[[dict[str, Any]], None], within: float = 5.0) -> dict[str, Any]:
    """Status of ``sites`` once ``check`` accepts it (frames may still be in flight when
    the traffic ends); after ``within`` seconds ``check``'s AssertionError stands."""
    deadline = time.monotonic() + within
    while True:
        docs = statuses(gws, sites)
        try:
            check(docs)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
        else:
            return docs


@dataclass(frozen=True)
class Link:
    """One direction between two gateways as their status documents name it."""

    tx_site: str
    rx_site: str
    #: The sender's entry for the receiver, the receiver's for the sender (None: the only peer).
    tx_peer: str | None = None
    rx_peer: str | None = None


def counted(gws: Gateways, paths: Mapping[str, str], links: list[Link],
            before: Mapping[str, Any], *, loss_pct: float = 0.0) -> dict[str, Any]:
    """Status of every site in ``before`` once it shows what :func:`check_counts` wants."""
    return wait_status(gws, tuple(before), lambda after: check_counts(
        gws, paths, links, before, after, loss_pct=loss_pct))


def check_counts(gws: Gateways, paths: Mapping[str, str], links: list[Link],
                 before: Mapping[str, Any], after: Mapping[str, Any], *,
                 loss_pct: float = 0.0) -> None:
    """Data path as configured, no internal errors (and lossless: no authentication or
    replay drops); each link's receiver got what its sender sent (minus the loss)."""
    for site, doc in after.items():
        assert doc["data_path"] == expected_data_path(paths[site]), (site, doc["data_path"])
        assert doc["drops"]["internal_error"] == 0, (site, doc["drops"])
        if not loss_pct:
            bad = {r: doc["drops"][r] for r in ("auth_failed", "replay")}
            assert bad == {"auth_failed": 0, "replay": 0}, (site, bad)
    for link in links:
        def frames(docs: Mapping[str, Any], site: str, peer: str | None, way: str) -> int:
            return int(peer_entry(docs[site], peer)["frames"][way])

        tx = (frames(after, link.tx_site, link.tx_peer, "tx")
              - frames(before, link.tx_site, link.tx_peer, "tx"))
        rx = (frames(after, link.rx_site, link.rx_peer, "rx")
              - frames(before, link.rx_site, link.rx_peer, "rx"))
        # a TCP segment lost on the WAN is one frame; allow 2.5x the mean loss rate
        floor = tx if not loss_pct else int(tx * (1 - 2.5 * loss_pct / 100))
        assert tx > 0 and floor <= rx <= tx + RX_SLACK, (link, tx, rx, gws.logs())
        if loss_pct:  # the WAN really lost some (~2% of 5,000 frames: 100)
            assert rx < tx, (link, tx, rx)


def check_start_log(gws: Gateways, paths: Mapping[str, str]) -> None:
    """Each daemon logged one line naming its data path when it started."""
    for site, path in paths.items():
        lines = [line for line in gws.log_path(site).read_text(errors="replace").splitlines()
                 if "data path:" in line]
        assert len(lines) == 1, (site, lines)
        assert f"data path: {expected_data_path(path)}" in lines[0], (site, lines)


def transfers(gws: Gateways, plan: list[tuple[tuple[str, str], int]], nbytes: int,
              timeout: float = 120) -> None:
    """Concurrent tcpxfer runs host<a>1 -> host<b>2, one per (sites, family); all byte-exact."""
    running = [Transfer(gws.lab, pair, 5001 + i, nbytes, family)
               for i, (pair, family) in enumerate(plan)]
    try:
        for (pair, family), xfer in zip(plan, running, strict=True):
            sent, received = xfer.result(timeout)
            assert sent.split()[:1] == [str(nbytes)], (pair, family, sent, gws.logs())
            assert received == sent, (pair, family, gws.logs())
    finally:
        for xfer in running:
            xfer.kill()


# -- two sites, native against python ---------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """How one two-site lab runs: data path per site, offloads, underlay, VLAN allow-list."""

    paths: Mapping[str, str]
    offload: bool
    underlay: int
    vlans: tuple[int, ...] | None = None

    def args(self) -> list[str]:
        args = [] if self.offload else ["--no-offload"]
        if self.vlans is not None:
            args += ["--vlans", ",".join(map(str, self.vlans))]
        return args


VARIANTS = {
    "offload-v4": Variant({"A": "native", "B": "python"}, offload=True, underlay=4),
    "nooffload-v6-vlans": Variant({"A": "python", "B": "native"}, offload=False, underlay=6,
                                  vlans=(42, 100)),
}
PAIR_LINKS = [Link("A", "B"), Link("B", "A")]
#: Both directions at once, one over IPv4 and one over IPv6 (the LAN's families).
BOTH_WAYS = [(("A", "B"), 4), (("B", "A"), 6)]


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def pair(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MixedPair, Variant]]:
    variant = VARIANTS[request.param]
    with Lab(LabOptions()) as lab:
        peers = None
        if variant.underlay == 6:
            peers = {"A": f"[{lab.gateway_wan_address6('B')}]:55555",
                     "B": f"[{lab.gateway_wan_address6('A')}]:55555"}
        link = MixedPair(lab, tmp_path_factory.mktemp(request.param), variant.paths,
                         extra_args=variant.args(), peers=peers)
        with link:
            link.start_all()
            check_start_log(link, variant.paths)
            yield link, variant


def test_tcp_both_ways_is_byte_exact(pair: tuple[MixedPair, Variant]) -> None:
    link, variant = pair
    before = statuses(link, link.sites)
    transfers(link, BOTH_WAYS, NBYTES)
    after = counted(link, variant.paths, PAIR_LINKS, before)
    underlay = {4: link.lab.gateway_wan_address, 6: link.lab.gateway_wan_address6}
    endpoint = peer_entry(after["A"])["endpoint"]
    assert underlay[variant.underlay]("B") in endpoint, endpoint


def test_tcp_both_ways_under_wan_loss_is_byte_exact(pair: tuple[MixedPair, Variant]) -> None:
    link, variant = pair
    before = statuses(link, link.sites)
    link.lab.set_impairment(loss_pct=LOSS_PCT)
    try:
        transfers(link, BOTH_WAYS, NBYTES, timeout=240)
        counted(link, variant.paths, PAIR_LINKS, before, loss_pct=LOSS_PCT)
    finally:
        link.lab.set_impairment(loss_pct=0)


def vlan_frames(dst: bytes, src: bytes, marker: bytes,
                tags: tuple[int, ...]) -> list[bytes]:
    """802.1Q frames tagged with each of ``tags`` (and one QinQ per tag as S-tag), up to
    1500-byte payloads, each carrying ``marker``."""
    frames = []
    for tag in tags:
        dot1q = b"\x81\x00" + tag.to_bytes(2, "big")
        qinq = b"\x88\xa8" + tag.to_bytes(2, "big") + b"\x81\x00\x00\x07"
        frames += [
            dst + src + dot1q + b"\x08\x00" + marker + bytes(46 - len(marker)),
            dst + src + dot1q + b"\x86\xdd" + marker + bytes(range(256)) * 5
            + bytes(1500 - 1280 - len(marker)),
            b"\xff" * 6 + src + dot1q + b"\x08\x06" + marker + bytes(100),
            dst + src + qinq + b"\x08\x00" + marker + b"\xab" * (1492 - len(marker)),
        ]
    return frames


def send_and_capture(lab: Lab, src: str, dst: str, frames: list[bytes], marker: bytes,
                     expect: int) -> list[bytes]:
    """Send raw ``frames`` from ``src``; the first ``expect`` holding ``marker`` at ``dst``."""
    listener = lab.popen(dst, sys.executable, RAW, "recv", lab.lan_ifname(dst), marker.hex(),
                         str(expect), stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        lab.run(src, sys.executable, RAW, "send", lab.lan_ifname(src), *(f.hex() for f in frames))
        out, _ = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    return [bytes.fromhex(line) for line in out.split()]


@pytest.mark.parametrize("src, dst", [("hostA1", "hostB1"), ("hostB1", "hostA1")])
def test_vlan_tagged_frames_cross_byte_exact(pair: tuple[MixedPair, Variant], src: str,
                                             dst: str) -> None:
    """802.1Q and QinQ up to 1518 bytes arrive unchanged; with an allow-list only its
    VLANs (outer tag) cross, the others are counted as guard drops where they entered."""
    link, variant = pair
    lab = link.lab
    marker = b"bridger-native-vlan-" + time.monotonic_ns().to_bytes(8, "big")
    dst_mac = bytes.fromhex(host_mac(lab, dst).replace(":", ""))
    src_mac = bytes.fromhex(host_mac(lab, src).replace(":", ""))
    allowed = vlan_frames(dst_mac, src_mac, marker, variant.vlans or (42, 3000))
    refused = [] if variant.vlans is None else vlan_frames(dst_mac, src_mac, marker, (43,))
    ingress = lab.site_of(src)
    before = statuses(link, (ingress,))[ingress]
    # the refused first: had one crossed, it would be among the frames captured
    received = send_and_capture(lab, src, dst, refused + allowed, marker, len(allowed))
    assert received == allowed, link.logs()
    if refused:
        def all_refused(docs: dict[str, Any]) -> None:
            drops = docs[ingress]["drops"]
            assert drops["guard_vlan"] - before["drops"]["guard_vlan"] == len(refused), drops

        wait_status(link, (ingress,), all_refused)


@pytest.mark.parametrize("src, dst", [("hostA1", "hostB1"), ("hostB2", "hostA2")])
def test_full_size_packets_with_df_cross_fragmented(pair: tuple[MixedPair, Variant], src: str,
                                                    dst: str) -> None:
    """1500-byte IPv4 and IPv6 packets with DF: each frame goes out in two fragments."""
    link, variant = pair
    lab = link.lab
    count = 20
    sites = (lab.site_of(src), lab.site_of(dst))
    before = statuses(link, sites)
    for family, size in ((4, 1472), (6, 1452)):
        addr = lab.lan_address(dst, family)
        out = lab.run(src, "ping", f"-{family}", "-q", "-c", str(count), "-i", "0.02", "-W", "2",
                      "-M", "do", "-s", str(size), addr, check=False, timeout=30)
        assert f"{count} received" in out.stdout, (out.stdout, link.logs())
    assert not ping(lab, src, "-M", "do", "-s", "1473", lab.lan_address(dst), count=1)
    after = counted(link, variant.paths, [Link(*sites), Link(*reversed(sites))], before)
    for site in sites:  # each sent 2 fragments per packet (requests or replies), both families
        frag = {k: peer_entry(after[site])["fragments"][k]
                - peer_entry(before[site])["fragments"][k]
                for k in ("sent", "received", "reassembled")}
        assert frag["sent"] >= 2 * 2 * count and frag["reassembled"] >= 2 * count, (site, frag)


# -- three sites: native, python, native ------------------------------------------------------

MESH_PATHS = {"A": "native", "B": "python", "C": "native"}


def test_mesh3_native_python_native(tmp_path: Path) -> None:
    with Lab(LabOptions(sites=3, engine="direct")) as lab, \
            MixedMesh(lab, tmp_path, MESH_PATHS) as mesh:
        mesh.start_all()
        check_start_log(mesh, MESH_PATHS)
        results = ping_pairs(lab, cross_site_pairs(lab))
        assert all(r.ok for r in results), ([r for r in results if not r.ok], mesh.logs())
        names = {site: files.name for site, files in mesh.files.items()}
        links = [Link("A", "C", names["C"], names["A"]), Link("C", "A", names["A"], names["C"])]
        before = statuses(mesh, lab.sites)
        transfers(mesh, [(("A", "C"), 4), (("C", "A"), 6)], NBYTES)
        after = counted(mesh, MESH_PATHS, links, before)
        for site in ("A", "C"):  # the stream between the native sites did not go through B
            via_b = peer_entry(after[site], names["B"])["frames"]["tx"]
            assert via_b - peer_entry(before[site], names["B"])["frames"]["tx"] < RX_SLACK
