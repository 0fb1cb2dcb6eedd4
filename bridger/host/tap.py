"""Open a tap device through /dev/net/tun (TUNSETIFF).

The tap is *not* persistent: the kernel deletes it when the last fd closes, so
a crashed daemon never leaves a tap behind. The fd is non-blocking so the
daemon can own it under trio (``os.read`` + ``wait_readable``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import struct
from collections.abc import Iterator

from bridger.errors import HostError

TUN_PATH = "/dev/net/tun"

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100  # reserved for later: one fd per queue
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000  # reserved for later: virtio-net header for offloads

IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, ifr_flags, union padding
CLONE_NEWNET = 0x40000000


def open_tap(name: str, *, extra_flags: int = 0, netns: str | None = None) -> tuple[int, str]:
    """Create tap ``name`` and return (non-blocking fd, actual name)."""
    with _in_netns(netns):
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise HostError(f"cannot open {TUN_PATH} for tap {name}: {exc.strerror}") from exc
        try:
            ifr = _IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI | extra_flags)
            out = fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as exc:
            os.close(fd)
            why = "name in use" if exc.errno == errno.EBUSY else exc.strerror
            raise HostError(f"cannot create tap {name}: {why}") from exc
    actual = _IFREQ.unpack(out)[0].rstrip(b"\0").decode()
    return fd, actual


@contextlib.contextmanager
def _in_netns(netns: str | None) -> Iterator[None]:
    """Run the body with this thread in ``netns`` (test mode); the tap is created there."""
    if netns is None:
        yield
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            there = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        except OSError as exc:
            raise HostError(f"network namespace {netns} does not exist") from exc
        try:
            if libc.setns(there, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise HostError(f"cannot enter network namespace {netns}: {os.strerror(err)}")
        finally:
            os.close(there)
        try:
            yield
        finally:
            if libc.setns(here, CLONE_NEWNET) != 0:  # pragma: no cover - cannot fail as root
                raise HostError("cannot return to the original network namespace")
    finally:
        os.close(here)
