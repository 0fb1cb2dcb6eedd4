"""Whatever crosses a wire crosses bridger: real lab, real `bridger up` processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridger.lab import Lab, LabOptions
from tests.e2e.bridged import BridgedLab, host_address, host_ifname, ping

pytestmark = pytest.mark.netns

XFER = str(Path(__file__).with_name("tcpxfer.py"))


@pytest.fixture(scope="module")
def bridged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgedLab]:
    with Lab(LabOptions(engine="direct")) as lab:
        link = BridgedLab(lab, tmp_path_factory.mktemp("bridged"))
        try:
            link.start_all()
            yield link
        finally:
            link.kill_everything()


def mac_of(lab: Lab, role: str) -> str:
    ifname = host_ifname(lab, role)
    out = lab.run(role, "ip", "-j", "link", "show", "dev", ifname)
    return str(json.loads(out.stdout)[0]["address"])


def test_ipv4_ping_and_arp_resolves(bridged: BridgedLab) -> None:
    lab = bridged.lab
    b1 = host_address(lab, "hostB1")
    assert ping(lab, "hostA1", b1), bridged.logs()
    neigh = json.loads(lab.run("hostA1", "ip", "-j", "neigh", "show", b1).stdout)
    assert neigh and neigh[0]["lladdr"] == mac_of(lab, "hostB1")


@pytest.mark.parametrize("src, dst", [("hostA1", "hostB1"), ("hostB2", "hostA2")])
def test_full_1500_mtu_with_df_both_ways(bridged: BridgedLab, src: str, dst: str) -> None:
    lab = bridged.lab
    assert ping(lab, src, "-M", "do", "-s", "1472", host_address(lab, dst)), bridged.logs()
    # and nothing larger fits a 1500 LAN: the hosts really have MTU 1500
    assert not ping(lab, src, "-M", "do", "-s", "1473", host_address(lab, dst), count=1)


def test_ipv6_link_local_and_global(bridged: BridgedLab) -> None:
    lab = bridged.lab
    ll = host_address(lab, "hostB1", "inet6", link_local=True).split("%")[0]
    ll_scoped = f"{ll}%{host_ifname(lab, 'hostA1')}"
    assert ping(lab, "hostA1", "-6", ll_scoped)
    assert ping(lab, "hostA2", "-6", host_address(lab, "hostB2", "inet6"))
    assert ping(lab, "hostA2", "-6", "-M", "do", "-s", "1452", host_address(lab, "hostB2", "inet6"))


RECV_BROADCAST = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 9999))
s.settimeout(15)
print("ready", flush=True)
data, addr = s.recvfrom(2048)
print(data.decode(), addr[0], flush=True)
"""

SEND_BROADCAST = """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
for _ in range(10):
    s.sendto(b"hello-from-A", ("192.168.1.255", 9999))
    time.sleep(0.3)
"""


def test_udp_broadcast_reaches_other_site(bridged: BridgedLab) -> None:
    lab = bridged.lab
    listener = lab.popen("hostB1", sys.executable, "-c", RECV_BROADCAST,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        lab.run("hostA1", sys.executable, "-c", SEND_BROADCAST)
        line = listener.stdout.readline().split()
        assert line[:2] == ["hello-from-A", host_address(lab, "hostA1")]
    finally:
        listener.kill()
        listener.wait()


RAW = str(Path(__file__).with_name("rawframe.py"))


def test_vlan_tagged_frames_cross_byte_exact(bridged: BridgedLab) -> None:
    """802.1Q and QinQ frames up to 1500-byte payloads arrive unchanged at the other site.

    The lab kernel has no 802.1Q devices, so the frames are built and captured raw.
    """
    lab = bridged.lab
    marker = b"bridger-vlan-test"
    dst = bytes.fromhex(mac_of(lab, "hostB1").replace(":", ""))
    src = bytes.fromhex(mac_of(lab, "hostA1").replace(":", ""))
    dot1q = bytes.fromhex("8100002a")  # VLAN 42
    qinq = bytes.fromhex("88a800648100002a")  # S-tag 100, C-tag 42
    frames = [
        dst + src + dot1q + b"\x08\x00" + marker + bytes(46 - len(marker)),
        dst + src + dot1q + b"\x86\xdd" + marker + bytes(range(256)) * 5
        + bytes(1500 - 1280 - len(marker)),
        b"\xff" * 6 + src + dot1q + b"\x08\x06" + marker + bytes(100),
        # QinQ (AF_PACKET grants the 4-byte tag allowance to 0x8100 frames only)
        dst + src + qinq + b"\x08\x00" + marker + b"\xab" * (1492 - len(marker)),
    ]
    assert len(frames[1]) == 1518
    listener = lab.popen("hostB1", sys.executable, RAW, "recv", host_ifname(lab, "hostB1"),
                         marker.hex(), str(len(frames)), stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        lab.run("hostA1", sys.executable, RAW, "send", host_ifname(lab, "hostA1"),
                *(f.hex() for f in frames))
        received = [bytes.fromhex(listener.stdout.readline().strip()) for _ in frames]
    finally:
        listener.kill()
        listener.wait()
    assert received == frames, bridged.logs()


def transfer(lab: Lab, nbytes: int, timeout: float) -> tuple[str, str]:
    """Send ``nbytes`` from hostA1 to hostB1 over TCP; return (sent, received) summaries."""
    receiver = lab.popen("hostB1", sys.executable, XFER, "recv", "5001",
                         stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "listening"
        sent = lab.run("hostA1", sys.executable, XFER, "send", host_address(lab, "hostB1"),
                       "5001", str(nbytes), timeout=timeout).stdout.strip()
        received = receiver.stdout.readline().strip()
        receiver.wait(10)
        return sent, received
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()


def test_50mb_tcp_transfer_is_byte_exact(bridged: BridgedLab) -> None:
    start = time.monotonic()
    sent, received = transfer(bridged.lab, 50_000_000, timeout=300)
    elapsed = time.monotonic() - start
    assert sent.split()[0] == "50000000"
    assert received == sent, bridged.logs()
    print(f"50 MB in {elapsed:.1f}s = {400 / elapsed:.0f} Mbit/s")
    # the counters saw it: at least 50 MB of frames left site A
    status = bridged.status("A")
    assert status is not None and status["bytes"]["tx"] >= 50_000_000
