"""The forwarding gate: a bridge port's STP state, set over rtnetlink.

A standby keeps its taps' bridge ports in state *disabled* (``bridge link``
shows it): the bridge neither forwards to nor from them nor learns on them, while
the taps and bridger's tunnels stay up.  The active sets them *forwarding*.

Why *disabled* and not *blocking*: on a bridge without STP the kernel re-runs
port-state selection after a change and turns a blocking port forwarding at
once; a disabled port is left alone.  Why a raw request: the message is one
``RTM_SETLINK`` of family ``AF_BRIDGE`` with ``IFLA_PROTINFO`` /
``IFLA_BRPORT_STATE`` (what ``bridge link set dev X state N`` sends), which
pyroute2's link request does not build.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_SETLINK = 19
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
IFLA_PROTINFO = 12
NLA_F_NESTED = 0x8000
IFLA_BRPORT_STATE = 1
#: A flag attribute: forget every dynamic FDB entry of the port.
IFLA_BRPORT_FLUSH = 24
AF_BRIDGE = 7

#: Bridge port states (linux/if_bridge.h).
BR_STATE_DISABLED = 0
BR_STATE_FORWARDING = 3

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_NLA = struct.Struct("=HH")


RTM_GETNEIGH = 30
NLM_F_DUMP = 0x300
NLMSG_DONE = 3
NDA_LLADDR, NDA_MASTER = 2, 9
NUD_PERMANENT = 0x80
_NDMSG = struct.Struct("=BxxxiHBB")


class GateError(OSError):
    """The kernel refused a port-state change (errno set)."""


def setlink_request(ifindex: int, state: int | None, seq: int) -> bytes:
    """The request bytes (pure, tested without a kernel); ``state`` None: flush the
    port's learnt FDB entries instead (``bridge link set dev X flush``)."""
    if state is None:
        inner = _NLA.pack(_NLA.size, IFLA_BRPORT_FLUSH)
    else:
        inner = _NLA.pack(_NLA.size + 1, IFLA_BRPORT_STATE) + bytes([state]) + bytes(3)
    outer = _NLA.pack(_NLA.size + len(inner), IFLA_PROTINFO | NLA_F_NESTED) + inner
    body = _IFINFOMSG.pack(AF_BRIDGE, 0, ifindex, 0, 0) + outer
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_SETLINK,
                          NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


class PortGate:
    """Sets bridge-port states; one netlink socket, opened once."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sock.settimeout(2.0)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def flush(self, ifname: str) -> None:
        """Forget what the bridge learnt on port ``ifname`` (a new active's LAN port
        holds remote MACs the old active flooded onto the LAN)."""
        self.set_state(ifname, None)

    def set_state(self, ifname: str, state: int | None) -> None:
        """Raise :class:`GateError` if the interface is gone or the kernel refuses."""
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError as exc:
            raise GateError(errno.ENODEV, f"{ifname}: no such interface") from exc
        self.seq += 1
        try:
            self.sock.send(setlink_request(ifindex, state, self.seq))
            while True:
                reply = self.sock.recv(4096)
                _length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(reply)
                if seq != self.seq:
                    continue
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", reply, _NLMSGHDR.size)
                    if code:
                        raise GateError(-code, f"{ifname}: {os.strerror(-code)}")
                return
        except TimeoutError as exc:
            raise GateError(errno.ETIMEDOUT, f"{ifname}: no answer from the kernel") from exc


def fdb_request(seq: int) -> bytes:
    """An RTM_GETNEIGH dump of the bridges' forwarding databases (AF_BRIDGE)."""
    body = _NDMSG.pack(AF_BRIDGE, 0, 0, 0, 0)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETNEIGH,
                          NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse_fdb_untrusted(data: bytes, seq: int) -> tuple[list[tuple[int, int, bytes]], bool]:
    """Entries (port ifindex, master ifindex, MAC) of the learnt, unicast entries in
    one netlink read, and whether the dump is done.  Raises only ``ValueError``."""
    entries: list[tuple[int, int, bytes]] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise ValueError("truncated netlink message")
        if msg_seq == seq:
            if kind == NLMSG_DONE:
                return entries, True
            if kind == NLMSG_ERROR:
                raise ValueError("the kernel refused the dump")
            if kind == 28 and length >= _NLMSGHDR.size + _NDMSG.size:  # RTM_NEWNEIGH
                _fam, ifindex, state, _nflags, _type = _NDMSG.unpack_from(
                    data, offset + _NLMSGHDR.size)
                mac, master = b"", 0
                at = offset + _NLMSGHDR.size + _NDMSG.size
                while at + _NLA.size <= offset + length:
                    nla_len, nla_type = _NLA.unpack_from(data, at)
                    if nla_len < _NLA.size:
                        break
                    value = data[at + _NLA.size: at + nla_len]
                    if nla_type == NDA_LLADDR:
                        mac = value
                    elif nla_type == NDA_MASTER and len(value) == 4:
                        (master,) = struct.unpack("=I", value)
                    at += (nla_len + 3) & ~3
                if len(mac) == 6 and not mac[0] & 1 and not state & NUD_PERMANENT:
                    entries.append((ifindex, master, mac))
        offset += (length + 3) & ~3
    return entries, False


def read_fdb() -> list[tuple[int, int, bytes]]:
    """(port ifindex, bridge ifindex, MAC) of every learnt unicast FDB entry.

    Raises ``OSError`` (``ValueError`` from the parser becomes one)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        sock.send(fdb_request(1))
        entries: list[tuple[int, int, bytes]] = []
        while True:
            try:
                found, done = parse_fdb_untrusted(sock.recv(1 << 16), 1)
            except ValueError as exc:
                raise OSError(errno.EIO, str(exc)) from exc
            entries += found
            if done:
                return entries
