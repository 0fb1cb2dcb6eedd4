"""The multi-peer device: demux by index and static key, isolation between peers,
one receive path (a batch equals the same datagrams one by one)."""

from __future__ import annotations

import random
from itertools import permutations

import pytest

from bridger.protocol import (
    Device,
    DeviceConfig,
    DropReason,
    HandshakeCompleted,
    InternalError,
    Output,
    PeerConfig,
)
from tests.protocol.meshsim import MeshSim, make_frame
from tests.protocol.simnet import WALL_EPOCH, keypair


def _pairs(n: int) -> list[tuple[int, int]]:
    return list(permutations(range(n), 2))


@pytest.mark.parametrize("seed", range(3))
def test_mesh_of_four_delivers_every_frame_to_the_right_peer_only(seed: int) -> None:
    sim = MeshSim(4, seed)
    sim.traffic(20.0, 20.0, _pairs(4))
    sim.run_until(21.0)
    for site in sim.sites:
        assert site.misdelivered == 0 and site.duplicates == 0
    for src, dst in _pairs(4):
        assert sim.ratio(src, dst) > 0.97, (src, dst)  # the first frames wait for handshakes
    for site in sim.sites:
        assert all(p.stats().state == "up" for p in site.peers.values())
        assert site.device.drops[DropReason.UNKNOWN_PEER] == 0


@pytest.mark.parametrize("seed", range(3))
def test_lossy_mesh_with_restarts_never_misdelivers_and_spares_other_sessions(seed: int) -> None:
    """Site 3 restarts again and again under 5% loss; the sessions between the
    other sites are never replaced (no rekey is due within 100 s) and their
    frames keep flowing."""
    sim = MeshSim(4, seed, loss=0.05)
    others = [(a, b) for a, b in _pairs(4) if 3 not in (a, b)]
    sim.traffic(10.0, 20.0, _pairs(4))
    sessions = {(a, b): sim.sites[a].peers[b].current for a, b in others}
    assert all(kp is not None for kp in sessions.values())
    mark = sim._seq
    for k in range(6):
        sim.down.add(3)
        sim.traffic(sim.now + 5.0, 20.0, _pairs(4))
        sim.restart(3)
        sim.down.discard(3)
        sim.traffic(sim.now + 10.0, 20.0, _pairs(4))
        assert sim.now <= 100.0, k
    # After the last restart, time for two lost handshakes (5% loss each way,
    # REKEY_TIMEOUT apart) before "came back" is judged.
    sim.traffic(sim.now + 10.0, 20.0, _pairs(4))
    sim.run_until(sim.now + 2.0)
    for site in sim.sites:
        assert site.misdelivered == 0 and site.duplicates == 0
    for a, b in others:
        assert sim.sites[a].peers[b].current is sessions[(a, b)], (a, b)
        assert sim.ratio(a, b, since=mark) > 0.9, (a, b)  # 5% loss, no retransmission
    for b in range(3):  # the restarted site came back with everyone
        assert sim.sites[3].peers[b].stats().state == "up"
        assert sim.ratio(b, 3, since=sim._seq - 200) > 0.5


def _device(private: bytes, seed: int) -> Device:
    rng = random.Random(seed)
    return Device(DeviceConfig(private, pmtu_probing=False), now=0.0, wall_clock=WALL_EPOCH,
                  random_bytes=rng.randbytes)


def test_initiation_from_an_unconfigured_key_gets_no_answer_and_no_state() -> None:
    rng = random.Random(5)
    (_a_priv, a_pub), (b_priv, b_pub), (m_priv, _m_pub) = keypair(rng), keypair(rng), keypair(rng)
    b = _device(b_priv, 1)
    b.add_peer(PeerConfig(a_pub, endpoint=("192.0.2.1", 55555), name="a"), 0.0)
    mallory = _device(m_priv, 2)  # knows b's public key, b does not know hers
    m_peer = mallory.add_peer(PeerConfig(b_pub, endpoint=("192.0.2.2", 55555), name="b"), 0.0)
    init = m_peer.send_frames([bytes(60)], 0.0, Output()).datagrams[0][0]
    index_before = dict(b.index)
    out = b.receive_datagrams([init], ("203.0.113.9", 4000), 1.0, WALL_EPOCH + 1.0)
    assert not out.datagrams and not out.events and not out.frames
    assert b.drops[DropReason.UNKNOWN_PEER] == 1
    assert b.index == index_before
    (peer,) = b.peers.values()
    assert peer.next is None and peer.current is None and peer.endpoint == ("192.0.2.1", 55555)
    assert all(v == 0 for v in peer.drops.values())


