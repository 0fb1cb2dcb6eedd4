"""Timers as deadlines driven by event verbs (after Linux wireguard/timers.c).

The tunnel calls a verb when something happens (data sent, packet received,
handshake initiated...); each verb arms or cancels deadlines.  ``tick`` in the
tunnel runs the actions of the deadlines that have passed.  No clock is read:
``now`` is always passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import KEEPALIVE_TIMEOUT, NEW_HANDSHAKE_TIMEOUT, REKEY_TIMEOUT, ZERO_KEYS_AFTER


@dataclass(slots=True)
class Timers:
    #: Resend the initiation (new ephemeral) if no response came.
    retransmit_handshake: float | None = None
    #: Passive keepalive: data arrived and we sent nothing back for 10 s.
    send_keepalive: float | None = None
    #: Dead-peer detection: we sent data and heard nothing authenticated for 15 s.
    new_handshake: float | None = None
    #: Persistent keepalive for NAT mappings.
    persistent_keepalive: float | None = None
    #: Wipe keys after long silence.
    zero_keys: float | None = None

    def next_deadline(self) -> float | None:
        best: float | None = None
        for when in (
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.persistent_keepalive,
            self.zero_keys,
        ):
            if when is not None and (best is None or when < best):
                best = when
        return best

    # --- event verbs ---------------------------------------------------------

    def data_sent(self, now: float) -> None:
        if self.new_handshake is None:
            self.new_handshake = now + NEW_HANDSHAKE_TIMEOUT

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

    def session_derived(self, now: float) -> None:
        self.zero_keys = now + ZERO_KEYS_AFTER
