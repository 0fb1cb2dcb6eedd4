"""Privileges: the capabilities a process keeps, and the service user it becomes.

:func:`drop_privileges` keeps a few capabilities (bounding, permitted and
effective sets; ambient and inheritable cleared) and sets no_new_privs: the
privileged monitor of ``bridger.host.privsep`` keeps CAP_NET_ADMIN (the host
network) and CAP_KILL (signals to the data plane), and a daemon started with
CAP_NET_ADMIN but not as root keeps that one. Capabilities are per thread:
call it while the process has one thread.

:func:`drop_to_user` is the data plane's drop: the service user
(:class:`ServiceUser`, made by :func:`ensure_user` if missing) in every uid and
gid slot, no capability in any set, no_new_privs. :func:`lock_down` is the same
for a process that starts unprivileged (prepared taps). docs/security.md says
what each part may do.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pwd
import shutil
import signal
import subprocess
from dataclasses import dataclass

from bridger.errors import HostError

CAP_KILL = 5
CAP_NET_ADMIN = 12
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def drop_privileges(keep: tuple[int, ...] = (CAP_NET_ADMIN,)) -> None:
    """Keep only the capabilities in ``keep``; irreversible for this process."""
    libc = _libc()

    def fail(what: str) -> HostError:
        return HostError(f"cannot drop privileges ({what}): {os.strerror(ctypes.get_errno())}")

    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise fail("no_new_privs")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # absent on old kernels
    for cap in range(_last_cap() + 1):
        # Needs CAP_SETPCAP, which capset() removes below, so the bounding set goes first.
        if cap not in keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise fail(f"bounding set, cap {cap}")
    mask = 0
    for cap in keep:
        mask |= 1 << cap
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for word in range(2):
        part = (mask >> (32 * word)) & 0xFFFFFFFF
        data[word].effective = part
        data[word].permitted = part
        data[word].inheritable = 0
    if libc.capset(ctypes.byref(header), data) != 0:
        raise fail("capset")


# -- the service user (privilege separation, docs/security.md) ----------------

#: The unprivileged account the traffic-handling process runs as.
DEFAULT_USER = "bridger"
PR_SET_KEEPCAPS = 8
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4


@dataclass(frozen=True)
class ServiceUser:
    """The account the data plane runs as, resolved once while still root."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> ServiceUser:
        """The user ``name`` (one-line error if it does not exist or is root)."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise HostError(
                f"service user {name!r} does not exist; create it with `bridger init` "
                f"(or useradd --system --no-create-home --shell /usr/sbin/nologin {name})"
            ) from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise HostError(f"service user {name!r} is root (uid or gid 0); pick another user")
        return cls(name, entry.pw_uid, entry.pw_gid)


def ensure_user(name: str) -> tuple[ServiceUser, bool]:
    """The user ``name``, created as a system account without login or home if
    missing; returns it and whether it was created (needs root)."""
    try:
        return ServiceUser.lookup(name), False
    except HostError:
        pass
    try:
        pwd.getpwnam(name)
    except KeyError:
        pass
    else:  # exists, but refused (root)
        return ServiceUser.lookup(name), False
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    nologin = next((p for p in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(p)),
                   "/bin/false")
    try:
        done = subprocess.run(
            [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", nologin, "--user-group", name],
            capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise HostError(f"cannot create service user {name!r}: {exc}") from exc
    if done.returncode != 0:
        try:  # another process made it meanwhile (useradd's lock)
            return ServiceUser.lookup(name), False
        except HostError:
            pass
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise HostError(f"cannot create service user {name!r}: {why}")
    return ServiceUser.lookup(name), True


def _libc() -> ctypes.CDLL:
    # Not find_library: it runs helpers and writes temporary files, which a
    # sandboxed process may no longer do.
    return ctypes.CDLL(None, use_errno=True)


def _set_no_new_privs(libc: ctypes.CDLL) -> None:
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise HostError(f"cannot set no_new_privs: {os.strerror(ctypes.get_errno())}")


def _clear_capabilities(libc: ctypes.CDLL) -> None:
    """Empty effective, permitted and inheritable sets (and ambient)."""
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise HostError(f"cannot clear capabilities: {os.strerror(ctypes.get_errno())}")


def drop_to_user(user: ServiceUser) -> None:
    """Become ``user`` for good: no capabilities left in any set (bounding set
    emptied first, while CAP_SETPCAP is still there), supplementary groups only
    the user's own, no_new_privs. Call while the process has one thread, or
    accept that other threads keep their bounding set (glibc changes the uids
    of every thread, which empties their capabilities anyway)."""
    libc = _libc()
    libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0)
    for cap in range(_last_cap() + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            raise HostError(f"cannot drop privileges (bounding set, cap {cap}): "
                            f"{os.strerror(ctypes.get_errno())}")
    try:
        os.setgroups([user.gid])
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
    except OSError as exc:
        raise HostError(f"cannot become user {user.name}: {exc.strerror}") from exc
    _clear_capabilities(libc)
    _set_no_new_privs(libc)
    if os.getuid() != user.uid or os.geteuid() != user.uid or 0 in os.getgroups():
        raise HostError(f"cannot become user {user.name}: still uid {os.geteuid()}")


def lock_down() -> None:
    """For a process that is already unprivileged (prepared taps): no
    capability in any set it may hold, and no_new_privs."""
    libc = _libc()
    for cap in range(_last_cap() + 1):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EPERM without CAP_SETPCAP: nothing to drop
    _clear_capabilities(libc)
    _set_no_new_privs(libc)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Get ``sig`` when the parent dies (reset by a change of credentials: call after)."""
    _libc().prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def process_status(pid: int | str = "self") -> dict[str, str]:
    """The fields of ``/proc/PID/status`` (Uid, CapEff, NoNewPrivs, Seccomp, ...)."""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out
