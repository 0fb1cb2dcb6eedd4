"""What a frame is, as far as the guards care: pure functions over untrusted bytes.

Two entry points, and they agree (a property test holds them to it):

* :func:`ordinary_untrusted` is the hot-path pre-check: a few byte compares
  that say "this frame is plain traffic none of the enabled guards acts on"
  and return its outer VLAN id, or -1 for "look closer".
* :func:`classify_untrusted` is the full look: VLAN tags, the inner
  EtherType, the destination class and the one :class:`FrameKind` the guards
  act on, walking IPv4 options and IPv6 extension headers.

Neither raises, whatever the bytes: anything cut short or too deep to follow is
reported (``hidden``), never guessed.  Frames are ``bytes`` straight from a tap
read or the tunnel.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag
from typing import NamedTuple

from bridger.guard.constants import (
    ETH_HLEN,
    IPV4_MIN_HLEN,
    IPV4_OFFSET_MASK,
    IPV6_EXT_GENERIC,
    IPV6_HLEN,
    LINK_LOCAL_PREFIX,
    MAX_IPV6_EXT_HEADERS,
    MAX_VLAN_TAGS,
    PROBE_MAGIC,
    PROBE_VERSION,
    VLAN_HLEN,
    VLAN_TPIDS,
    EtherType,
    Icmp6Type,
    IpProto,
    UdpPort,
)

_U16 = struct.Struct(">H")
_unpack_u16 = _U16.unpack_from
_PORTS = struct.Struct(">HH")
_unpack_ports = _PORTS.unpack_from


class FrameKind(IntEnum):
    """The one thing about a frame a guard may act on."""

    #: Nothing a guard singles out (TCP, most UDP, other EtherTypes, later fragments).
    OTHER = 0
    #: ARP request or reply (RFC 826): kept alive by the ND share of the flood budget.
    ARP = 1
    #: ICMPv6 neighbour discovery other than RA: RS, NS, NA, redirect (RFC 4861).
    ND = 2
    #: ICMPv6 router advertisement (type 134): the RA guard; also counts as ND.
    RA = 3
    #: DHCPv4 server -> client: UDP 67 -> 68 in an unfragmented or first-fragment packet.
    DHCP4_SERVER = 4
    #: DHCPv6 server -> client: UDP 547 -> 546 after any extension headers.
    DHCP6_SERVER = 5
    #: A bridger loop probe (EtherType 0x88B5).
    LOOP_PROBE = 6
    #: To an IEEE 802.1D link-local group address 01:80:C2:00:00:0x (STP BPDUs).
    LINK_LOCAL = 7


class Hidden(IntFlag):
    """What a frame's unreadable part could be (``FrameInfo.hidden``)."""

    NONE = 0
    #: A DHCP server message (an IPv4 or UDP header cut short).
    DHCP = 1
    #: A router advertisement (the ICMPv6 type cut short).
    RA = 2
    #: Either (tags or an IPv6 header chain we cannot follow).
    ANY = 3


#: Kinds that draw on the ARP/ND share of the flood budget.
NEIGHBOUR_KINDS = frozenset((FrameKind.ARP, FrameKind.ND, FrameKind.RA))

# Plain-int and member aliases: an Enum attribute lookup costs ~45 ns, several
# per frame on the flood path.
_OTHER, _ARP, _ND, _RA = FrameKind.OTHER, FrameKind.ARP, FrameKind.ND, FrameKind.RA
_DHCP4, _DHCP6, _PROBE = FrameKind.DHCP4_SERVER, FrameKind.DHCP6_SERVER, FrameKind.LOOP_PROBE
_LINK_LOCAL = FrameKind.LINK_LOCAL
_H_DHCP, _H_RA, _H_ANY = int(Hidden.DHCP), int(Hidden.RA), int(Hidden.ANY)
_ET_IPV4, _ET_IPV6, _ET_ARP = int(EtherType.IPV4), int(EtherType.IPV6), int(EtherType.ARP)
_ET_PROBE = int(EtherType.LOOP_PROBE)
_PROBE_HEAD = PROBE_MAGIC + bytes([PROBE_VERSION])
_TPIDS = frozenset(int(t) for t in VLAN_TPIDS)
_UDP, _ICMPV6 = int(IpProto.UDP), int(IpProto.ICMPV6)
_FRAG, _AH = int(IpProto.FRAGMENT), int(IpProto.AH)
_EXT_GENERIC = frozenset(int(t) for t in IPV6_EXT_GENERIC)
_RA_TYPE = int(Icmp6Type.ROUTER_ADVERTISEMENT)
_ND_FIRST, _ND_LAST = int(Icmp6Type.ROUTER_SOLICITATION), int(Icmp6Type.REDIRECT)
_BOOTPS, _BOOTPC = int(UdpPort.BOOTPS), int(UdpPort.BOOTPC)
_DHCP6_SERVER, _DHCP6_CLIENT = int(UdpPort.DHCPV6_SERVER), int(UdpPort.DHCPV6_CLIENT)


