"""What an operator relies on: exact counters, metrics, peers given by DNS name."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridger.lab import Lab, LabOptions
from bridger.status.schema import validate
from tests.e2e.bridged import BRIDGER, BridgedLab, host_address, host_ifname, wait_ping
from tests.e2e.test_bridge_traffic import RAW, mac_of

pytestmark = pytest.mark.netns


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(LabOptions(engine="direct")) as lab:
        yield lab


def test_counters_equal_the_frames_actually_sent(lab: Lab, tmp_path: Path) -> None:
    # Loop protection's probes (the same EtherType, counted as "other" where they
    # reach a LAN) would add to the exact counts.
    with BridgedLab(lab, tmp_path / "w", extra_args=["--no-loop-protection"]) as link:
        link.start_all()
        before_a, before_b = link.status("A"), link.status("B")
        assert before_a is not None and before_b is not None
        # N frames of a local experimental ethertype: nothing else on the LAN uses it.
        n = 250
        dst = mac_of(lab, "hostB1").replace(":", "")
        src = mac_of(lab, "hostA1").replace(":", "")
        frames = [f"{dst}{src}88b5{i:08x}" + "00" * (46 + i % 1400) for i in range(n)]
        sent_bytes = sum(len(f) // 2 for f in frames)
        for chunk in range(0, n, 50):
            lab.run("hostA1", sys.executable, RAW, "send", host_ifname(lab, "hostA1"),
                    *frames[chunk:chunk + 50])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after_a, after_b = link.status("A"), link.status("B")
            assert after_a is not None and after_b is not None
            if rx_other(after_b) - rx_other(before_b) >= n:
                break
            time.sleep(0.2)
        validate(after_a)
        validate(after_b)
        assert (after_a["peers"][0]["kinds"]["tx"]["other"]
                - before_a["peers"][0]["kinds"]["tx"]["other"]) == n
        assert rx_other(after_b) - rx_other(before_b) == n
        # byte counters moved by at least the frames' own bytes
        assert after_a["bytes"]["tx"] - before_a["bytes"]["tx"] >= sent_bytes
        assert after_b["bytes"]["rx"] - before_b["bytes"]["rx"] >= sent_bytes
        # site A's MAC table saw hostA1 on the local side; B saw it on the remote side
        assert any(e["mac"] == mac_of(lab, "hostA1") for e in after_a["macs"]["local"]["top"])
        remote = after_b["peers"][0]["macs"]["remote"]["top"]
        assert any(e["mac"] == mac_of(lab, "hostA1") for e in remote)


def rx_other(status: dict[str, Any]) -> int:
    count: int = status["peers"][0]["kinds"]["rx"]["other"]
    return count


SCRAPE = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
"""


def test_metrics_endpoint_is_scraped_and_parsed(lab: Lab, tmp_path: Path) -> None:
    with BridgedLab(lab, tmp_path / "w", extra_args=["--metrics", "127.0.0.1:9555"]) as link:
        link.start_all()
        wait_ping(lab, "hostA1", host_address(lab, "hostB1"))
        text = lab.run("gwA", sys.executable, "-c", SCRAPE, "http://127.0.0.1:9555/metrics").stdout
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("bridger_peer_up", (("peer", "peer"),))] == 1
        tx = samples[("bridger_frames_total", (("direction", "lan_to_wan"), ("peer", "peer")))]
        rx = samples[("bridger_frames_total", (("direction", "wan_to_lan"), ("peer", "peer")))]
        assert tx >= 1 and rx >= 1
        assert ("bridger_peer_drops_total", (("peer", "peer"), ("reason", "replay"))) in samples


def hosts_file(lab: Lab, role: str) -> Path:
    """`ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts."""
    path = Path("/etc/netns") / lab.ns(role) / "hosts"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("127.0.0.1 localhost\n")
    return path


