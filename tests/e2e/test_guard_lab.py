"""The guards against real trouble: a backup cable, a flooding host, DHCP servers and an
IPv6 router at both sites (issue 14). Real namespaces, real `bridger up` processes, real
dnsmasq, radvd and udhcpc.

  hostA1 ─┐                                           ┌─ hostB1   (DHCP client, SLAAC host)
  hostA2 ─┼─ [swA br0] ── gwA ~~ tunnel ~~ gwB ── [swB br0] ─┼─ hostB2
          │      └──────────── backup cable (bk) ─────┘      │
   (flooder, dnsmasq A, radvd)                  (dnsmasq B)

The switches run no STP: with the backup cable in, every broadcast would circle
swA -> tunnel -> swB -> cable -> swA for ever; loop protection must cut the tunnel.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bridger.lab import Lab, LabOptions
from bridger.lab.ping import parse_ping_output
from bridger.lab.wait import wait_until
from tests.e2e.bridged import BridgedLab, Capture, addresses, host_mac, wait_ping
from tests.e2e.flood import udp_broadcast

pytestmark = pytest.mark.netns

HERE = Path(__file__).parent
FLOOD = str(HERE / "flood.py")
RAW = str(HERE / "rawframe.py")
LOOP_LINE = "loop detected via peer"
GONE_LINE = "gone: forwarding resumed"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: The WAN routed in-kernel: nothing here impairs it, so no userspace wire takes a CPU.
DIRECT = LabOptions(engine="direct")


# -- helpers -------------------------------------------------------------------------------------


def unique_marker() -> bytes:
    return b"bridger-guardlab-" + time.monotonic_ns().to_bytes(8, "big")


def broadcast_from(lab: Lab, role: str, marker: bytes) -> None:
    """One broadcast (IPv4 UDP to 255.255.255.255) from ``role`` with ``marker`` in it."""
    frame = udp_broadcast(host_mac(lab, role), lab.lan_address(role), marker)
    lab.run(role, sys.executable, RAW, "send", lab.lan_ifname(role), frame.hex())


def lan_port_holds(lab: Lab, gateway: str, mac: str) -> bool:
    """``gateway``'s bridge has learnt ``mac`` on its LAN port (eth1)."""
    out = lab.run(gateway, "bridge", "-j", "fdb", "show", "dev", "eth1", check=False)
    entries = json.loads(out.stdout or "[]")
    return any(e.get("mac") == mac and "permanent" not in e.get("state", "") for e in entries)


def the_peer(link: BridgedLab, site: str) -> dict[str, Any]:
    """The one peer entry of ``site``'s status document."""
    doc = link.status(site)
    assert doc is not None and doc.get("peers"), f"gw{site}: no status\n{link.logs()}"
    peer: dict[str, Any] = doc["peers"][0]
    return peer


def drops(link: BridgedLab, site: str, reason: str) -> int:
    return int(the_peer(link, site).get("drops", {}).get(reason, 0))


