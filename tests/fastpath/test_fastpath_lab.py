"""The fast path in the lab: real `bridger up` processes, offloads on and off.

Byte-exact TCP both ways (IPv4 and IPv6) over a lossy WAN, with the fast path
on both sides and with one side on and one off (FRAME_CSUM then completed in
software); and checksums verified in a capture on the far host after its
switch port was made to compute them.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridger.lab import Lab, LabOptions
from tests.e2e.bridged import BridgedLab
from tests.fastpath import reference as ref

pytestmark = pytest.mark.netns

XFER = str(Path(__file__).parents[1] / "e2e" / "tcpxfer.py")
ROOT = str(Path(__file__).resolve().parents[2])


class OffloadLab(BridgedLab):
    """BridgedLab whose gateways run with ``--offload`` or ``--no-offload`` per site."""

    def __init__(self, lab: Lab, workdir: Path, offload: dict[str, bool]) -> None:
        super().__init__(lab, workdir)
        self.offload = offload

    def argv(self, site: str) -> list[str]:
        return [*super().argv(site), "--offload" if self.offload[site] else "--no-offload"]

    def start(self, site: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        with self.log_path(site).open("ab") as log:
            proc = self.lab.popen(f"gw{site}", *self.argv(site), stdout=log,
                                  stderr=subprocess.STDOUT, env=env)
        self.procs[site] = proc
        return proc


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[object]:
    made: list[tuple[Lab, OffloadLab]] = []

    def make(options: LabOptions, offload: dict[str, bool]) -> OffloadLab:
        lab = Lab(options)
        lab.build()
        link = OffloadLab(lab, tmp_path / f"l{len(made)}", offload)
        made.append((lab, link))
        link.start_all()
        return link

    yield make
    for lab, link in made:
        link.kill_everything()
        lab.teardown()


def transfer(link: OffloadLab, src: str, dst: str, dst_addr: str, nbytes: int) -> None:
    lab = link.lab
    rx = lab.popen(dst, sys.executable, XFER, "recv", "5001", stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout is not None and rx.stdout.readline().strip() == "listening"
        tx = lab.run(src, sys.executable, XFER, "send", dst_addr, "5001", str(nbytes),
                     timeout=120)
        received = rx.stdout.readline().split()
        rx.wait(30)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    assert received == tx.stdout.split(), link.logs()
    assert int(received[0]) == nbytes


@pytest.mark.parametrize("offload", [{"A": True, "B": True}, {"A": True, "B": False}],
                         ids=["both-on", "A-on-B-off"])
def test_byte_exact_tcp_over_lossy_wan(make_lab: object, offload: dict[str, bool]) -> None:
    link = make_lab(LabOptions(loss_pct=1, delay_ms=5), offload)  # type: ignore[operator]
    lab = link.lab
    transfer(link, "hostA1", "hostB1", lab.lan_address("hostB1"), 3_000_000)
    transfer(link, "hostB2", "hostA2", lab.lan_address("hostA2", 6), 3_000_000)
    if offload["A"]:
        assert "fast path: tap offloads csum" in link.log_path("A").read_text()
    if not offload["B"]:
        assert "fast path off" in link.log_path("B").read_text()


def read_pcap(path: Path) -> list[bytes]:
    data = path.read_bytes()
    frames, offset = [], 24
    while offset + 16 <= len(data):
        incl = struct.unpack_from("<I", data, offset + 8)[0]
        frames.append(data[offset + 16:offset + 16 + incl])
        offset += 16 + incl
    return frames


def l4_checksum_ok(frame: bytes) -> bool | None:
    """Reference check of a TCP/UDP checksum in an untagged frame; None if neither."""
    ethertype = struct.unpack_from(">H", frame, 12)[0]
    if ethertype == 0x0800:
        ihl, proto = (frame[14] & 0x0F) * 4, frame[23]
        total = struct.unpack_from(">H", frame, 16)[0]
        src, dst, l4 = frame[26:30], frame[30:34], frame[14 + ihl:14 + total]
    elif ethertype == 0x86DD:
        proto = frame[20]
        plen = struct.unpack_from(">H", frame, 18)[0]
        src, dst, l4 = frame[22:38], frame[38:54], frame[54:54 + plen]
    else:
        return None
    if proto not in (6, 17):
        return None
    return ref.rfc1071(ref.pseudo(src, dst, len(l4), proto) + l4) == 0


UDP_SEND = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
for i in range(20):
    s.sendto(bytes([i]) * (100 + 60 * i), (sys.argv[1], 9999))
"""


def test_checksums_right_on_the_far_side(make_lab: object) -> None:
    link = make_lab(LabOptions(engine="direct"), {"A": True, "B": True})  # type: ignore[operator]
    lab = link.lab
    # swB's port to hostB1 computes checksums and segments in software, so the
    # capture on hostB1 shows exactly what a real NIC would put on the wire.
    lab.run("swB", sys.executable, "-m", "bridger.lab.wire", "offload-off", "h1",
            env=dict(os.environ, PYTHONPATH=ROOT))
    pcap = link.workdir / "b1.pcap"
    cap = lab.popen("hostB1", "tcpdump", "-i", "eth0", "-Q", "in", "-s", "0", "-U", "-w", str(pcap),
                    "tcp or udp", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        transfer(link, "hostA1", "hostB1", lab.lan_address("hostB1"), 2_000_000)
        transfer(link, "hostA2", "hostB1", lab.lan_address("hostB1", 6), 2_000_000)
        for family in (4, 6):
            lab.run("hostA1", sys.executable, "-c", UDP_SEND, lab.lan_address("hostB1", family))
        time.sleep(1.0)
    finally:
        cap.terminate()
        cap.wait(10)
    verdicts = [l4_checksum_ok(f) for f in read_pcap(pcap)]
    checked = [v for v in verdicts if v is not None]
    assert len(checked) > 1000
    assert all(checked), f"{checked.count(False)} bad checksums of {len(checked)}"
