"""The fast libsodium path and the public-PyNaCl fallback seal and open identically."""

from __future__ import annotations

import pytest

from bridger.protocol import aead


@pytest.mark.parametrize("size", [0, 1, 64, 1435, 9000])
def test_direct_and_public_paths_agree(size: int) -> None:
    key, nonce = bytes(range(32)), bytes(range(12))
    plaintext = bytes(i % 251 for i in range(size))
    direct = aead._seal_direct(4, 0x01020304, 7, plaintext, nonce, key)
    public = aead._seal_public(4, 0x01020304, 7, plaintext, nonce, key)
    assert direct == public
    assert aead._open_direct(direct, nonce, key) == plaintext
    assert aead._open_public(direct, nonce, key) == plaintext
    flipped = bytearray(direct)
    flipped[-1] ^= 1
    assert aead._open_direct(bytes(flipped), nonce, key) is None
    assert aead._open_public(bytes(flipped), nonce, key) is None
    assert aead._open_public(direct[:20], nonce, key) is None
