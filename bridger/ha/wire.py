"""The group's frames on the LAN: one Ethernet frame per message, authenticated.

Each message is an Ethernet frame to :data:`GROUP_DST` with EtherType
:data:`ETHERTYPE` (IEEE Std 802 local experimental 2; the loop guard has 1),
sent by the gateway on its LAN NIC only.  After the EtherType:

| bytes | field |
|---|---|
| 0-3   | ``BRHA`` |
| 4     | version (1) |
| 5     | :class:`Kind` |
| 6     | flags (:class:`Flag`) |
| 7     | priority (0-255) |
| 8-15  | site tag: the first 8 bytes of BLAKE2b(site name) |
| 16-23 | sender's node id (from its public key) |
| 24-31 | sender's nonce: random per daemon start |
| 32-39 | sequence number (per nonce, strictly increasing) |
| 40    | number of echoed nonces (at most :data:`MAX_ECHO`) |
| 41-   | echoed nonces (8 bytes each): the nonces of the members the sender hears |
| ...   | body (:class:`Kind` ``MACS``: two counts (16 bits) and 6-byte MACs) |
| last 16 | tag: keyed BLAKE2b (PyNaCl) of everything before it |

The tag's key is derived from the group key and the site name, so another site
(or a stranger) on the LAN cannot make a frame that counts.  Freshness (replay):
a receiver counts a frame only if it echoes the receiver's own nonce (it was
made after the receiver started) and its sequence number is higher than the
last one counted from that sender's nonce (:mod:`bridger.ha.election`).

Decoders of network bytes end in ``_untrusted`` and raise only :class:`BadFrame`.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

import nacl.encoding
import nacl.hash

#: IEEE Std 802 "local experimental EtherType 2" (the loop probes use 1).
ETHERTYPE = 0x88B6
#: Destination of group frames: group and locally administered bits set, outside
#: 01:80:c2:00:00:0x, so LAN switches flood it (the gateways' own bridges do not
#: pass it to the taps: see ``bridger.ha.runner``).
GROUP_DST = bytes.fromhex("0f6272646861")
MAGIC = b"BRHA"
VERSION = 1
TAG_LEN = 16
ID_LEN = 8
NONCE_LEN = 8
#: Most members' nonces one frame echoes (a group is two or three gateways).
MAX_ECHO = 8
#: MACs per ``MACS`` frame (a 1500-byte payload holds 240 after the header).
MACS_PER_FRAME = 200
ETH_HLEN = 14
ETH = struct.Struct("!6s6sH")
HEADER = struct.Struct("!4sBBBB8s8s8sQB")
COUNTS = struct.Struct("!HH")


class Kind(IntEnum):
    """What a group frame says."""

    #: "I am here" (every HELLO_INTERVAL, and at once on a role change).
    HELLO = 1
    #: "I am leaving" (a clean stop): the others decide at once.
    BYE = 2
    #: The active's view of the MACs: local (its LAN port) and remote (its taps).
    MACS = 3
    #: A new active's MAC announcement: source = destination = the MAC announced,
    #: so the first bridge or switch learns where it lives and then drops it (the
    #: destination is on the port it came in by).  Never reaches another member.
    ANNOUNCE = 4


class Flag(IntFlag):
    """Flags of the sender's state."""

    NONE = 0
    #: The sender forwards between the LAN and the peers.
    ACTIVE = 1
    #: The sender has just started and is still listening (not a candidate yet).
    LISTENING = 2
    #: The sender has heard none of its peers (nothing through any tunnel) for
    #: ``election.WAN_HOLD``: its WAN is cut.  It ranks below every member that
    #: hears its peers (``bridger.ha.election``, rule 2).
    WAN_LOST = 4
    #: The sender heard a peer within ``election.WAN_FRESH``: proof, to an active
    #: that lost its WAN, that this member's WAN works now (election rule 4).
    WAN_FRESH = 8


#: Every flag this version knows; other bits are ignored on receipt.
KNOWN_FLAGS = Flag.ACTIVE | Flag.LISTENING | Flag.WAN_LOST | Flag.WAN_FRESH


class BadFrame(ValueError):
    """A frame that is not a well-formed, authentic group frame (a counted drop)."""


@dataclass(frozen=True)
class Message:
    kind: Kind
    flags: Flag
    priority: int
    site: bytes
    node: bytes
    nonce: bytes
    seq: int
    echo: tuple[bytes, ...]
    #: ``MACS`` only: the sender's local and remote MACs.
    local: tuple[bytes, ...] = ()
    remote: tuple[bytes, ...] = ()


