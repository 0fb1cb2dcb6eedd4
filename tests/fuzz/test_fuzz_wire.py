"""Fuzz targets for every parser that touches network bytes.

Outer datagrams: each ``*_untrusted`` decoder on arbitrary bytes, and the whole
``Tunnel.receive_datagram`` on structured mutations of real captures (splices,
truncations, extensions, type swaps, bit flips).  Inner payloads: the same,
but *authenticated* (sealed with the live session key), which reaches the
fragment, probe and ack parsers and the reassembler that outer fuzzing cannot.

Invariants: parsers fail only with BadPacket; the core never raises, never
counts ``internal_error``, never answers with anything but a cookie reply
smaller than what it answers, and its per-peer state stays within its caps.
"""

from __future__ import annotations

import contextlib
import copy
import random
import struct

from hypothesis import given
from hypothesis import strategies as st

from bridger.protocol import DropReason, Tunnel
from bridger.protocol.constants import (
    REASSEMBLY_MAX_BYTES,
    REASSEMBLY_MAX_FRAMES,
    REJECT_AFTER_MESSAGES,
)
from bridger.protocol.fragment import Reassembler
from bridger.protocol.messages import (
    FRAGMENT_HEADER,
    PROBE_ACK,
    PROBE_HEADER,
    BadPacket,
    Fragment,
    InnerType,
    decode_cookie_reply_untrusted,
    decode_fragment_untrusted,
    decode_initiation_untrusted,
    decode_introduce_untrusted,
    decode_path_check_untrusted,
    decode_probe_ack_untrusted,
    decode_probe_untrusted,
    decode_relay_untrusted,
    decode_response_untrusted,
    decode_transport_header_untrusted,
    message_type_untrusted,
)
from tests.adversarial.pair import ADDR_A, Pair, established_pair
from tests.fuzz.budget import fuzz

DECODERS = (
    message_type_untrusted,
    decode_initiation_untrusted,
    decode_response_untrusted,
    decode_cookie_reply_untrusted,
    decode_transport_header_untrusted,
    decode_fragment_untrusted,
    decode_probe_untrusted,
    decode_probe_ack_untrusted,
    decode_introduce_untrusted,
    decode_relay_untrusted,
    decode_path_check_untrusted,
)
LENGTHS = (0, 1, 3, 4, 15, 16, 31, 32, 33, 64, 92, 148, 149)


def _typed(kind: int) -> st.SearchStrategy[bytes]:
    """Bytes that pass the first-word check for ``kind``, at lengths near the boundaries."""
    return st.builds(
        lambda n, body: struct.pack("<I", kind) + body[:n],
        st.sampled_from(LENGTHS) | st.integers(0, 2000),
        st.binary(min_size=0, max_size=2000),
    )


NETWORK_BYTES = st.binary(max_size=4096) | st.sampled_from([1, 2, 3, 4]).flatmap(_typed)


@fuzz(2.0)
@given(NETWORK_BYTES)
def test_every_decoder_fails_only_with_badpacket(data: bytes) -> None:
    for decode in DECODERS:
        with contextlib.suppress(BadPacket):
            decode(data)


@fuzz()
@given(st.binary(min_size=148, max_size=148), st.binary(min_size=92, max_size=92),
       st.binary(min_size=64, max_size=64))
def test_decoded_handshakes_reencode_to_the_same_bytes(init: bytes, resp: bytes,
                                                       cookie: bytes) -> None:
    for raw, kind, decode in ((init, 1, decode_initiation_untrusted),
                              (resp, 2, decode_response_untrusted),
                              (cookie, 3, decode_cookie_reply_untrusted)):
        data = struct.pack("<I", kind) + raw[4:]
        assert decode(data).encode() == data


# --- the whole receive path on hostile outer bytes ----------------------------------

