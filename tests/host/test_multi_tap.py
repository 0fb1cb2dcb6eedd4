"""Issue 13: one tap per peer in the bridge, isolated ports in mode "mesh".

All in a real gateway namespace (see hostlab.py); each test ends with the
host snapshot equal to the one taken before.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bridger.errors import HostError
from bridger.host import HostPlan, TapPlan, bring_up
from bridger.host.tap import IFF_VNET_HDR, tap_flags
from tests.host.hostlab import REPO, Topo, bridge_ports, diff, down_in_ns, ipj, sh, snapshot

pytestmark = pytest.mark.netns


def three_taps(topo: Topo) -> tuple[TapPlan, ...]:
    return (TapPlan(f"{topo.tap}a", isolated=True), TapPlan(f"{topo.tap}b"),
            TapPlan(f"{topo.tap}c", isolated=True))


def test_three_taps_with_isolated_flags_and_exact_restore(topo: Topo) -> None:
    before = snapshot(topo.gw)
    taps = three_taps(topo)
    with bring_up(topo.plan(taps=taps)) as session:
        assert list(session.taps) == [t.name for t in taps]
        assert session.tap_name == taps[0].name and session.tap_fd == session.taps[taps[0].name]
        ports = bridge_ports(topo)
        for tap in taps:
            fd = session.taps[tap.name]
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
            link = ipj(topo.gw, "link", "show", tap.name)[0]
            assert link["master"] == topo.bridge and link["mtu"] == 1500
            assert "UP" in link["flags"]
            assert ports[tap.name]["isolated"] is tap.isolated, ports[tap.name]
        assert ports["lan0"]["isolated"] is False
        meta = (topo.state_dir / "journal.json").read_text()
        assert all(t.name in meta for t in taps)
    assert not diff(before, snapshot(topo.gw))


def test_taps_get_the_lan_mtu_and_a_deep_queue(topo: Topo) -> None:
    from bridger.host.setup import TAP_TXQUEUELEN

    sh("ip", "-n", topo.gw, "link", "set", "lan0", "mtu", "1400")
    before = snapshot(topo.gw)
    with bring_up(topo.plan(taps=three_taps(topo))) as session:
        for name in session.taps:
            link = ipj(topo.gw, "link", "show", name)[0]
            assert (link["mtu"], link["txqlen"]) == (1400, TAP_TXQUEUELEN)
        added = f"{topo.tap}d"
        session.add_tap(TapPlan(added))
        link = ipj(topo.gw, "link", "show", added)[0]
        assert (link["mtu"], link["txqlen"]) == (1400, TAP_TXQUEUELEN)
    assert not diff(before, snapshot(topo.gw))


def test_offload_is_a_value_not_the_environment(topo: Topo, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    monkeypatch.setenv("BRIDGER_OFFLOAD", "0")  # must not matter any more
    with bring_up(topo.plan(offload=True)) as session:
        assert tap_flags(session.tap_fd) & IFF_VNET_HDR
    monkeypatch.setenv("BRIDGER_OFFLOAD", "1")
    with bring_up(topo.plan(offload=False)) as session:
        assert not tap_flags(session.tap_fd) & IFF_VNET_HDR


def test_add_and_remove_taps_at_run_time(topo: Topo) -> None:
    before = snapshot(topo.gw)
    first, extra = f"{topo.tap}a", f"{topo.tap}x"
    with bring_up(topo.plan(taps=(TapPlan(first),))) as session:
        fd = session.add_tap(TapPlan(extra, isolated=True))
        assert session.taps[extra] == fd
        assert bridge_ports(topo)[extra]["isolated"] is True
        assert extra in (topo.state_dir / "journal.json").read_text()
        with pytest.raises(HostError, match=f"tap {extra} already exists"):
            session.add_tap(TapPlan(extra))
        with pytest.raises(HostError, match="is the LAN interface"):
            session.add_tap(TapPlan("lan0"))
        session.remove_tap(extra)
        assert extra not in session.taps
        assert extra not in {link["ifname"] for link in ipj(topo.gw, "link")}
        assert extra not in (topo.state_dir / "journal.json").read_text()
        with pytest.raises(HostError, match="not one of this session's taps"):
            session.remove_tap(extra)
        session.add_tap(TapPlan(extra))  # the name is free again
        session.remove_tap(first)  # the first tap may go too; tap_fd follows
        assert session.tap_name == extra and session.tap_fd == session.taps[extra]
    assert not diff(before, snapshot(topo.gw))


def test_a_failed_add_tap_leaves_nothing(topo: Topo) -> None:
    before = snapshot(topo.gw)
    with bring_up(topo.plan()) as session:
        journal = (topo.state_dir / "journal.json").read_text()
        sh("ip", "-n", topo.gw, "link", "add", "busy0", "type", "veth", "peer", "name", "busy0p")
        with pytest.raises(HostError, match="busy0 is taken by an existing veth device"):
            session.add_tap(TapPlan("busy0"))
        assert (topo.state_dir / "journal.json").read_text() == journal
        sh("ip", "-n", topo.gw, "link", "del", "busy0")
    assert not diff(before, snapshot(topo.gw))


def test_sigkill_with_three_taps_then_down_restores(topo: Topo) -> None:
    before = snapshot(topo.gw)
    args = []
    for tap in three_taps(topo):
        args += ["--tap", f"{tap.name},isolated" if tap.isolated else tap.name]
    cmd = topo.nsexec(sys.executable, "-m", "bridger.host.hold", "--lan", "lan0",
                      "--bridge", topo.bridge, "--state-dir", str(topo.state_dir), *args)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready"), line
        ports = bridge_ports(topo)
        assert [ports[t.name]["isolated"] for t in three_taps(topo)] == [True, False, True]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert diff(before, snapshot(topo.gw))  # the bridge and the NIC's move stay behind
    done = down_in_ns(topo)
    assert done.returncode == 0 and done.stdout.startswith("restored:"), done
    assert not diff(before, snapshot(topo.gw))


PLAN_ERRORS = {
    "duplicate": (lambda t: (TapPlan("dup0"), TapPlan("dup0")), "tap name dup0 is planned twice"),
    "is_lan": (lambda t: (TapPlan("lan0"),), "tap name lan0 is the LAN interface"),
    "is_bridge": (lambda t: (TapPlan(t.bridge),), "is the bridge"),
    "exists": (lambda t: (TapPlan("ok0"), TapPlan("lo")),
               "tap name lo is taken by an existing plain device"),
    "none": (lambda t: (), "no tap planned"),
}


@pytest.mark.parametrize("case", sorted(PLAN_ERRORS))
def test_bad_tap_plans_refused_in_one_line(topo: Topo, case: str) -> None:
    taps, message = PLAN_ERRORS[case]
    before = snapshot(topo.gw)
    with pytest.raises(HostError) as info:
        bring_up(topo.plan(taps=taps(topo)))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (topo.state_dir / "journal.json").exists()
    assert not diff(before, snapshot(topo.gw))


def test_tap_shorthand_and_taps_agree() -> None:
    plan = HostPlan(lan="eth1", tap="t0", state_dir=Path("/nonexistent"))
    assert plan.taps == (TapPlan("t0"),)
    with pytest.raises(ValueError, match="not both"):
        HostPlan(lan="eth1", tap="t0", taps=(TapPlan("t1"),), state_dir=Path("/x"))
