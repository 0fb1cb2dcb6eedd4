"""Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b handshake (the WireGuard construction,
with BLAKE2b in place of BLAKE2s).

Pure functions of their inputs: randomness (ephemeral keys) and the timestamp
are passed in, so fixed inputs give fixed bytes (tests/protocol/vectors.json).
Only PyNaCl primitives are used; HMAC is RFC 2104 over BLAKE2b as Noise's HKDF
specifies.  Failures raise :class:`HandshakeError` (a :class:`BadPacket`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import nacl.exceptions
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_generichash_blake2b_salt_personal,
    crypto_scalarmult,
    crypto_scalarmult_base,
)

from .constants import (
    BLOCK_LEN,
    CONSTRUCTION,
    HASH_LEN,
    IDENTIFIER,
    KEY_LEN,
    MAC_LEN,
)
from .messages import BadPacket, Initiation, Response

_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_NONCE_ZERO = bytes(12)
_ZERO_MAC = bytes(MAC_LEN)
_TAI64N = struct.Struct(">QI")
_TAI64_EPOCH = 1 << 62


class HandshakeError(BadPacket):
    """A handshake message failed authentication or validation."""


def hash_(data: bytes) -> bytes:
    """HASH: unkeyed BLAKE2b-512."""
    return crypto_generichash_blake2b_salt_personal(data, digest_size=HASH_LEN)


def mac(key: bytes, data: bytes) -> bytes:
    """MAC: keyed BLAKE2b with a 16-byte digest (mac1, mac2, cookies)."""
    return crypto_generichash_blake2b_salt_personal(data, digest_size=MAC_LEN, key=key)


def hmac(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2b per RFC 2104 (B = 128, L = 64)."""
    if len(key) > BLOCK_LEN:
        key = hash_(key)
    key = key.ljust(BLOCK_LEN, b"\0")
    inner = hash_(key.translate(_IPAD) + data)
    return hash_(key.translate(_OPAD) + inner)


def kdf(chaining_key: bytes, material: bytes, n: int) -> list[bytes]:
    """Noise HKDF: ``n`` 64-byte outputs from the chaining key and input material."""
    temp = hmac(chaining_key, material)
    out: list[bytes] = []
    prev = b""
    for i in range(1, n + 1):
        prev = hmac(temp, prev + bytes([i]))
        out.append(prev)
    return out


def dh(private: bytes, public: bytes) -> bytes:
    """X25519; a low-order peer point (all-zero result) is a handshake failure."""
    try:
        shared = crypto_scalarmult(private, public)
    except Exception as exc:  # libsodium refuses all-zero outputs
        raise HandshakeError("bad public key") from exc
    if shared == bytes(32):
        raise HandshakeError("low-order public key")
    return shared


def public_key(private: bytes) -> bytes:
    return crypto_scalarmult_base(private)


def aead_encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Handshake AEAD: ChaCha20-Poly1305 IETF, key truncated to 32 bytes, nonce 0."""
    return crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, aad, _NONCE_ZERO, key[:KEY_LEN])


def aead_decrypt(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return crypto_aead_chacha20poly1305_ietf_decrypt(
            ciphertext, aad, _NONCE_ZERO, key[:KEY_LEN]
        )
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        raise HandshakeError("handshake decryption failed") from exc


def tai64n(ns: int) -> bytes:
    """12-byte TAI64N label of ``ns`` nanoseconds since the Unix epoch (big endian)."""
    secs, nanos = divmod(ns, 1_000_000_000)
    return _TAI64N.pack(_TAI64_EPOCH + secs, nanos)


def _initial_state() -> tuple[bytes, bytes]:
    """(chaining key, hash) after protocol name and prologue (Noise 5.2/5.3)."""
    h = CONSTRUCTION.ljust(HASH_LEN, b"\0")
    return h, hash_(h + IDENTIFIER)


INITIAL_CHAINING_KEY, INITIAL_HASH = _initial_state()


@dataclass(frozen=True, slots=True)
class Identity:
    """This device's static key pair and the hash mixed with it once (device-wide)."""

    private: bytes
    public: bytes
    #: INITIAL_HASH mixed with our static key: the responder's starting hash.
    hash_as_responder: bytes

    @classmethod
    def create(cls, private: bytes) -> Identity:
        if len(private) != 32:
            raise ValueError("X25519 keys are 32 bytes")
        pub = public_key(private)
        return cls(private=private, public=pub, hash_as_responder=hash_(INITIAL_HASH + pub))


@dataclass(frozen=True, slots=True)
class PeerKeys:
    """One peer's static public key, the PSK and what is derived from them with
    our key once (static-static DH, the initiator's starting hash)."""

    peer_public: bytes
    psk: bytes
    static_static: bytes
    hash_as_initiator: bytes

    @classmethod
    def create(cls, ident: Identity, peer_public: bytes, psk: bytes | None) -> PeerKeys:
        if len(peer_public) != 32:
            raise ValueError("X25519 keys are 32 bytes")
        if psk is not None and len(psk) != 32:
            raise ValueError("pre-shared key is 32 bytes")
        return cls(
            peer_public=peer_public,
            psk=psk if psk is not None else bytes(32),
            static_static=dh(ident.private, peer_public),
            hash_as_initiator=hash_(INITIAL_HASH + peer_public),
        )


