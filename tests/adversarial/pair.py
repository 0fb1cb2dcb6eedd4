"""Two real protocol cores joined back to back, with a session already up.

Adversarial and fuzz tests need *authenticated* hostile input (fragment trains
that never complete, odd inner types): only a holder of the session keys can
make it, so :func:`Pair.forge` seals arbitrary plaintext with the sender's
current session key exactly as the core would (same header, same nonce), with
the core's own primitives.  Time is virtual; randomness is seeded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from nacl.bindings import crypto_aead_chacha20poly1305_ietf_encrypt

from bridger.protocol import Address, Output, Tunnel, TunnelConfig
from bridger.protocol.messages import TRANSPORT_NONCE, encode_transport
from tests.protocol.simnet import keypair

WALL_EPOCH = 1_700_000_000.0
ADDR_A: Address = ("192.0.2.1", 55555)
ADDR_B: Address = ("198.51.100.2", 55555)


@dataclass
class Pair:
    a: Tunnel
    b: Tunnel
    now: float = 0.0
    frames: dict[str, list[bytes]] = field(default_factory=lambda: {"a": [], "b": []})

    def wall(self) -> float:
        return WALL_EPOCH + self.now

    def deliver(self, out: Output, sender: str, depth: int = 0) -> None:
        """Hand ``sender``'s datagrams to the other side, and its answers back."""
        if depth > 20:
            raise AssertionError("datagram ping-pong does not settle")
        other = "b" if sender == "a" else "a"
        receiver = self.b if sender == "a" else self.a
        src = ADDR_A if sender == "a" else ADDR_B
        for datagram, _dest in out.datagrams:
            reply = receiver.receive_datagram(datagram, src, self.now, self.wall())
            self.frames[other] += reply.frames
            self.deliver(reply, other, depth + 1)

    def forge(self, plaintext: bytes, sender: str = "a") -> bytes:
        """A transport datagram carrying ``plaintext`` under ``sender``'s session key."""
        tunnel = self.a if sender == "a" else self.b
        kp = tunnel.current
        assert kp is not None, "no session"
        counter = kp.send_counter
        kp.send_counter += 1
        sealed = crypto_aead_chacha20poly1305_ietf_encrypt(
            plaintext, None, TRANSPORT_NONCE.pack(counter), kp.send_key
        )
        return encode_transport(kp.remote_index, counter, sealed)


def established_pair(
    seed: int = 1, *, max_frame: int = 1522, psk: bytes | None = None, keepalive: float = 0.0
) -> Pair:
    """A and B with one completed handshake (A initiated) and both sessions current."""
    rng = random.Random(seed)
    (priv_a, pub_a), (priv_b, pub_b) = keypair(rng), keypair(rng)
    ra, rb = random.Random(rng.random()), random.Random(rng.random())

    def make(priv: bytes, peer: bytes, endpoint: Address, r: random.Random) -> Tunnel:
        cfg = TunnelConfig(
            priv, peer, psk=psk, endpoint=endpoint, persistent_keepalive=keepalive,
            max_frame=max_frame, pmtu_probing=False,
        )
        return Tunnel(cfg, now=0.0, wall_clock=WALL_EPOCH, random_bytes=r.randbytes)

    pair = Pair(make(priv_a, pub_b, ADDR_B, ra), make(priv_b, pub_a, ADDR_A, rb))
    pair.now = 0.01
    pair.deliver(pair.a.send_frame(b"\x01" * 60, pair.now), "a")
    assert pair.a.current is not None and pair.b.current is not None
    assert pair.b.current.receive_key == pair.a.current.send_key
    pair.frames = {"a": [], "b": []}
    return pair
