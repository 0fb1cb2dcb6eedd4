"""Issue 25: the pieces of the privilege separation, without a lab.

* The monitor's request parser (the one place that reads bytes from the
  unprivileged data plane) accepts exactly the eight operations and fails only
  with ``ValueError``, whatever it is sent.
* The seccomp program: every jump lands inside the program, every path ends
  in a return, and the special rules come before the allow-list.
* As root (marked ``netns``): a process that went through the very sandbox the
  data plane enters (``enter_sandbox``) cannot change a link, even over a
  netlink socket root opened for it before, cannot open a netlink socket,
  cannot fork or exec, and can write only in its own directory, not in /tmp.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridger.host import seccomp
from bridger.host.privileges import ensure_user
from bridger.host.privsep import (
    MAX_REQUEST,
    Asked,
    Monitor,
    Request,
    parse_request_untrusted,
)


@pytest.mark.parametrize(("message", "want"), [
    ({"op": "add_tap", "name": "berlin"}, Asked(Request.ADD_TAP, "berlin")),
    ({"op": "remove_tap", "name": "bridger-tap0"}, Asked(Request.REMOVE_TAP, "bridger-tap0")),
    ({"op": "storm_counters"}, Asked(Request.STORM_COUNTERS)),
    ({"op": "reread"}, Asked(Request.REREAD)),
    ({"op": "port_state", "name": "berlin", "state": "forwarding"},
     Asked(Request.PORT_STATE, "berlin", "forwarding")),
    ({"op": "port_state", "name": "berlin", "state": "disabled"},
     Asked(Request.PORT_STATE, "berlin", "disabled")),
    ({"op": "flush_lan"}, Asked(Request.FLUSH_LAN)),
    ({"op": "fdb"}, Asked(Request.FDB)),
    ({"op": "follow_state"}, Asked(Request.FOLLOW_STATE)),
])
def test_the_eight_requests(message: dict[str, str], want: Asked) -> None:
    assert parse_request_untrusted(json.dumps(message).encode()) == want


@pytest.mark.parametrize("message", [
    {"op": "add_tap"},
    {"op": "add_tap", "name": "x" * 16},
    {"op": "add_tap", "name": "../eth0"},
    {"op": "add_tap", "name": "a b"},
    {"op": "add_tap", "name": "berlin", "master": "eth0"},
    {"op": "remove_tap", "name": 3},
    {"op": "reread", "path": "/etc/shadow"},
    {"op": "restore"},
    {"op": "exec", "argv": ["sh"]},
    {"name": "berlin"},
    # the group's requests: a fixed set of states, a tap's name, nothing else
    {"op": "port_state", "name": "berlin"},
    {"op": "port_state", "name": "berlin", "state": "blocking"},
    {"op": "port_state", "name": "berlin", "state": 3},
    {"op": "port_state", "name": "berlin", "state": "flush"},
    {"op": "port_state", "name": "../eth0", "state": "forwarding"},
    {"op": "port_state", "name": "berlin", "state": "forwarding", "master": "br0"},
    {"op": "flush_lan", "name": "eth0"},
    {"op": "fdb", "bridge": "docker0"},
    {"op": "follow_state", "path": "/etc/shadow"},
    ["add_tap", "berlin"],
])
def test_anything_else_is_refused(message: object) -> None:
    with pytest.raises(ValueError):
        parse_request_untrusted(json.dumps(message).encode())


def test_a_long_request_is_refused_unread() -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_request_untrusted(b"{" + b" " * MAX_REQUEST + b"}")


@settings(max_examples=int(os.environ.get("BRIDGER_FUZZ_EXAMPLES", "200")), deadline=None)
@given(st.one_of(st.binary(max_size=600),
                 st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=20),
                                                                st.integers(), st.none()),
                                 max_size=4).map(lambda d: json.dumps(d).encode())))
def test_the_parser_fails_only_with_value_error(data: bytes) -> None:
    try:
        op, name, state = parse_request_untrusted(data)
    except ValueError:
        return
    assert isinstance(op, Request)
    assert name is None or (0 < len(name) < 16)
    assert state is None or state in ("disabled", "forwarding")


def test_seccomp_program_is_well_formed() -> None:
    prog = seccomp.build_program()
    assert len(prog) < 4096  # BPF_MAXINSNS
    ret = seccomp.BPF_RET | seccomp.BPF_K
    assert prog[-1] == (ret, 0, 0, seccomp.SECCOMP_RET_ERRNO | 1)  # default: EPERM
    for i, (code, jt, jf, _k) in enumerate(prog):
        if code & 0x07 == seccomp.BPF_JMP:
            assert i + 1 + max(jt, jf) < len(prog)
    allowed = {k for code, _jt, _jf, k in prog if code == ret}
    assert seccomp.SECCOMP_RET_ALLOW in allowed
    for name in ("execve", "execveat", "ptrace", "mount", "bpf", "setns", "unshare", "fork",
                 "vfork", "kexec_load", "init_module", "io_uring_setup", "setuid"):
        assert name not in seccomp.SYSCALLS_X86_64, name


SANDBOXED = textwrap.dedent("""
    import json, os, socket, sys
    from pathlib import Path
    from bridger.host.pyroute import IPRoute
    from bridger.host.privileges import ServiceUser, process_status
    from bridger.host.privsep import enter_sandbox
    from tests.host.sandboxprobe import outcome

    ipr = IPRoute()  # root opens netlink before the drop
    os.chdir(sys.argv[1])
    notes = enter_sandbox(ServiceUser.lookup(sys.argv[2]))
    out = {"notes": notes, "status": {k: process_status()[k]
           for k in ("Uid", "CapEff", "CapBnd", "NoNewPrivs", "Seccomp")}}

    def attempt(name, action):
        out[name] = outcome(action)

    attempt("link_add", lambda: ipr.link("add", ifname="evil0", kind="dummy"))
    attempt("link_down", lambda: ipr.link("set", index=1, state="down"))
    attempt("netlink_socket", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
    attempt("packet_socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
    attempt("write_own_dir", lambda: Path("endpoints.json").write_text("{}"))
    attempt("write_tmp", lambda: Path(sys.argv[3]).write_text("x"))
    attempt("write_state_dir", lambda: Path("../journal.json").write_text("{}"))
    attempt("fork", os.fork)
    attempt("exec", lambda: os.execv("/bin/true", ["true"]))
    attempt("udp_socket", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close())
    print(json.dumps(out))
""")


@pytest.mark.netns
def test_the_sandboxed_data_plane_cannot_change_links_or_write_elsewhere(
        tmp_path: Path) -> None:
    user, _ = ensure_user("bridger")
    state = tmp_path / "state"
    own = state / "worker"
    own.mkdir(parents=True)
    os.chown(own, user.uid, user.gid)
    state.chmod(0o755)
    tmp_path.chmod(0o755)
    elsewhere = Path("/tmp") / f"bridger-sandbox-{os.getpid()}"
    # `unshare -n`: a throw-away network namespace, so nothing real could change.
    done = subprocess.run(["unshare", "-n", sys.executable, "-c", SANDBOXED, str(own),
                           user.name, str(elsewhere)], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    status = out["status"]
    assert status["Uid"].split() == [str(user.uid)] * 4
    assert status["CapEff"] == status["CapBnd"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert out["link_add"] == "EPERM" and out["link_down"] == "EPERM"
    assert out["netlink_socket"] == "EPERM" and out["packet_socket"] == "EPERM"
    assert out["fork"] == "EPERM" and out["exec"] == "EPERM"
    assert out["write_own_dir"] == "done" and out["udp_socket"] == "done"
    assert out["write_state_dir"] == "EACCES"
    assert out["write_tmp"] == "EACCES" and not elsewhere.exists()  # Landlock: /tmp is 1777
    assert out["notes"] == []


def test_af_netlink_is_what_the_filter_refuses() -> None:
    assert socket.AF_NETLINK not in (seccomp.AF_UNIX, seccomp.AF_INET, seccomp.AF_INET6)


@contextmanager
def _monitor(ha: bool, follow: Path | None = None) -> Iterator[tuple[Monitor, socket.socket]]:
    """A monitor over a socket pair, for a configuration with peer tap "berlin"
    (and ``ha``: a site's group; ``follow``: keepalived's state file), whose
    host session holds that tap alone; its sockets (and gate) closed after."""
    config = SimpleNamespace(peers=[SimpleNamespace(tap="berlin")], mode="mesh",
                             ha=SimpleNamespace(follow=follow) if ha else None)
    host = SimpleNamespace(taps={"berlin": -1}, bridge_name="bridger0",
                           plan=SimpleNamespace(lan="eth1"))
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    monitor = Monitor(host, mine, 0, config, None, lambda c: None)  # type: ignore[arg-type]
    try:
        yield monitor, theirs
    finally:
        monitor.sock.close()
        theirs.close()
        monitor.gate.close()


def _ask(monitor: Monitor, theirs: socket.socket, message: dict[str, str]) -> tuple[str, object]:
    theirs.send(json.dumps(message).encode())
    assert monitor._serve_one()
    status, value = pickle.loads(theirs.recv(MAX_REQUEST))
    return status, value


@pytest.mark.parametrize("name", ["eth1", "bridger0", "docker0", "lo", "paris"])
def test_the_monitor_refuses_the_port_state_of_a_link_that_is_not_our_tap(name: str) -> None:
    """A data plane that asks to open (or close) the bridge port of anything but
    one of this run's taps — the LAN NIC, the bridge, another bridge's port, a
    tap of the configuration it never made — is refused before any netlink
    message is sent, counted, and the monitor goes on serving."""
    with _monitor(ha=True) as (monitor, theirs):
        assert monitor.gate is not None
        status, value = _ask(monitor, theirs, {"op": "port_state", "name": name,
                                               "state": "forwarding"})
        assert status == "error" and "not one of this run's taps" in str(value)
        assert monitor.refused == 1
        status, value = _ask(monitor, theirs, {"op": "port_state", "name": "berlin",
                                               "state": "sideways"})
        assert status == "error" and "state must be one of" in str(value)
        assert monitor.refused == 2


@pytest.mark.parametrize("message", [
    {"op": "port_state", "name": "berlin", "state": "disabled"},
    {"op": "fdb"},
    {"op": "follow_state"},
])
def test_a_gateway_without_a_site_refuses_the_groups_requests(message: dict[str, str]) -> None:
    with _monitor(ha=False) as (monitor, theirs):
        status, value = _ask(monitor, theirs, message)
        assert status == "error" and "not one of a site's group" in str(value)
        assert monitor.refused == 1


def test_any_gateway_may_flush_its_own_lan_port_and_nothing_else() -> None:
    """Loop protection flushes the LAN port when a loop is gone: any gateway may
    ask, for the LAN NIC of its own plan only (the request names nothing).
    Here the plan's LAN does not exist: the kernel's answer comes back."""
    with _monitor(ha=False) as (monitor, theirs):
        status, value = _ask(monitor, theirs, {"op": "flush_lan"})
        assert status == "error" and "eth1: no such interface" in str(value), value
        status, value = _ask(monitor, theirs, {"op": "flush_lan", "name": "eth0"})
        assert status == "error" and "eth1" not in str(value), value  # refused unread


def test_the_monitor_reads_only_its_own_follow_file(tmp_path: Path) -> None:
    """keepalived's state file may be root's: the monitor reads the one its own
    configuration names (no path is ever taken from the data plane); a file not
    there yet is "no state", not a refusal; a gateway that elects refuses."""
    state = tmp_path / "london.state"
    with _monitor(ha=True, follow=state) as (monitor, theirs):
        assert _ask(monitor, theirs, {"op": "follow_state"}) == ("ok", None)
        state.write_text("MASTER\n" + "x" * 100)
        status, value = _ask(monitor, theirs, {"op": "follow_state"})
        assert status == "ok" and isinstance(value, str)
        assert value.startswith("MASTER\n") and len(value) == 64
        assert monitor.refused == 0
    with _monitor(ha=True) as (electing, theirs):
        status, value = _ask(electing, theirs, {"op": "follow_state"})
        assert status == "error" and "does not follow keepalived" in str(value)


GROUP_SOCKETS = textwrap.dedent("""
    import errno, json, socket, subprocess, time
    from bridger.ha import wire
    from bridger.ha.gate import GroupSockets

    for cmd in ("ip link set lo up", "ip link add br0 type bridge",
                "ip link add v0 type veth peer name v1", "ip link set v0 master br0",
                "ip link set br0 up", "ip link set v0 up", "ip link set v1 up"):
        subprocess.run(cmd.split(), check=True)
    group = GroupSockets.open("br0", receive=True)
    control = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # no filter
    sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    out = {}

    def frame(ethertype):
        return b"\\xff" * 6 + b"\\x02\\x00\\x00\\x00\\x00\\x01" + ethertype.to_bytes(2, "big") \\
            + b"x" * 46

    def received(sock, wait=0.5):
        sock.settimeout(wait)
        got = []
        try:
            while True:
                data, address = sock.recvfrom(2048)
                got.append((address[0], int.from_bytes(data[12:14], "big")))
                sock.settimeout(0.05)
        except (TimeoutError, BlockingIOError):
            return got

    # What an attacker holding the sockets would do: bind them again to every
    # protocol on another interface (no privilege needed), then listen.
    for sock in (group.rx, group.tx, control):
        sock.bind(("lo", 3))  # ETH_P_ALL
    for ethertype in (0x0800, wire.ETHERTYPE):
        sender.sendto(frame(ethertype), ("lo", 0))
    out["control_lo"] = len(received(control))
    out["rx_lo"] = received(group.rx, 0.2)
    out["tx_lo"] = received(group.tx, 0.2)
    # On the bridge, every protocol: the group's frames only.
    group.rx.bind(("br0", 3))
    for ethertype in (0x0800, 0x86DD, wire.ETHERTYPE):
        sender.sendto(frame(ethertype), ("v1", 0))
    out["rx_br0"] = received(group.rx)
    try:
        group.rx.setsockopt(socket.SOL_SOCKET, 27, 0)  # SO_DETACH_FILTER
        out["detach"] = "done"
    except OSError as exc:
        out["detach"] = errno.errorcode[exc.errno]
    print(json.dumps(out))
""")


@pytest.mark.netns
def test_the_groups_sockets_receive_group_frames_on_the_bridge_and_nothing_else() -> None:
    """The data plane of a two-gateway site holds two packet sockets; a packet
    socket can be bound again to any protocol and interface without privilege.
    Their locked filters keep it from sniffing: rebound to every protocol on
    another interface they take nothing (an unfiltered socket there takes the
    frames: the control), on the bridge only the group's EtherType; and the
    filter cannot be detached."""
    done = subprocess.run(["unshare", "-n", sys.executable, "-c", GROUP_SOCKETS],
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["control_lo"] >= 2, out
    assert out["rx_lo"] == [] and out["tx_lo"] == [], out
    assert out["rx_br0"] == [["br0", 0x88B6]], out
    assert out["detach"] == "EPERM", out
