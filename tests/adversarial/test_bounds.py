"""Per-peer and per-source state stays bounded under hostile input (core level).

Each test drives a real protocol core (two Tunnels with a live session, see
``pair.py``) with far more hostile input than any cap, and measures Python
heap growth with tracemalloc between a warm-up point and the end: after the
caps are reached, memory must be flat, not proportional to the attack.
"""

from __future__ import annotations

import gc
import random
import struct
import time
import tracemalloc
from collections.abc import Callable

from bridger.dataplane.accounting import Counters
from bridger.protocol import DropReason, Tunnel, TunnelConfig
from bridger.protocol.constants import (
    HANDSHAKE_GLOBAL_BURST,
    HANDSHAKE_GLOBAL_RATE,
    HANDSHAKE_SOURCE_BURST,
    HANDSHAKE_SOURCE_RATE,
    MAC_LEN,
    MAX_QUEUED_FRAMES,
    RATE_LIMIT_MAX_SOURCES,
    REASSEMBLY_MAX_BYTES,
    REASSEMBLY_MAX_FRAMES,
)
from bridger.protocol.cookie import CookieGenerator, RateLimiter
from bridger.protocol.messages import FRAGMENT_HEADER, INITIATION_MAC1_OFFSET, InnerType
from tests.adversarial.pair import ADDR_A, WALL_EPOCH, established_pair, keypair

#: Heap growth allowed between the warm-up point and the end of an attack.
FLAT = 256 * 1024


def heap_growth(attack: Callable[[int], None], warmup: int, total: int) -> tuple[int, int]:
    """Run ``attack(i)`` for i < total; return (bytes at warm-up, growth after it)."""
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(warmup):
            attack(i)
        gc.collect()
        base, _ = tracemalloc.get_traced_memory()
        for i in range(warmup, total):
            attack(i)
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return base, end - base


def test_never_completed_fragment_trains_keep_memory_flat() -> None:
    """15 000 authenticated first pieces of max-size frames, none ever completed."""
    pair = established_pair(seed=21)
    b = pair.b
    piece = bytes(700)

    def attack(i: int) -> None:
        plaintext = FRAGMENT_HEADER.pack(InnerType.FRAGMENT, i, 0, 3, 1522) + piece
        pair.now += 0.0001
        b.receive_datagram(pair.forge(plaintext), ADDR_A, pair.now, pair.wall())

    base, growth = heap_growth(attack, 2_000, 15_000)
    stats = b.stats(pair.now)
    print(f"fragment trains: heap {base / 1024:.0f} KiB after 2k, +{growth / 1024:.1f} KiB "
          f"after 15k; overflow drops {stats.drops['reassembly_overflow']}")
    assert stats.reassembly_in_progress <= REASSEMBLY_MAX_FRAMES
    assert b.reassembler._bytes <= REASSEMBLY_MAX_BYTES
    assert stats.drops["reassembly_overflow"] >= 15_000 - REASSEMBLY_MAX_FRAMES
    assert growth < FLAT
    assert stats.drops["internal_error"] == 0
    # the real peer still gets through while the attack's leftovers are evicted
    out = pair.a.send_frame(bytes(1514), pair.now)
    got = [f for d, _ in out.datagrams
           for f in b.receive_datagram(d, ADDR_A, pair.now, pair.wall()).frames]
    assert got == [bytes(1514)]


def test_spread_fragment_ids_and_expiry_empty_the_reassembler() -> None:
    """Random ids, counts and sizes; after the timeout nothing is left."""
    pair = established_pair(seed=22)
    rng = random.Random(1)
    b = pair.b
    for _ in range(5_000):
        count = rng.randint(2, 255)
        plaintext = FRAGMENT_HEADER.pack(
            InnerType.FRAGMENT, rng.getrandbits(32), rng.randrange(count), count,
            rng.randint(1, 1522)) + rng.randbytes(rng.randint(1, 64))
        b.receive_datagram(pair.forge(plaintext), ADDR_A, pair.now, pair.wall())
        assert len(b.reassembler) <= REASSEMBLY_MAX_FRAMES
    pair.now += 3.5
    b.tick(pair.now, pair.wall())
    assert len(b.reassembler) == 0 and b.reassembler._bytes == 0
    assert b.drops[DropReason.REASSEMBLY_TIMEOUT] > 0


def _non_key_holder_initiation(target: Tunnel) -> bytes:
    """A well-formed initiation with a valid mac1, from someone who knows only the
    target's public key (its static key is not the configured peer's)."""
    rng = random.Random(99)
    mallory, _ = keypair(rng)
    cfg = TunnelConfig(mallory, target.public_key, endpoint=("192.0.2.66", 1),
                       persistent_keepalive=0, pmtu_probing=False)
    t = Tunnel(cfg, now=0.0, wall_clock=WALL_EPOCH, random_bytes=rng.randbytes)
    out = t.send_frame(bytes(60), 0.0)
    return out.datagrams[0][0]


def _with_sender(template: bytes, sender: int, gen: CookieGenerator) -> bytes:
    """The template with a new sender index and a recomputed (valid) mac1."""
    body = template[:4] + struct.pack("<I", sender) + template[8:INITIATION_MAC1_OFFSET]
    return gen.add_macs(body + bytes(2 * MAC_LEN), 0.0)


