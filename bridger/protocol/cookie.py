"""DoS defences for handshake messages (WireGuard section 5.4.4-5.4.7).

* mac1 = MAC(HASH(LABEL_MAC1 || responder static public), msg[:mac1]) — checked
  before any Diffie-Hellman; a sender that does not know our public key gets
  no work and no answer.
* Under load, a message must also carry mac2 = MAC(cookie, msg[:mac2]) where
  cookie = MAC(secret, source address) and the secret rotates every two
  minutes; otherwise it is answered with a cookie reply (XChaCha20-Poly1305
  encrypted cookie, the message's mac1 as associated data) and not processed.
* Token buckets limit handshake processing globally (deciding "under load")
  and per source host.
* Initiator side, a message refused for want of a cookie is sent again soon
  with one (``CookieGenerator.take_refused``; handshake.py times it), rather
  than at the next retransmission 5 s later: the cookie proves our address,
  and a message that already carried a mac2 is never re-sent this way, so
  each refusal costs at most one more message.
"""

from __future__ import annotations

import hmac as _hmac
import struct
from collections.abc import Callable

import nacl.exceptions
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

from .bucket import TokenBucket as TokenBucket  # device.py imports it from here
from .constants import (
    COOKIE_REFRESH_TIME,
    KEY_LEN,
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_LEN,
    RATE_LIMIT_MAX_SOURCES,
)
from .messages import CookieReply
from .noise import hash_, mac

_ZERO_MAC = bytes(MAC_LEN)
_PORT = struct.Struct(">H")

Address = tuple[str, int]


def address_bytes(addr: Address) -> bytes:
    """Canonical source address for cookies: UTF-8 host then big-endian port."""
    return addr[0].encode("utf-8", "replace") + _PORT.pack(addr[1] & 0xFFFF)


def _keys(static_public: bytes) -> tuple[bytes, bytes]:
    return hash_(LABEL_MAC1 + static_public), hash_(LABEL_COOKIE + static_public)[:KEY_LEN]


class CookieChecker:
    """Responder side: validates mac1/mac2 of incoming messages, issues cookies."""

    def __init__(self, our_public: bytes, random_bytes: Callable[[int], bytes]) -> None:
        self._mac1_key, self._cookie_key = _keys(our_public)
        self._random = random_bytes
        self._secret = b""
        self._previous_secret = b""
        self._secret_at = float("-inf")

    def check_mac1(self, msg: bytes, mac1_offset: int) -> bool:
        expected = mac(self._mac1_key, msg[:mac1_offset])
        return _hmac.compare_digest(expected, msg[mac1_offset : mac1_offset + MAC_LEN])

    def _rotate(self, now: float) -> None:
        if now - self._secret_at >= COOKIE_REFRESH_TIME:
            self._previous_secret = (
                self._secret if now - self._secret_at < 2 * COOKIE_REFRESH_TIME else b""
            )
            self._secret = self._random(32)
            self._secret_at = now

    def _cookie(self, secret: bytes, addr: Address) -> bytes:
        return mac(secret, address_bytes(addr))

    def check_mac2(self, msg: bytes, mac2_offset: int, addr: Address, now: float) -> bool:
        """mac2 made with a cookie for ``addr`` from the current or previous secret."""
        self._rotate(now)
        got = msg[mac2_offset : mac2_offset + MAC_LEN]
        body = msg[:mac2_offset]
        for secret in (self._secret, self._previous_secret):
            if secret and _hmac.compare_digest(mac(self._cookie(secret, addr), body), got):
                return True
        return False

    def create_reply(
        self, msg: bytes, mac1_offset: int, receiver: int, addr: Address, now: float
    ) -> bytes:
        self._rotate(now)
        cookie = self._cookie(self._secret, addr)
        nonce = self._random(24)
        mac1 = msg[mac1_offset : mac1_offset + MAC_LEN]
        enc = crypto_aead_xchacha20poly1305_ietf_encrypt(cookie, mac1, nonce, self._cookie_key)
        return CookieReply(receiver, nonce, enc).encode()


class CookieGenerator:
    """Initiator side: adds mac1 (and mac2 while a fresh cookie is held) to our
    handshake messages and consumes cookie replies for them."""

    def __init__(self, peer_public: bytes) -> None:
        self._mac1_key, self._cookie_key = _keys(peer_public)
        self._cookie: bytes | None = None
        self._cookie_at = float("-inf")
        self._last_mac1: bytes | None = None
        #: Our latest message (macs zeroed), while it went without a mac2.
        self._last_bare: bytes | None = None
        #: That message, once a cookie reply refused it (see take_refused).
        self._refused: bytes | None = None

    def add_macs(self, body: bytes, now: float) -> bytes:
        """``body`` is a handshake message ending in two zero macs."""
        off1 = len(body) - 2 * MAC_LEN
        mac1 = mac(self._mac1_key, body[:off1])
        self._last_mac1 = mac1
        self._refused = None  # a newer message supersedes a refused one
        head = body[:off1] + mac1
        if self._cookie is not None and now - self._cookie_at < COOKIE_REFRESH_TIME:
            self._last_bare = None
            return head + mac(self._cookie, head)
        self._last_bare = body
        return head + _ZERO_MAC

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Store the cookie if the reply answers our latest message (once only)."""
        if self._last_mac1 is None:
            return False
        try:
            cookie = crypto_aead_xchacha20poly1305_ietf_decrypt(
                reply.encrypted_cookie, self._last_mac1, reply.nonce, self._cookie_key
            )
        except (nacl.exceptions.CryptoError, ValueError):
            return False
        self._cookie = cookie
        self._cookie_at = now
        self._last_mac1 = None
        self._refused, self._last_bare = self._last_bare, None
        return True

    @property
    def has_refused(self) -> bool:
        """Did the last cookie reply refuse a message of ours that carried no
        mac2 (one the same message with the new cookie would get through)?"""
        return self._refused is not None

    def take_refused(self) -> bytes | None:
        """The message (macs zeroed) the last cookie reply refused for want of
        a cookie, once; None if there is none, or a newer message was sent
        since.  Sent again through :meth:`add_macs` it carries the cookie's
        mac2, so a second refusal of it gives nothing to take: one refusal,
        one more message at most."""
        refused, self._refused = self._refused, None
        return refused


class RateLimiter:
    """Per-source-host token buckets, bounded in number."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, host: str, now: float) -> bool:
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= RATE_LIMIT_MAX_SOURCES:
                self._prune(now)
                if len(self._buckets) >= RATE_LIMIT_MAX_SOURCES:
                    return False
            bucket = self._buckets[host] = TokenBucket(self._rate, self._burst, now)
        return bucket.take(now)

    def _prune(self, now: float) -> None:
        full = [h for h, b in self._buckets.items() if b.refill(now) >= b.burst]
        for h in full:
            del self._buckets[h]
