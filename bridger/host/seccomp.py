"""The system-call filters (seccomp-BPF) of the data plane and of the root
monitor, built here with ctypes.

After the drop to the service user (``bridger.host.privsep``) the process that
handles traffic installs :func:`install`: an allow-list of the system calls
Python, Trio, the native lane thread, the resolver and the status views use.
It is installed with ``SECCOMP_FILTER_FLAG_TSYNC``, so every thread that
exists gets it, and every thread made later inherits it.

The root monitor (``bridger.host.privsep``) installs :data:`MONITOR` after
its own drop: the same list plus what it needs to watch the data plane and to
run ``nft`` (``vfork``, ``execve``, ``wait4``, ``kill``, ``pidfd_open``),
processes as well as threads from ``clone``, and netlink sockets.  ``nft``
runs under that filter too (a filter is inherited across ``execve``); what
it may run at all is limited by the monitor's Landlock rule (nft and its ELF
interpreter alone, ``bridger.host.landlock``).  Measured with ``strace -f``
on a gateway of a two-gateway site through start, failover, a reload that
adds and removes a tap, and the stop's restore: the monitor and its nft
children call nothing outside it.

The program, in order:

1. A foreign architecture (``AUDIT_ARCH``) or an x32 call: the process is
   killed (a trick to reach calls by other numbers, never a bridger path).
2. ``clone3``: ``ENOSYS``, so glibc falls back to ``clone``, whose flags a
   filter can read (``clone3`` passes them in memory).
3. ``clone``: threads only (``CLONE_THREAD``; the monitor: processes too)
   and no new namespaces; a fork or an unshare gets ``EPERM``.
4. ``socket``: ``AF_UNIX``, ``AF_INET``, ``AF_INET6`` only (no netlink, no
   packet sockets: the data plane cannot even ask to change a link; the
   monitor: netlink too).
5. Each allowed call (the hot ones first): allowed.
6. Anything else: ``EPERM``.

Why ``EPERM`` and not a kill for an unexpected call: everything that fails in
bridger fails as an ``OSError`` that is turned into one line or a counted drop,
so a call we did not foresee on a rare path (a new glibc, a library's lazy
probe) costs that one operation, not the gateway's link; a kill would take
the data plane down and make the monitor restore the host and systemd
restart it. An attacker who runs code in the process gains nothing from
``EPERM`` that a kill would have denied: the call is refused either way.
``execve``, ``ptrace``, ``mount``, ``bpf``, ``setns``, ``unshare``,
``keyctl``, ``io_uring_*``, module and reboot calls are refused.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import dataclass

from bridger.errors import HostError

#: x86-64 numbers (asm/unistd_64.h) of the calls the data plane makes.
SYSCALLS_X86_64: dict[str, int] = {
    "read": 0, "write": 1, "readv": 19, "writev": 20, "pread64": 17, "pwrite64": 18,
    "preadv": 295, "pwritev": 296, "close": 3, "close_range": 436, "fstat": 5, "newfstatat": 262,
    "statx": 332, "lstat": 6, "stat": 4, "lseek": 8, "mmap": 9, "munmap": 11, "mprotect": 10,
    "mremap": 25, "madvise": 28, "brk": 12, "mincore": 27, "rt_sigaction": 13,
    "rt_sigprocmask": 14, "rt_sigreturn": 15, "rt_sigtimedwait": 128, "rt_sigpending": 127,
    "sigaltstack": 131, "ioctl": 16, "access": 21, "faccessat": 269, "faccessat2": 439,
    "pipe": 22, "pipe2": 293, "select": 23, "pselect6": 270, "poll": 7, "ppoll": 271,
    "epoll_create": 213, "epoll_create1": 291, "epoll_ctl": 233, "epoll_wait": 232,
    "epoll_pwait": 281, "epoll_pwait2": 441, "eventfd2": 290, "dup": 32, "dup2": 33, "dup3": 292,
    "fcntl": 72, "flock": 73, "fsync": 74, "fdatasync": 75, "ftruncate": 77, "getpid": 39,
    "gettid": 186, "getppid": 110, "getuid": 102, "geteuid": 107, "getgid": 104, "getegid": 108,
    "getgroups": 115, "getresuid": 118, "getresgid": 120, "getpgrp": 111, "getsid": 124,
    "connect": 42, "accept": 43, "accept4": 288, "sendto": 44, "recvfrom": 45, "sendmsg": 46,
    "recvmsg": 47, "sendmmsg": 307, "recvmmsg": 299, "shutdown": 48, "bind": 49, "listen": 50,
    "getsockname": 51, "getpeername": 52, "socketpair": 53, "setsockopt": 54, "getsockopt": 55,
    "exit": 60, "exit_group": 231, "tgkill": 234, "uname": 63, "getcwd": 79, "open": 2,
    "openat": 257, "readlink": 89, "readlinkat": 267, "getdents64": 217, "mkdir": 83,
    "mkdirat": 258, "unlink": 87, "unlinkat": 263, "rename": 82, "renameat": 264,
    "renameat2": 316, "fchmod": 91, "chmod": 90, "fchmodat": 268, "getrandom": 318, "futex": 202,
    "futex_waitv": 449, "set_robust_list": 273, "get_robust_list": 274, "rseq": 334,
    "set_tid_address": 218, "nanosleep": 35, "clock_nanosleep": 230, "clock_gettime": 228,
    "clock_getres": 229, "gettimeofday": 96, "time": 201, "sched_yield": 24,
    "sched_getaffinity": 204, "getrlimit": 97, "prlimit64": 302, "sysinfo": 99,
    "timerfd_create": 283, "timerfd_settime": 286, "timerfd_gettime": 287, "membarrier": 324,
    "arch_prctl": 158, "prctl": 157, "getcpu": 309, "getpriority": 140, "restart_syscall": 219,
    "umask": 95, "statfs": 137, "fstatfs": 138, "socket": 41, "clone": 56, "clone3": 435,
    "tkill": 200, "fadvise64": 221, "sched_getparam": 143,
    "sched_getscheduler": 145,
}
#: What the root monitor needs beyond the data plane's list: watch and signal
#: its child, run ``nft`` (Python's subprocess uses ``vfork``).
MONITOR_EXTRA_X86_64: dict[str, int] = {
    "vfork": 58, "execve": 59, "wait4": 61, "kill": 62, "waitid": 247, "pidfd_open": 434,
}
#: Tested first (the per-packet calls).
HOT = ("read", "write", "recvmmsg", "sendmmsg", "recvmsg", "sendmsg", "sendto", "recvfrom",
       "epoll_wait", "epoll_pwait", "poll", "ppoll", "futex", "clock_gettime", "ioctl",
       "readv", "writev", "getpid")
#: Handled by their own rules (steps 2-4 of the module docstring).
SPECIAL = ("clone", "clone3", "socket")

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
CLONE_THREAD = 0x00010000
#: CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
CLONE_NEW_ANY = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 \
    | 0x20000000 | 0x40000000 | 0x00000080

# <linux/seccomp.h>, <linux/filter.h>
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
SYS_SECCOMP_X86_64 = 317
BPF_LD, BPF_W, BPF_ABS = 0x00, 0x00, 0x20
BPF_JMP, BPF_JA, BPF_JEQ, BPF_JGE, BPF_JSET, BPF_K = 0x05, 0x00, 0x10, 0x30, 0x40, 0x00
BPF_RET = 0x06
#: struct seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (low word first).
OFF_NR, OFF_ARCH = 0, 4


@dataclass(frozen=True)
class Profile:
    """One process's filter: its allowed calls, socket families, and whether
    ``clone`` may make processes (never namespaces)."""

    calls: dict[str, int]
    families: tuple[int, ...]
    processes: bool = False


#: The data plane's (the default).
DATA_PLANE = Profile(SYSCALLS_X86_64, (AF_UNIX, AF_INET, AF_INET6))
#: The root monitor's.
MONITOR = Profile({**SYSCALLS_X86_64, **MONITOR_EXTRA_X86_64},
                  (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK), processes=True)


def _arg(i: int) -> int:
    return 16 + 8 * i


class _Insn(ctypes.Structure):
    _fields_ = (("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32))


class _Prog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Insn)))


Insn = tuple[int, int, int, int]


def _stmt(code: int, k: int) -> Insn:
    return (code, 0, 0, k)


def _jump(code: int, k: int, jt: int, jf: int) -> Insn:
    return (code, jt, jf, k)


def _ret(action: int) -> Insn:
    return _stmt(BPF_RET | BPF_K, action)


def _errno(code: int) -> int:
    return SECCOMP_RET_ERRNO | (code & 0xFFFF)


def build_program(profile: Profile = DATA_PLANE) -> list[Insn]:
    """The filter as (code, jt, jf, k) instructions (tested without installing)."""
    table = profile.calls
    families = profile.families
    load_nr = _stmt(BPF_LD | BPF_W | BPF_ABS, OFF_NR)
    prog: list[Insn] = [
        # 1. the architecture, and no x32 numbers
        _stmt(BPF_LD | BPF_W | BPF_ABS, OFF_ARCH),
        _jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        _ret(SECCOMP_RET_KILL_PROCESS),
        load_nr,
        _jump(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1),
        _ret(SECCOMP_RET_KILL_PROCESS),
        # 2. clone3: ENOSYS (glibc falls back to clone)
        _jump(BPF_JMP | BPF_JEQ | BPF_K, table["clone3"], 0, 1),
        _ret(_errno(errno.ENOSYS)),
        # 3. clone: threads only (the monitor: processes too), no namespaces
        _jump(BPF_JMP | BPF_JEQ | BPF_K, table["clone"], 0, 5),
        _stmt(BPF_LD | BPF_W | BPF_ABS, _arg(0)),
        _jump(BPF_JMP | BPF_JSET | BPF_K, CLONE_NEW_ANY, 2, 0),
        # ("ja +0" where any clone without namespace flags passes: same offsets)
        _stmt(BPF_JMP | BPF_JA, 0) if profile.processes
        else _jump(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 0, 1),
        _ret(SECCOMP_RET_ALLOW),
        _ret(_errno(errno.EPERM)),
        load_nr,  # (the accumulator holds the number again)
        # 4. socket: the profile's families
        _jump(BPF_JMP | BPF_JEQ | BPF_K, table["socket"], 0, len(families) + 3),
        _stmt(BPF_LD | BPF_W | BPF_ABS, _arg(0)),
    ]
    for i, family in enumerate(families):  # a match jumps to the ALLOW below
        last = i == len(families) - 1
        prog.append(_jump(BPF_JMP | BPF_JEQ | BPF_K, family, len(families) - 1 - i,
                          1 if last else 0))
    prog += [_ret(SECCOMP_RET_ALLOW), _ret(_errno(errno.EPERM))]
    # 5. the allow-list, two instructions per call (no jump beyond 255)
    order = [n for n in HOT if n in table] + sorted(n for n in table if n not in HOT)
    for name in order:
        if name in SPECIAL:
            continue
        prog.append(_jump(BPF_JMP | BPF_JEQ | BPF_K, table[name], 0, 1))
        prog.append(_ret(SECCOMP_RET_ALLOW))
    # 6. everything else
    prog.append(_ret(_errno(errno.EPERM)))
    return prog


def supported() -> bool:
    """Whether this machine's architecture has a table here (x86-64)."""
    return platform.machine() in ("x86_64", "AMD64") and struct.calcsize("P") == 8


def install(profile: Profile = DATA_PLANE) -> None:
    """Install the filter on every thread of this process (TSYNC); no_new_privs
    must be set already. One-line :class:`HostError` on failure."""
    if not supported():
        raise HostError(f"no system-call table for {platform.machine()}")
    prog = build_program(profile)
    insns = (_Insn * len(prog))(*(_Insn(c, t, f, k) for c, t, f, k in prog))
    fprog = _Prog(len(prog), insns)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(SYS_SECCOMP_X86_64), ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                      ctypes.c_uint(SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(fprog))
    if rc != 0:
        err = ctypes.get_errno()
        why = os.strerror(err) if rc < 0 else f"thread {rc} cannot take it"
        raise HostError(f"cannot install the system-call filter: {why}")
