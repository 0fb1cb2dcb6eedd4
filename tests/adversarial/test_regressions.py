"""Bugs the adversarial runs found, pinned at the core level (no root needed)."""

from __future__ import annotations

import random

from bridger.protocol import DropReason, Output, Tunnel, TunnelConfig
from bridger.protocol.constants import REKEY_TIMEOUT
from tests.adversarial.pair import ADDR_A, ADDR_B, WALL_EPOCH, keypair

ATTACKER = ("203.0.113.66", 4444)


def _crossing_pair(seed: int) -> tuple[Tunnel, Tunnel]:
    rng = random.Random(seed)
    (pa, ua), (pb, ub) = keypair(rng), keypair(rng)

    def make(priv: bytes, peer: bytes, endpoint: tuple[str, int]) -> Tunnel:
        cfg = TunnelConfig(priv, peer, endpoint=endpoint, persistent_keepalive=0,
                           pmtu_probing=False)
        return Tunnel(cfg, now=0.0, wall_clock=WALL_EPOCH,
                      random_bytes=random.Random(rng.random()).randbytes)

    return make(pa, ub, ADDR_B), make(pb, ua, ADDR_A)


def _pump(a: Tunnel, b: Tunnel, out_a: Output, out_b: Output, now: float) -> None:
    """Deliver both batches (crossing), then every answer, until quiet."""
    pending = [(d, a, b) for d, _ in out_a.datagrams] + [(d, b, a) for d, _ in out_b.datagrams]
    while pending:
        data, src, dst = pending.pop(0)
        addr = ADDR_A if src is a else ADDR_B
        reply = dst.receive_datagram(data, addr, now, WALL_EPOCH + now)
        pending += [(d, dst, src) for d, _ in reply.datagrams]


def test_regression_race_dropped_initiation_cannot_be_replayed_later() -> None:
    """Found by tests/adversarial/test_flood.py: when both gateways start at once,
    the tie-break winner dropped the loser's initiation *before* authenticating
    it, so its timestamp was never recorded.  An attacker who captured it on the
    WAN could replay it any time later: the winner answered (a handshake
    response to the attacker) and moved its peer endpoint to the attacker."""
    for seed in range(6):  # both orders of the public keys
        a, b = _crossing_pair(seed)
        out_a = a.send_frame(bytes(60), 0.0)
        out_b = b.send_frame(bytes(60), 0.0)
        winner, loser_init = (a, out_b) if a.public_key > b.public_key else (b, out_a)
        captured = loser_init.datagrams[0][0]
        _pump(a, b, out_a, out_b, 0.01)
        assert winner.drops[DropReason.HANDSHAKE_RACE] == 1
        assert a.stats().state == b.stats().state == "up"
        endpoint = winner.endpoint

        later = REKEY_TIMEOUT + 10.0
        out = winner.receive_datagram(captured, ATTACKER, later, WALL_EPOCH + later)
        assert not out.datagrams, "a replayed initiation was answered"
        assert winner.endpoint == endpoint, "a replay moved the endpoint"
        assert winner.drops[DropReason.HANDSHAKE_REPLAY] == 1


def test_regression_valid_mac1_alone_does_not_trigger_initiation_resends() -> None:
    """Before the fix, any initiation with a valid mac1 (our public key suffices)
    that arrived while our handshake was pending made the race winner re-send its
    initiation; now only an authenticated peer initiation can."""
    from tests.adversarial.test_bounds import _non_key_holder_initiation

    for seed in range(6):
        a, b = _crossing_pair(seed)
        winner = a if a.public_key > b.public_key else b
        winner.send_frame(bytes(60), 0.0)  # pending, never answered
        forged = _non_key_holder_initiation(winner)
        out = winner.receive_datagram(forged, ATTACKER, 2.0, WALL_EPOCH + 2.0)
        assert not out.datagrams
        # Its static key is no configured peer's: dropped at the device, no peer touched.
        assert winner.drops[DropReason.UNKNOWN_PEER] == 1
        assert winner.peer.drops[DropReason.UNKNOWN_PEER] == 0
