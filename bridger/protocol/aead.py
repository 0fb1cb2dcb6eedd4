"""ChaCha20-Poly1305 (IETF) transport sealing through PyNaCl's libsodium binding.

PyNaCl's public ``crypto_aead_chacha20poly1305_ietf_*`` wrappers validate
their arguments with eagerly formatted messages and copy through temporary
cffi buffers: about 9 us of Python per call, three times the cost of the
cipher itself on a 1400-byte frame.  Here the same libsodium functions (the
``nacl._sodium`` module PyNaCl itself calls, initialised by importing
``nacl.bindings``) write straight into the datagram buffer.  libsodium reads
exactly 32 key bytes and 12 nonce bytes through raw pointers, so a shorter
key or nonce would be read past its end: both lengths are checked first (one
``len`` each) and a wrong one is a ValueError.
"""

from __future__ import annotations

import nacl.bindings  # runs sodium_init: picks the SIMD implementations
import nacl.exceptions

from .messages import TRANSPORT_HEADER

try:
    from nacl._sodium import ffi, lib
except ImportError:  # a PyNaCl without that module: use its public wrappers (slower)
    ffi = lib = None

if lib is not None:
    _encrypt = lib.crypto_aead_chacha20poly1305_ietf_encrypt
    _decrypt = lib.crypto_aead_chacha20poly1305_ietf_decrypt
    _from_buffer = ffi.from_buffer
    _NULL = ffi.NULL
_pack_header_into = TRANSPORT_HEADER.pack_into
_HEADER_LEN = TRANSPORT_HEADER.size
TAG_LEN = 16
KEY_LEN = 32  # crypto_aead_chacha20poly1305_ietf_KEYBYTES
NONCE_LEN = 12  # crypto_aead_chacha20poly1305_ietf_NPUBBYTES


def _check(nonce: bytes, key: bytes) -> None:
    if len(key) != KEY_LEN:
        raise ValueError(f"AEAD key must be {KEY_LEN} bytes, not {len(key)}")
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"AEAD nonce must be {NONCE_LEN} bytes, not {len(nonce)}")


def _seal_direct(word: int, receiver: int, counter: int, plaintext: bytes, nonce: bytes,
                 key: bytes, aad: bytes = b"") -> bytes:
    """A whole transport datagram: header, then ``plaintext`` sealed under ``key``.
    The transport has no associated data; ``aad`` is there for RFC 8439's vectors."""
    _check(nonce, key)
    n = len(plaintext)
    buf = bytearray(_HEADER_LEN + n + TAG_LEN)
    _pack_header_into(buf, 0, word, receiver, counter)
    _encrypt(_from_buffer(buf) + _HEADER_LEN, _NULL, plaintext, n, aad, len(aad), _NULL, nonce,
             key)
    return bytes(buf)


def _open_direct(datagram: bytes, nonce: bytes, key: bytes, aad: bytes = b"") -> bytes | None:
    """The plaintext of a transport datagram, or None if authentication fails."""
    _check(nonce, key)
    clen = len(datagram) - _HEADER_LEN
    if clen < TAG_LEN:
        return None
    out = bytearray(clen - TAG_LEN)
    src = _from_buffer(datagram) + _HEADER_LEN
    if _decrypt(_from_buffer(out), _NULL, _NULL, src, clen, aad, len(aad), nonce, key) != 0:
        return None
    return bytes(out)


def _seal_public(word: int, receiver: int, counter: int, plaintext: bytes, nonce: bytes,
                 key: bytes, aad: bytes = b"") -> bytes:
    _check(nonce, key)
    header = TRANSPORT_HEADER.pack(word, receiver, counter)
    return header + nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        plaintext, aad or None, nonce, key
    )


def _open_public(datagram: bytes, nonce: bytes, key: bytes, aad: bytes = b"") -> bytes | None:
    _check(nonce, key)
    if len(datagram) - _HEADER_LEN < TAG_LEN:
        return None
    try:
        return nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
            bytes(datagram[_HEADER_LEN:]), aad or None, nonce, key
        )
    except nacl.exceptions.CryptoError:
        return None


seal_transport = _seal_direct if lib is not None else _seal_public
open_transport = _open_direct if lib is not None else _open_public