def test_initiation_flood_from_many_sources_is_rate_limited_and_bounded() -> None:
    """6 000 valid-mac1 initiations from 6 000 addresses over 150 virtual seconds
    (twice the global rate): DH work stays within the global bucket, per-source
    state within its cap."""
    pair = established_pair(seed=23)
    b = pair.b
    template = _non_key_holder_initiation(b)
    gen = CookieGenerator(b.public_key)
    n, span = 6_000, 150.0
    start = pair.now
    cookies = 0

    def attack(i: int) -> None:
        nonlocal cookies
        pair.now = start + span * i / n
        src = (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 40000 + i % 1000)
        out = b.receive_datagram(_with_sender(template, i + 1, gen), src, pair.now, pair.wall())
        cookies += len(out.datagrams)
        assert all(d[0] == 3 and len(d) == 64 for d, _ in out.datagrams)
        if i % 500 == 0:  # the real peer's session survives
            pair.deliver(pair.a.send_frame(bytes(60), pair.now), "a")

    t0 = time.perf_counter()
    _, growth = heap_growth(attack, 2_500, n)
    elapsed = time.perf_counter() - t0
    drops = b.stats().drops
    dh = drops["auth_failed"] + drops["handshake_replay"]
    print(f"initiation flood: {n} msgs in {elapsed:.2f}s ({elapsed / n * 1e6:.0f} us each); "
          f"DH attempts {dh}, cookies {cookies}, rate_limited {drops['rate_limited']}, "
          f"buckets {len(b._per_source._buckets)}, heap +{growth / 1024:.1f} KiB")
    assert dh <= HANDSHAKE_GLOBAL_BURST + HANDSHAKE_GLOBAL_RATE * span + 1
    assert drops["handshake_mac2"] >= cookies > 0  # the real peer's rekeys may get one too
    # Buckets are made only for messages the global bucket lets through (<= 20/s
    # without cookies), so they stay far below the cap; each costs ~150 bytes.
    assert len(b._per_source._buckets) <= RATE_LIMIT_MAX_SOURCES
    assert growth < 1024 * 1024
    assert b.endpoint == ADDR_A and b.stats(pair.now).state == "up"
    assert pair.frames["b"], "the real peer's frames stopped arriving"
    assert drops["internal_error"] == 0


def test_per_source_buckets_are_capped_and_pruned() -> None:
    """100 000 distinct sources straight at the limiter: at most the cap, memory flat."""
    limiter = RateLimiter(HANDSHAKE_SOURCE_RATE, HANDSHAKE_SOURCE_BURST)
    allowed = 0

    def attack(i: int) -> None:
        nonlocal allowed
        allowed += limiter.allow(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", i * 0.001)

    _, growth = heap_growth(attack, 10_000, 100_000)
    assert len(limiter._buckets) <= RATE_LIMIT_MAX_SOURCES
    assert growth < FLAT
    assert allowed > 50_000  # pruning full buckets keeps serving new sources


def test_wrong_mac1_flood_costs_no_dh_and_gets_no_answer() -> None:
    pair = established_pair(seed=24)
    b = pair.b
    rng = random.Random(4)
    buckets = len(b._per_source._buckets)  # the real peer's, from the handshake
    t0 = time.perf_counter()
    for i in range(20_000):
        junk = bytes([1, 0, 0, 0]) + rng.randbytes(144)
        out = b.receive_datagram(junk, (f"10.9.{i >> 8 & 255}.{i & 255}", 1), pair.now,
                                 pair.wall())
        assert not out.datagrams
    per = (time.perf_counter() - t0) / 20_000
    print(f"wrong-mac1 initiation: {per * 1e6:.1f} us each")
    assert b.drops[DropReason.HANDSHAKE_MAC1] == 20_000
    assert b.drops[DropReason.AUTH_FAILED] == 0  # no Noise/DH step reached
    assert len(b._per_source._buckets) == buckets


def test_pre_session_queue_is_bounded() -> None:
    rng = random.Random(5)
    priv, _ = keypair(rng)
    _, peer = keypair(rng)
    t = Tunnel(TunnelConfig(priv, peer, endpoint=("192.0.2.9", 1), persistent_keepalive=0),
               now=0.0, wall_clock=WALL_EPOCH, random_bytes=rng.randbytes)

    def attack(i: int) -> None:
        t.send_frame(bytes(1514), 0.001 * i)

    _, growth = heap_growth(attack, 1_000, 20_000)
    assert t.stats().queued_frames == MAX_QUEUED_FRAMES
    assert t.drops[DropReason.QUEUE_FULL] == 20_000 - MAX_QUEUED_FRAMES
    assert growth < FLAT


def test_mac_tables_are_bounded_under_a_mac_flood() -> None:
    counters = Counters(mac_table_size=1024)
    peer = counters.peer("p")
    frame = bytearray(64)

    def attack(i: int) -> None:
        frame[6:12] = (0x020000000000 | i).to_bytes(6, "big")
        peer.lan_to_wan(bytes(frame), 0.0)
        peer.wan_to_lan(bytes(frame), 0.0)

    _, growth = heap_growth(attack, 5_000, 40_000)
    for macs in (counters._local, peer._remote):
        assert len(macs) == 1024 and macs.evicted == 40_000 - 1024
    assert growth < FLAT
