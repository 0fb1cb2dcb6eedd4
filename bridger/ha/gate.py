"""The forwarding gate: a bridge port's STP state, set over rtnetlink; and the
other host actions of the group (:class:`GroupHost`).

A standby keeps its taps' bridge ports in state *disabled* (``bridge link``
shows it): the bridge neither forwards to nor from them nor learns on them, while
the taps and bridger's tunnels stay up.  The active sets them *forwarding*.

Why *disabled* and not *blocking*: on a bridge without STP the kernel re-runs
port-state selection after a change and turns a blocking port forwarding at
once; a disabled port is left alone.  Why a raw request: the message is one
``RTM_SETLINK`` of family ``AF_BRIDGE`` with ``IFLA_PROTINFO`` /
``IFLA_BRPORT_STATE`` (what ``bridge link set dev X state N`` sends), which
pyroute2's link request does not build.

What the group needs of the host, and who does it (docs/security.md):

* Two AF_PACKET sockets (:class:`GroupSockets`: send, and receive EtherType
  0x88B6 on the bridge), opened as root at start, before the privileges go;
  the data plane keeps them (sending and receiving on an open socket needs
  no privilege).
* The nftables rule that keeps group frames off the taps
  (:func:`containment_script`): made by the host set-up with its undo in the
  journal (:func:`contain`), so every restore removes it.
* At run time, four verbs (:class:`GroupHost`): a tap's port state, the LAN
  port's flush, the FDB, keepalived's state file.  The first two need
  CAP_NET_ADMIN (the last may be a file of root's): in the process itself
  when it kept it (:class:`DirectGroupHost`), else asked of the root monitor
  (``bridger.host.privsep.MonitorGroupHost``).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bridger.ha import wire

log = logging.getLogger("bridger")

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
#: The only states a gate sets, by the name a request to the monitor carries.
PORT_STATES = {"disabled": BR_STATE_DISABLED, "forwarding": BR_STATE_FORWARDING}

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


# -- the group's host actions ---------------------------------------------------------

#: How much of keepalived's state file is read (a state is one word).
FOLLOW_CHARS = 64
#: An FDB entry: (port ifindex, bridge ifindex, MAC).
FdbEntry = tuple[int, int, bytes]


class GroupHost(Protocol):
    """What the group's runner asks of the host while it runs."""

    def set_port_state(self, tap: str, state: int) -> None:
        """Tap ``tap``'s bridge port to ``state`` (a value of :data:`PORT_STATES`);
        raises :class:`GateError`."""

    def flush_lan(self) -> None:
        """Forget what the bridge learnt on the LAN port; raises :class:`GateError`."""

    def read_fdb(self) -> list[FdbEntry]:
        """The learnt unicast FDB entries (at least those of our bridge); raises
        ``OSError``."""

    def read_follow(self, path: Path) -> str:
        """The first :data:`FOLLOW_CHARS` characters of keepalived's state file
        ``path`` (the configured one); raises ``OSError`` (no state yet)."""

    def close(self) -> None:
        """Nothing more will be asked."""


class DirectGroupHost:
    """The group's host actions done in this process, which holds CAP_NET_ADMIN
    (a start without root: nothing to split)."""

    def __init__(self, lan: str) -> None:
        self.lan = lan
        self.gate = PortGate()

    def set_port_state(self, tap: str, state: int) -> None:
        self.gate.set_state(tap, state)

    def flush_lan(self) -> None:
        self.gate.flush(self.lan)

    def read_fdb(self) -> list[FdbEntry]:
        return read_fdb()

    def read_follow(self, path: Path) -> str:
        return read_follow(path)

    def close(self) -> None:
        self.gate.close()


def read_follow(path: Path) -> str:
    """The start of keepalived's state file (it may be root's: in the split, the
    monitor reads it); raises ``OSError``."""
    with open(path, "rb") as f:
        return f.read(FOLLOW_CHARS).decode("utf-8", errors="replace")


