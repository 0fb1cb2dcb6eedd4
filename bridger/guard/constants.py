"""Guard constants.

Specification constants come from the standards the classifier reads (IEEE
802.1Q, RFC 791/8200/4861/2131/8415) and cannot be chosen.  Implementation
constants are bridger's own choices (probe timing, bucket sizes, memory caps);
docs/guard.md explains each.
"""

from __future__ import annotations

from enum import IntEnum

# --- Specification constants -------------------------------------------------


class EtherType(IntEnum):
    """EtherTypes the guards look at (IEEE registry)."""

    #: IPv4 (RFC 894).
    IPV4 = 0x0800
    #: ARP (RFC 826).
    ARP = 0x0806
    #: IPv6 (RFC 2464).
    IPV6 = 0x86DD
    #: IEEE 802.1Q customer VLAN tag (C-tag).
    VLAN = 0x8100
    #: IEEE 802.1ad service VLAN tag (S-tag, QinQ outer).
    QINQ = 0x88A8
    #: Pre-standard QinQ outer tag still found on older switches.
    QINQ_OLD = 0x9100
    #: IEEE Std 802 "local experimental EtherType 1": bridger's loop probes.
    LOOP_PROBE = 0x88B5


#: Tag protocol identifiers that start a 4-byte VLAN tag.
VLAN_TPIDS = frozenset((EtherType.VLAN, EtherType.QINQ, EtherType.QINQ_OLD))


class IpProto(IntEnum):
    """IPv4 protocol / IPv6 next-header values (IANA)."""

    #: IPv6 hop-by-hop options (RFC 8200 4.3); only right after the fixed header.
    HOPOPT = 0
    TCP = 6
    UDP = 17
    #: IPv6 routing header (RFC 8200 4.4).
    ROUTING = 43
    #: IPv6 fragment header (RFC 8200 4.5).
    FRAGMENT = 44
    #: Encapsulating security payload: what follows is encrypted (opaque).
    ESP = 50
    #: Authentication header (RFC 4302): length in 4-byte units minus 2.
    AH = 51
    ICMPV6 = 58
    #: No next header (RFC 8200 4.7).
    NONE = 59
    #: IPv6 destination options (RFC 8200 4.6).
    DSTOPTS = 60


#: IPv6 extension headers with the generic (next header, length in 8-byte units
#: minus 1) layout.
IPV6_EXT_GENERIC = frozenset((IpProto.HOPOPT, IpProto.ROUTING, IpProto.DSTOPTS))


class Icmp6Type(IntEnum):
    """ICMPv6 types of IPv6 neighbour discovery (RFC 4861 section 4)."""

    ROUTER_SOLICITATION = 133
    #: The message the RA guard holds back (RFC 4861 4.2, RFC 6105).
    ROUTER_ADVERTISEMENT = 134
    NEIGHBOR_SOLICITATION = 135
    NEIGHBOR_ADVERTISEMENT = 136
    REDIRECT = 137


class UdpPort(IntEnum):
    """DHCP ports: server messages go server port -> client port."""

    #: DHCPv4 server (RFC 2131 4.1).
    BOOTPS = 67
    #: DHCPv4 client.
    BOOTPC = 68
    #: DHCPv6 client (RFC 8415 7.2).
    DHCPV6_CLIENT = 546
    #: DHCPv6 server and relay agent.
    DHCPV6_SERVER = 547


ETH_HLEN = 14
VLAN_HLEN = 4
IPV4_MIN_HLEN = 20
IPV6_HLEN = 40
#: IPv4 flags/fragment-offset word: the 13-bit offset in 8-byte units.
IPV4_OFFSET_MASK = 0x1FFF
#: IEEE 802.1D reserved link-local group addresses 01:80:C2:00:00:00-0F
#: (STP BPDUs and friends); a bridge never floods 01-0F, 00 only with STP off.
LINK_LOCAL_PREFIX = bytes.fromhex("0180c20000")
BROADCAST = b"\xff" * 6

# --- Implementation constants ------------------------------------------------

#: VLAN tags the classifier looks through; a frame with more is "hidden".
MAX_VLAN_TAGS = 2
#: IPv6 extension headers walked before the upper-layer header; a longer chain
#: is "hidden" (RFC 7112 wants the whole chain in the first fragment anyway).
MAX_IPV6_EXT_HEADERS = 8

#: Default flood budget per peer, frames per second (0 = unlimited).
DEFAULT_FLOOD_RATE = 2000
#: Default share of the flood budget kept for ARP and IPv6 neighbour discovery.
DEFAULT_ND_SHARE = 0.25
#: Link-local control frames (BPDUs) and other sites' loop probes have a bucket
#: of their own, apart from the flood budget, so a storm never silences STP.
CONTROL_RATE = 200
CONTROL_BURST = 200

#: Loop probes: one per peer (and allowed VLAN) every PROBE_INTERVAL seconds,
#: +- PROBE_JITTER; detection takes one interval plus a round trip.
PROBE_INTERVAL = 0.5
PROBE_JITTER = 0.1
#: Seconds a site (not a hub) counts a peer as a hub that probes their tunnel
#: itself after the last of that hub's probes came (bridger/guard/loop.py 7.).
HUB_HEARD_FOR = 2.0
#: A returned probe counts only if it was sent at most this long ago.
PROBE_MEMORY = 5.0
#: A blocked peer is released once no probe of ours has come back through it for
#: the hold time: HOLD_BASE, doubled on each repeat (within STRIKE_MEMORY of the
#: last release) up to HOLD_MAX, times a random factor up to 1 + HOLD_JITTER.
HOLD_BASE = 2.0
HOLD_MAX = 16.0
HOLD_JITTER = 0.25
STRIKE_MEMORY = 60.0
#: Other sites' probes delivered from a blocked peer are remembered this long
#: (crossing our bridge takes microseconds), at most TAINT_CAPACITY of them.
TAINT_MEMORY = 1.0
TAINT_CAPACITY = 1024

#: MAC flap tracking: MACs remembered, the rate window, and when a MAC is
#: reported (at least FLAP_ALERT flaps within FLAP_WINDOW; one log line per
#: FLAP_LOG_INTERVAL at most).
FLAP_CAPACITY = 4096
FLAP_WINDOW = 10.0
FLAP_ALERT = 10
FLAP_LOG_INTERVAL = 10.0

#: First bytes after the EtherType of a loop probe (with PROBE_VERSION next):
#: other 0x88B5 frames (the EtherType is anyone's local experiment) are ordinary.
PROBE_MAGIC = b"BRGD"
PROBE_VERSION = 1
