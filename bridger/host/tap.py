"""Open a tap device through /dev/net/tun (TUNSETIFF).

The tap is *not* persistent: the kernel deletes it when the last fd closes, so
a crashed daemon never leaves a tap behind. The fd is non-blocking so the
daemon can own it under trio (``os.read`` + ``wait_readable``).

``open_tap(name, vnet=True)`` opens the tap with IFF_VNET_HDR, so that the
daemon can later turn on TUNSETOFFLOAD (checksum and TSO offloads, see
bridger.fastpath); :func:`tap_flags` tells what was granted.
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
IFF_VNET_HDR = 0x4000  # every read/write carries a struct virtio_net_hdr
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUNGETIFF = 0x800454D2  # _IOR('T', 210, unsigned int)
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int)
TUNSETPERSIST = 0x400454CB  # _IOW('T', 203, int)
TUNSETOWNER = 0x400454CC  # _IOW('T', 204, int)
TUNSETGROUP = 0x400454CE  # _IOW('T', 206, int)
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
#: Offload sets tried in order; the first the kernel accepts wins.
OFFLOAD_CHOICES = (
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM,
)
VNET_HDR_SIZE = 10  # struct virtio_net_hdr

IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, ifr_flags, union padding
CLONE_NEWNET = 0x40000000


def open_tap(name: str, *, vnet: bool, netns: str | None = None) -> tuple[int, str]:
    """Create tap ``name`` and return (non-blocking fd, actual name).

    ``vnet``: ask for IFF_VNET_HDR (the fast path), dropped again if the kernel
    refuses it; :func:`tap_flags` tells what was granted.
    """
    extra_flags = IFF_VNET_HDR if vnet else 0
    with _in_netns(netns):
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise HostError(f"cannot open {TUN_PATH} for tap {name}: {exc.strerror}") from exc
        try:
            try:
                ifr = _IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI | extra_flags)
                out = fcntl.ioctl(fd, TUNSETIFF, ifr)
            except OSError as exc:
                if not extra_flags & IFF_VNET_HDR or exc.errno != errno.EINVAL:
                    raise
                ifr = _IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI | extra_flags & ~IFF_VNET_HDR)
                out = fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as exc:
            os.close(fd)
            why = "name in use" if exc.errno == errno.EBUSY else exc.strerror
            raise HostError(f"cannot create tap {name}: {why}") from exc
    actual = _IFREQ.unpack(out)[0].rstrip(b"\0").decode()
    return fd, actual


def silence_ipv6(name: str, netns: str | None = None) -> bool:
    """Give the tap ``name`` no IPv6 stack of its own (before it goes up).

    A bridge port needs none, and with one every tap sends MLD reports, a DAD
    probe and router solicitations (repeated with back-off) into its tunnel,
    which a hub floods to every spoke: quadratic idle traffic (issue 26).
    Frames still cross the port whatever their protocol.  False when the
    kernel has no IPv6 or the setting cannot be written (nothing is lost but
    that chatter)."""
    path = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
    with _in_netns(netns):
        try:
            with open(path, "w") as f:
                f.write("1")
        except OSError:
            return False
    return True


def set_persistent(fd: int, name: str) -> None:
    """Keep the tap when its last fd closes (TUNSETPERSIST, as ``tunctl`` and
    ``ip tuntap add`` make them): for `bridger prepare`, whose taps outlive it
    and are attached to later by the unprivileged daemon. Deleted by the
    journal's undo (`bridger down`) like any tap."""
    try:
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as exc:
        raise HostError(f"cannot make tap {name} persistent: {exc.strerror}") from exc


def set_owner(fd: int, name: str, uid: int, gid: int) -> None:
    """Make the tap ``uid``'s and ``gid``'s (TUNSETOWNER/TUNSETGROUP, as
    ``ip tuntap add ... user U group G``): that user may attach to it without
    privileges; the fd itself is handed over too (``bridger.host.privsep``)."""
    try:
        fcntl.ioctl(fd, TUNSETOWNER, uid)
        fcntl.ioctl(fd, TUNSETGROUP, gid)
    except OSError as exc:
        raise HostError(f"cannot give tap {name} to uid {uid}: {exc.strerror}") from exc


SYS_CLASS_NET = "/sys/class/net"


def attach_tap(name: str, *, vnet: bool) -> tuple[int, str]:
    """Open the existing, prepared tap ``name`` (prepared-taps mode: made by the
    administrator, e.g. ``ip tuntap add mode tap user bridger name NAME``,
    and enslaved to the bridge). Never creates one: a missing tap, or one that
    is not this user's, is a one-line error."""
    base = os.path.join(SYS_CLASS_NET, name)
    if not os.path.exists(base):
        raise HostError(f"tap {name} does not exist; prepare it with `ip tuntap add mode tap "
                        f"user {_user_name()} name {name}` and enslave it to the bridge")
    if not os.path.exists(os.path.join(base, "tun_flags")):
        raise HostError(f"{name} is not a tap device")
    try:
        return open_tap(name, vnet=vnet)
    except HostError as exc:
        raise HostError(f"{exc} (is tap {name} owned by {_user_name()}? "
                        f"`ip tuntap add mode tap user {_user_name()} name {name}`)") from exc


def tap_master(name: str) -> str | None:
    """The name of the bridge ``name`` is a port of (sysfs), or None."""
    try:
        return os.path.basename(os.readlink(os.path.join(SYS_CLASS_NET, name, "master")))
    except OSError:
        return None


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def tap_flags(fd: int) -> int:
    """The IFF_* flags the kernel granted this tap fd (TUNGETIFF)."""
    out = fcntl.ioctl(fd, TUNGETIFF, _IFREQ.pack(b"", 0))
    return int(_IFREQ.unpack(out)[1])


def enable_offloads(fd: int) -> int:
    """Turn on the largest set of OFFLOAD_CHOICES the kernel accepts; 0 if none.

    Needs a tap with IFF_VNET_HDR: the kernel then hands superframes with
    partial checksums, which only a virtio-net header can describe.
    """
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
    except OSError:
        return 0
    for choice in OFFLOAD_CHOICES:
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, choice)
        except OSError:
            continue
        return choice
    return 0


#: UDP segmentation offload (Linux 6.2): the tap takes (and could hand over)
#: UDP_L4 superframes.
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40


def takes_udp_superframes(fd: int, granted: int) -> bool:
    """Whether this kernel's tap takes UDP_L4 superframes written with a
    virtio-net header (the USO offloads exist). The offloads are only probed:
    they are set back to ``granted`` at once, so the tap never *hands* us UDP
    superframes (bridger does not cut those)."""
    if not granted:
        return False
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, granted | TUN_F_USO4 | TUN_F_USO6)
    except OSError:
        return False
    fcntl.ioctl(fd, TUNSETOFFLOAD, granted)
    return True


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