@dataclass(frozen=True, slots=True)
class InitiatorState:
    """What the initiator keeps between sending message 1 and receiving message 2."""

    local_index: int
    ephemeral_private: bytes
    chaining_key: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class ResponderState:
    """A consumed, authenticated initiation."""

    remote_index: int
    remote_ephemeral: bytes
    chaining_key: bytes
    hash: bytes
    timestamp: bytes


@dataclass(frozen=True, slots=True)
class SessionKeys:
    send: bytes
    receive: bytes


def create_initiation(
    ident: Identity, peer: PeerKeys, local_index: int, ephemeral_private: bytes, timestamp: bytes
) -> tuple[Initiation, InitiatorState]:
    """Message 1 with zero macs (cookie.py adds mac1/mac2)."""
    ck, h = INITIAL_CHAINING_KEY, peer.hash_as_initiator
    e_pub = public_key(ephemeral_private)
    (ck,) = kdf(ck, e_pub, 1)
    h = hash_(h + e_pub)
    ck, k = kdf(ck, dh(ephemeral_private, peer.peer_public), 2)
    enc_static = aead_encrypt(k, ident.public, h)
    h = hash_(h + enc_static)
    ck, k = kdf(ck, peer.static_static, 2)
    enc_ts = aead_encrypt(k, timestamp, h)
    h = hash_(h + enc_ts)
    msg = Initiation(local_index, e_pub, enc_static, enc_ts, _ZERO_MAC, _ZERO_MAC)
    return msg, InitiatorState(local_index, ephemeral_private, ck, h)


def decrypt_initiator_static(ident: Identity, msg: Initiation) -> tuple[bytes, bytes, bytes]:
    """First half of consuming message 1: the initiator's static public key (which
    selects the peer), with the chaining key and hash to continue from."""
    ck, h = INITIAL_CHAINING_KEY, ident.hash_as_responder
    (ck,) = kdf(ck, msg.ephemeral, 1)
    h = hash_(h + msg.ephemeral)
    ck, k = kdf(ck, dh(ident.private, msg.ephemeral), 2)
    peer_static = aead_decrypt(k, msg.encrypted_static, h)
    return peer_static, ck, h


def consume_initiation(
    peer: PeerKeys, msg: Initiation, chaining_key: bytes, hash_value: bytes
) -> ResponderState:
    """Second half: authenticate message 1 as coming from ``peer`` (whose static key
    :func:`decrypt_initiator_static` returned) and read its timestamp."""
    ck, h = chaining_key, hash_value
    h = hash_(h + msg.encrypted_static)
    ck, k = kdf(ck, peer.static_static, 2)
    timestamp = aead_decrypt(k, msg.encrypted_timestamp, h)
    h = hash_(h + msg.encrypted_timestamp)
    return ResponderState(msg.sender, msg.ephemeral, ck, h, timestamp)


def create_response(
    peer: PeerKeys, state: ResponderState, local_index: int, ephemeral_private: bytes
) -> tuple[Response, SessionKeys]:
    """Message 2 (zero macs) and the responder's transport keys."""
    ck, h = state.chaining_key, state.hash
    e_pub = public_key(ephemeral_private)
    (ck,) = kdf(ck, e_pub, 1)
    h = hash_(h + e_pub)
    (ck,) = kdf(ck, dh(ephemeral_private, state.remote_ephemeral), 1)
    (ck,) = kdf(ck, dh(ephemeral_private, peer.peer_public), 1)
    ck, tau, k = kdf(ck, peer.psk, 3)
    h = hash_(h + tau)
    enc_nothing = aead_encrypt(k, b"", h)
    t_initiator, t_responder = kdf(ck, b"", 2)
    msg = Response(local_index, state.remote_index, e_pub, enc_nothing, _ZERO_MAC, _ZERO_MAC)
    return msg, SessionKeys(send=t_responder[:KEY_LEN], receive=t_initiator[:KEY_LEN])


def consume_response(
    ident: Identity, peer: PeerKeys, state: InitiatorState, msg: Response
) -> SessionKeys:
    """Authenticate message 2 for our pending initiation; the initiator's keys."""
    ck, h = state.chaining_key, state.hash
    (ck,) = kdf(ck, msg.ephemeral, 1)
    h = hash_(h + msg.ephemeral)
    (ck,) = kdf(ck, dh(state.ephemeral_private, msg.ephemeral), 1)
    (ck,) = kdf(ck, dh(ident.private, msg.ephemeral), 1)
    ck, tau, k = kdf(ck, peer.psk, 3)
    h = hash_(h + tau)
    aead_decrypt(k, msg.encrypted_nothing, h)
    t_initiator, t_responder = kdf(ck, b"", 2)
    return SessionKeys(send=t_initiator[:KEY_LEN], receive=t_responder[:KEY_LEN])
