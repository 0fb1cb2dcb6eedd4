"""bridger's handshake code against a Noise vector nobody here wrote.

The vector is cacophony's ``Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s``
(cacophony_ikpsk2.json, copied unchanged with its source).  bridger's handshake
is that pattern with these differences, each handled here:

* **Hash.**  bridger uses BLAKE2b-512 (HMAC block 128) and the protocol name
  ``...BLAKE2b`` (constants.CONSTRUCTION).  The handshake functions take a
  :class:`~bridger.protocol.noise.Suite` keyword; this test passes one made of
  BLAKE2s-256 (block 64), the vector's protocol name (37 bytes: longer than
  BLAKE2s's 32, so hashed rather than padded, Noise section 5.2) and the
  vector's prologue ("John Galt") in place of constants.IDENTIFIER.  Every
  other line that runs is the code bridger runs.
* **Payloads.**  bridger's message 1 payload is a 12-byte TAI64N timestamp and
  message 2's is empty.  ``create_initiation`` encrypts whatever it is given as
  the timestamp, so the vector's 16-byte payload goes in there unchanged;
  ``create_response`` has a ``payload`` keyword (default empty) for the
  vector's 15 bytes.  ``consume_response`` authenticates the vector's message 2
  (its payload, which bridger never sends, is decrypted and dropped).
* **Framing.**  bridger's messages add a type word, indices, mac1 and mac2
  (cookie.py) around the Noise bytes; the vector's ciphertexts are compared
  with the Noise fields only (ephemeral ‖ encrypted static ‖ encrypted
  payload, and ephemeral ‖ encrypted payload).  bridger's transport header
  (type, receiver, counter) is likewise cut off the sealed datagram.
* **Handshake hash.**  bridger never uses the final handshake hash (no channel
  binding), so no function returns it and the vector's ``handshake_hash`` is
  not checked.  The hash up to that last MixHash is still pinned: it is the
  associated data of message 2's payload, which must authenticate.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from bridger.native import lane
from bridger.protocol.aead import open_transport, seal_transport
from bridger.protocol.constants import BLOCK_LEN, CONSTRUCTION, HASH_LEN, IDENTIFIER
from bridger.protocol.messages import TRANSPORT_HEADER, TRANSPORT_NONCE, MessageType, Response
from bridger.protocol.noise import (
    BRIDGER,
    Identity,
    PeerKeys,
    SessionKeys,
    Suite,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    decrypt_initiator_static,
    hash_,
    public_key,
)

VECTOR: dict[str, Any] = json.loads(
    Path(__file__).with_name("cacophony_ikpsk2.json").read_text()
)["vector"]
X = bytes.fromhex
ZERO_MAC = bytes(16)
TRANSPORT = int(MessageType.TRANSPORT)


def blake2s(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


SUITE = Suite.create(blake2s, 32, 64, VECTOR["protocol_name"].encode(), X(VECTOR["init_prologue"]))


def payloads() -> list[bytes]:
    return [X(m["payload"]) for m in VECTOR["messages"]]


def ciphertexts() -> list[bytes]:
    return [X(m["ciphertext"]) for m in VECTOR["messages"]]


def handshake() -> tuple[SessionKeys, SessionKeys]:
    """Both messages through bridger's handshake functions; (initiator, responder) keys."""
    assert VECTOR["init_prologue"] == VECTOR["resp_prologue"]
    assert VECTOR["init_psks"] == VECTOR["resp_psks"] and len(VECTOR["init_psks"]) == 1
    psk = X(VECTOR["init_psks"][0])
    ct = ciphertexts()
    initiator = Identity.create(X(VECTOR["init_static"]), suite=SUITE)
    responder = Identity.create(X(VECTOR["resp_static"]), suite=SUITE)
    assert responder.public == X(VECTOR["init_remote_static"])
    i_peer = PeerKeys.create(initiator, responder.public, psk, suite=SUITE)
    r_peer = PeerKeys.create(responder, initiator.public, psk, suite=SUITE)

    # -> e, es, s, ss  (payload in bridger's timestamp field)
    msg1, i_state = create_initiation(initiator, i_peer, 1, X(VECTOR["init_ephemeral"]),
                                      payloads()[0], suite=SUITE)
    assert msg1.ephemeral + msg1.encrypted_static + msg1.encrypted_timestamp == ct[0]
    static, ck, h = decrypt_initiator_static(responder, msg1, suite=SUITE)
    assert static == initiator.public
    r_state = consume_initiation(r_peer, msg1, ck, h, suite=SUITE)
    assert r_state.timestamp == payloads()[0]

    # <- e, ee, se, psk
    msg2, r_keys = create_response(r_peer, r_state, 2, X(VECTOR["resp_ephemeral"]),
                                   payload=payloads()[1], suite=SUITE)
    assert msg2.ephemeral + msg2.encrypted_nothing == ct[1]
    theirs = Response(2, 1, ct[1][:32], ct[1][32:], ZERO_MAC, ZERO_MAC)
    i_keys = consume_response(initiator, i_peer, i_state, theirs, suite=SUITE)
    assert (i_keys.send, i_keys.receive) == (r_keys.receive, r_keys.send)
    return i_keys, r_keys


