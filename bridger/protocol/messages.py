"""Wire formats: outer UDP messages and the inner (encrypted) payload.

Every format is a module-level ``struct.Struct``, a frozen record and an
encode/decode pair.  Decoders of network bytes end in ``_untrusted`` and raise
only :class:`BadPacket`.  All integers are little endian.  The first 32-bit
word of every outer message is its type (the three reserved bytes must be zero),
so one integer compare checks type and reserved bytes together.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

from .constants import AEAD_TAG_LEN, MAC_LEN, TRANSPORT_HEADER_LEN


class BadPacket(Exception):
    """Raised by ``*_untrusted`` parsers; the caller turns it into a counted drop."""


class MessageType(IntEnum):
    """Outer message types (first byte, followed by three zero bytes)."""

    #: Noise IK first message: initiator -> responder, 148 bytes.
    HANDSHAKE_INITIATION = 1
    #: Noise IK second message: responder -> initiator, 92 bytes.
    HANDSHAKE_RESPONSE = 2
    #: Cookie for mac2 under load, 64 bytes (WireGuard section 5.4.7).
    COOKIE_REPLY = 3
    #: Encrypted payload: 16-byte header + ciphertext + 16-byte tag.
    TRANSPORT = 4


class InnerType(IntEnum):
    """First plaintext byte of a transport message; empty plaintext is a keepalive."""

    #: A whole Ethernet frame follows.
    FRAME = 1
    #: A fragment of a frame: FRAGMENT_HEADER then a slice of the frame.
    FRAGMENT = 2
    #: Path-MTU probe: PROBE_HEADER then zero padding to the probed size.
    PROBE = 3
    #: Acknowledges a probe: probe id and the datagram size received.
    PROBE_ACK = 4
    #: A whole Ethernet frame whose L4 checksum is partial (pseudo-header sum
    #: only): FRAME_CSUM_HEADER (csum_start, csum_offset) then the frame.  The
    #: receiver completes the checksum over frame[csum_start:] and stores it at
    #: csum_start + csum_offset (virtio-net NEEDS_CSUM semantics).
    FRAME_CSUM = 5
    #: Endpoint introduction (issue 23): INTRODUCE then nothing.  "The peer with
    #: this public key is reachable at this address, as I see it."  A hint
    #: only: the handshake with the address authenticates the peer.
    INTRODUCE = 6
    #: To a relay: RELAY_HEADER (the public key of one of the relay's peers) then
    #: a whole outer datagram (sealed end to end for that peer) to pass on.
    RELAY = 7
    #: From a relay: RELAY_HEADER (the public key of the peer it came from) then
    #: the outer datagram that peer sent through the relay.
    RELAYED = 8
    #: Path check on a candidate direct address: PATH_PING (an id), answered
    #: with PATH_PONG (the same id) to the address it came from.  Authenticated
    #: like any transport message; a pong proves both directions of that path.
    PATH_PING = 9
    PATH_PONG = 10


INITIATION = struct.Struct("<II32s48s28s16s16s")
RESPONSE = struct.Struct("<III32s16s16s16s")
COOKIE_REPLY = struct.Struct("<II24s32s")
TRANSPORT_HEADER = struct.Struct("<IIQ")
FRAGMENT_HEADER = struct.Struct("<BIBBH")
PROBE_HEADER = struct.Struct("<BI")
PROBE_ACK = struct.Struct("<BIH")
FRAME_CSUM_HEADER = struct.Struct("<BHH")
#: INTRODUCE: type, address family (4 or 6), port, address (IPv4 in the first
#: 4 bytes, the rest zero), the introduced peer's public key.
INTRODUCE = struct.Struct("<BBH16s32s")
#: RELAY / RELAYED: type, the far peer's public key; the datagram follows.
RELAY_HEADER = struct.Struct("<B32s")
#: PATH_PING / PATH_PONG: type, ping id.
PATH_CHECK = struct.Struct("<BQ")
#: ChaCha20-Poly1305 IETF nonce for transport: 4 zero bytes + 64-bit counter.
TRANSPORT_NONCE = struct.Struct("<4xQ")
U32 = struct.Struct("<I")

INITIATION_LEN = INITIATION.size  # 148
RESPONSE_LEN = RESPONSE.size  # 92
COOKIE_REPLY_LEN = COOKIE_REPLY.size  # 64
INITIATION_MAC1_OFFSET = INITIATION_LEN - 2 * MAC_LEN
RESPONSE_MAC1_OFFSET = RESPONSE_LEN - 2 * MAC_LEN
FRAGMENT_HEADER_LEN = FRAGMENT_HEADER.size  # 9
FRAME_CSUM_HEADER_LEN = FRAME_CSUM_HEADER.size  # 5
#: Smallest csum_start: after an Ethernet header.
MIN_CSUM_START = 14
INTRODUCE_LEN = INTRODUCE.size  # 52
RELAY_HEADER_LEN = RELAY_HEADER.size  # 33
MIN_TRANSPORT_LEN = TRANSPORT_HEADER_LEN + AEAD_TAG_LEN
MAX_UDP_PAYLOAD = 65507


@dataclass(frozen=True, slots=True)
class Initiation:
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes

    def encode(self) -> bytes:
        return INITIATION.pack(
            MessageType.HANDSHAKE_INITIATION,
            self.sender,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class Response:
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes

    def encode(self) -> bytes:
        return RESPONSE.pack(
            MessageType.HANDSHAKE_RESPONSE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.encrypted_nothing,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    def encode(self) -> bytes:
        return COOKIE_REPLY.pack(
            MessageType.COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie
        )


@dataclass(frozen=True, slots=True)
class Fragment:
    frame_id: int
    index: int
    count: int
    total_len: int
    data: bytes


def message_type_untrusted(data: bytes) -> MessageType:
    """The type of an outer message; BadPacket on short input or nonzero reserved bytes."""
    if len(data) < 4:
        raise BadPacket("short datagram")
    (word,) = U32.unpack_from(data, 0)
    try:
        return MessageType(word)
    except ValueError:
        raise BadPacket("unknown message type") from None


def decode_initiation_untrusted(data: bytes) -> Initiation:
    if len(data) != INITIATION_LEN:
        raise BadPacket("bad initiation length")
    word, sender, eph, static, ts, mac1, mac2 = INITIATION.unpack(data)
    if word != MessageType.HANDSHAKE_INITIATION:
        raise BadPacket("not an initiation")
    return Initiation(sender, eph, static, ts, mac1, mac2)


def decode_response_untrusted(data: bytes) -> Response:
    if len(data) != RESPONSE_LEN:
        raise BadPacket("bad response length")
    word, sender, receiver, eph, nothing, mac1, mac2 = RESPONSE.unpack(data)
    if word != MessageType.HANDSHAKE_RESPONSE:
        raise BadPacket("not a response")
    return Response(sender, receiver, eph, nothing, mac1, mac2)


def decode_cookie_reply_untrusted(data: bytes) -> CookieReply:
    if len(data) != COOKIE_REPLY_LEN:
        raise BadPacket("bad cookie reply length")
    word, receiver, nonce, enc = COOKIE_REPLY.unpack(data)
    if word != MessageType.COOKIE_REPLY:
        raise BadPacket("not a cookie reply")
    return CookieReply(receiver, nonce, enc)


def decode_transport_header_untrusted(data: bytes) -> tuple[int, int]:
    """(receiver index, counter) of a transport message."""
    if len(data) < MIN_TRANSPORT_LEN:
        raise BadPacket("short transport message")
    word, receiver, counter = TRANSPORT_HEADER.unpack_from(data, 0)
    if word != MessageType.TRANSPORT:
        raise BadPacket("not a transport message")
    return receiver, counter


def encode_transport(receiver: int, counter: int, ciphertext: bytes) -> bytes:
    return TRANSPORT_HEADER.pack(MessageType.TRANSPORT, receiver, counter) + ciphertext


def encode_fragment(frag: Fragment) -> bytes:
    return (
        FRAGMENT_HEADER.pack(
            InnerType.FRAGMENT, frag.frame_id, frag.index, frag.count, frag.total_len
        )
        + frag.data
    )


def decode_fragment_untrusted(plaintext: bytes) -> Fragment:
    if len(plaintext) <= FRAGMENT_HEADER_LEN:
        raise BadPacket("short fragment")
    _, frame_id, index, count, total = FRAGMENT_HEADER.unpack_from(plaintext, 0)
    if count < 2 or index >= count or total == 0:
        raise BadPacket("bad fragment header")
    return Fragment(frame_id, index, count, total, plaintext[FRAGMENT_HEADER_LEN:])


def encode_probe(probe_id: int, plaintext_len: int) -> bytes:
    """A probe padded with zeros so that its plaintext is ``plaintext_len`` bytes."""
    head = PROBE_HEADER.pack(InnerType.PROBE, probe_id)
    return head + bytes(max(0, plaintext_len - len(head)))


def decode_probe_untrusted(plaintext: bytes) -> int:
    if len(plaintext) < PROBE_HEADER.size:
        raise BadPacket("short probe")
    return int(PROBE_HEADER.unpack_from(plaintext, 0)[1])


def encode_probe_ack(probe_id: int, size: int) -> bytes:
    return PROBE_ACK.pack(InnerType.PROBE_ACK, probe_id, size)


def decode_probe_ack_untrusted(plaintext: bytes) -> tuple[int, int]:
    if len(plaintext) != PROBE_ACK.size:
        raise BadPacket("bad probe ack")
    _, probe_id, size = PROBE_ACK.unpack(plaintext)
    return int(probe_id), int(size)


def encode_frame_csum(frame: bytes, csum_start: int, csum_offset: int) -> bytes:
    return FRAME_CSUM_HEADER.pack(InnerType.FRAME_CSUM, csum_start, csum_offset) + frame


def decode_frame_csum_untrusted(plaintext: bytes) -> tuple[bytes, int, int]:
    """(frame, csum_start, csum_offset); the checksum field must lie inside the frame."""
    if len(plaintext) <= FRAME_CSUM_HEADER_LEN:
        raise BadPacket("short frame")
    _, start, offset = FRAME_CSUM_HEADER.unpack_from(plaintext, 0)
    frame = plaintext[FRAME_CSUM_HEADER_LEN:]
    if start < MIN_CSUM_START or start + offset + 2 > len(frame):
        raise BadPacket("checksum position outside the frame")
    return frame, int(start), int(offset)


# --- NAT traversal (issue 23): introductions, relaying, path checks ---------------


@dataclass(frozen=True, slots=True)
class Introduction:
    """``public_key``'s peer is at ``endpoint`` as the introducer sees it."""

    public_key: bytes
    endpoint: tuple[str, int]


