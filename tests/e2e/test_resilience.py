"""The link survives loss, restarts, address changes and NAT: real lab, real processes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridger.lab import Lab, LabOptions
from tests.e2e.bridged import BRIDGER, BridgedLab, host_address, wait_ping
from tests.e2e.test_bridge_traffic import transfer

pytestmark = pytest.mark.netns

RECOVERY = 15.0


@pytest.fixture
def make_bridged(tmp_path: Path) -> Iterator[object]:
    made: list[tuple[Lab, BridgedLab]] = []

    def make(options: LabOptions, **kw: object) -> BridgedLab:
        lab = Lab(options)
        lab.__enter__()
        link = BridgedLab(lab, tmp_path / f"lab{len(made)}", **kw)  # type: ignore[arg-type]
        made.append((lab, link))
        return link

    yield make
    for lab, link in made:
        link.kill_everything()
        lab.teardown()


def snapshot_host(lab: Lab, role: str) -> str:
    parts = []
    for argv in (("ip", "-j", "addr"), ("ip", "-j", "route"), ("ip", "-6", "-j", "route"),
                 ("ip", "-j", "link")):
        data = json.loads(lab.run(role, *argv).stdout)
        for item in data:
            for volatile in ("operstate", "linkmode", "stats64", "txqlen", "ifindex",
                             "link_index", "preferred_life_time", "valid_life_time"):
                item.pop(volatile, None)
            for a in item.get("addr_info", []):
                a.pop("preferred_life_time", None)
                a.pop("valid_life_time", None)
        parts.append(json.dumps(data, sort_keys=True))
    return "\n".join(parts)


def test_lossy_delayed_reordering_wan_transfer_is_byte_exact(make_bridged) -> None:  # type: ignore[no-untyped-def]
    link = make_bridged(LabOptions(loss_pct=5, delay_ms=40, reorder_pct=5))
    link.start_all(timeout=40)
    sent, received = transfer(link.lab, 50_000_000, timeout=1200)
    assert sent.split()[0] == "50000000"
    assert received == sent, link.logs()


def test_gateway_restart_recovers_without_touching_the_peer(make_bridged) -> None:  # type: ignore[no-untyped-def]
    link = make_bridged(LabOptions(engine="direct"))
    lab = link.lab
    before = snapshot_host(lab, "gwB")
    link.start_all()
    b1 = host_address(lab, "hostB1")
    wait_ping(lab, "hostA1", b1)
    peer_pid = link.procs["A"].pid
    assert link.stop("B", signal.SIGTERM) == 0
    assert snapshot_host(lab, "gwB") == before  # SIGTERM restored the host
    link.start("B")
    took = wait_ping(lab, "hostA1", b1, within=RECOVERY)
    assert link.procs["A"].pid == peer_pid and link.procs["A"].poll() is None
    print(f"recovered {took:.1f}s after restart (SIGTERM)")

    # SIGKILL leaves the host changed; `bridger down` gives it back.
    link.stop("B", signal.SIGKILL)
    down = lab.run("gwB", *BRIDGER, "down", "--state-dir", str(link.state_dir("B")))
    assert "restored" in down.stdout
    assert snapshot_host(lab, "gwB") == before
    link.start("B")
    took = wait_ping(lab, "hostA1", b1, within=RECOVERY)
    print(f"recovered {took:.1f}s after SIGKILL + down + start")


def test_wan_address_change_recovers(make_bridged) -> None:  # type: ignore[no-untyped-def]
    # B dials A; A learns B's endpoint only from authenticated packets.
    link = make_bridged(LabOptions(engine="direct"), b_dials_only=True)
    link.start_all()
    lab = link.lab
    b1 = host_address(lab, "hostB1")
    wait_ping(lab, "hostA1", b1)
    traffic = lab.popen("hostA1", "ping", "-i", "0.2", b1, stdout=subprocess.DEVNULL)
    try:
        new = lab.change_wan_address("B")
        took = wait_ping(lab, "hostA1", b1, within=RECOVERY)
        status = link.status("A")
        assert status is not None and status["peers"][0]["endpoint"].startswith(new)
        print(f"recovered {took:.1f}s after B moved to {new}")
    finally:
        traffic.kill()
        traffic.wait()


def test_site_b_behind_nat_works_and_survives_mapping_change(make_bridged) -> None:  # type: ignore[no-untyped-def]
    link = make_bridged(LabOptions(nat_b=True, engine="direct"), b_dials_only=True)
    link.start_all()
    lab = link.lab
    b1 = host_address(lab, "hostB1")
    a1 = host_address(lab, "hostA1")
    wait_ping(lab, "hostA1", b1)
    wait_ping(lab, "hostB1", a1)
    before = link.status("A")
    assert before is not None
    lab.change_nat_mapping()
    took = wait_ping(lab, "hostA1", b1, within=RECOVERY + 10)
    after = link.status("A")
    assert after is not None and after["peers"][0]["endpoint"] != before["peers"][0]["endpoint"]
    print(f"recovered {took:.1f}s after the NAT mapping changed")


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_lab_demo_with_duration_exits_zero_and_cleans_up() -> None:
    out = subprocess.run([*BRIDGER, "lab", "demo", "--duration", "8"], capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pings answered" in out.stdout
    prefix = re.search(r"^lab (bl[0-9a-f]{6}): ", out.stdout, re.M)
    assert prefix is not None, out.stdout
    # its own namespaces are gone (other labs may come and go meanwhile)
    assert not [n for n in namespaces() if n.startswith(prefix[1] + "-")]
