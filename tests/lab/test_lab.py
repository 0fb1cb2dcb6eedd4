"""The namespace lab itself: reachability, isolation, knobs, roaming, NAT, cleanup."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridger.lab import Lab, LabError, LabOptions, netem_available
from bridger.lab.fixtures import LabFactory
from bridger.lab.topology import list_namespaces

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ["wire", "netem"] if os.geteuid() == 0 and netem_available() else ["wire"]

UDP_ECHO_SOURCE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", 55555))
s.settimeout(10)
print("listening", flush=True)
for _ in range(int(sys.argv[1])):
    data, addr = s.recvfrom(100)
    print(addr[0], addr[1], flush=True)
"""
UDP_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", 40000))
s.sendto(b"hi", (sys.argv[1], 55555))
"""


def pings(lab: Lab, role: str, *args: str, count: int = 1) -> bool:
    proc = lab.run(role, "ping", "-c", str(count), "-i", "0.2", "-W", "1", *args, check=False)
    return proc.returncode == 0


def rtts_ms(lab: Lab, role: str, dst: str, count: int = 3) -> list[float]:
    out = lab.run(role, "ping", "-c", str(count), "-i", "0.2", "-W", "2", dst).stdout
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", out)]


def lab_namespaces(prefix: str) -> list[str]:
    return [n for n in list_namespaces() if n.startswith(f"{prefix}-")]


def test_names_are_prefixed_and_unique(shared_lab: Lab, lab_factory: LabFactory) -> None:
    assert re.fullmatch(r"bl[0-9a-f]{6}", shared_lab.prefix)
    assert shared_lab.ns("hostA1") == f"{shared_lab.prefix}-hostA1"
    other = lab_factory()
    assert other.prefix != shared_lab.prefix
    # Both labs work side by side with the same addresses inside.
    assert pings(other, "hostA1", "192.168.1.12")
    assert pings(shared_lab, "hostA1", "192.168.1.12")
    with pytest.raises(LabError):
        shared_lab.ns("natB")
    with pytest.raises(LabError):
        shared_lab.ns("nosuchrole")


@pytest.mark.parametrize(
    ("role", "dst"),
    [
        ("hostA1", "192.168.1.12"),
        ("hostA1", "192.168.1.1"),
        ("hostA2", "fd00:b::11"),
        ("hostA2", "fd00:b::1"),
        ("hostB1", "192.168.1.22"),
        ("hostB2", "192.168.1.2"),
        ("hostB2", "fd00:b::2"),
        ("gwA", "10.100.2.2"),
        ("gwB", "10.100.1.2"),
    ],
)
def test_reachable_within_site_and_across_wan(shared_lab: Lab, role: str, dst: str) -> None:
    assert pings(shared_lab, role, dst)


@pytest.mark.parametrize(
    ("role", "dst"),
    [
        ("hostA1", "192.168.1.21"),
        ("hostB1", "192.168.1.11"),
        ("hostA1", "fd00:b::22"),
        ("gwA", "192.168.1.2"),
    ],
)
def test_sites_not_joined_without_bridger(shared_lab: Lab, role: str, dst: str) -> None:
    assert not pings(shared_lab, role, dst)


def test_gateways_do_not_forward(shared_lab: Lab) -> None:
    for gw in ("gwA", "gwB"):
        out = shared_lab.run(gw, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()
        assert out == "0"
        lan = shared_lab.run(gw, "ip", "-o", "-4", "addr", "show", "dev", "eth1").stdout
        assert shared_lab.lan_address(gw) in lan
    assert shared_lab.gateway_wan_address("A") == "10.100.1.2"


@pytest.mark.parametrize("engine", ENGINES)
def test_delay_shows_in_rtt_and_changes_on_the_fly(lab_factory: LabFactory, engine: str) -> None:
    lab = lab_factory(delay_ms=100, engine=engine)
    b = lab.gateway_wan_address("B")
    pings(lab, "gwA", b)  # resolve ARP first: the ARP exchange is delayed too
    assert min(rtts_ms(lab, "gwA", b)) >= 200  # one-way delay, applied in each direction
    lab.set_impairment(delay_ms=0)
    assert min(rtts_ms(lab, "gwA", b)) < 100
    lab.set_impairment(delay_ms=30)
    assert min(rtts_ms(lab, "gwA", b)) >= 60
    with pytest.raises(LabError):
        lab.set_impairment(bogus=1)
    with pytest.raises(LabError):
        lab.set_impairment(loss_pct=200)


@pytest.mark.parametrize("engine", ENGINES)
def test_total_loss_blocks_wan_and_rate_limits(lab_factory: LabFactory, engine: str) -> None:
    lab = lab_factory(engine=engine)
    b = lab.gateway_wan_address("B")
    assert pings(lab, "gwA", b)
    lab.set_impairment(loss_pct=100)
    assert not pings(lab, "gwA", b)
    lab.set_impairment(loss_pct=0, rate_mbit=1)
    # 5 back-to-back 20000-byte pings are 800 kbit each way: >= 0.8 s at 1 Mbit/s.
    start = time.monotonic()
    lab.run("gwA", "ping", "-q", "-c", "5", "-i", "0.01", "-s", "20000", "-W", "5", b)
    assert time.monotonic() - start >= 0.5
    if engine == "wire":
        stats = lab.wire_stats()
        assert stats["pB"]["delivered"] > 0


def test_nat_mtu_and_roaming(lab_factory: LabFactory) -> None:
    lab = lab_factory(nat_b=True, wan_mtu=1400)
    a = lab.gateway_wan_address("A")
    public_b = lab.gateway_wan_address("B")
    assert lab.gateway_private_address("B") != public_b
    # WAN MTU: 1372 + 28 = 1400 fits with DF, 1373 does not.
    assert pings(lab, "gwA", "-M", "do", "-s", "1372", public_b)
    assert not pings(lab, "gwA", "-M", "do", "-s", "1373", public_b)
    assert pings(lab, "gwB", "-M", "do", "-s", "1372", a)

    listener = lab.popen(
        "gwA", sys.executable, "-c", UDP_ECHO_SOURCE, "3", stdout=subprocess.PIPE, text=True
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "listening"
        lab.run("gwB", sys.executable, "-c", UDP_SEND, a)
        seen = [listener.stdout.readline().split()]
        assert seen[0][0] == public_b  # A sees B only through the NAT
        lab.change_nat_mapping()
        assert lab.gateway_wan_address("B") != public_b
        lab.run("gwB", sys.executable, "-c", UDP_SEND, a)
        seen.append(listener.stdout.readline().split())
        assert seen[1][0] == lab.gateway_wan_address("B")
        # Roaming A: B keeps reaching A at its new address, the old one is gone.
        new_a = lab.change_wan_address("A")
        assert new_a != a
        lab.run("gwB", sys.executable, "-c", UDP_SEND, new_a)
        seen.append(listener.stdout.readline().split())
        assert seen[2][0] == lab.gateway_wan_address("B")
        assert not pings(lab, "gwB", a)
    finally:
        listener.kill()
        listener.wait()


def test_change_wan_address_without_nat(shared_lab: Lab) -> None:
    old = shared_lab.gateway_wan_address("B")
    new = shared_lab.change_wan_address("B")
    assert new != old and shared_lab.gateway_wan_address("B") == new
    assert pings(shared_lab, "gwA", new)
    assert not pings(shared_lab, "gwA", old)
    addrs = shared_lab.run("gwB", "ip", "-o", "-4", "addr", "show", "dev", "wan0").stdout
    assert new in addrs and old not in addrs


def test_teardown_removes_everything_and_is_idempotent() -> None:
    with Lab(LabOptions(nat_b=True)) as lab:
        assert len(lab_namespaces(lab.prefix)) == 10
    assert lab_namespaces(lab.prefix) == []
    lab.teardown()


def test_failed_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    lab = Lab(LabOptions())

    def boom() -> None:
        raise LabError("injected failure")

    monkeypatch.setattr(lab, "_build_wan", boom)
    with pytest.raises(LabError, match="injected"):
        lab.build()
    assert lab_namespaces(lab.prefix) == []


def test_bad_options_rejected_before_anything_is_built() -> None:
    for opts in (LabOptions(wan_mtu=100), LabOptions(prefix="no-dash"), LabOptions(loss_pct=-1)):
        with pytest.raises(LabError):
            Lab(opts)


def _start_up(prefix: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridger.lab", "up", "--prefix", prefix, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Ctrl-C" in line:
            return proc
    proc.wait()
    pytest.fail(f"lab up did not come up: {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_up_cleans_up_on_signal(sig: signal.Signals) -> None:
    prefix = f"bt{os.urandom(3).hex()}"
    proc = _start_up(prefix, "--nat", "--delay", "5")
    try:
        assert len(lab_namespaces(prefix)) == 10
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        assert lab_namespaces(prefix) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(
            [sys.executable, "-m", "bridger.lab", "down", "--prefix", prefix],
            cwd=ROOT,
            check=False,
            capture_output=True,
        )


def test_cleanup_removes_labs_of_killed_processes() -> None:
    prefix = f"bt{os.urandom(3).hex()}"
    proc = _start_up(prefix)
    try:
        proc.kill()  # SIGKILL: no handler runs, namespaces stay behind
        proc.wait()
        assert lab_namespaces(prefix)
        out = subprocess.run(
            [sys.executable, "-m", "bridger.lab", "list"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert re.search(rf"^{prefix}\s+pid \d+ dead$", out, re.M)
        subprocess.run(
            [sys.executable, "-m", "bridger.lab", "cleanup"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        assert lab_namespaces(prefix) == []
    finally:
        subprocess.run(
            [sys.executable, "-m", "bridger.lab", "down", "--prefix", prefix],
            cwd=ROOT,
            check=False,
            capture_output=True,
        )


LIBRARY_USER = """
import time
from bridger.lab import Lab, LabOptions
with Lab(LabOptions(prefix=__import__("sys").argv[1])) as lab:
    print("built", flush=True)
    time.sleep(60)
"""


def test_library_user_killed_by_sigterm_cleans_up() -> None:
    prefix = f"bt{os.urandom(3).hex()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", LIBRARY_USER, prefix], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "built"
        assert len(lab_namespaces(prefix)) == 9
        proc.terminate()
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
        assert lab_namespaces(prefix) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(
            [sys.executable, "-m", "bridger.lab", "down", "--prefix", prefix],
            cwd=ROOT,
            check=False,
            capture_output=True,
        )


def test_asking_for_netem_builds_or_is_a_clear_error() -> None:
    """Where the kernel lacks sch_netem, one clear error and nothing left behind;
    where it has it, the netem lab builds (no skip: as root a skipped netns test
    fails the run)."""
    lab = Lab(LabOptions(engine="netem"))
    if "netem" in ENGINES:
        with lab:
            assert lab_namespaces(lab.prefix)
    else:
        with pytest.raises(LabError, match="sch_netem"):
            lab.build()
    assert lab_namespaces(lab.prefix) == []