def test_handshake_messages_match_the_vector() -> None:
    handshake()


def transport_cases() -> list[tuple[int, str, int, bytes, bytes]]:
    """(message number, sender, Noise nonce, payload, ciphertext) of the transport
    messages: after the two handshake messages the sides alternate, initiator first,
    each counting its own nonces from 0."""
    cases = []
    for n, (p, c) in enumerate(zip(payloads()[2:], ciphertexts()[2:], strict=True)):
        cases.append((n + 2, "initiator" if n % 2 == 0 else "responder", n // 2, p, c))
    return cases


@pytest.mark.parametrize("number,sender,nonce,payload,ciphertext", transport_cases())
def test_transport_messages_match_the_vector(number: int, sender: str, nonce: int,
                                             payload: bytes, ciphertext: bytes) -> None:
    """The derived keys through aead.py's transport seal/open (bridger's nonce is the
    message counter, as Noise's)."""
    i_keys, r_keys = handshake()
    send, receive = (i_keys.send, r_keys.receive) if sender == "initiator" else (
        r_keys.send, i_keys.receive)
    datagram = seal_transport(TRANSPORT, 7, nonce, payload, TRANSPORT_NONCE.pack(nonce), send)
    assert datagram[:TRANSPORT_HEADER.size] == TRANSPORT_HEADER.pack(TRANSPORT, 7, nonce)
    assert datagram[TRANSPORT_HEADER.size:] == ciphertext
    assert open_transport(datagram, TRANSPORT_NONCE.pack(nonce), receive) == payload
    tampered = datagram[:-1] + bytes([datagram[-1] ^ 1])
    assert open_transport(tampered, TRANSPORT_NONCE.pack(nonce), receive) is None


@pytest.mark.skipif(lane is None, reason="native extension not built")
@pytest.mark.parametrize("number,sender,nonce,payload,ciphertext", transport_cases())
def test_native_transport_matches_the_vector(number: int, sender: str, nonce: int,
                                             payload: bytes, ciphertext: bytes) -> None:
    """The same keys through the C Session (bn_session.c)."""
    assert lane is not None
    i_keys, r_keys = handshake()
    keys = {"initiator": i_keys, "responder": r_keys}
    me, other = keys[sender], keys["responder" if sender == "initiator" else "initiator"]
    sender_session = lane.Session(1, 2, me.send, me.receive, 0.0)
    receiver_session = lane.Session(2, 1, other.send, other.receive, 0.0)
    datagram = sender_session.seal(nonce, payload)
    assert datagram[TRANSPORT_HEADER.size:] == ciphertext
    assert receiver_session.open(datagram) == payload


def test_bridger_suite_is_the_documented_construction() -> None:
    """What the vector test swaps out, pinned separately: bridger's own suite is
    BLAKE2b-512 with CONSTRUCTION (37 bytes, so zero-padded to 64) and IDENTIFIER."""
    assert CONSTRUCTION == b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b" and HASH_LEN == 64
    assert (BRIDGER.hash, BRIDGER.block_len) == (hash_, BLOCK_LEN)
    assert BRIDGER.chaining_key == CONSTRUCTION + bytes(64 - len(CONSTRUCTION))
    assert BRIDGER.initial_hash == hashlib.blake2b(BRIDGER.chaining_key + IDENTIFIER).digest()
    assert hash_(b"abc") == hashlib.blake2b(b"abc").digest()
    assert public_key(bytes(32)) != bytes(32)
