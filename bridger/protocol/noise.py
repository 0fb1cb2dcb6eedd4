"""Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b handshake (the WireGuard construction,
with BLAKE2b in place of BLAKE2s).

Pure functions of their inputs: randomness (ephemeral keys) and the timestamp
are passed in, so fixed inputs give fixed bytes (tests/protocol/vectors.json).
Only PyNaCl primitives are used; HMAC is RFC 2104 over BLAKE2b as Noise's HKDF
specifies.  Failures raise :class:`HandshakeError` (a :class:`BadPacket`).

The hash and the protocol name and prologue a handshake starts from are a
:class:`Suite`; bridger runs only :data:`BRIDGER`.  The functions take it as a
keyword so the very same code can be run with BLAKE2s, plain Noise's protocol
name and a foreign prologue against published Noise test vectors
(tests/protocol/test_noise_vectors.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
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


@dataclass(frozen=True, slots=True)
class Suite:
    """A Noise hash (HASH, HMAC, HKDF) and the state after the protocol name and
    prologue (Noise sections 4.3, 5.2, 5.3)."""

    hash: Callable[[bytes], bytes]
    block_len: int
    #: ck and h after InitializeSymmetric(protocol_name) and MixHash(prologue).
    chaining_key: bytes
    initial_hash: bytes

    @classmethod
    def create(cls, hash: Callable[[bytes], bytes], hash_len: int, block_len: int,
               protocol_name: bytes, prologue: bytes) -> Suite:
        """A name of at most ``hash_len`` bytes is zero-padded, a longer one hashed."""
        if len(protocol_name) <= hash_len:
            h = protocol_name.ljust(hash_len, b"\0")
        else:
            h = hash(protocol_name)
        return cls(hash, block_len, h, hash(h + prologue))

    def hmac(self, key: bytes, data: bytes) -> bytes:
        """HMAC per RFC 2104 over this suite's hash."""
        if len(key) > self.block_len:
            key = self.hash(key)
        key = key.ljust(self.block_len, b"\0")
        inner = self.hash(key.translate(_IPAD) + data)
        return self.hash(key.translate(_OPAD) + inner)

    def kdf(self, chaining_key: bytes, material: bytes, n: int) -> list[bytes]:
        """Noise HKDF: ``n`` hash-length outputs from the chaining key and input material."""
        temp = self.hmac(chaining_key, material)
        out: list[bytes] = []
        prev = b""
        for i in range(1, n + 1):
            prev = self.hmac(temp, prev + bytes([i]))
            out.append(prev)
        return out


#: bridger's handshake: BLAKE2b-512 (HMAC block 128), CONSTRUCTION, IDENTIFIER.
BRIDGER = Suite.create(hash_, HASH_LEN, BLOCK_LEN, CONSTRUCTION, IDENTIFIER)
INITIAL_CHAINING_KEY, INITIAL_HASH = BRIDGER.chaining_key, BRIDGER.initial_hash
#: HMAC-BLAKE2b (B = 128, L = 64) and the Noise HKDF over it.
hmac = BRIDGER.hmac
kdf = BRIDGER.kdf


@dataclass(frozen=True, slots=True)
class Identity:
    """This device's static key pair and the hash mixed with it once (device-wide)."""

    private: bytes
    public: bytes
    #: INITIAL_HASH mixed with our static key: the responder's starting hash.
    hash_as_responder: bytes

    @classmethod
    def create(cls, private: bytes, *, suite: Suite = BRIDGER) -> Identity:
        if len(private) != 32:
            raise ValueError("X25519 keys are 32 bytes")
        pub = public_key(private)
        return cls(private=private, public=pub,
                   hash_as_responder=suite.hash(suite.initial_hash + pub))


