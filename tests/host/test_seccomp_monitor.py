"""Issue 25: the root monitor's own filter and Landlock rule.

* The program of ``seccomp.MONITOR`` is well formed, and differs from the data
  plane's only where the monitor needs it: processes from ``clone`` (never
  namespaces), netlink sockets, ``vfork``/``execve``/``wait4``/``kill``/
  ``pidfd_open``; the data plane's program is unchanged by it.
* As root (marked ``netns``): a process that went through the monitor's drop
  and sandbox (``drop_privileges`` keeping CAP_NET_ADMIN and CAP_KILL, then
  ``enter_monitor_sandbox``), in a throw-away network namespace, can still do
  its job — make a link over netlink, write a link's IPv6 switch under
  /proc/sys/net, run ``nft``, write its state directory — and cannot run any
  other program, write /tmp or any other root-owned file, open a packet
  socket; nor make the calls that only the filter refuses (a control run
  without the sandbox makes them): ``memfd_create``, ``personality``, a user
  namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bridger.host import seccomp

#: Calls neither filter allows, whatever the profile.
NEVER = ("ptrace", "mount", "umount2", "bpf", "setns", "unshare", "init_module",
         "finit_module", "delete_module", "kexec_load", "reboot", "keyctl", "add_key",
         "io_uring_setup", "perf_event_open", "process_vm_writev", "userfaultfd", "chroot",
         "pivot_root", "setuid", "setresuid", "capset", "fork", "execveat", "swapon")


@pytest.mark.parametrize("profile", [seccomp.DATA_PLANE, seccomp.MONITOR],
                         ids=["data plane", "monitor"])
def test_each_program_is_well_formed(profile: seccomp.Profile) -> None:
    prog = seccomp.build_program(profile)
    assert len(prog) < 4096  # BPF_MAXINSNS
    ret = seccomp.BPF_RET | seccomp.BPF_K
    assert prog[-1] == (ret, 0, 0, seccomp.SECCOMP_RET_ERRNO | 1)  # default: EPERM
    for i, (code, jt, jf, k) in enumerate(prog):
        if code == seccomp.BPF_JMP | seccomp.BPF_JA:
            assert i + 1 + k < len(prog)
        elif code & 0x07 == seccomp.BPF_JMP:
            assert i + 1 + max(jt, jf) < len(prog)
    for name in NEVER:
        assert name not in profile.calls, name


def _socket_verdict(prog: list[tuple[int, int, int, int]], family: int) -> int:
    """Run the program's socket section for ``socket(family, ...)`` (a tiny BPF
    interpreter for the instructions this module emits)."""
    nr, args = seccomp.SYSCALLS_X86_64["socket"], [family, 0]
    data = {seccomp.OFF_ARCH: seccomp.AUDIT_ARCH_X86_64, seccomp.OFF_NR: nr,
            16: args[0], 24: args[1]}
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == seccomp.BPF_LD | seccomp.BPF_W | seccomp.BPF_ABS:
            acc = data.get(k, 0)
            pc += 1
        elif code == seccomp.BPF_RET | seccomp.BPF_K:
            return k
        elif code == seccomp.BPF_JMP | seccomp.BPF_JA:
            pc += 1 + k
        else:
            op = code & 0xF0
            taken = (acc == k if op == seccomp.BPF_JEQ else acc >= k if op == seccomp.BPF_JGE
                     else bool(acc & k))
            pc += 1 + (jt if taken else jf)


@pytest.mark.parametrize(("family", "data_plane", "monitor"), [
    (seccomp.AF_UNIX, True, True), (seccomp.AF_INET, True, True),
    (seccomp.AF_INET6, True, True), (seccomp.AF_NETLINK, False, True),
    (17, False, False),  # AF_PACKET: neither (the group's sockets are opened before)
])
def test_socket_families(family: int, data_plane: bool, monitor: bool) -> None:
    for profile, allowed in ((seccomp.DATA_PLANE, data_plane), (seccomp.MONITOR, monitor)):
        verdict = _socket_verdict(seccomp.build_program(profile), family)
        assert (verdict == seccomp.SECCOMP_RET_ALLOW) == allowed, (profile, family)


def test_the_monitor_adds_only_what_it_measured() -> None:
    extra = set(seccomp.MONITOR.calls) - set(seccomp.DATA_PLANE.calls)
    assert extra == {"vfork", "execve", "wait4", "waitid", "kill", "pidfd_open"}
    assert seccomp.MONITOR.processes and not seccomp.DATA_PLANE.processes
    for name in extra:
        assert name not in seccomp.SYSCALLS_X86_64  # the data plane's list is untouched


SANDBOXED_MONITOR = textwrap.dedent("""
    import ctypes, errno, json, os, socket, subprocess, sys
    from pathlib import Path
    from bridger.host.pyroute import IPRoute
    from bridger.host.privileges import CAP_KILL, CAP_NET_ADMIN, drop_privileges, \\
        process_status
    from bridger.host.privsep import enter_monitor_sandbox
    from tests.host.sandboxprobe import outcome

    state = Path(sys.argv[1])
    drop_privileges(keep=(CAP_NET_ADMIN, CAP_KILL))
    notes = enter_monitor_sandbox(state) if sys.argv[4] == "sandboxed" else []
    out = {"notes": notes, "status": {k: process_status()[k]
           for k in ("Uid", "CapEff", "NoNewPrivs", "Seccomp")}}
    libc = ctypes.CDLL(None, use_errno=True)

    def attempt(name, action):
        out[name] = outcome(action)

    def syscall(nr, *args):
        def call():
            if libc.syscall(nr, *args) == -1:
                raise OSError(ctypes.get_errno(), "")
        return call

    def ipv6_off():
        with open("/proc/sys/net/ipv6/conf/mon0/disable_ipv6", "w") as f:
            f.write("1")

    def nft():
        done = subprocess.run([sys.argv[2], "list", "tables"], capture_output=True)
        if done.returncode:
            raise OSError(errno.EIO, done.stderr)

    ipr = IPRoute()
    attempt("link_add", lambda: ipr.link("add", ifname="mon0", kind="bridge"))
    attempt("ipv6_off", ipv6_off)
    attempt("nft", nft)
    attempt("write_state_dir", lambda: (state / "journal.json").write_text("{}"))
    attempt("write_tmp", lambda: Path(sys.argv[3]).write_text("x"))
    attempt("write_etc", lambda: open("/etc/bridger-monitor-test", "w").close())
    attempt("exec_shell", lambda: subprocess.run(["/bin/sh", "-c", "true"]))
    attempt("packet_socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
    attempt("netlink_socket", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close())
    # Calls its capabilities alone would allow: only the filter refuses them.
    attempt("memfd_create", lambda: os.close(os.memfd_create("x")))
    attempt("personality", syscall(135, 0xFFFFFFFF))  # a query: changes nothing
    attempt("user_namespace", syscall(272, 0x10000000))  # unshare(CLONE_NEWUSER), last
    print(json.dumps(out))
""")


def _run(tmp_path: Path, how: str) -> dict[str, object]:
    state = tmp_path / how
    state.mkdir()
    elsewhere = Path("/tmp") / f"bridger-monitor-{os.getpid()}"
    done = subprocess.run(["unshare", "-n", sys.executable, "-c", SANDBOXED_MONITOR, str(state),
                           str(shutil.which("nft")), str(elsewhere), how], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    out: dict[str, object] = json.loads(done.stdout)
    with contextlib.suppress(FileNotFoundError):
        elsewhere.unlink()
    with contextlib.suppress(FileNotFoundError):
        Path("/etc/bridger-monitor-test").unlink()
    return out


#: What only the filter refuses (the monitor's capabilities would allow them).
FILTERED = ("memfd_create", "personality", "user_namespace")


@pytest.mark.netns
@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed")
def test_the_sandboxed_monitor_does_its_job_and_nothing_else(tmp_path: Path) -> None:
    bare = _run(tmp_path, "bare")  # the same drop without the sandbox: the control
    assert bare["write_tmp"] == bare["write_etc"] == "done", bare
    assert [bare[call] for call in FILTERED] == ["done"] * len(FILTERED), bare

    out = _run(tmp_path, "sandboxed")
    status = out["status"]
    assert isinstance(status, dict)
    assert status["Uid"].split()[0] == "0" and status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2" and out["notes"] == []
    # its job
    for job in ("link_add", "ipv6_off", "nft", "write_state_dir", "netlink_socket"):
        assert out[job] == "done", (job, out)
    # nothing else: Landlock (files, programs), then the filter
    assert out["write_tmp"] == out["write_etc"] == "EACCES", out
    assert out["exec_shell"] == "EACCES", out
    assert out["packet_socket"] == "EPERM", out
    for call in FILTERED:
        assert out[call] == "EPERM", (call, out)