def encode_introduce(public_key: bytes, endpoint: tuple[str, int]) -> bytes:
    """ValueError for an address that is no plain IPv4/IPv6 literal (names,
    scoped link-local addresses: nothing another site could use)."""
    host, port = endpoint
    address = ipaddress.ip_address(host)
    if "%" in host or not 0 < port < 65536 or len(public_key) != 32:
        raise ValueError("bad introduction")
    packed = address.packed
    return INTRODUCE.pack(InnerType.INTRODUCE, address.version, port,
                          packed + bytes(16 - len(packed)), public_key)


def decode_introduce_untrusted(plaintext: bytes) -> Introduction:
    if len(plaintext) != INTRODUCE_LEN:
        raise BadPacket("bad introduction length")
    _, family, port, raw, key = INTRODUCE.unpack(plaintext)
    if port == 0:
        raise BadPacket("introduction without a port")
    if family == 4:
        if any(raw[4:]):
            raise BadPacket("IPv4 introduction with trailing bytes")
        host = str(ipaddress.IPv4Address(raw[:4]))
    elif family == 6:
        address = ipaddress.IPv6Address(raw)
        mapped = address.ipv4_mapped
        host = str(mapped) if mapped is not None else str(address)
    else:
        raise BadPacket("unknown address family")
    return Introduction(key, (host, int(port)))


def encode_relay(kind: InnerType, public_key: bytes, datagram: bytes) -> bytes:
    """RELAY (to the relay) or RELAYED (from it) around one outer datagram."""
    return RELAY_HEADER.pack(kind, public_key) + datagram


def decode_relay_untrusted(plaintext: bytes) -> tuple[bytes, bytes]:
    """(public key, datagram) of a RELAY or RELAYED message; the datagram must
    at least look like an outer message (its type word)."""
    if len(plaintext) < RELAY_HEADER_LEN + 4:
        raise BadPacket("short relay message")
    _, key = RELAY_HEADER.unpack_from(plaintext, 0)
    datagram = plaintext[RELAY_HEADER_LEN:]
    message_type_untrusted(datagram)
    return key, datagram


def encode_path_check(kind: InnerType, ping_id: int) -> bytes:
    return PATH_CHECK.pack(kind, ping_id)


def decode_path_check_untrusted(plaintext: bytes) -> int:
    if len(plaintext) != PATH_CHECK.size:
        raise BadPacket("bad path check length")
    return int(PATH_CHECK.unpack(plaintext)[1])
