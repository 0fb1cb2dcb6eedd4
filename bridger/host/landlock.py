"""Write nowhere but the state directory (and run nothing but nft): a Landlock
ruleset (Linux 5.13+).

The unprivileged data plane keeps the right to read (Python imports modules
lazily, the resolver reads /etc/resolv.conf), but every file-system change is
refused outside ``allow_write`` (its own directory under the state directory:
the control socket, the remembered endpoints). Plain file permissions already
keep the service user out of root's files; Landlock also closes the
world-writable places (/tmp, /var/tmp, /dev/shm) and any file the user happens
to own elsewhere. Files opened before (the taps, the terminal) are not affected.

The root monitor (``bridger.host.privsep``) gets a ruleset too: writes only
in the state directory, ``/dev/net/tun`` and ``/proc/sys/net`` (a new tap's
IPv6 switch), and, with ``executables``, nothing may be executed but ``nft``
and its ELF interpreter (uid 0 owns most files: this keeps a compromised
monitor from rewriting them or running a shell).

Unprivileged: it needs no_new_privs, which the drop sets first.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

from bridger.errors import HostError

SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
#: <elf.h>: the program header naming the interpreter.
PT_INTERP = 3

# <linux/landlock.h> file-system rights: running a file, and those that change
# something, by ABI version.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
WRITES_V1 = (WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_CHAR | MAKE_DIR | MAKE_REG | MAKE_SOCK
             | MAKE_FIFO | MAKE_BLOCK | MAKE_SYM)


class _RulesetAttr(ctypes.Structure):
    _fields_ = (("handled_access_fs", ctypes.c_uint64),)


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def abi_version() -> int:
    """Landlock's ABI version here, 0 if the kernel has it off or lacks it."""
    rc = _libc().syscall(ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
                         ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return max(0, int(rc))


def interpreter_of(path: str) -> str | None:
    """The ELF interpreter (``PT_INTERP``) of the 64-bit executable ``path``, which
    ``execve`` runs too (None: static, not ELF, or unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:5] != b"\x7fELF\x02":
                return None
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                kind, = struct.unpack_from("<I", table, i * phentsize)
                if kind == PT_INTERP:
                    offset, = struct.unpack_from("<Q", table, i * phentsize + 8)
                    size, = struct.unpack_from("<Q", table, i * phentsize + 32)
                    f.seek(offset)
                    return f.read(size).rstrip(b"\0").decode() or None
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def restrict_writes(allow_write: Path, files: tuple[str, ...] = (),
                    executables: tuple[str, ...] | None = None) -> int:
    """Refuse every file-system change outside ``allow_write`` for this thread
    and the threads it makes later (call before any other thread exists);
    ``files`` may still be opened for writing (``/dev/net/tun``, to attach to
    a prepared tap; a directory: the files beneath it). ``executables``: if
    given, running any other file is refused too (an interpreter an
    executable names must be listed: :func:`interpreter_of`).
    Returns the ABI version used; raises :class:`HostError` if Landlock is
    missing (the caller decides whether that is fatal)."""
    abi = abi_version()
    if abi < 1:
        raise HostError("Landlock is not available in this kernel")
    handled = WRITES_V1 | (REFER if abi >= 2 else 0) | (TRUNCATE if abi >= 3 else 0) \
        | (EXECUTE if executables is not None else 0)
    libc = _libc()

    def fail(what: str) -> HostError:
        return HostError(f"cannot restrict writes ({what}): {os.strerror(ctypes.get_errno())}")

    attr = _RulesetAttr(handled)
    ruleset = libc.syscall(ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr),
                           ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        raise fail("ruleset")

    def allow(path: str | Path, access: int, flags: int) -> None:
        """One path-beneath rule: ``access`` stays allowed under ``path``."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC | flags)
        except OSError as exc:
            raise HostError(f"cannot restrict writes: {path}: {exc.strerror}") from exc
        try:
            rule = _PathBeneath(access, fd)
            if libc.syscall(ctypes.c_long(SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset),
                            ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule),
                            ctypes.c_uint32(0)) != 0:
                raise fail(f"rule for {path}")
        finally:
            os.close(fd)

    try:
        allow(allow_write, handled & ~EXECUTE, os.O_DIRECTORY)
        for name in files:  # (opened with O_TRUNC, as open(path, "w") does: TRUNCATE)
            allow(name, WRITE_FILE | (handled & TRUNCATE), 0)
        for name in executables or ():
            allow(name, EXECUTE, 0)
        if libc.syscall(ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset),
                        ctypes.c_uint32(0)) != 0:
            raise fail("restrict_self")
    finally:
        os.close(ruleset)
    return abi
