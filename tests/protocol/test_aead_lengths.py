"""Issue 12 item 8: a wrong key or nonce length never reaches libsodium's raw pointers.

The direct path hands ``bytes`` to ``crypto_aead_chacha20poly1305_ietf_*``,
which read 32 key and 12 nonce bytes whatever the object's length: a short key
was read past its end (garbage key, or a crash). Both paths now refuse it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bridger.protocol import aead

GOOD_KEY, GOOD_NONCE = bytes(range(32)), bytes(range(12))
SEALERS = [aead._seal_direct, aead._seal_public]
OPENERS = [aead._open_direct, aead._open_public]
BAD = [  # (nonce, key, message)
    (GOOD_NONCE, GOOD_KEY[:31], "key must be 32 bytes, not 31"),
    (GOOD_NONCE, GOOD_KEY + b"x", "key must be 32 bytes, not 33"),
    (GOOD_NONCE, b"", "key must be 32 bytes, not 0"),
    (GOOD_NONCE[:11], GOOD_KEY, "nonce must be 12 bytes, not 11"),
    (GOOD_NONCE + b"x", GOOD_KEY, "nonce must be 12 bytes, not 13"),
]


@pytest.mark.parametrize("seal", SEALERS)
@pytest.mark.parametrize(("nonce", "key", "message"), BAD, ids=[m for _, _, m in BAD])
def test_seal_refuses_wrong_lengths(seal: Callable[..., bytes], nonce: bytes, key: bytes,
                                    message: str) -> None:
    with pytest.raises(ValueError, match=message):
        seal(4, 1, 0, b"frame", nonce, key)


@pytest.mark.parametrize("open_", OPENERS)
@pytest.mark.parametrize(("nonce", "key", "message"), BAD, ids=[m for _, _, m in BAD])
def test_open_refuses_wrong_lengths(open_: Callable[..., Any], nonce: bytes, key: bytes,
                                    message: str) -> None:
    datagram = aead._seal_direct(4, 1, 0, b"frame", GOOD_NONCE, GOOD_KEY)
    with pytest.raises(ValueError, match=message):
        open_(datagram, nonce, key)
