"""The core's batch calls give the same result as one call per frame."""

from __future__ import annotations

import random

from bridger.protocol import Output, Tunnel, TunnelConfig, public_key

A_ADDR, B_ADDR = ("192.0.2.1", 55555), ("198.51.100.2", 55555)


def pair(seed: int) -> tuple[Tunnel, Tunnel]:
    rng = random.Random(seed)
    ka, kb = rng.randbytes(32), rng.randbytes(32)
    a = Tunnel(TunnelConfig(ka, public_key(kb), endpoint=B_ADDR, pmtu_probing=False),
               now=0.0, wall_clock=1e9, random_bytes=rng.randbytes)
    b = Tunnel(TunnelConfig(kb, public_key(ka), pmtu_probing=False), now=0.0, wall_clock=1e9,
               random_bytes=rng.randbytes)
    init = a.send_frame(b"\0" * 64, 0.0).datagrams[0][0]
    resp = b.receive_datagram(init, A_ADDR, 0.0, 1e9).datagrams[0][0]
    for d, _ in a.receive_datagram(resp, B_ADDR, 0.0, 1e9).datagrams:
        b.receive_datagram(d, A_ADDR, 0.0, 1e9)
    return a, b


FRAMES = [bytes([i]) * (60 + 97 * i) for i in range(15)]  # up to 1418 bytes: all fit


def test_send_frames_equals_send_frame_per_frame() -> None:
    for csum in (None, (34, 16)):
        a1, _ = pair(1)
        a2, _ = pair(1)
        one = Output()
        for f in FRAMES:
            a1.send_frame(f, 1.0, one, csum)
        batch = a2.send_frames(FRAMES, 1.0, Output(), csum)
        assert batch.datagrams == one.datagrams
        assert a1.stats().tx_bytes == a2.stats().tx_bytes
        assert a1.stats().frames_sent == a2.stats().frames_sent


def test_batch_receive_delivers_frames_and_partial_checksums_in_order() -> None:
    a, b = pair(2)
    out = a.send_frames(FRAMES[:5], 1.0, Output(), (34, 16))
    a.send_frames(FRAMES[5:], 1.0, out)
    got = b.receive_datagrams([d for d, _ in out.datagrams], B_ADDR, 1.0, 1e9)
    assert got.frames == FRAMES
    assert got.csum == dict.fromkeys(range(5), (34, 16))
    # replayed: every datagram dropped, nothing delivered
    again = b.receive_datagrams([d for d, _ in out.datagrams], B_ADDR, 1.0, 1e9)
    assert again.frames == [] and b.stats().drops["replay"] == len(FRAMES)


def test_send_frames_falls_back_for_frames_that_need_fragments() -> None:
    a, b = pair(3)
    frames = [b"x" * 1500, b"y" * 100]
    out = a.send_frames(frames, 1.0, Output(), (34, 16))
    assert len(out.datagrams) == 3  # 1500 bytes fragmented (checksum completed), then one
    got = b.receive_datagrams([d for d, _ in out.datagrams], B_ADDR, 1.0, 1e9)
    assert [len(f) for f in got.frames] == [1500, 100]
    assert got.csum == {1: (34, 16)}


def test_batch_receive_matches_one_by_one_on_a_mixed_batch() -> None:
    from bridger.protocol.messages import TRANSPORT_HEADER

    def mixed(a: Tunnel) -> list[bytes]:
        out = a.send_frames(FRAMES[:3], 1.0, Output(), (34, 16))
        a.send_frame(b"f" * 1500, 1.0, out)  # two FRAGMENT datagrams
        data = [d for d, _ in out.datagrams]
        tampered = bytearray(data[0])
        tampered[-1] ^= 1
        unknown = TRANSPORT_HEADER.pack(4, 12345, 99) + bytes(40)
        return [*data, bytes(tampered), unknown, data[1], b"\x01\x00"]

    a1, b1 = pair(4)
    a2, b2 = pair(4)
    batch = b1.receive_datagrams(mixed(a1), B_ADDR, 1.0, 1e9)
    single = Output()
    for d in mixed(a2):
        single.extend(b2.receive_datagram(d, B_ADDR, 1.0, 1e9))
    assert batch.frames == single.frames
    assert batch.csum == single.csum
    assert [len(f) for f in batch.frames] == [len(f) for f in FRAMES[:3]] + [1500]
    s1, s2 = b1.stats(), b2.stats()
    assert s1.drops == s2.drops
    assert s1.drops["auth_failed"] == 1 and s1.drops["replay"] == 1
    assert s1.drops["unknown_index"] == 1 and s1.drops["malformed"] == 1
    assert (s1.rx_datagrams, s1.rx_bytes, s1.frames_received) == (
        s2.rx_datagrams, s2.rx_bytes, s2.frames_received)
