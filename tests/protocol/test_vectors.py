"""Fixed-key wire vectors: the exact bytes of a handshake and a data message.

With fixed static keys, PSK, ephemeral keys, indices and timestamp, the
initiation, response and first transport message must match vectors.json
byte for byte, so the wire format cannot drift silently.  Regenerate (only for
an intended, documented wire change) with BRIDGER_REGEN_VECTORS=1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from bridger.protocol import Tunnel, TunnelConfig
from bridger.protocol.noise import hash_, hmac, kdf, public_key, tai64n

VECTORS = Path(__file__).with_name("vectors.json")

INPUTS: dict[str, str] = {
    "initiator_private": bytes(range(1, 33)).hex(),
    "responder_private": bytes(range(33, 65)).hex(),
    "psk": bytes(range(100, 132)).hex(),
    "initiator_ephemeral": bytes(range(65, 97)).hex(),
    "responder_ephemeral": bytes(range(140, 172)).hex(),
    "initiator_index": "01020304",
    "responder_index": "0a0b0c0d",
    "wall_clock": "1700000000.5",
    "frame": (bytes(range(14)) + b"bridger test vector").hex(),
}


def scripted(values: dict[int, list[bytes]]) -> Callable[[int], bytes]:
    """random_bytes that hands out the given values by requested length."""

    def take(n: int) -> bytes:
        queue = values.get(n)
        return queue.pop(0) if queue else bytes(n)

    return take


def compute() -> dict[str, str]:
    ipriv = bytes.fromhex(INPUTS["initiator_private"])
    rpriv = bytes.fromhex(INPUTS["responder_private"])
    psk = bytes.fromhex(INPUTS["psk"])
    wall = float(INPUTS["wall_clock"])
    frame = bytes.fromhex(INPUTS["frame"])
    a_addr, b_addr = ("192.0.2.1", 55555), ("198.51.100.2", 55555)
    a = Tunnel(
        TunnelConfig(ipriv, public_key(rpriv), psk=psk, endpoint=b_addr, persistent_keepalive=0),
        now=0.0,
        wall_clock=wall,
        random_bytes=scripted(
            {
                4: [bytes.fromhex(INPUTS["initiator_index"])],
                32: [bytes.fromhex(INPUTS["initiator_ephemeral"])],
            }
        ),
    )
    b = Tunnel(
        TunnelConfig(rpriv, public_key(ipriv), psk=psk, persistent_keepalive=0),
        now=0.0,
        wall_clock=wall,
        random_bytes=scripted(
            {
                4: [bytes.fromhex(INPUTS["responder_index"])],
                32: [bytes.fromhex(INPUTS["responder_ephemeral"])],
            }
        ),
    )
    initiation = a.send_frame(frame, 0.0).datagrams[0][0]
    response = b.receive_datagram(initiation, a_addr, 0.0, wall).datagrams[0][0]
    data = a.receive_datagram(response, b_addr, 0.0, wall).datagrams[0][0]
    got = b.receive_datagram(data, a_addr, 0.0, wall).frames
    assert got == [frame]
    return {
        "initiator_public": public_key(ipriv).hex(),
        "responder_public": public_key(rpriv).hex(),
        "timestamp_tai64n": tai64n(int(wall * 1e9)).hex(),
        "initiation": initiation.hex(),
        "response": response.hex(),
        "transport_frame": data.hex(),
    }


def test_wire_vectors_match() -> None:
    expected = compute()
    if os.environ.get("BRIDGER_REGEN_VECTORS") == "1":
        VECTORS.write_text(json.dumps({"inputs": INPUTS, "outputs": expected}, indent=2) + "\n")
    stored = json.loads(VECTORS.read_text())
    assert stored["inputs"] == INPUTS
    assert stored["outputs"] == expected


def test_hmac_blake2b_matches_rfc2104_reference() -> None:
    """Our HMAC over PyNaCl BLAKE2b equals the stdlib reference construction."""
    import hashlib
    import hmac as std_hmac

    def blake2b_512(data: bytes = b"") -> hashlib.blake2b:
        return hashlib.blake2b(data, digest_size=64)

    for key, msg in [(b"", b""), (b"k" * 64, b"abc"), (b"x" * 200, b"y" * 1000)]:
        ref = std_hmac.new(key, msg, blake2b_512).digest()
        assert hmac(key, msg) == ref


def test_kdf_and_hash_shapes() -> None:
    outs = kdf(hash_(b"ck"), b"input", 3)
    assert [len(o) for o in outs] == [64, 64, 64]
    assert len(set(outs)) == 3
    assert tai64n(0) == bytes.fromhex("400000000000000000000000")