@dataclass(frozen=True, slots=True)
class PeerKeys:
    """One peer's static public key, the PSK and what is derived from them with
    our key once (static-static DH, the initiator's starting hash)."""

    peer_public: bytes
    psk: bytes
    static_static: bytes
    hash_as_initiator: bytes

    @classmethod
    def create(cls, ident: Identity, peer_public: bytes, psk: bytes | None, *,
               suite: Suite = BRIDGER) -> PeerKeys:
        if len(peer_public) != 32:
            raise ValueError("X25519 keys are 32 bytes")
        if psk is not None and len(psk) != 32:
            raise ValueError("pre-shared key is 32 bytes")
        return cls(
            peer_public=peer_public,
            psk=psk if psk is not None else bytes(32),
            static_static=dh(ident.private, peer_public),
            hash_as_initiator=suite.hash(suite.initial_hash + peer_public),
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
    ident: Identity, peer: PeerKeys, local_index: int, ephemeral_private: bytes, timestamp: bytes,
    *, suite: Suite = BRIDGER,
) -> tuple[Initiation, InitiatorState]:
    """Message 1 with zero macs (cookie.py adds mac1/mac2); ``timestamp`` is its
    Noise payload."""
    hash_, kdf = suite.hash, suite.kdf
    ck, h = suite.chaining_key, peer.hash_as_initiator
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


def decrypt_initiator_static(
    ident: Identity, msg: Initiation, *, suite: Suite = BRIDGER
) -> tuple[bytes, bytes, bytes]:
    """First half of consuming message 1: the initiator's static public key (which
    selects the peer), with the chaining key and hash to continue from."""
    hash_, kdf = suite.hash, suite.kdf
    ck, h = suite.chaining_key, ident.hash_as_responder
    (ck,) = kdf(ck, msg.ephemeral, 1)
    h = hash_(h + msg.ephemeral)
    ck, k = kdf(ck, dh(ident.private, msg.ephemeral), 2)
    peer_static = aead_decrypt(k, msg.encrypted_static, h)
    return peer_static, ck, h


def consume_initiation(
    peer: PeerKeys, msg: Initiation, chaining_key: bytes, hash_value: bytes, *,
    suite: Suite = BRIDGER,
) -> ResponderState:
    """Second half: authenticate message 1 as coming from ``peer`` (whose static key
    :func:`decrypt_initiator_static` returned) and read its timestamp."""
    hash_, kdf = suite.hash, suite.kdf
    ck, h = chaining_key, hash_value
    h = hash_(h + msg.encrypted_static)
    ck, k = kdf(ck, peer.static_static, 2)
    timestamp = aead_decrypt(k, msg.encrypted_timestamp, h)
    h = hash_(h + msg.encrypted_timestamp)
    return ResponderState(msg.sender, msg.ephemeral, ck, h, timestamp)


def create_response(
    peer: PeerKeys, state: ResponderState, local_index: int, ephemeral_private: bytes, *,
    payload: bytes = b"", suite: Suite = BRIDGER,
) -> tuple[Response, SessionKeys]:
    """Message 2 (zero macs) and the responder's transport keys.  bridger's
    message 2 has an empty Noise payload; a test passes another to reproduce a
    Noise vector."""
    hash_, kdf = suite.hash, suite.kdf
    ck, h = state.chaining_key, state.hash
    e_pub = public_key(ephemeral_private)
    (ck,) = kdf(ck, e_pub, 1)
    h = hash_(h + e_pub)
    (ck,) = kdf(ck, dh(ephemeral_private, state.remote_ephemeral), 1)
    (ck,) = kdf(ck, dh(ephemeral_private, peer.peer_public), 1)
    ck, tau, k = kdf(ck, peer.psk, 3)
    h = hash_(h + tau)
    enc_nothing = aead_encrypt(k, payload, h)
    t_initiator, t_responder = kdf(ck, b"", 2)
    msg = Response(local_index, state.remote_index, e_pub, enc_nothing, _ZERO_MAC, _ZERO_MAC)
    return msg, SessionKeys(send=t_responder[:KEY_LEN], receive=t_initiator[:KEY_LEN])


def consume_response(
    ident: Identity, peer: PeerKeys, state: InitiatorState, msg: Response, *,
    suite: Suite = BRIDGER,
) -> SessionKeys:
    """Authenticate message 2 for our pending initiation; the initiator's keys."""
    hash_, kdf = suite.hash, suite.kdf
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
