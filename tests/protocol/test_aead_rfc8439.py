"""RFC 8439's AEAD_CHACHA20_POLY1305 vectors through bridger's seal and open.

Section 2.8.2 (the "sunscreen" example) and Appendix A.5 (the decryption
example), copied from the RFC, run through

* aead.py's seal_transport / open_transport, both the direct libsodium path
  and the PyNaCl-wrapper fallback, with the transport header cut off; and
* bn_session.c's AEAD step (bn_aead_seal / bn_aead_open, exposed as
  ``lane.aead_seal`` / ``lane.aead_open``), the very call Session.seal / open
  make.

bridger's transport AEAD differs from the RFC's examples in two inputs: it has
no associated data (the RFC's have 12 bytes) and its nonce is 4 zero bytes and
the little-endian counter (2.8.2's starts 07 00 00 00; A.5's fits: counter
0x0807060504030201).  So seal/open take an ``aad`` (Python; transport callers
never pass one) and the C step takes nonce and aad; tests below tie the
RFC-checked step to the transport datagram (same bytes with empty aad and the
counter nonce).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pytest

from bridger.native import lane
from bridger.protocol import aead
from bridger.protocol.messages import TRANSPORT_HEADER, TRANSPORT_NONCE, MessageType

TRANSPORT = int(MessageType.TRANSPORT)
HEADER = TRANSPORT_HEADER.size
needs_lane = pytest.mark.skipif(lane is None, reason="native extension not built")


class Vector(NamedTuple):
    key: bytes
    nonce: bytes
    aad: bytes
    plaintext: bytes
    ciphertext: bytes
    tag: bytes


VECTORS = {
    "rfc8439-2.8.2": Vector(
        key=bytes.fromhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"),
        nonce=bytes.fromhex("070000004041424344454647"),
        aad=bytes.fromhex("50515253c0c1c2c3c4c5c6c7"),
        plaintext=b"Ladies and Gentlemen of the class of '99: If I could offer you only one"
        b" tip for the future, sunscreen would be it.",
        ciphertext=bytes.fromhex(
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
            "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
            "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
            "3ff4def08e4b7a9de576d26586cec64b6116"
        ),
        tag=bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691"),
    ),
    "rfc8439-A.5": Vector(
        key=bytes.fromhex("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0"),
        nonce=bytes.fromhex("000000000102030405060708"),
        aad=bytes.fromhex("f33388860000000000004e91"),
        plaintext=bytes.fromhex(
            "496e7465726e65742d4472616674732061726520647261667420646f63756d65"
            "6e74732076616c696420666f722061206d6178696d756d206f6620736978206d"
            "6f6e74687320616e64206d617920626520757064617465642c207265706c6163"
            "65642c206f72206f62736f6c65746564206279206f7468657220646f63756d65"
            "6e747320617420616e792074696d652e20497420697320696e617070726f7072"
            "6961746520746f2075736520496e7465726e65742d4472616674732061732072"
            "65666572656e6365206d6174657269616c206f7220746f206369746520746865"
            "6d206f74686572207468616e206173202fe2809c776f726b20696e2070726f67"
            "726573732e2fe2809d"
        ),
        ciphertext=bytes.fromhex(
            "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2"
            "4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf"
            "332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855"
            "9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4"
            "b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e"
            "af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a"
            "0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10"
            "49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29"
            "a6ad5cb4022b02709b"
        ),
        tag=bytes.fromhex("eead9d67890cbb22392336fea1851f38"),
    ),
}

Seal = Callable[..., bytes]
Open = Callable[..., "bytes | None"]
PYTHON_PATHS: dict[str, tuple[Seal, Open]] = {"public": (aead._seal_public, aead._open_public)}
if aead.lib is not None:
    PYTHON_PATHS["direct"] = (aead._seal_direct, aead._open_direct)


def tampered(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


@pytest.mark.parametrize("path", sorted(PYTHON_PATHS))
@pytest.mark.parametrize("name", sorted(VECTORS))
def test_python_seal_open(name: str, path: str) -> None:
    v = VECTORS[name]
    seal, open_ = PYTHON_PATHS[path]
    datagram = seal(TRANSPORT, 9, 5, v.plaintext, v.nonce, v.key, v.aad)
    assert datagram[:HEADER] == TRANSPORT_HEADER.pack(TRANSPORT, 9, 5)
    assert datagram[HEADER:] == v.ciphertext + v.tag
    assert open_(datagram, v.nonce, v.key, v.aad) == v.plaintext
    # any flipped bit of ciphertext, tag or associated data, or no aad at all, fails
    assert open_(tampered(datagram, HEADER), v.nonce, v.key, v.aad) is None
    assert open_(tampered(datagram, len(datagram) - 1), v.nonce, v.key, v.aad) is None
    assert open_(datagram, v.nonce, v.key, tampered(v.aad, 0)) is None
    assert open_(datagram, v.nonce, v.key) is None


@needs_lane
@pytest.mark.parametrize("name", sorted(VECTORS))
def test_native_seal_open(name: str) -> None:
    assert lane is not None
    v = VECTORS[name]
    sealed = lane.aead_seal(v.key, v.nonce, v.aad, v.plaintext)
    assert sealed == v.ciphertext + v.tag
    assert lane.aead_open(v.key, v.nonce, v.aad, sealed) == v.plaintext
    assert lane.aead_open(v.key, v.nonce, v.aad, tampered(sealed, 0)) is None
    assert lane.aead_open(v.key, v.nonce, v.aad, tampered(sealed, len(sealed) - 1)) is None
    assert lane.aead_open(v.key, v.nonce, tampered(v.aad, 0), sealed) is None
    assert lane.aead_open(v.key, v.nonce, b"", sealed) is None


def test_a5_nonce_is_a_transport_counter() -> None:
    """A.5's nonce is bridger's transport nonce for counter 0x0807060504030201."""
    assert TRANSPORT_NONCE.pack(0x0807060504030201) == VECTORS["rfc8439-A.5"].nonce


@needs_lane
@pytest.mark.parametrize("name", sorted(VECTORS))
def test_session_seal_is_the_checked_step(name: str) -> None:
    """Session.seal / open (bn_seal / bn_open) = header + the RFC-checked AEAD step with
    the counter nonce and no associated data, and equal to the Python datagram."""
    assert lane is not None
    v = VECTORS[name]
    counter = 0x0807060504030201
    s = lane.Session(1, 0x01020304, v.key, v.key, 0.0)
    datagram = s.seal(counter, v.plaintext)
    nonce = TRANSPORT_NONCE.pack(counter)
    assert datagram[:HEADER] == TRANSPORT_HEADER.pack(TRANSPORT, 0x01020304, counter)
    assert datagram[HEADER:] == lane.aead_seal(v.key, nonce, b"", v.plaintext)
    assert datagram == aead.seal_transport(TRANSPORT, 0x01020304, counter, v.plaintext, nonce,
                                           v.key)
    assert s.open(datagram) == v.plaintext


@needs_lane
def test_native_aead_argument_checks() -> None:
    assert lane is not None
    with pytest.raises(ValueError):
        lane.aead_seal(bytes(31), bytes(12), b"", b"")
    with pytest.raises(ValueError):
        lane.aead_open(bytes(32), bytes(11), b"", bytes(16))
    with pytest.raises(TypeError):
        lane.aead_seal(bytes(32), bytes(12), b"")
    assert lane.aead_open(bytes(32), bytes(12), b"", bytes(15)) is None
