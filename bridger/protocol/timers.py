"""Timers as deadlines driven by event verbs (after Linux wireguard/timers.c).

The tunnel calls a verb when something happens (data sent, packet received,
handshake initiated...); each verb arms or cancels deadlines.  ``tick`` in the
tunnel runs the actions of the deadlines that have passed.  No clock is read:
``now`` is always passed in, and so is randomness: the jitter of the
handshake timers (as in WireGuard: REKEY_TIMEOUT + jitter for a retry,
KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter for dead-peer detection) is drawn
from the device's byte source, so that sites started or silenced at the same
moment do not keep initiating in lockstep (a hub whose spokes all restart,
issue 26).  A handshake message of ours refused with a cookie reply is sent
again with the cookie after COOKIE_RETRY_DELAY + jitter (``cookie_retry``),
not at the next retransmission.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .constants import (
    COOKIE_RETRY_DELAY,
    KEEPALIVE_TIMEOUT,
    NEW_HANDSHAKE_TIMEOUT,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEYS_AFTER,
)


def jitter(random: Callable[[int], bytes]) -> float:
    """0 to REKEY_TIMEOUT_JITTER_MAX seconds, from ``random`` (the device's bytes)."""
    return int.from_bytes(random(2), "little") / 65536 * REKEY_TIMEOUT_JITTER_MAX


@dataclass(slots=True)
class Timers:
    #: Resend the initiation (new ephemeral) if no response came.
    retransmit_handshake: float | None = None
    #: Send the message a cookie reply refused again, with the cookie.
    cookie_retry: float | None = None
    #: Passive keepalive: data arrived and we sent nothing back for 10 s.
    send_keepalive: float | None = None
    #: Dead-peer detection: we sent data and heard nothing authenticated for 15 s.
    new_handshake: float | None = None
    #: Persistent keepalive for NAT mappings.
    persistent_keepalive: float | None = None
    #: Wipe keys after long silence.
    zero_keys: float | None = None
    #: When the data that armed ``new_handshake`` was sent.
    data_sent_at: float = 0.0

    def next_deadline(self) -> float | None:
        best: float | None = None
        for when in (
            self.retransmit_handshake,
            self.cookie_retry,
            self.send_keepalive,
            self.new_handshake,
            self.persistent_keepalive,
            self.zero_keys,
        ):
            if when is not None and (best is None or when < best):
                best = when
        return best

    # --- event verbs ---------------------------------------------------------

    @property
    def unanswered_since(self) -> float | None:
        """When data was first sent with nothing authenticated received since
        (None: not waiting for an answer, or the dead-peer timer fired)."""
        return None if self.new_handshake is None else self.data_sent_at

    def data_sent(self, now: float, random: Callable[[int], bytes] | None = None) -> None:
        """``random``: the jitter's source (drawn only when the timer is armed)."""
        if self.new_handshake is None:
            self.data_sent_at = now
            self.new_handshake = now + NEW_HANDSHAKE_TIMEOUT + (
                0.0 if random is None else jitter(random))

    def data_received(self, now: float) -> None:
        if self.send_keepalive is None:
            self.send_keepalive = now + KEEPALIVE_TIMEOUT

    def any_authenticated_received(self) -> None:
        self.new_handshake = None

    def any_authenticated_sent(self, now: float, persistent_interval: float) -> None:
        self.send_keepalive = None
        if persistent_interval > 0:
            self.persistent_keepalive = now + persistent_interval

    def handshake_initiated(self, now: float, jitter: float) -> None:
        self.retransmit_handshake = now + REKEY_TIMEOUT + jitter

    def handshake_complete(self) -> None:
        self.retransmit_handshake = None
        self.cookie_retry = None

    def handshake_refused(self, now: float, jitter: float) -> None:
        """A cookie reply refused our message for want of a cookie: send it
        again with the cookie soon (spread by ``jitter``, as retries are)."""
        self.cookie_retry = now + COOKIE_RETRY_DELAY + jitter

    def session_derived(self, now: float) -> None:
        self.zero_keys = now + ZERO_KEYS_AFTER