class FrameInfo(NamedTuple):
    """The classifier's verdict on one frame."""

    kind: FrameKind
    #: Destination has the group bit (broadcast or multicast).
    group: bool
    #: VLAN ids of the tags, outermost first (at most MAX_VLAN_TAGS; VID 0 =
    #: priority tag).
    vlans: tuple[int, ...]
    #: EtherType after the tags (-1 if the frame ends first).
    ethertype: int
    #: Offset of the payload after the tags (the IP header, the probe body).
    l3: int
    #: Which guards' header the classifier could not reach (:class:`Hidden`):
    #: too many tags, an IP header or IPv6 extension chain cut off or longer
    #: than MAX_IPV6_EXT_HEADERS, a first fragment that ends before the UDP
    #: ports or the ICMPv6 type.  A guard that is on drops what hides from it
    #: (RFC 7113).
    hidden: int = 0
    #: An IPv4 or IPv6 fragment other than the first (no L4 header in it).
    later_fragment: bool = False

    @property
    def outer_vlan(self) -> int:
        """The outer VLAN id; 0 for untagged and priority-tagged frames."""
        return self.vlans[0] if self.vlans else 0


#: What :func:`look_untrusted` returns: (kind, VLAN ids, EtherType, l3, hidden,
#: later fragment) - :class:`FrameInfo` without the record, for the flood path.
Look = tuple[FrameKind, tuple[int, ...], int, int, int, bool]

_RUNT: Look = (_OTHER, (), -1, 0, _H_ANY, False)


def classify_untrusted(frame: bytes) -> FrameInfo:
    """Classify one Ethernet frame (no FCS). Never raises."""
    kind, vlans, ethertype, l3, hidden, later = look_untrusted(frame)
    group = bool(frame[:1]) and bool(frame[0] & 1)
    return FrameInfo(kind, group, vlans, ethertype, l3, hidden, later)


def look_untrusted(frame: bytes) -> Look:
    """:func:`classify_untrusted` as a plain tuple (``group`` left out: the caller
    has ``frame[0] & 1``).  Never raises."""
    if len(frame) < ETH_HLEN:
        return _RUNT
    ethertype = (frame[12] << 8) | frame[13]
    l3 = ETH_HLEN
    tags: tuple[int, ...] = ()
    if ethertype in _TPIDS:
        vlans: list[int] = []
        while ethertype in _TPIDS:
            if len(vlans) == MAX_VLAN_TAGS or len(frame) < l3 + VLAN_HLEN:
                return _OTHER, tuple(vlans), ethertype, l3, _H_ANY, False
            vlans.append(((frame[l3] & 0x0F) << 8) | frame[l3 + 1])
            ethertype = (frame[l3 + 2] << 8) | frame[l3 + 3]
            l3 += VLAN_HLEN
        tags = tuple(vlans)
    if ethertype == _ET_IPV4:
        kind, hidden, later = _ipv4(frame, l3)
    elif ethertype == _ET_IPV6:
        kind, hidden, later = _ipv6(frame, l3)
    elif ethertype == _ET_ARP:
        kind, hidden, later = _ARP, 0, False
    elif ethertype == _ET_PROBE and frame[l3:l3 + 5] == _PROBE_HEAD:
        kind, hidden, later = _PROBE, 0, False
    else:
        kind, hidden, later = _OTHER, 0, False
    if kind == _OTHER and frame[:5] == LINK_LOCAL_PREFIX and frame[5] < 0x10:
        kind = _LINK_LOCAL
    return kind, tags, ethertype, l3, hidden, later


def _ipv4(frame: bytes, l3: int) -> tuple[FrameKind, int, bool]:
    """(kind, hidden, later fragment) of the IPv4 packet at ``l3``."""
    if len(frame) < l3 + 10:
        return _OTHER, _H_DHCP, False
    ihl = (frame[l3] & 0x0F) * 4
    if frame[l3] >> 4 != 4 or ihl < IPV4_MIN_HLEN:
        return _OTHER, 0, False  # not IPv4 at all: every host drops it
    if frame[l3 + 9] != _UDP:
        return _OTHER, 0, False
    if len(frame) < l3 + IPV4_MIN_HLEN:
        return _OTHER, _H_DHCP, False
    if _unpack_u16(frame, l3 + 6)[0] & IPV4_OFFSET_MASK:
        return _OTHER, 0, True  # no UDP header in a later fragment
    l4 = l3 + ihl  # IHL honoured: options move the UDP header
    if len(frame) < l4 + 4:
        return _OTHER, _H_DHCP, False
    src, dst = _unpack_ports(frame, l4)
    if src == _BOOTPS and dst == _BOOTPC:
        return _DHCP4, 0, False
    return _OTHER, 0, False


#: Next-header values after which the walk goes on (or looks at the L4 header).
_IPV6_FOLLOWED = frozenset((*_EXT_GENERIC, _FRAG, _AH, _ICMPV6, _UDP))