def test_responder_finds_the_initiator_by_its_static_key() -> None:
    rng = random.Random(6)
    keys = [keypair(rng) for _ in range(3)]
    hub = _device(keys[0][0], 10)
    for i in (1, 2):
        hub.add_peer(PeerConfig(keys[i][1], name=f"spoke{i}"), 0.0)  # waits to be contacted
    for i in (1, 2):
        spoke = _device(keys[i][0], 10 + i)
        sp = spoke.add_peer(PeerConfig(keys[0][1], endpoint=("192.0.2.1", 1), name="hub"), 0.0)
        init = sp.send_frames([bytes(60)], 0.0, Output()).datagrams[0][0]
        addr = (f"198.51.100.{i}", 5000 + i)
        out = hub.receive_datagrams([init], addr, 0.1, WALL_EPOCH)
        assert len(out.datagrams) == 1 and out.datagrams[0][1] == addr
        peer = hub.peers[keys[i][1]]
        assert peer.next is not None and peer.endpoint == addr
        other = hub.peers[keys[3 - i][1]]
        assert other.endpoint != addr


def test_device_refuses_its_own_key_and_duplicates() -> None:
    rng = random.Random(7)
    (priv, pub), (_, other) = keypair(rng), keypair(rng)
    dev = _device(priv, 1)
    with pytest.raises(ValueError, match="own public key"):
        dev.add_peer(PeerConfig(pub), 0.0)
    dev.add_peer(PeerConfig(other), 0.0)
    with pytest.raises(ValueError, match="already configured"):
        dev.add_peer(PeerConfig(other), 0.0)


def test_removed_peer_leaves_no_index_entries_and_its_datagrams_are_unknown() -> None:
    sim = MeshSim(3, 11)
    sim.traffic(3.0, 10.0, _pairs(3))
    site0 = sim.sites[0]
    gone = site0.peers[1]
    kp = gone.current
    assert kp is not None and kp.local_index in site0.device.index
    site0.device.remove_peer(gone)
    assert all(
        (e.peer if not hasattr(e, "device") else e) is not gone
        for e in site0.device.index.values()
    )
    frame = make_frame(1, 0, 10**9, 100)
    out = sim.sites[1].peers[0].send_frames([frame], sim.now, Output())
    before = site0.device.drops[DropReason.UNKNOWN_INDEX]
    site0.device.receive_datagrams([d for d, _ in out.datagrams], sim.addrs[1], sim.now, WALL_EPOCH)
    assert site0.device.drops[DropReason.UNKNOWN_INDEX] == before + 1