def site_tag(site: str) -> bytes:
    return nacl.hash.blake2b(site.encode(), digest_size=8, encoder=nacl.encoding.RawEncoder)


def node_id(public_key: bytes) -> bytes:
    """A member's id on the wire: 8 bytes of BLAKE2b of its public key."""
    return nacl.hash.blake2b(public_key, digest_size=ID_LEN, person=b"bridger-ha-node",
                             encoder=nacl.encoding.RawEncoder)


def auth_key(group_key: bytes, site: str) -> bytes:
    """The frames' MAC key: the group key bound to the site name."""
    return nacl.hash.blake2b(site.encode(), key=group_key, digest_size=32,
                             person=b"bridger-ha-key", encoder=nacl.encoding.RawEncoder)


def _tag(key: bytes, data: bytes) -> bytes:
    return nacl.hash.blake2b(data, key=key, digest_size=TAG_LEN, encoder=nacl.encoding.RawEncoder)


def encode(msg: Message, key: bytes) -> bytes:
    """The payload after the EtherType, tag included."""
    if len(msg.echo) > MAX_ECHO:
        raise ValueError("too many echoed nonces")
    parts = [HEADER.pack(MAGIC, VERSION, msg.kind, int(msg.flags), msg.priority, msg.site,
                         msg.node, msg.nonce, msg.seq, len(msg.echo)), *msg.echo]
    if msg.kind == Kind.MACS:
        parts.append(COUNTS.pack(len(msg.local), len(msg.remote)))
        parts += [*msg.local, *msg.remote]
    body = b"".join(parts)
    return body + _tag(key, body)


def frame(src: bytes, payload: bytes, dst: bytes = GROUP_DST, ethertype: int = ETHERTYPE) -> bytes:
    """A whole Ethernet frame (padded to the 60-byte minimum)."""
    data = ETH.pack(dst, src, ethertype) + payload
    return data + bytes(max(0, 60 - len(data)))


def announcement(mac: bytes) -> bytes:
    """The frame that teaches bridges on its way that ``mac`` lives behind the sender."""
    return frame(mac, MAGIC + bytes([VERSION, Kind.ANNOUNCE]), dst=mac)


def peek_untrusted(payload: bytes) -> tuple[bytes, int]:
    """(site tag, kind) of a payload, before its tag is checked (to count drops by reason)."""
    if len(payload) < HEADER.size + TAG_LEN:
        raise BadFrame("short")
    magic, version, kind, _flags, _prio, site, *_rest = HEADER.unpack_from(payload)
    if magic != MAGIC or version != VERSION:
        raise BadFrame("not a group frame of this version")
    return site, kind


def decode_untrusted(payload: bytes, key: bytes) -> Message:
    """A payload (after the EtherType, Ethernet padding allowed) -> :class:`Message`.

    Raises only :class:`BadFrame` (short, unknown version or kind, bad tag)."""
    if len(payload) < HEADER.size + TAG_LEN:
        raise BadFrame("short")
    magic, version, kind, flags, prio, site, node, nonce, seq, n_echo = HEADER.unpack_from(payload)
    if magic != MAGIC or version != VERSION:
        raise BadFrame("not a group frame of this version")
    if n_echo > MAX_ECHO:
        raise BadFrame("too many echoes")
    end = HEADER.size + n_echo * NONCE_LEN
    local: tuple[bytes, ...] = ()
    remote: tuple[bytes, ...] = ()
    try:
        kind = Kind(kind)
    except ValueError:
        raise BadFrame("unknown kind") from None
    if kind == Kind.MACS:
        if len(payload) < end + COUNTS.size:
            raise BadFrame("short")
        n_local, n_remote = COUNTS.unpack_from(payload, end)
        macs_at = end + COUNTS.size
        end = macs_at + 6 * (n_local + n_remote)
        local = tuple(payload[macs_at + 6 * i: macs_at + 6 * i + 6] for i in range(n_local))
        remote = tuple(payload[macs_at + 6 * (n_local + i): macs_at + 6 * (n_local + i) + 6]
                       for i in range(n_remote))
    if len(payload) < end + TAG_LEN:
        raise BadFrame("short")
    # The tag is checked over exactly what the sender covered; Ethernet padding follows it.
    if not hmac.compare_digest(_tag(key, payload[:end]), payload[end:end + TAG_LEN]):
        raise BadFrame("bad tag")
    echo = tuple(payload[HEADER.size + NONCE_LEN * i: HEADER.size + NONCE_LEN * (i + 1)]
                 for i in range(n_echo))
    return Message(kind, Flag(flags) & KNOWN_FLAGS, prio, site, node, nonce, seq, echo, local,
                   remote)
