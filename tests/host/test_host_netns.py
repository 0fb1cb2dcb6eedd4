"""Host set-up against real namespaces and the real kernel.

Topology (names get a random suffix)::

    +------------- gw ns -------------+        +---- lanhost ns ----+
    | lan0 10.77.0.1/24 fd77::1/64    |--veth--| lanh 10.77.0.2/24  |
    | default via 10.77.0.254 (lan0)  |        |      fd77::2/64    |
    | default via fd77::fe  (lan0)    |        +--------------------+
    | 10.88.0.0/16 via .3 table 100   |
    +---------------------------------+

Every test compares normalised ``ip -j`` snapshots of the gateway namespace
before and after; a difference means the host was not given back exactly.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bridger.errors import AlreadyRunning, HostError
from bridger.host import bring_up
from tests.host.hostlab import (
    REPO,
    Topo,
    diff,
    down_in_ns,
    ipj,
    ping,
    sh,
    snapshot,
)

pytestmark = pytest.mark.netns


def test_bring_up_keeps_lan_reachable_and_restore_is_exact(topo: Topo) -> None:
    before = snapshot(topo.gw)
    nic = ipj(topo.gw, "link", "show", "lan0")[0]
    with bring_up(topo.plan()) as session:
        assert session.tap_name == topo.tap and session.bridge_name == topo.bridge
        assert session.mtu == 1500
        assert fcntl.fcntl(session.tap_fd, fcntl.F_GETFL) & os.O_NONBLOCK
        br = ipj(topo.gw, "link", "show", topo.bridge)[0]
        assert br["address"] == nic["address"] and br["mtu"] == 1500
        assert ipj(topo.gw, "link", "show", "lan0")[0]["master"] == topo.bridge
        tap = ipj(topo.gw, "link", "show", topo.tap)[0]
        assert tap["master"] == topo.bridge and tap["mtu"] == 1500
        assert "UP" in tap["flags"]
        # No IPv6 stack on the tap (issue 26): no MLD, DAD or RS of its own into
        # the tunnel (a hub flooded them to every spoke), and no address.
        sysctl = f"/proc/sys/net/ipv6/conf/{topo.tap}/disable_ipv6"
        assert sh("ip", "netns", "exec", topo.gw, "cat", sysctl).stdout.strip() == "1"
        tap6 = ipj(topo.gw, "-6", "addr", "show", "dev", topo.tap)
        assert not any(e.get("addr_info") for e in tap6)
        details = ipj(topo.gw, "-d", "link", "show", topo.bridge)[0]["linkinfo"]["info_data"]
        assert details["forward_delay"] == 0 and details["stp_state"] == 0
        on_bridge = {a["local"] for a in ipj(topo.gw, "addr", "show", topo.bridge)[0]["addr_info"]}
        assert {"10.77.0.1", "10.77.0.9", "fd77::1"} <= on_bridge
        defaults = ipj(topo.gw, "route", "show", "default")
        assert defaults == [{"dst": "default", "gateway": "10.77.0.254", "dev": topo.bridge,
                             "metric": 20, "flags": []}]
        assert ipj(topo.gw, "-6", "route", "show", "default")[0]["dev"] == topo.bridge
        assert ipj(topo.gw, "route", "show", "table", "100")[0]["dev"] == topo.bridge
        assert ping(topo.gw, "10.77.0.2") and ping(topo.gw, "fd77::2")
        assert ping(topo.lanhost, "10.77.0.1")
        assert (topo.state_dir / "journal.json").exists()
    assert not (topo.state_dir / "journal.json").exists()
    assert not diff(before, snapshot(topo.gw))
    session.restore()  # idempotent
    assert ping(topo.gw, "10.77.0.2")


def test_stp_option_enables_stp(topo: Topo) -> None:
    before = snapshot(topo.gw)
    with bring_up(topo.plan(stp=True)):
        info = ipj(topo.gw, "-d", "link", "show", topo.bridge)[0]["linkinfo"]["info_data"]
        assert info["stp_state"] == 1
    assert not diff(before, snapshot(topo.gw))


def test_existing_bridge_with_nic_is_reused_and_kept(topo: Topo) -> None:
    for cmd in (f"link add {topo.bridge} type bridge forward_delay 0",
                f"link set lan0 master {topo.bridge}", f"link set {topo.bridge} up"):
        sh("ip", "-n", topo.gw, *cmd.split())
    before = snapshot(topo.gw)
    with bring_up(topo.plan()):
        assert ipj(topo.gw, "link", "show", topo.tap)[0]["master"] == topo.bridge
    assert not diff(before, snapshot(topo.gw))


def test_failure_at_every_step_rolls_back(topo: Topo) -> None:
    before = snapshot(topo.gw)
    step = 0
    while True:
        try:
            session = bring_up(topo.plan(), fail_after_step=step)
        except HostError as exc:
            assert f"injected failure after step {step}" in str(exc)
            assert not diff(before, snapshot(topo.gw)), f"step {step} not rolled back"
            assert not (topo.state_dir / "journal.json").exists()
            step += 1
            continue
        session.restore()
        break
    assert step >= 10  # bridge, tap, 4 routes, 3 addresses, enslave, configure, ...
    assert not diff(before, snapshot(topo.gw))


def start_holder(topo: Topo, *extra: str) -> subprocess.Popen[str]:
    """The production path: the process runs inside the gateway namespace (netns=None)."""
    cmd = topo.nsexec(sys.executable, "-m", "bridger.host.hold", "--lan", "lan0",
                      "--bridge", topo.bridge, "--tap", topo.tap,
                      "--state-dir", str(topo.state_dir), *extra)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready"), (line, proc.stderr.read() if proc.stderr else "")
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_holder_restores(topo: Topo, sig: signal.Signals) -> None:
    before = snapshot(topo.gw)
    proc = start_holder(topo)
    try:
        assert ipj(topo.gw, "link", "show", "lan0")[0]["master"] == topo.bridge
        assert ping(topo.gw, "10.77.0.2")
        # ip netns exec execs python, so the pid is the holder itself
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "restored" in out
    assert not diff(before, snapshot(topo.gw))


def test_sigkill_then_down_restores(topo: Topo) -> None:
    before = snapshot(topo.gw)
    proc = start_holder(topo)
    try:
        refused = down_in_ns(topo)
        assert refused.returncode == 2 and "AlreadyRunning" in refused.stdout
        with pytest.raises(AlreadyRunning, match="holds"):
            bring_up(topo.plan())
    finally:
        proc.kill()
        proc.wait()
    assert diff(before, snapshot(topo.gw))  # the crash left the bridge behind
    with pytest.raises(HostError, match="bridger down"):
        bring_up(topo.plan())  # refuses to stack on an unrestored journal
    done = down_in_ns(topo)
    assert done.returncode == 0 and done.stdout.startswith("restored:"), done
    assert not diff(before, snapshot(topo.gw))
    again = down_in_ns(topo)
    assert again.returncode == 0 and again.stdout.startswith("nothing to restore"), again


def test_drop_privileges_keeps_only_net_admin_and_still_restores(topo: Topo) -> None:
    before = snapshot(topo.gw)
    proc = start_holder(topo, "--drop-privileges")
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        caps = {line.split(":")[0]: int(line.split()[1], 16)
                for line in status.splitlines() if line.startswith("Cap")}
        assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == 1 << 12
        assert caps["CapInh"] == 0
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert not diff(before, snapshot(topo.gw))


# --- error cases: one line naming the interface, host untouched ---------------------


def _veth(topo: Topo, name: str) -> None:
    sh("ip", "-n", topo.gw, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")


ERROR_CASES = {
    "missing_nic": (lambda t: None, {"lan": "nosuch0"}, "LAN interface nosuch0 does not exist"),
    "loopback": (lambda t: None, {"lan": "lo"}, "LAN interface lo is the loopback"),
    "nic_is_bridge": (
        lambda t: sh("ip", "-n", t.gw, "link", "add", "brlan", "type", "bridge"),
        {"lan": "brlan"}, "LAN interface brlan is itself a bridge",
    ),
    "nic_in_other_bridge": (
        lambda t: (sh("ip", "-n", t.gw, "link", "add", "brother", "type", "bridge"),
                   sh("ip", "-n", t.gw, "link", "set", "lan0", "master", "brother")),
        {}, "LAN interface lan0 is already enslaved to brother (bridge)",
    ),
    "tap_name_taken": (lambda t: _veth(t, "taken0"), {"tap": "taken0"},
                       "tap name taken0 is taken by an existing veth device"),
    "bridge_name_taken": (lambda t: _veth(t, "taken1"), {"bridge": "taken1"},
                          "bridge name taken1 is taken by a veth device"),
    "name_too_long": (lambda t: None, {"tap": "x" * 16}, "not a valid interface name"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_error_cases_leave_host_untouched(topo: Topo, case: str) -> None:
    prepare, overrides, message = ERROR_CASES[case]
    prepare(topo)
    before = snapshot(topo.gw)
    with pytest.raises(HostError) as info:
        bring_up(topo.plan(**overrides))
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not diff(before, snapshot(topo.gw))


def _holder_error(topo: Topo, wrapper: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [*wrapper, sys.executable, "-m", "bridger.host.hold", "--lan", "lan0",
           "--bridge", topo.bridge, "--tap", topo.tap, "--state-dir", str(topo.state_dir)]
    return subprocess.run(topo.nsexec(*cmd), cwd=REPO, capture_output=True, text=True,
                          timeout=30)


def test_without_cap_net_admin_refuses(topo: Topo) -> None:
    before = snapshot(topo.gw)
    res = _holder_error(topo, ["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin"])
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: need root or CAP_NET_ADMIN"), res.stderr
    assert not diff(before, snapshot(topo.gw))


def test_missing_dev_net_tun_refuses(topo: Topo) -> None:
    before = snapshot(topo.gw)
    # a private mount namespace hides /dev/net/tun from this process only
    inner = ("mount -t tmpfs none /dev/net && exec \"$@\"")
    res = _holder_error(topo, ["unshare", "-m", "--propagation", "private", "sh", "-c", inner,
                               "sh"])
    assert res.returncode == 2, res.stderr
    assert "/dev/net/tun is missing" in res.stderr
    assert not diff(before, snapshot(topo.gw))


def test_failed_restore_is_not_marked_done_and_can_be_retried(topo: Topo) -> None:
    """Issue 12 item 1: ``restore`` called itself restored before it was.

    A restore that failed half-way (here: the NIC renamed away meanwhile) left
    the session marked restored, so the retry from ``__exit__`` or the caller
    did nothing. Now the journal keeps the failed records, the error names
    `bridger down`, and a second ``restore()`` finishes the job.
    """
    before = snapshot(topo.gw)
    session = bring_up(topo.plan())
    sh("ip", "-n", topo.gw, "link", "set", "lan0", "down")
    sh("ip", "-n", topo.gw, "link", "set", "lan0", "name", "lanaway")
    with pytest.raises(HostError, match=r"restore incomplete.*bridger down --state-dir") as info:
        session.restore()
    assert "\n" not in str(info.value)
    assert not session.restored
    assert (topo.state_dir / "journal.json").exists()
    sh("ip", "-n", topo.gw, "link", "set", "lanaway", "name", "lan0")
    session.restore()
    assert session.restored
    assert not (topo.state_dir / "journal.json").exists()
    assert not diff(before, snapshot(topo.gw))