#: What a cut-short IPv6 packet hides, by its first next-header value.
_HIDES = {_ICMPV6: _H_RA, _UDP: _H_DHCP}


def _ipv6(frame: bytes, l3: int) -> tuple[FrameKind, int, bool]:
    """(kind, hidden, later fragment) of the IPv6 packet at ``l3``: a bounded
    walk along the extension headers to the upper-layer header."""
    end = len(frame)
    if end < l3 + 7:
        return _OTHER, _H_ANY, False
    if frame[l3] >> 4 != 6:
        return _OTHER, 0, False
    nh = frame[l3 + 6]
    if nh not in _IPV6_FOLLOWED:
        return _OTHER, 0, False
    if end < l3 + IPV6_HLEN:
        return _OTHER, _HIDES.get(nh, _H_ANY), False
    offset = l3 + IPV6_HLEN
    for _ in range(MAX_IPV6_EXT_HEADERS):
        if nh in _EXT_GENERIC:
            if end < offset + 2:
                return _OTHER, _H_ANY, False
            nh, offset = frame[offset], offset + (frame[offset + 1] + 1) * 8
        elif nh == _FRAG:
            if end < offset + 8:
                return _OTHER, _H_ANY, False
            if _unpack_u16(frame, offset + 2)[0] & 0xFFF8:
                return _OTHER, 0, True
            nh, offset = frame[offset], offset + 8
        elif nh == _AH:
            if end < offset + 2:
                return _OTHER, _H_ANY, False
            nh, offset = frame[offset], offset + (frame[offset + 1] + 2) * 4
        else:
            break
    else:
        return _OTHER, _H_ANY, False  # chain longer than we follow
    if nh == _ICMPV6:
        if end < offset + 1:
            return _OTHER, _H_RA, False
        icmp_type = frame[offset]
        if icmp_type == _RA_TYPE:
            return _RA, 0, False
        if _ND_FIRST <= icmp_type <= _ND_LAST:
            return _ND, 0, False
        return _OTHER, 0, False
    if nh == _UDP:
        if end < offset + 4:
            return _OTHER, _H_DHCP, False
        src, dst = _unpack_ports(frame, offset)
        if src == _DHCP6_SERVER and dst == _DHCP6_CLIENT:
            return _DHCP6, 0, False
    return _OTHER, 0, False


# --- the hot-path pre-check --------------------------------------------------


def interest_tables(dhcp: bool, ra: bool) -> tuple[bytes, bytes]:
    """(IPv4 protocol table, IPv6 next-header table) for :func:`ordinary_untrusted`:
    a 1 at every value after which the enabled guards (DHCP, RA) need the full look."""
    v4 = bytearray(256)
    v6 = bytearray(256)
    if dhcp:
        v4[IpProto.UDP] = 1
        v6[IpProto.UDP] = 1
    if ra:
        v6[IpProto.ICMPV6] = 1
    if dhcp or ra:
        for nh in (*IPV6_EXT_GENERIC, IpProto.FRAGMENT, IpProto.AH):
            v6[nh] = 1
    return bytes(v4), bytes(v6)


_B_IPV4 = EtherType.IPV4.to_bytes(2, "big")
_B_IPV6 = EtherType.IPV6.to_bytes(2, "big")
_B_TPIDS = frozenset(t.to_bytes(2, "big") for t in VLAN_TPIDS)
_B_PROBE = EtherType.LOOP_PROBE.to_bytes(2, "big")


def ordinary_untrusted(frame: bytes, v4: bytes, v6: bytes) -> int:
    """The outer VLAN id (0: untagged or priority-tagged) of a frame that is not a
    loop probe and (with the tables of
    :func:`interest_tables`) nothing the DHCP/RA guards act on; -1 when the
    caller must use :func:`classify_untrusted`. Never raises.

    Conservative by construction: -1 for anything it does not recognise
    cheaply (runts, a third tag, IP headers cut short, IPv6 behind extension
    headers when a DHCP/RA guard is on).  It does not look at the destination:
    flood control classifies every flooded frame fully.
    """
    try:
        et = frame[12:14]
        if et == _B_IPV4:
            return -1 if v4[frame[23]] else 0
        if et == _B_IPV6:
            return -1 if v6[frame[20]] else 0
        vid = 0
        if et in _B_TPIDS:
            vid = ((frame[14] & 0x0F) << 8) | frame[15]
            et = frame[16:18]
            l3 = 18
            if et in _B_TPIDS:
                et = frame[20:22]
                l3 = 22
                if et in _B_TPIDS:
                    return -1
            if et == _B_IPV4:
                return -1 if v4[frame[l3 + 9]] else vid
            if et == _B_IPV6:
                return -1 if v6[frame[l3 + 6]] else vid
        if len(et) < 2 or et == _B_PROBE:
            return -1
        return vid
    except IndexError:
        return -1
