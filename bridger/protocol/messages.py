"""Wire formats: outer UDP messages and the inner (encrypted) payload.

Every format is a module-level ``struct.Struct``, a frozen record and an
encode/decode pair.  Decoders of network bytes end in ``_untrusted`` and raise
only :class:`BadPacket`.  All integers are little endian.  The first 32-bit
word of every outer message is its type (the three reserved bytes must be zero),
so one integer compare checks type and reserved bytes together.
"""

from __future__ import annotations

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


INITIATION = struct.Struct("<II32s48s28s16s16s")
RESPONSE = struct.Struct("<III32s16s16s16s")
COOKIE_REPLY = struct.Struct("<II24s32s")
TRANSPORT_HEADER = struct.Struct("<IIQ")
FRAGMENT_HEADER = struct.Struct("<BIBBH")
PROBE_HEADER = struct.Struct("<BI")
PROBE_ACK = struct.Struct("<BIH")
FRAME_CSUM_HEADER = struct.Struct("<BHH")
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