def frames(link: BridgedLab, site: str) -> tuple[int, int]:
    """(tx, rx) frames ``site`` exchanged with its peer."""
    counts = the_peer(link, site)["frames"]
    return int(counts["tx"]), int(counts["rx"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (/proc/PID/stat fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_load(link: BridgedLab, seconds: float) -> dict[str, float]:
    """Cores each gateway process used over the next ``seconds``."""
    pids = {site: link.data_plane_pid(site) for site in link.procs}
    before = {site: cpu_seconds(pid) for site, pid in pids.items()}
    start = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    return {site: (cpu_seconds(pid) - before[site]) / elapsed for site, pid in pids.items()}


def log_marks(link: BridgedLab, sites: tuple[str, ...]) -> dict[str, int]:
    """Where each site's log ends now: :func:`wait_log` looks only after it."""
    return {s: link.log_path(s).stat().st_size for s in sites}


def wait_log(link: BridgedLab, sites: tuple[str, ...], text: str,
             within: float, since: dict[str, int] | None = None) -> dict[str, float]:
    """Poll the gateways' logs; monotonic time each of ``sites`` first logged ``text``
    after ``since`` (default: now)."""
    seen: dict[str, float] = {}
    offsets = log_marks(link, sites) if since is None else since
    deadline = time.monotonic() + within
    while len(seen) < len(sites) and time.monotonic() < deadline:
        for site in sites:
            if site not in seen:
                with link.log_path(site).open("rb") as log:
                    log.seek(offsets[site])
                    if text.encode() in log.read():
                        seen[site] = time.monotonic()
        time.sleep(0.02)
    return seen


def link_drops(lab: Lab, role: str) -> dict[str, tuple[int, int]]:
    """Interface -> (rx dropped, tx dropped) in ``role``'s namespace (kernel counters)."""
    out = lab.run(role, "ip", "-s", "-j", "link", "show").stdout
    return {
        link["ifname"]: (link["stats64"]["rx"]["dropped"], link["stats64"]["tx"]["dropped"])
        for link in json.loads(out) if link["ifname"] != "lo"
    }


def ping_stats(lab: Lab, role: str, dst: str, *args: str) -> tuple[int, int, str]:
    out = lab.run(role, "ping", "-q", *args, dst, check=False, timeout=60).stdout
    sent, received, _ = parse_ping_output(out)
    return sent, received, out


# -- 1. a real loop ------------------------------------------------------------------------------


def plug_backup_cable(lab: Lab) -> None:
    """A veth "cable" between swA's br0 and swB's br0 (both bridges run without STP)."""
    lab.run("swA", "ip", "link", "add", "bk", "type", "veth", "peer", "name", "bk",
            "netns", lab.ns("swB"))
    for sw in ("swA", "swB"):
        lab.run(sw, "ip", "link", "set", "bk", "master", "br0", "up")


def test_backup_cable_loop_is_cut_at_the_tunnel_and_the_tunnel_comes_back(
        tmp_path: Path) -> None:
    with Lab(DIRECT) as lab, BridgedLab(lab, tmp_path) as link:
        link.start_all()
        b1 = lab.lan_address("hostB1")
        wait_ping(lab, "hostA1", b1)

        marks = log_marks(link, ("A", "B"))  # the loop may be found before the seeds are out
        plug_backup_cable(lab)
        plugged = time.monotonic()
        for n in range(3):  # seeds of a storm: broadcasts that would circle for ever
            broadcast_from(lab, "hostA1", unique_marker() + bytes([n]))
        seen = wait_log(link, ("A", "B"), LOOP_LINE, within=10, since=marks)
        assert seen, f"no loop detected within 10 s\n{link.logs()}"
        first = min(seen.values()) - plugged
        assert first < 2.0, f"loop detected {first:.2f} s after the cable went in"

        time.sleep(1.0)  # what was in flight when the tunnel was cut has died out
        load = cpu_load(link, 3.0)
        print(f"loop seen after {first:.2f} s; gateway cores afterwards: {load}")
        assert all(cores < 0.5 for cores in load.values()), (load, link.logs())

        # The hosts still reach each other, over the cable and only over it. Neighbours
        # resolved afresh, that is: the switches still hold the remote hosts' MACs on their
        # gateway port (learned before the cable went in) and no STP flushes them, so an old
        # conversation only moves to the cable when its hosts re-resolve (ARP NUD: ~20-30 s
        # in this lab) or the switch entries age out (300 s).
        lab.run("hostA1", "ip", "neigh", "flush", "to", b1)
        pattern = "b4c7f00d0b4c7f00"
        with Capture(lab, "swA", "bk") as cable:
            sent, received, out = ping_stats(lab, "hostA1", b1, "-c", "5", "-i", "0.2",
                                             "-W", "2", "-p", pattern)
        assert received == sent == 5, out
        assert "DUP!" not in out, out  # no second copy through the tunnel
        assert cable.count(bytes.fromhex(pattern)) >= 5, "the echo replies did not use the cable"

        for site in ("A", "B"):
            peer = the_peer(link, site)
            assert (peer.get("guard") or {}).get("loop") is True, peer
            device = (link.status(site) or {}).get("guard") or {}
            assert device.get("blocked") == [peer["name"]], device
            assert drops(link, site, "loop_blocked") + drops(link, site, "loop_probe") > 0, peer
        assert set(seen) == {"A", "B"}, f"only {sorted(seen)} saw the loop\n{link.logs()}"

        # A broadcast from hostB1 while the loop lasts reaches gwA over the cable:
        # gwA's bridge now holds hostB1 on its LAN port (its frames to hostB1 from
        # hostA1's side would be dropped there once the cable is gone).
        b1_mac = host_mac(lab, "hostB1")
        broadcast_from(lab, "hostB1", unique_marker())
        assert wait_until(lambda: lan_port_holds(lab, "gwA", b1_mac), within=5) is not None

        # Cut the cable: the tunnel must carry the traffic again by itself.
        marks = log_marks(link, ("A", "B"))
        lab.run("swA", "ip", "link", "del", "bk")
        cut = time.monotonic()
        back = wait_log(link, ("A", "B"), GONE_LINE, within=30, since=marks)
        assert set(back) == {"A", "B"}, f"forwarding resumed only at {sorted(back)}\n{link.logs()}"
        print(f"forwarding resumed {min(back.values()) - cut:.2f} s after the cut")
        # ... and forgot it when the loop was gone (a CI run once waited 28 s in vain).
        assert wait_until(lambda: not lan_port_holds(lab, "gwA", b1_mac), within=2) is not None
        wait_ping(lab, "hostA1", b1, within=30 - (time.monotonic() - cut))
        tx0, rx0 = frames(link, "A")
        sent, received, out = ping_stats(lab, "hostA1", b1, "-c", "10", "-i", "0.1", "-W", "2")
        assert received == sent == 10, out
        # the status file is rewritten about once a second: poll it
        def counted() -> bool:
            tx1, rx1 = frames(link, "A")
            return tx1 - tx0 >= 10 and rx1 - rx0 >= 10

        assert wait_until(counted, within=5) is not None, ((tx0, rx0), frames(link, "A"))
        for site in ("A", "B"):
            peer = the_peer(link, site)
            assert (peer.get("guard") or {}).get("loop") is False, peer


# -- 2. a broadcast flood ------------------------------------------------------------------------

FLOOD_RATE = 500
#: The general flood budget is 3/4 of flood_rate (ARP/ND keep the other quarter), with a
#: burst of one second's worth (docs/guard.md, storm control).
GENERAL_RATE = FLOOD_RATE * 3 // 4
FLOOD_SECONDS = 8.0


def test_broadcast_flood_reaches_the_other_site_within_the_budget(tmp_path: Path) -> None:
    extra = ["--flood-rate", str(FLOOD_RATE)]
    with Lab(DIRECT) as lab, BridgedLab(lab, tmp_path, extra_args=extra) as link:
        link.start_all()
        b1, b2 = lab.lan_address("hostB1"), lab.lan_address("hostB2")
        wait_ping(lab, "hostA2", b2)
        marker = unique_marker()
        frame = udp_broadcast(host_mac(lab, "hostA1"), lab.lan_address("hostA1"),
                              marker + bytes(64))
        lab.run("hostA2", "ip", "neigh", "flush", "to", b1)

        with Capture(lab, "hostB1", "eth0") as at_b:
            procs: list[subprocess.Popen[str]] = []
            try:
                flooder = lab.popen("hostA1", sys.executable, FLOOD, "eth0", str(FLOOD_SECONDS),
                                    frame.hex(), stdout=subprocess.PIPE, text=True)
                procs.append(flooder)
                time.sleep(1.0)  # the flood is on
                pinger = lab.popen("hostA2", "ping", "-q", "-c", "100", "-i", "0.05", "-W", "1",
                                   b2, stdout=subprocess.PIPE, text=True)
                procs.append(pinger)
                time.sleep(1.0)
                # A neighbour hostA2 has never resolved: its ARP request is a flooded frame too.
                arp = lab.run("hostA2", "ping", "-c", "1", "-W", "3", b1, check=False)
                neigh = lab.run("hostA2", "ip", "neigh", "show", "to", b1).stdout
                ping_out, _ = pinger.communicate(timeout=30)
                flood_out, _ = flooder.communicate(timeout=FLOOD_SECONDS + 10)
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            time.sleep(1.0)  # the last frames of the flood drain

        sent_match = re.search(r"sent (\d+)", flood_out)
        assert sent_match, flood_out
        flood_sent = int(sent_match[1])
        arrived = at_b.count(marker)
        budget = GENERAL_RATE * (1 + FLOOD_SECONDS)  # burst + rate x duration
        # Where frames were lost before the daemon saw them (the tap queue, mostly).
        kernel_drops = {role: link_drops(lab, role) for role in ("gwA", "swA")}
        report = (f"flooder sent {flood_sent}, site B got {arrived}, budget {budget:.0f}, "
                  f"gwA storm drops {drops(link, 'A', 'storm')}, "
                  f"in the kernel {drops(link, 'A', 'storm_kernel')}, "
                  f"kernel drops (rx, tx) {kernel_drops}")
        print(report)
        assert flood_sent > 10 * budget, report  # a real flood, far above the budget
        assert arrived <= budget * 1.05 + 20, report
        assert arrived >= GENERAL_RATE * FLOOD_SECONDS * 0.5, report  # floods pass, up to it
        assert drops(link, "A", "storm") > 0, report

        sent, received, _ = parse_ping_output(ping_out)
        print(f"ping during the flood: {received}/{sent}")
        # Issue 21: the kernel cuts the flood before the tap's queue (storm_kernel), so the
        # daemon no longer reads the whole flood and the queue does not overflow with it
        # (bridger-tap0 tx dropped above), taking the unicast behind it along.
        assert sent == 100 and received >= 95, (ping_out, report)
        assert arp.returncode == 0, (arp.stdout, neigh, report)
        assert host_mac(lab, "hostB1") in neigh, neigh


# -- 3. DHCP servers at both sites ---------------------------------------------------------------

#: Disjoint pools on the shared /24, clear of the lab's hosts (.11-.82) and gateways (.1-.8).
DHCP_POOLS = {"A": ("192.168.1.100", "192.168.1.119"), "B": ("192.168.1.120", "192.168.1.139")}
DHCP_SERVER_HOST = {"A": "hostA2", "B": "hostB2"}
LEASE_SCRIPT = """#!/bin/sh
[ "$1" = bound ] && echo "LEASE $ip $serverid"
exit 0
"""


def start_dnsmasq(lab: Lab, site: str, workdir: Path) -> subprocess.Popen[bytes]:
    role = DHCP_SERVER_HOST[site]
    first, last = DHCP_POOLS[site]
    log = (workdir / f"dnsmasq{site}.log").open("wb")
    proc = lab.popen(
        role, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
        "--interface=eth0", "--bind-interfaces", "--no-ping", "--log-dhcp", "--log-facility=-",
        f"--dhcp-range={first},{last},255.255.255.0,10m",
        f"--dhcp-leasefile={workdir / f'leases{site}'}",
        f"--pid-file={workdir / f'dnsmasq{site}.pid'}",
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, (workdir / f"dnsmasq{site}.log").read_text()
        if ":67 " in lab.run(role, "ss", "-H", "-uln").stdout:
            return proc
        time.sleep(0.1)
    raise AssertionError(f"dnsmasq at site {site} does not listen on port 67")


def request_lease(lab: Lab, script: Path) -> tuple[str, str] | None:
    """One DHCP exchange by udhcpc in hostB1: (address, server id), or None if no lease."""
    out = lab.run("hostB1", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "3", "-T", "1",
                  "-A", "1", "-s", str(script), check=False, timeout=30)
    match = re.search(r"^LEASE (\S+) (\S+)$", out.stdout, re.MULTILINE)
    return (match[1], match[2]) if match else None


def in_pool(address: str, site: str) -> bool:
    first, last = (ipaddress.IPv4Address(a) for a in DHCP_POOLS[site])
    return first <= ipaddress.IPv4Address(address) <= last


def dhcp_server_frames(frames: list[Any], server_ip: str) -> int:
    """Frames holding a UDP 67 -> 68 datagram from ``server_ip`` (IPv4, no options)."""
    src = socket.inet_aton(server_ip)
    return sum(
        1 for f in frames
        if not f.outgoing and f.data[12:14] == b"\x08\x00" and f.data[23] == 17
        and f.data[26:30] == src and f.data[34:38] == b"\x00\x43\x00\x44"
    )


@pytest.mark.parametrize("mode", ["local", "shared"])
def test_dhcp_client_hears_only_its_own_sites_server_when_local(
        tmp_path: Path, mode: str) -> None:
    script = tmp_path / "lease.sh"
    script.write_text(LEASE_SCRIPT)
    script.chmod(0o755)
    servers: dict[str, subprocess.Popen[bytes]] = {}
    with Lab(DIRECT) as lab, BridgedLab(lab, tmp_path, extra_args=["--dhcp", mode]) as link:
        try:
            link.start_all()
            a_ip = lab.lan_address(DHCP_SERVER_HOST["A"])
            b_ip = lab.lan_address(DHCP_SERVER_HOST["B"])
            servers["A"] = start_dnsmasq(lab, "A", tmp_path)
            if mode == "local":
                servers["B"] = start_dnsmasq(lab, "B", tmp_path)
            with Capture(lab, "hostB1", "eth0") as at_b:
                leases = [request_lease(lab, script) for _ in range(4)]
            evidence = (leases, link.logs())
            assert all(lease is not None for lease in leases), evidence
            if mode == "shared":
                # Only site A has a server: its leases cross the tunnel.
                assert all(lease is not None and lease[1] == a_ip and in_pool(lease[0], "A")
                           for lease in leases), evidence
                return
            assert all(lease is not None and lease[1] == b_ip and in_pool(lease[0], "B")
                       for lease in leases), evidence
            # A's server heard the client (client messages cross) but not one of its
            # answers reached site B.
            assert "DHCPDISCOVER" in (tmp_path / "dnsmasqA.log").read_text()
            from_a = dhcp_server_frames(at_b.frames, a_ip)
            assert from_a == 0, f"{from_a} DHCP server messages of site A reached hostB1"
            assert dhcp_server_frames(at_b.frames, b_ip) > 0, "capture missed B's answers"
            assert drops(link, "A", "guard_dhcp") + drops(link, "B", "guard_dhcp") > 0
            # Without B's server, site B gets no lease at all: A's offers never cross.
            servers.pop("B").terminate()
            assert request_lease(lab, script) is None, link.logs()
        finally:
            for proc in servers.values():
                proc.terminate()
                proc.wait(timeout=10)


# -- 4. an IPv6 router at site A -----------------------------------------------------------------

TEST_PREFIX = ipaddress.IPv6Network("2001:db8:99::/64")
RADVD_CONF = f"""interface eth0 {{
    AdvSendAdvert on;
    MinRtrAdvInterval 3;
    MaxRtrAdvInterval 4;
    AdvDefaultLifetime 0;
    prefix {TEST_PREFIX} {{ AdvOnLink on; AdvAutonomous on; }};
}};
"""


def slaac_addresses(lab: Lab, role: str) -> list[str]:
    return [a for a in addresses(lab, role, "eth0", "inet6")
            if ipaddress.IPv6Address(a) in TEST_PREFIX]


def wait_slaac(lab: Lab, role: str, within: float) -> list[str]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        got = slaac_addresses(lab, role)
        if got:
            return got
        time.sleep(0.2)
    return []


@pytest.mark.parametrize("mode", ["local", "shared"])
def test_router_advertisement_from_site_a_configures_site_b_only_when_shared(
        tmp_path: Path, mode: str) -> None:
    radvd_conf = tmp_path / "radvd.conf"
    radvd_conf.write_text(RADVD_CONF)
    with Lab(DIRECT) as lab, BridgedLab(lab, tmp_path, extra_args=["--ra", mode]) as link:
        link.start_all()
        for role in ("hostA1", "hostB1"):  # hosts that autoconfigure from any RA they hear
            lab.run(role, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.accept_ra=2",
                    "net.ipv6.conf.eth0.autoconf=1")
        lab.run("hostA2", "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
        prefix_bytes = TEST_PREFIX.network_address.packed[:8]
        # The capture starts first: radvd advertises at once when it starts.
        with Capture(lab, "hostB1", "eth0") as at_b, \
                (tmp_path / "radvd.log").open("wb") as log:
            radvd = lab.popen("hostA2", "radvd", "-n", "-C", str(radvd_conf),
                              "-p", str(tmp_path / "radvd.pid"), "-m", "stderr",
                              stdout=log, stderr=subprocess.STDOUT)
            try:
                at_a = wait_slaac(lab, "hostA1", within=15)
                assert at_a, ("radvd's RA did not configure its own site",
                              (tmp_path / "radvd.log").read_text())
                if mode == "shared":
                    assert wait_slaac(lab, "hostB1", within=15), link.logs()
                else:
                    # two RAs at least reached the guard (and were dropped there)
                    assert wait_until(lambda: drops(link, "A", "guard_ra")
                                      + drops(link, "B", "guard_ra") >= 2,
                                      within=20) is not None, \
                        link.logs()
            finally:
                radvd.terminate()
                radvd.wait(timeout=10)
        if mode == "shared":
            assert at_b.count(prefix_bytes) > 0, "hostB1 configured, but no RA was captured"
            return
        assert slaac_addresses(lab, "hostB1") == []
        assert at_b.count(prefix_bytes) == 0, "an RA with the test prefix reached site B"
        assert drops(link, "A", "guard_ra") + drops(link, "B", "guard_ra") > 0, link.logs()
