"""Drop every capability the running daemon no longer needs.

After :func:`bring_up` the daemon only reads/writes the tap fd and its UDP
socket, which need no privilege. Restoring the network needs CAP_NET_ADMIN
(netlink changes through the session's already-open socket) and write access
to the state directory (root owns it, so plain uid 0 suffices). So we keep
CAP_NET_ADMIN alone, in the bounding, permitted and effective sets, clear
ambient and inheritable, and set no_new_privs so no exec can regain anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from bridger.errors import HostError

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
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

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