def test_peer_by_dns_name_unresolvable_then_resolving(lab: Lab, tmp_path: Path) -> None:
    hosts = hosts_file(lab, "gwB")
    try:
        with BridgedLab(lab, tmp_path / "w", b_dials_only=True,
                        peers={"B": "site-a.bridger-lab.test:55555"}) as link:
            link.start("A")
            link.start("B")
            # the name does not resolve yet: B keeps running and says so
            deadline = time.monotonic() + 10
            while "does not resolve" not in link.log_path("B").read_text():
                assert time.monotonic() < deadline, link.logs()
                assert link.procs["B"].poll() is None, link.logs()
                time.sleep(0.2)
            # dynamic DNS catches up: the same file, rewritten in place
            with hosts.open("w") as f:
                address = lab.gateway_wan_address("A")
                f.write(f"127.0.0.1 localhost\n{address} site-a.bridger-lab.test\n")
            took = link.wait_up(timeout=20)
            wait_ping(lab, "hostB1", host_address(lab, "hostA1"))
            status = link.status("B")
            assert status is not None
            assert status["peers"][0]["host"] == "site-a.bridger-lab.test"
            print(f"link up {took:.1f}s after the name started resolving")
            assert "Traceback" not in link.logs()
    finally:
        hosts.unlink(missing_ok=True)
        hosts.parent.rmdir()


def test_missing_nic_is_one_line_error_and_host_untouched(lab: Lab, tmp_path: Path) -> None:
    link = BridgedLab(lab, tmp_path / "w")
    argv = link.argv("A")
    argv[argv.index("eth1")] = "eth7"
    before = lab.run("gwA", "ip", "-j", "addr").stdout
    out = lab.run("gwA", *argv, check=False)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "eth7" in lines[0], out.stderr
    assert lab.run("gwA", "ip", "-j", "addr").stdout == before


def test_second_up_on_same_state_dir_refused_and_down_idempotent(lab: Lab, tmp_path: Path) -> None:
    with BridgedLab(lab, tmp_path / "w") as link:
        link.start_all()
        # a second daemon on the same state dir (another listen port, so only the lock decides)
        argv = [*link.argv("A"), "--listen", "55556", "--bridge", "br-second",
                "--tap", "tap-second"]
        out = lab.run("gwA", *argv, check=False, timeout=30)
        assert out.returncode == 2
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert f"another bridger (pid {link.procs['A'].pid}" in out.stderr, out.stderr
        # `down` while the daemon lives refuses too, and changes nothing
        down = lab.run("gwA", *BRIDGER, "down", "--state-dir", str(link.state_dir("A")),
                       check=False)
        assert down.returncode == 2, down.stdout + down.stderr
        wait_ping(lab, "hostA1", host_address(lab, "hostB1"))
        assert link.stop("A") == 0
        # nothing left to undo: says so, exit 0
        down = lab.run("gwA", *BRIDGER, "down", "--state-dir", str(link.state_dir("A")))
        assert "nothing to restore" in down.stdout


def test_ipv6_underlay(lab: Lab, tmp_path: Path) -> None:
    """Gateways that talk over IPv6 on the WAN: handshake, full-size frames, endpoint."""
    peer_a = f"[{lab.gateway_wan_address6('A')}]:55555"
    peer_b = f"[{lab.gateway_wan_address6('B')}]:55555"
    with BridgedLab(lab, tmp_path / "w", peers={"A": peer_b, "B": peer_a}) as link:
        link.start_all()
        b1 = host_address(lab, "hostB1")
        wait_ping(lab, "hostA1", b1)
        assert ping_df(lab, "hostA1", b1)
        status = link.status("A")
        assert status is not None
        assert status["peers"][0]["endpoint"] == peer_b


def ping_df(lab: Lab, role: str, dst: str) -> bool:
    """A 1500-byte IP packet with DF set: fragments over an IPv6 underlay (48-byte headers)."""
    out = lab.run(role, "ping", "-c", "3", "-W", "2", "-M", "do", "-s", "1472", dst, check=False)
    return out.returncode == 0
