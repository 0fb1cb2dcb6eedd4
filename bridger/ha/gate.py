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
AF_BRIDGE = 7

#: Bridge port states (linux/if_bridge.h).
BR_STATE_DISABLED = 0
BR_STATE_FORWARDING = 3

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_NLA = struct.Struct("=HH")


class GateError(OSError):
    """The kernel refused a port-state change (errno set)."""


def setlink_request(ifindex: int, state: int, seq: int) -> bytes:
    """The request bytes (pure, tested without a kernel)."""
    inner = _NLA.pack(_NLA.size + 1, IFLA_BRPORT_STATE) + bytes([state]) + bytes(3)
    outer = _NLA.pack(_NLA.size + 5, IFLA_PROTINFO | NLA_F_NESTED) + inner
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

    def set_state(self, ifname: str, state: int) -> None:
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