def _capture() -> tuple[Pair, list[bytes]]:
    """An established pair plus every kind of datagram A sent to B (all now stale)."""
    pair = established_pair(seed=7)
    captured: list[bytes] = []
    for size in (60, 1514, 0):
        out = pair.a.send_frame(b"\x02" * size, pair.now) if size else pair.a.tick(
            pair.now + 11, pair.wall() + 11)
        captured += [d for d, _ in out.datagrams]
        pair.deliver(out, "a")
    # a fresh initiation too (consumed once: later copies are replays)
    out = pair.a.tick(pair.now + 200, pair.wall() + 200)
    captured += [d for d, _ in out.datagrams]
    return pair, captured


PAIR, CAPTURED = _capture()


def _mutate(draw: st.DrawFn) -> bytes:
    base = draw(st.sampled_from(CAPTURED))
    other = draw(st.sampled_from(CAPTURED))
    how = draw(st.sampled_from(["flip", "truncate", "extend", "splice", "retype", "zero"]))
    data = bytearray(base)
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            bit = draw(st.integers(0, len(data) * 8 - 1))
            data[bit // 8] ^= 1 << (bit % 8)
    elif how == "truncate":
        del data[draw(st.integers(0, len(data) - 1)):]
    elif how == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif how == "splice":
        cut = draw(st.integers(0, min(len(data), len(other))))
        data = data[:cut] + other[cut:]
    elif how == "retype":
        data[0] = draw(st.sampled_from([1, 2, 3, 4, 5, 0, 255]))
    else:
        start = draw(st.integers(0, len(data) - 1))
        data[start:start + draw(st.integers(1, 32))] = bytes(32)[:len(data) - start]
    return bytes(data)


mutations = st.composite(_mutate)


def _snapshot(t: Tunnel) -> tuple[object, ...]:
    kp = t.current
    return (kp and kp.receive_key, t.endpoint, t.frames_received,
            len(t.reassembler), t.stats().state)


@fuzz(2.0)
@given(mutations(), st.sampled_from([ADDR_A, ("203.0.113.9", 1), ("fe80::1%eth0", 65535)]))
def test_mutated_captures_are_dropped_without_state_change(data: bytes, addr: object) -> None:
    tunnel = copy.deepcopy(PAIR.b)
    before = _snapshot(tunnel)
    drops_before = sum(tunnel.drops.values())
    out = tunnel.receive_datagram(data, addr, PAIR.now + 1, PAIR.wall() + 1)  # type: ignore[arg-type]
    if data in CAPTURED:
        return  # an unmodified copy: the replay tests in tests/protocol cover it
    assert not out.frames and not out.events
    assert all(d[0] == 3 and len(d) < len(data) for d, _ in out.datagrams), out.datagrams
    assert sum(tunnel.drops.values()) == drops_before + 1
    assert tunnel.drops[DropReason.INTERNAL_ERROR] == 0
    assert _snapshot(tunnel) == before


# --- authenticated hostile plaintexts -------------------------------------------------

def _fragment(draw: st.DrawFn) -> bytes:
    frame_id = draw(st.integers(0, 6) | st.integers(0, 2**32 - 1))
    count = draw(st.integers(0, 255))
    index = draw(st.integers(0, 255) if draw(st.booleans()) else st.integers(0, max(0, count - 1)))
    total = draw(st.integers(0, 0xFFFF) | st.integers(1, 3000))
    data = draw(st.binary(max_size=1600))
    return FRAGMENT_HEADER.pack(InnerType.FRAGMENT, frame_id, index, count, total) + data


fragments = st.composite(_fragment)
INNER = st.one_of(
    st.binary(max_size=1600),
    fragments(),
    st.builds(lambda b: bytes([InnerType.FRAME]) + b, st.binary(max_size=9300)),
    st.builds(lambda i, pad: PROBE_HEADER.pack(InnerType.PROBE, i) + pad,
              st.integers(0, 2**32 - 1), st.binary(max_size=64)),
    st.builds(lambda i, s, tail: PROBE_ACK.pack(InnerType.PROBE_ACK, i, s) + tail,
              st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF), st.binary(max_size=2)),
)


