"""The native lane against the pure-Python data path (tests/native/lanesim.py).

The same tap reads and the same datagrams go to site A twice, once through the
pure-Python forwarder and once through the native lane (with what it hands
over run by the real NativeLane on the native side's own Python core).  Both
must send the same datagrams, byte for byte, write the same frames to the tap,
and end with the same counters (core, status, MAC tables) and timers.  The
protocol's properties hold on the lane's receive path: replays, flipped bits,
unknown indexes and other senders are rejected and counted as before.
"""

from __future__ import annotations

import os
import random
import struct

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridger.fastpath.vnet import PLAIN_HDR, VNET_HDR, GsoType, VnetFlag
from bridger.guard.policy import GuardConfig
from bridger.native import lane
from bridger.native.contract import take_punts
from tests.guard.frames import BROADCAST, HOST_A, HOST_B, eth, ipv4, tcp, udp
from tests.native.test_coalesce_udp import datagram

pytestmark = pytest.mark.skipif(lane is None, reason="bridger.native._lane is not built")

ETH_IP, ETH_ARP, ETH_IP6 = 0x0800, 0x0806, 0x86DD
UNKNOWN = bytes.fromhex("02000000ffff")
SLOW = settings(max_examples=int(os.environ.get("LANE_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def test_extension_built_when_root() -> None:
    if os.geteuid() == 0:
        assert lane is not None


def run(fn, **twin_kwargs):  # type: ignore[no-untyped-def]
    """Run ``fn(twin)`` in a Trio run with a mock clock (the forwarders read it);
    ``twin_kwargs`` configure the Twin."""
    from tests.native.lanesim import Twin

    result = []

    async def main() -> None:
        twin = Twin(**twin_kwargs)
        try:
            result.append(fn(twin))
        finally:
            twin.close()

    trio.run(main, clock=trio.testing.MockClock())
    return result[0]


# ---- frames ----------------------------------------------------------------------------

def frame_to(dst: bytes, size: int, src: bytes = HOST_A, kind: str = "udp",
             seed: int = 0) -> bytes:
    body = random.Random(seed).randbytes(max(0, size))
    if kind == "arp":
        return eth(dst, ETH_ARP, body[:28].ljust(28, b"\0"), src=src)
    if kind == "tcp":
        return eth(dst, ETH_IP, ipv4(6, tcp() + body), src=src)
    return eth(dst, ETH_IP, ipv4(17, udp(40000, 5201, body)), src=src)


def tcp_superframe(payload: int, seq: int = 1000, v4: bool = True, src: bytes = HOST_A,
                   dst: bytes = HOST_B) -> bytes:
    """A TSO superframe as the kernel hands it to tap, virtio-net header first."""
    options = bytes([1, 1, 8, 10]) + struct.pack(">II", 1, 2)
    data = random.Random(seq).randbytes(payload)
    seg = struct.pack(">HHIIBBHHH", 40000, 5201, seq, 7, (20 + len(options)) // 4 << 4, 0x18,
                      502, 0, 0) + options + data
    if v4:
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0x1234, 0x4000, 64, 6, 0,
                         bytes([192, 168, 1, 11]), bytes([192, 168, 1, 21]))
        frame, l4, gso = eth(dst, ETH_IP, ip + seg, src=src), 34, GsoType.TCPV4
    else:
        ip = struct.pack(">IHBB16s16s", 0x60000000, len(seg), 6, 64, bytes(15) + b"\1",
                         bytes(15) + b"\2")
        frame, l4, gso = eth(dst, ETH_IP6, ip + seg, src=src), 54, GsoType.TCPV6
    hdr = VNET_HDR.pack(VnetFlag.NEEDS_CSUM, gso, l4 + 32, 1448, l4, 16)
    return hdr + frame


def plain(frame: bytes) -> bytes:
    return PLAIN_HDR + frame


def partial_udp(dst: bytes, size: int) -> bytes:
    frame = frame_to(dst, size)
    return VNET_HDR.pack(VnetFlag.NEEDS_CSUM, 0, 0, 0, 34, 6) + frame


# ---- comparison ---------------------------------------------------------------------------

def same_everything(twin) -> None:  # type: ignore[no-untyped-def]
    from tests.native.lanesim import counter_figures, drain, peer_figures, timer_shape

    twin.nat.sync()
    assert drain(twin.nat.wan) == drain(twin.ref.wan), "datagrams differ"
    assert drain(twin.nat.tap) == drain(twin.ref.tap), "tap writes differ"
    assert peer_figures(twin.nat.peer) == peer_figures(twin.ref.peer)
    assert counter_figures(twin.nat.fwd) == counter_figures(twin.ref.fwd)
    assert timer_shape(twin.nat.peer) == timer_shape(twin.ref.peer)
    assert twin.nat.fwd.device.drops == twin.ref.fwd.device.drops
    assert twin.nat.fwd.device.rx_datagrams == twin.ref.fwd.device.rx_datagrams


def both_tap(twin, reads: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    twin.ref.tap_reads(reads)
    twin.nat.tap_reads(reads)


def both_wire(twin, datagrams: list[bytes], one_by_one: bool = True) -> None:  # type: ignore[no-untyped-def]
    twin.ref.datagrams(datagrams, one_by_one)
    twin.nat.datagrams(datagrams, one_by_one)


def learn_host_b(twin) -> None:  # type: ignore[no-untyped-def]
    """Site B's host talks first, so both copies know HOST_B is behind B."""
    both_wire(twin, twin.seal_from_b([frame_to(HOST_A, 100, src=HOST_B)]))
    twin.nat.sync()


# ---- scenarios -----------------------------------------------------------------------------

def test_ordinary_traffic_is_forwarded_natively_with_identical_results() -> None:
    def scenario(twin) -> None:  # type: ignore[no-untyped-def]
        learn_host_b(twin)
        reads = [plain(frame_to(HOST_B, n, seed=n)) for n in (0, 46, 100, 1000, 1350)]
        reads += [partial_udp(HOST_B, 200), tcp_superframe(20000), tcp_superframe(3000, v4=False),
                  plain(frame_to(HOST_B, 40, kind="arp"))]
        both_tap(twin, reads)
        assert twin.nat.handovers == 0  # all of it took the native path
        frames = [frame_to(HOST_A, n, src=HOST_B, seed=n) for n in (10, 500, 1350)]
        both_wire(twin, twin.seal_from_b(frames), one_by_one=False)
        assert twin.nat.handovers == 0
        same_everything(twin)

    run(scenario)


def test_tcp_segments_from_the_peer_are_joined_as_python_joins_them() -> None:
    def scenario(twin) -> None:  # type: ignore[no-untyped-def]
        learn_host_b(twin)
        # B's tap gave it a superframe: it seals the segments as FRAME_CSUM.
        from bridger.fastpath.segment import segment_tcp
        from bridger.fastpath.vnet import decode_vnet_hdr_untrusted

        sf = tcp_superframe(30000, src=HOST_B, dst=HOST_A)
        segments, start = segment_tcp(sf[10:], decode_vnet_hdr_untrusted(sf), 1400)
        datagrams = twin.seal_from_b(segments, (start, 16))
        both_wire(twin, datagrams, one_by_one=False)
        assert twin.nat.handovers == 0
        same_everything(twin)

    run(scenario)


def test_what_the_lane_leaves_to_python_ends_the_same() -> None:
    """Frames to fragment, runts, bad virtio headers, a UDP superframe: handed
    over, and the results are the same.  A broadcast and an unknown
    destination pass on the storm-bucket tokens the lane holds (Guard.lend)."""
    def scenario(twin) -> None:  # type: ignore[no-untyped-def]
        learn_host_b(twin)
        reads = [plain(frame_to(BROADCAST, 60, kind="arp")), plain(frame_to(UNKNOWN, 100)),
                 plain(frame_to(HOST_B, 1480)), plain(b"\x02" * 9), b"\x00" * 5,
                 VNET_HDR.pack(0, GsoType.UDP_L4, 0, 0, 0, 0) + frame_to(HOST_B, 3000),
                 plain(frame_to(HOST_B, 300))]
        for read in reads:  # one pass each: each one is handed over on its own
            both_tap(twin, [read])
        assert twin.nat.handovers == 4  # all but the flooded two and an ordinary frame
        same_everything(twin)

    run(scenario)


def test_flooded_frames_pass_on_lent_tokens_and_the_budget_still_holds() -> None:
    """Issue 26: the lane passes flooded frames itself on tokens Python's storm
    buckets lent it, and comes to Python when it has none; what passes, what is
    dropped and the drop counts are the pure-Python path's, to the frame."""
    from tests.native.lanesim import counter_figures

    def scenario(twin) -> None:  # type: ignore[no-untyped-def]
        learn_host_b(twin)
        flood = [plain(frame_to(BROADCAST, 60 + k, seed=k)) for k in range(30)]
        arp = [plain(frame_to(BROADCAST, 28, kind="arp", seed=k)) for k in range(12)]
        for read in flood[:10] + arp + flood[10:]:
            both_tap(twin, [read])
        handovers = twin.nat.handovers
        assert 0 < handovers < 42 - 16, handovers  # most paid by the lane's tokens
        assert twin.nat.fwd.device.drops == twin.ref.fwd.device.drops
        same_everything(twin)
        drops = counter_figures(twin.ref.fwd)["drops"]
        assert drops.get("storm", 0) > 0, drops  # the budget bit

    run(scenario, guard=GuardConfig(flood_rate=24))


def test_udp_runs_from_the_peer_are_joined_as_python_joins_them() -> None:
    def scenario(twin) -> None:  # type: ignore[no-untyped-def]
        from tests.native.test_coalesce_udp import datagram

        learn_host_b(twin)
        run = [datagram(bytes([k]) * 64, ident=500 + k, dst_mac=HOST_A) for k in range(30)]
        both_wire(twin, twin.seal_from_b(run, (34, 6)), one_by_one=False)
        assert twin.nat.handovers == 0
        same_everything(twin)

    run(scenario, udp_join=True)


def test_receive_properties_hold_on_the_lane() -> None:
    """Replays, flipped bits, an unknown index, another sender, garbage,
    keepalives and fragments: rejected or handled exactly as Python does."""
    def scenario(twin) -> None:  # type: ignore[no-untyped-def]
        learn_host_b(twin)
        good = twin.seal_from_b([frame_to(HOST_A, 200, src=HOST_B, seed=k) for k in range(4)])
        rng = random.Random(3)
        flipped = []
        for d in good:
            b = bytearray(d)
            bit = rng.randrange(len(b) * 8)
            b[bit // 8] ^= 1 << (bit % 8)
            flipped.append(bytes(b))
        unknown = bytearray(good[0])
        unknown[4:8] = b"\x01\x02\x03\x04"
        big = twin.seal_from_b([frame_to(HOST_A, 1480, src=HOST_B)])  # fragments
        keepalive = []
        from bridger.protocol import Output

        out = Output()
        twin.b_peer.send_keepalive(0.0, out)
        keepalive = [d for d, _ in out.datagrams]
        sequence = good + good[:2] + flipped + [bytes(unknown), b"\x04\0\0\0" + bytes(40),
                                                  b"junk"] + big + keepalive
        both_wire(twin, sequence)
        same_everything(twin)
        drops = twin.nat.peer.drops
        from bridger.protocol import DropReason

        assert drops[DropReason.REPLAY] == 2
        assert twin.nat.peer.stats().reassembled == 1

    run(scenario)


def _plain_tap(twin) -> None:  # type: ignore[no-untyped-def]
    learn_host_b(twin)
    both_tap(twin, [frame_to(HOST_B, n, seed=n) for n in (0, 60, 1000, 1439, 1440)])
    from bridger.fastpath.segment import segment_tcp
    from bridger.fastpath.vnet import decode_vnet_hdr_untrusted

    sf = tcp_superframe(5000, src=HOST_B, dst=HOST_A)
    segments, start = segment_tcp(sf[10:], decode_vnet_hdr_untrusted(sf), 1400)
    both_wire(twin, twin.seal_from_b(segments, (start, 16)), one_by_one=False)
    same_everything(twin)


def test_without_offloads_checksums_are_completed_as_python_does() -> None:
    run(_plain_tap, vnet=False)


def _guarded(twin) -> None:  # type: ignore[no-untyped-def]
    learn_host_b(twin)
    tagged = eth(HOST_B, 0x8100, struct.pack(">H", 5) + struct.pack(">H", ETH_IP)
                 + ipv4(17, udp(1, 2, b"x" * 50)))
    other_vlan = eth(HOST_B, 0x8100, struct.pack(">H", 9) + struct.pack(">H", ETH_IP)
                     + ipv4(17, udp(1, 2, b"x" * 50)))
    dhcp = eth(BROADCAST, ETH_IP, ipv4(17, udp(67, 68, bytes(240))))
    reads = [plain(f) for f in (tagged, other_vlan, dhcp, frame_to(HOST_B, 100),
                                frame_to(HOST_B, 100, kind="tcp"))]
    both_tap(twin, reads)
    both_wire(twin, twin.seal_from_b([tagged, other_vlan, dhcp, frame_to(HOST_A, 80, src=HOST_B)]))
    same_everything(twin)


def test_guards_with_vlan_list_and_dhcp_ra_local_end_the_same() -> None:
    run(_guarded, guard=GuardConfig(dhcp="local", ra="local", vlans=(5, 7), untagged=True))


# ---- generated -------------------------------------------------------------------------------

READS = st.one_of(
    st.tuples(st.sampled_from([HOST_B, UNKNOWN, BROADCAST]), st.integers(0, 1600),
              st.sampled_from(["udp", "tcp", "arp"])).map(
        lambda t: plain(frame_to(t[0], t[1], kind=t[2]))),
    st.integers(0, 40000).map(tcp_superframe),
    st.integers(0, 1300).map(lambda n: partial_udp(HOST_B, n)),
    st.binary(max_size=80),
)
WIRE = st.tuples(st.sampled_from(["frame", "csum", "flip", "replay", "junk", "udprun"]),
                 st.integers(0, 1600), st.integers(0, 10**6))


CONFIGS = {
    "offload": {"vnet": True},
    "udp-joins": {"vnet": True, "udp_join": True},
    "no-offload": {"vnet": False},
    "no-guard": {"guard": None},
    "guards-local": {"guard": GuardConfig(dhcp="local", ra="local", vlans=(1, 5),
                                          untagged=True, flood_rate=50)},
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@SLOW
@given(st.lists(READS, max_size=12), st.lists(WIRE, max_size=12), st.booleans())
def test_generated_traffic_ends_the_same(config: str, reads: list[bytes],
                                         wire: list[tuple[str, int, int]], batch: bool) -> None:
    def scenario(twin) -> None:  # type: ignore[no-untyped-def]
        learn_host_b(twin)
        both_tap(twin, reads)
        datagrams: list[bytes] = []
        for kind, size, seed in wire:
            frame = frame_to(HOST_A, size, src=HOST_B, seed=seed)
            if kind == "udprun":  # a UDP flow's datagrams, partial checksums, ids counting up
                run = [datagram(bytes([k]) * (size % 200), ident=seed + k, dst_mac=HOST_A)
                       for k in range(1 + seed % 20)]
                datagrams += twin.seal_from_b(run, (34, 6))
                continue
            if kind == "junk":
                datagrams.append(random.Random(seed).randbytes(size % 100))
                continue
            sealed = twin.seal_from_b([frame], (34, 6) if kind == "csum" else None)
            if kind == "flip" and sealed:
                b = bytearray(sealed[0])
                b[seed % len(b)] ^= 1 << (seed % 8)
                sealed[0] = bytes(b)
            datagrams += sealed
            if kind == "replay":
                datagrams += sealed
        both_wire(twin, datagrams, one_by_one=not batch)
        same_everything(twin)

    run(scenario, **CONFIGS[config])


# ---- issue 21: findings of a read of the native code -------------------------------------

DHCP_CLIENT = eth(BROADCAST, ETH_IP, ipv4(17, udp(68, 67, bytes(240))), src=HOST_B)


def test_a_frame_handed_over_before_a_reload_never_reaches_the_port_reusing_its_slot() -> None:
    """A frame from site B that the inbound guard must see (a DHCP client
    message with ``dhcp = "local"``) is opened by the lane and queued as a
    hand-over naming B's port slot.  Before Python runs it, a reload removes
    B and adds site C, which gets the freed slot.  The hand-over named only
    the slot, so Python wrote B's frame into C's tap.  Now freeing the slot
    takes the port out of its queued hand-overs: the frame reaches no tap, and
    the UDP socket handed over with it is still given back."""
    def scenario(twin) -> None:  # type: ignore[no-untyped-def]
        from tests.native.lanesim import drain

        learn_host_b(twin)
        nat = twin.nat
        lane_obj = nat.lane.lane
        addr = nat.fwd.udp.sockaddr(nat.wan.getsockname()[:2])
        assert lane_obj.udp_receive(twin.seal_from_b([DHCP_CLIENT]), addr) == 1
        assert lane_obj.held == [-1]  # handed over: the frame, with the socket
        nat.lane.remove_port(nat.port)  # the reload: B goes...
        del nat.fwd.ports[nat.peer]
        port_c, tap_c = twin.new_port(nat, "c")  # ...and C comes
        try:
            assert nat.lane.add_port(port_c) == nat.ident  # the same slot, at once
            with nat.lane.held():
                nat.lane._handle(take_punts(lane_obj))
            assert drain(tap_c) == [], "site B's frame was written into site C's tap"
            assert lane_obj.held == []
        finally:
            nat.lane.remove_port(port_c)
            os.close(port_c.fd)
            tap_c.close()

    run(scenario, guard=GuardConfig(dhcp="local"))


def test_a_receive_cut_short_is_counted_as_udp_truncated() -> None:
    """The lane's loop drops a receive the kernel cut short (MSG_TRUNC) and
    counts it; the sync turns the count into the device drop ``udp_truncated``
    (docs/status.md), where before the first 16 KiB were taken as a datagram."""
    def scenario(twin) -> None:  # type: ignore[no-untyped-def]
        import select
        import threading

        from bridger.status.document import DeviceInfo, status_document

        nat = twin.nat
        lane_obj = nat.lane.lane
        before = nat.fwd.device.rx_datagrams
        thread = threading.Thread(target=lane_obj.run, daemon=True)
        thread.start()
        try:
            target = ("127.0.0.1", nat.fwd.udp.sock.getsockname()[1])
            nat.wan.sendto(b"\x04" + bytes(20000), target)
            # a cookie reply for no one: queued for Python once the first is done
            nat.wan.sendto(b"\x03\0\0\0" + bytes(60), target)
            assert select.select([lane_obj.punt_fd], [], [], 10.0)[0]
        finally:
            lane_obj.stop()
            thread.join(10.0)
        assert not thread.is_alive()
        with nat.lane.held():
            nat.lane._handle(take_punts(lane_obj))
        nat.sync()
        snap = status_document(nat.fwd.counters.snapshot(0.0), DeviceInfo(), [])
        assert snap["device_drops"]["udp_truncated"] == 1
        assert nat.fwd.device.rx_datagrams == before + 1  # the cookie reply only

    run(scenario)


def test_a_mac_evicted_from_pythons_table_is_forgotten_by_the_lane() -> None:
    """The guards' ``known`` is the peer's remote MAC table, an LRU of
    ``mac_table`` entries; the lane kept its own set (2048 slots, never aged).
    A MAC the LRU evicted stayed known to the lane, so frames to it went out
    natively as known unicast, where Python counts them against the flood
    budget.  Now every eviction tells the lane to forget the MAC: with a table
    of 4 and a budget of 2 frames, the frames to the evicted MAC are flooded
    and dropped the same way on both paths."""
    macs = [bytes([2, 0, 0, 0, 0x10, k]) for k in range(5)]

    def scenario(twin) -> None:  # type: ignore[no-untyped-def]
        frames = [frame_to(HOST_A, 60, src=mac, seed=k) for k, mac in enumerate(macs)]
        both_wire(twin, twin.seal_from_b(frames))
        twin.nat.sync()  # the lane's MAC log into the table: macs[0] is evicted
        assert macs[0] not in twin.nat.port.counters.remote_macs
        both_tap(twin, [plain(frame_to(macs[0], 100, seed=k)) for k in range(6)])
        same_everything(twin)
        from tests.native.lanesim import counter_figures

        assert counter_figures(twin.ref.fwd)["drops"]["storm"] > 0  # flooded, over budget
        lane_obj = twin.nat.lane.lane
        assert not lane_obj.knows(twin.nat.ident, macs[0])
        assert all(lane_obj.knows(twin.nat.ident, mac) for mac in macs[1:])

    run(scenario, mac_table=4, guard=GuardConfig(flood_rate=2))


def test_sessions_the_core_lets_go_of_are_wiped_when_the_lane_lets_go_too() -> None:
    """Issue 21: "zeroes its keys" held only at the native sessions' dealloc.
    When the core drops its keypairs (here all of them, as after 540 s of
    silence) the next push takes them out of the lane and wipes them."""
    def scenario(twin) -> None:  # type: ignore[no-untyped-def]
        from bridger.protocol import Output

        nat = twin.nat
        session = nat.peer.current.session
        assert not session.wiped
        nat.peer.zero_keys(Output())
        nat.lane.push(0.0)
        assert session.wiped and session.send_key == bytes(32)
        assert not nat.lane.lane.tap_read(nat.ident, plain(frame_to(HOST_B, 60)))

    run(scenario)


def test_a_peer_removed_by_a_reload_has_its_sessions_wiped() -> None:
    """``live.retire_peer`` (removal, replacement, a new private key): once the
    peer's tasks stopped (its port is out of the lane), its sessions' native
    keys are zeroed, not left for the collector."""
    def scenario(twin) -> None:  # type: ignore[no-untyped-def]
        from bridger.service.live import retire_peer

        nat = twin.nat
        session = nat.peer.current.session
        nat.lane.remove_port(nat.port)
        retire_peer(nat.fwd.device, nat.peer)
        assert session.wiped and session.receive_key == bytes(32)
        assert nat.peer.current is None

    run(scenario)


# ---- issue 21, part B: what the WAN sends that no one may answer -----------------------------

def test_an_attackers_datagrams_are_dropped_by_the_lane_as_python_drops_them() -> None:
    """From an address that is not the peer's: replays and bit-flips of the
    peer's datagrams, junk, short datagrams, an unknown index, initiations with
    a wrong mac1.  The lane counts each where Python would (same core and
    status counters) without handing the socket over; then an authentic
    datagram from that address (the peer roaming) is handed over, and both
    paths move the endpoint and deliver its frame the same way."""
    def scenario(twin) -> None:  # type: ignore[no-untyped-def]
        from bridger.protocol import DropReason
        from tests.native.lanesim import LOCALHOST, _udp

        learn_host_b(twin)
        good = twin.seal_from_b([frame_to(HOST_A, 200, src=HOST_B, seed=k) for k in range(3)])
        both_wire(twin, good)
        flipped = bytearray(good[1])
        flipped[40] ^= 4
        unknown = bytearray(good[0])
        unknown[4:8] = b"\x09\x09\x09\x09"
        bad_mac1 = b"\x01\0\0\0" + random.Random(5).randbytes(144)
        attack = [*good, bytes(flipped), bytes(unknown), b"", b"\x04\0", b"\x02" * 92,
                  bad_mac1, b"\x05\0\0\0" + bytes(40)]
        attacker = _udp()
        try:
            for side in (twin.ref, twin.nat):
                side.datagrams(attack, one_by_one=True, sender=attacker)
            assert twin.nat.handovers == 0  # all of it dropped by the lane itself
            same_everything(twin)
            drops = twin.nat.peer.drops
            assert drops[DropReason.REPLAY] == 3 and drops[DropReason.AUTH_FAILED] == 1
            device = twin.nat.fwd.device.drops
            assert device[DropReason.HANDSHAKE_MAC1] == 1 and device[DropReason.UNKNOWN_INDEX] == 1
            assert device[DropReason.MALFORMED] == 4
            roamed = twin.seal_from_b([frame_to(HOST_A, 300, src=HOST_B, seed=9)])
            for side in (twin.ref, twin.nat):
                side.datagrams(roamed, one_by_one=True, sender=attacker)
            assert twin.nat.handovers == 1
            same_everything(twin)
            assert twin.nat.peer.endpoint == (LOCALHOST, attacker.getsockname()[1])
        finally:
            attacker.close()

    run(scenario)


def test_a_valid_handshake_reaches_python_through_the_queue_without_the_socket() -> None:
    """Site B's initiation (a rekey) passes the lane's mac1 check, goes to
    Python through the handshake queue (the socket stays the lane's), and is
    answered exactly as the pure-Python path answers it."""
    def scenario(twin) -> None:  # type: ignore[no-untyped-def]
        from bridger.protocol import Output

        learn_host_b(twin)
        out = Output()
        twin.b_peer.start_handshake(1.0, out)  # a rekey, whatever the timers say
        initiation = [d for d, _ in out.datagrams]
        assert len(initiation) == 1 and initiation[0][0] == 1
        both_wire(twin, initiation)
        assert twin.nat.handovers == 0  # queued, nothing held
        from tests.native.lanesim import drain

        answers = drain(twin.nat.wan)
        assert answers == drain(twin.ref.wan)  # the same response, byte for byte
        assert [d[0] for d in answers] == [2]
        same_everything(twin)

    run(scenario)


@pytest.mark.parametrize(("count", "lag", "cookies"), [
    (33, float("inf"), 0),  # a burst the core keeps up with: answered, no cookie
    (33, 0.0, 33),  # a backlog of 1/8 of the queue the lag did not bring down
    (31, 0.0, 0),  # below 1/8 of the queue: no backlog, however slow
])
def test_under_load_means_a_backlog_not_a_burst(monkeypatch: pytest.MonkeyPatch, count: int,
                                                lag: float, cookies: int) -> None:
    """Issue 26: any take of 32 handshake messages put the device under load
    for a second, so a hub whose spokes restarted at once answered them with
    cookie replies, and each spoke waited for its retry.  Now a take is load
    only while UNDER_LOAD_QUEUE of it still waits once UNDER_LOAD_LAG went into
    it (``backlogged``; the lag is set here, the machine's speed is not)."""
    from bridger.native.contract import HandshakePunt
    from bridger.protocol import Output
    from bridger.shell import lane as shell_lane

    assert shell_lane.UNDER_LOAD_QUEUE == 32
    monkeypatch.setattr(shell_lane, "UNDER_LOAD_LAG", lag)

    def scenario(twin) -> None:  # type: ignore[no-untyped-def]
        nat = twin.nat
        source = ("127.0.0.1", nat.wan.getsockname()[1])
        punts = []
        for _ in range(count):
            out = Output()
            twin.b_peer.start_handshake(1.0, out)
            punts.append(HandshakePunt(out.datagrams[0][0], source))
        before = nat.fwd.device.cookies_sent
        nat.lane._handshakes(punts)
        assert nat.fwd.device.cookies_sent - before == cookies
        from tests.native.lanesim import drain

        assert [d[0] for d in drain(nat.wan)].count(3) == cookies

    run(scenario)


@pytest.mark.parametrize(("waiting", "spent", "loaded"), [
    (256, 0.0, False), (32, 0.099, False), (31, 10.0, False), (32, 0.1, True), (256, 1.0, True),
])
def test_backlogged_table(waiting: int, spent: float, loaded: bool) -> None:
    from bridger.shell.lane import backlogged

    assert backlogged(waiting, spent) is loaded
