"""Preconditions, all checked before the host is touched.

Each failure is a one-line :class:`HostError` naming the interface, so the user
learns what to fix and the network stays exactly as it was.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from bridger.errors import HostError
from bridger.host import tap as tapmod
from bridger.host.netlink import ARPHRD_ETHER, IFF_LOOPBACK, Link, get_link
from bridger.host.pyroute import IPRoute

CAP_NET_ADMIN = 12
IFNAMSIZ = 16


def has_capability(cap: int) -> bool:
    """Whether ``cap`` is in this process's effective set."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def check_process(netns: str | None) -> None:
    """Privileges, /dev/net/tun and the namespace: no netlink needed yet."""
    if not has_capability(CAP_NET_ADMIN):
        raise HostError(
            f"need root or CAP_NET_ADMIN to change the network (running as uid {os.geteuid()})"
        )
    try:
        mode = os.stat(tapmod.TUN_PATH).st_mode
    except OSError as exc:
        raise HostError(
            f"{tapmod.TUN_PATH} is missing; load the tun module (modprobe tun)"
        ) from exc
    if not stat.S_ISCHR(mode):
        raise HostError(f"{tapmod.TUN_PATH} is not a character device")
    if netns is not None and not os.path.exists(f"/run/netns/{netns}"):
        raise HostError(f"network namespace {netns} does not exist")


def check_name(name: str, role: str) -> None:
    if not name or len(name) >= IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise HostError(f"{role} name {name!r} is not a valid interface name (1-15 chars)")


@dataclass(frozen=True)
class Facts:
    """What the checks learned; setup acts on exactly this."""

    lan: Link
    bridge: Link | None  # an existing bridge we reuse (never deleted), or None to create it
    lan_in_bridge: bool  # the NIC already is a port of that bridge


def check_links(ipr: IPRoute, lan: str, bridge: str, taps: Sequence[str]) -> Facts:
    """Validate the LAN NIC, the bridge name and the tap names."""
    check_name(lan, "LAN interface")
    check_name(bridge, "bridge")
    if lan == bridge:
        raise HostError(f"LAN interface {lan} and bridge {bridge} must differ")
    if not taps:
        raise HostError("no tap planned: bridger needs at least one tap port")
    seen: set[str] = set()
    for tap in taps:
        if tap in seen:
            raise HostError(f"tap name {tap} is planned twice")
        seen.add(tap)
        _check_tap_name(tap, lan, bridge)
    nic = get_link(ipr, lan)
    if nic is None:
        raise HostError(f"LAN interface {lan} does not exist")
    if nic.flags & IFF_LOOPBACK:
        raise HostError(f"LAN interface {lan} is the loopback; pass the Ethernet NIC of the LAN")
    if nic.kind == "bridge":
        raise HostError(
            f"LAN interface {lan} is itself a bridge; pass one of its ports as the LAN "
            f"interface and {lan} as the bridge"
        )
    if nic.ifi_type != ARPHRD_ETHER:
        raise HostError(f"LAN interface {lan} is not an Ethernet interface")
    br = get_link(ipr, bridge)
    if br is not None and br.kind != "bridge":
        raise HostError(f"bridge name {bridge} is taken by a {br.kind or 'non-bridge'} device")
    lan_in_bridge = False
    if nic.master:
        master = get_link(ipr, index=nic.master)
        if master is None or br is None or master.index != br.index:
            what = f"{master.name} ({master.kind or 'master'})" if master else "another device"
            raise HostError(f"LAN interface {lan} is already enslaved to {what}")
        lan_in_bridge = True
    for tap in taps:
        _check_tap_free(ipr, tap)
    return Facts(lan=nic, bridge=br, lan_in_bridge=lan_in_bridge)


def check_new_tap(
    ipr: IPRoute, tap: str, lan: str, bridge: str, existing: Collection[str]
) -> None:
    """A tap added at run time: a valid name, not one of ours, not taken."""
    _check_tap_name(tap, lan, bridge)
    if tap in existing:
        raise HostError(f"tap {tap} already exists in this session")
    _check_tap_free(ipr, tap)


def _check_tap_name(tap: str, lan: str, bridge: str) -> None:
    check_name(tap, "tap")
    if "%" in tap:  # the kernel would pick a name; the journal must know it beforehand
        raise HostError(f"tap name {tap!r} must not contain '%'")
    if tap == lan:
        raise HostError(f"tap name {tap} is the LAN interface")
    if tap == bridge:
        raise HostError(f"tap name {tap} is the bridge")


def _check_tap_free(ipr: IPRoute, tap: str) -> None:
    other = get_link(ipr, tap)
    if other is not None:
        raise HostError(f"tap name {tap} is taken by an existing {other.kind or 'plain'} device")