# Classic BPF (<linux/filter.h>) for the sockets' own receive filters.
SO_ATTACH_FILTER, SO_LOCK_FILTER = 26, 44
_LD_H_ABS, _LD_W_ABS, _JEQ_K, _RET_K = 0x28, 0x20, 0x15, 0x06
#: The receiving interface's index, an ancillary load (SKF_AD_OFF + SKF_AD_IFINDEX).
_SKF_AD_IFINDEX = (-0x1000 + 8) & 0xFFFFFFFF
#: Offset of the EtherType in a frame.
_ETHERTYPE_AT = 12


def receive_filter(ifindex: int | None) -> list[tuple[int, int, int, int]]:
    """A socket filter as (code, jt, jf, k): the group's EtherType arriving on
    interface ``ifindex``, whole; None: nothing at all."""
    if ifindex is None:
        return [(_RET_K, 0, 0, 0)]
    return [
        (_LD_H_ABS, 0, 0, _ETHERTYPE_AT),
        (_JEQ_K, 0, 3, wire.ETHERTYPE),
        (_LD_W_ABS, 0, 0, _SKF_AD_IFINDEX),
        (_JEQ_K, 0, 1, ifindex),
        (_RET_K, 0, 0, 0xFFFF),
        (_RET_K, 0, 0, 0),
    ]


def lock_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """Attach ``program`` to ``sock`` and lock it (SO_LOCK_FILTER: no one, root or
    not, can detach or replace it for the socket's life).  Raises ``OSError``."""
    insns = (ctypes.c_uint64 * len(program))(*(
        code | jt << 16 | jf << 24 | k << 32 for code, jt, jf, k in program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("HxxxxxxQ", len(program), ctypes.addressof(insns)))
    sock.setsockopt(socket.SOL_SOCKET, SO_LOCK_FILTER, 1)


@dataclass
class GroupSockets:
    """The group's raw LAN sockets: ``tx`` unbound (HELLOs out of the LAN NIC,
    announcements into the taps), ``rx`` the group's EtherType on the bridge (None
    when following keepalived).  Opened with CAP_NET_RAW, used without it.

    A packet socket can be bound again, to any protocol and interface, without
    privilege: each has a locked receive filter, so that even then ``rx`` takes
    nothing but group frames arriving on the bridge and ``tx`` nothing at all
    (the data plane that holds them cannot sniff the gateway's interfaces)."""

    tx: socket.socket
    rx: socket.socket | None

    @classmethod
    def open(cls, bridge: str, receive: bool) -> GroupSockets:
        """Raises ``OSError``."""
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        rx = None
        try:
            lock_filter(tx, receive_filter(None))
            if receive:
                rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                   socket.htons(wire.ETHERTYPE))
                lock_filter(rx, receive_filter(socket.if_nametoindex(bridge)))
                rx.bind((bridge, wire.ETHERTYPE))
                rx.setblocking(False)
        except OSError:
            tx.close()
            if rx is not None:
                rx.close()
            raise
        return cls(tx, rx)

    def close(self) -> None:
        for sock in (self.rx, self.tx):
            if sock is not None:
                sock.close()


#: The nftables table that keeps group frames on the LAN, per bridge.
NFT_TABLE = "bridger_ha"


def containment_table(bridge: str) -> str:
    return f"{NFT_TABLE}_{bridge}"


def containment_script(bridge: str, add: bool) -> str:
    """nftables: our bridge never forwards group frames (they are for this LAN only)."""
    table = containment_table(bridge)
    lines = [f"add table bridge {table}", f"delete table bridge {table}"]
    if add:
        lines += [
            f"table bridge {table} {{",
            "  chain forward {",
            "    type filter hook forward priority -200; policy accept;",
            f"    ether type {wire.ETHERTYPE:#06x} counter drop",
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def contain(journaled: Callable[[str, dict[str, Any], Callable[[], None]], None],
            bridge: str, netns: str | None = None) -> bool:
    """Make the containment rule as a journaled host change (``journaled``: the host
    session's, which records the undo first); False, with one warning line, if nft
    refuses (the group still works; its frames may reach the peers)."""
    from bridger.host.storm import NftError, run_nft, undo_record

    table = containment_table(bridge)

    def make() -> None:
        run_nft(["-f", "-"], containment_script(bridge, True), netns)

    try:
        journaled(f"contain the group's frames ({table})", undo_record(table, netns), make)
    except NftError as exc:
        log.warning("ha: group frames may cross to the peers (%s)", exc)
        return False
    return True