def _established_pair(seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    (a_priv, a_pub), (b_priv, b_pub) = keypair(rng), keypair(rng)
    a, b = _device(a_priv, seed + 1), _device(b_priv, seed + 2)
    a_addr, b_addr = ("192.0.2.1", 55555), ("192.0.2.2", 55555)
    pa = a.add_peer(PeerConfig(b_pub, endpoint=b_addr, name="b"), 0.0)
    pb = b.add_peer(PeerConfig(a_pub, endpoint=a_addr, name="a"), 0.0)
    out = pa.send_frames([bytes(60)], 0.0, Output())
    for _ in range(4):
        back = Output()
        for d, _ in out.datagrams:
            b.receive_datagrams([d], a_addr, 0.01, WALL_EPOCH, back)
        out = Output()
        for d, _ in back.datagrams:
            a.receive_datagrams([d], b_addr, 0.02, WALL_EPOCH, out)
    assert pa.current is not None and pb.current is not None
    return a, b, pa, pb, a_addr


@pytest.mark.parametrize("seed", range(4))
def test_batch_equals_one_by_one_datagrams_events_frames_and_counters(seed: int) -> None:
    """The receive path is one: the same datagrams as one batch or one at a time
    give the same frames, replies, events and counters (roaming included)."""
    rng = random.Random(seed)
    results = []
    for batch in (True, False):
        _a, b, pa, pb, _ = _established_pair(seed)
        frames = [make_frame(0, 1, i, rng.randint(60, 3000)) for i in range(20)]
        rng.seed(seed)
        sealed = pa.send_frames(frames, 1.0, Output()).datagrams
        dgrams = [d for d, _ in sealed] + [sealed[0][0]]  # one replay
        dgrams.insert(5, b"\x04garbage" * 4)
        new_addr = ("203.0.113.7", 40000)  # the peer roamed
        if batch:
            out = b.receive_datagrams(dgrams, new_addr, 1.5, WALL_EPOCH + 1.5)
        else:
            out = Output()
            for d in dgrams:
                b.receive_datagrams([d], new_addr, 1.5, WALL_EPOCH + 1.5, out)
        results.append((
            out.frames, out.datagrams, [type(e).__name__ + repr(e) for e in out.events],
            pb.stats(1.5), dict(b.drops), pb.endpoint, [(p.name, s) for p, s in out.runs],
        ))
    assert results[0] == results[1]
    assert results[0][5] == ("203.0.113.7", 40000)


def test_oversized_whole_frame_from_the_peer_is_a_counted_drop() -> None:
    _a, b, pa, pb, a_addr = _established_pair(3)
    kp = pa.current
    assert kp is not None
    from bridger.protocol.aead import seal_transport
    from bridger.protocol.messages import TRANSPORT_NONCE

    big = b"\x01" + bytes(b.config.max_frame + 1)  # FRAME inner type, one byte too many
    datagram = seal_transport(4, kp.remote_index, kp.send_counter, big,
                              TRANSPORT_NONCE.pack(kp.send_counter), kp.send_key)
    out = b.receive_datagrams([datagram], a_addr, 1.0, WALL_EPOCH + 1.0)
    assert not out.frames
    assert pb.drops[DropReason.FRAME_TOO_BIG] == 1


def test_an_exception_in_the_core_is_counted_and_reported_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _a, b, pa, pb, a_addr = _established_pair(4)

    def broken(*args: object) -> int:
        raise RuntimeError("boom in payload handling")

    monkeypatch.setattr(type(pb), "receive_payload", broken)
    kp = pa.current
    assert kp is not None
    from bridger.protocol.aead import seal_transport
    from bridger.protocol.messages import TRANSPORT_NONCE

    def probe(counter: int) -> bytes:
        return seal_transport(4, kp.remote_index, counter, b"\x07" + bytes(8),
                              TRANSPORT_NONCE.pack(counter), kp.send_key)

    out = b.receive_datagrams([probe(100), probe(101)], a_addr, 1.0, WALL_EPOCH + 1.0)
    errors = [e for e in out.events if isinstance(e, InternalError)]
    assert len(errors) == 1  # rate-limited: the second one is counted, not reported
    assert "RuntimeError: boom in payload handling" in errors[0].detail
    assert "Traceback" in errors[0].detail and errors[0].peer == "a"
    assert b.drops[DropReason.INTERNAL_ERROR] == 2
    later = b.receive_datagrams([probe(102)], a_addr, 20.0, WALL_EPOCH + 20.0)
    (report,) = [e for e in later.events if isinstance(e, InternalError)]
    assert report.suppressed == 1


def test_handshake_events_name_their_peer() -> None:
    sim = MeshSim(3, 12)
    sim.traffic(3.0, 5.0, _pairs(3))
    for site in sim.sites:
        names = {e.peer for _, e in site.events if isinstance(e, HandshakeCompleted)}
        assert names == {p.name for p in site.peers.values()}


def test_initiate_starts_one_handshake_even_without_keepalive() -> None:
    rng = random.Random(31)
    (a_priv, _), (_, b_pub) = keypair(rng), keypair(rng)
    a = _device(a_priv, 32)
    peer = a.add_peer(PeerConfig(b_pub, persistent_keepalive=0, name="b"), 0.0)
    out = Output()
    peer.initiate(0.0, out)
    assert not out.datagrams  # no endpoint yet: nothing to contact
    peer.set_endpoint(("192.0.2.2", 55555), 0.0, out)
    assert not out.datagrams  # no keepalive, no frame: set_endpoint alone is quiet
    peer.initiate(0.0, out)
    peer.initiate(0.1, out)  # one under way: not a second
    assert len(out.datagrams) == 1 and out.datagrams[0][0][0] == 1


def test_a_local_refusal_naming_no_port_bounds_every_peer_at_that_address() -> None:
    """The kernel names no port when the local interface refused a datagram
    of an unconnected socket: the report is news for every peer at that
    address (the route is theirs alike), and none for a peer elsewhere; an
    ICMP report about port 0 names nobody."""
    rng = random.Random(1)
    dev = Device(DeviceConfig(keypair(rng)[0]), now=0.0, wall_clock=WALL_EPOCH,
                 random_bytes=rng.randbytes)  # (probing)
    near = [dev.add_peer(PeerConfig(keypair(rng)[1], endpoint=("192.0.2.7", 55555 + i),
                                    name=f"near{i}"), 0.0) for i in range(2)]
    far = dev.add_peer(PeerConfig(keypair(rng)[1], endpoint=("192.0.2.8", 55555), name="far"),
                       0.0)
    dev.path_mtu_report(("192.0.2.7", 0), 1400, 1.0)  # (not local: no news)
    assert [p.pmtu.local for p in (*near, far)] == [None, None, None]
    dev.path_mtu_report(("192.0.2.7", 0), 1400, 1.0, local=True)
    assert [p.pmtu.local for p in (*near, far)] == [1400, 1400, None]