@fuzz(0.5)
@given(st.lists(INNER, min_size=1, max_size=80))
def test_authenticated_junk_plaintexts_are_bounded_and_never_crash(plaintexts: list[bytes]) -> None:
    pair = established_pair(seed=3)
    b = pair.b
    for i, plaintext in enumerate(plaintexts):
        pair.now += 0.2
        datagram = pair.forge(plaintext)
        out = b.receive_datagram(datagram, ADDR_A, pair.now, pair.wall())
        for frame in out.frames:
            assert 0 <= len(frame) <= b.config.max_frame or plaintext[0] == InnerType.FRAME
        # only a PROBE gets an answer; it is one datagram to the real peer
        assert len(out.datagrams) <= 1 and all(dest == ADDR_A for _, dest in out.datagrams)
        assert len(b.reassembler) <= REASSEMBLY_MAX_FRAMES
        assert b.reassembler._bytes <= REASSEMBLY_MAX_BYTES
        assert b.drops[DropReason.INTERNAL_ERROR] == 0, (i, plaintext[:16])
        assert b.endpoint == ADDR_A
        b.tick(pair.now, pair.wall())
    pair.now += 10
    b.tick(pair.now, pair.wall())
    assert len(b.reassembler) == 0  # every partial frame timed out


@fuzz()
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 4), st.integers(2, 4),
                          st.integers(1, 2000), st.binary(max_size=1000),
                          st.floats(0, 2)), max_size=60))
def test_reassembler_model(ops: list[tuple[int, int, int, int, bytes, float]]) -> None:
    """Against a plain model: what it returns is exactly the pieces given for that frame."""
    drops = dict.fromkeys(DropReason, 0)
    r = Reassembler(drops, max_frame=1522)
    now = 0.0
    pieces: dict[int, dict[int, bytes]] = {}
    for frame_id, index, count, total, data, dt in ops:
        now += dt
        r.expire(now)
        if index >= count:
            continue  # the decoder already rejects these
        frame = r.add(Fragment(frame_id, index, count, total, data), now)
        pieces.setdefault(frame_id, {}).setdefault(index, data)
        assert len(r) <= REASSEMBLY_MAX_FRAMES and r._bytes <= REASSEMBLY_MAX_BYTES
        assert r._bytes == sum(p.total for p in r._partials.values())
        if frame is not None:
            assert len(frame) == total <= 1522
            assert frame_id not in r._partials
            pieces.pop(frame_id, None)


@fuzz()
@given(st.lists(st.integers(0, 20000) | st.integers(0, 2**64 - 1), max_size=300))
def test_replay_window_model(counters: list[int]) -> None:
    """Never accepts a counter twice; always accepts a new counter above the greatest."""
    from bridger.protocol.replay import ReplayWindow, Verdict

    window = ReplayWindow()
    accepted: set[int] = set()
    greatest = -1
    for c in counters:
        verdict = window.check(c)
        if verdict is Verdict.OK:
            assert c not in accepted
            accepted.add(c)
        elif greatest < c < REJECT_AFTER_MESSAGES:
            raise AssertionError(f"rejected new greatest counter {c}")
        if verdict is Verdict.OK:
            greatest = max(greatest, c)


def test_random_byte_storm_against_an_established_tunnel() -> None:
    """A seeded storm of 20 000 datagrams; a quick smoke of the same invariants."""
    rng = random.Random(5)
    tunnel = copy.deepcopy(PAIR.b)
    before = _snapshot(tunnel)
    for _ in range(20_000):
        kind = rng.choice([1, 2, 3, 4, rng.randrange(256)])
        size = rng.choice([4, 16, 32, 64, 92, 148, rng.randrange(2000)])
        data = bytes([kind, 0, 0, 0]) + rng.randbytes(max(0, size - 4))
        out = tunnel.receive_datagram(data, ("203.0.113.7", 999), PAIR.now, PAIR.wall())
        assert not out.frames and not out.datagrams
    assert tunnel.drops[DropReason.INTERNAL_ERROR] == 0
    assert _snapshot(tunnel) == before
