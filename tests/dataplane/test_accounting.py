"""The data plane's accounting, read through its snapshots: frame kinds, both MAC
sides, per-peer counts and device totals, bounded MAC tables, drops, with real
frame bytes."""

from __future__ import annotations

import pytest

from bridger.dataplane.accounting import (
    DAEMON_DROP_REASONS,
    KINDS,
    Counters,
    CountsSnapshot,
    MacTable,
)
from tests.status.samples import CASES, LOCAL, REMOTE, eth, ipv4_udp


def counts(c: Counters, now: float, name: str = "berlin", **kw: int) -> tuple[
        CountsSnapshot, dict]:
    """The snapshot, and the named peer's part as the same shape of dict as the totals."""
    snap = c.snapshot(now, **kw)
    p = snap.peers.get(name, snap.idle_peer)
    return snap, {"frames": p.frames, "bytes": p.bytes, "kinds": p.kinds, "drops": p.drops}


@pytest.mark.parametrize(("name", "frame", "expected"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("direction", ["tx", "rx"])
def test_classification(name: str, frame: bytes, expected: set[str], direction: str) -> None:
    c = Counters()
    p = c.peer("berlin")
    count = p.lan_to_wan if direction == "tx" else p.wan_to_lan
    count(frame, 10.0)
    count(memoryview(frame), 11.0)  # the daemon may hand over memoryviews of its buffer
    snap, mine = counts(c, 12.0)
    total = {"frames": snap.frames, "bytes": snap.bytes, "kinds": snap.kinds}
    other = "rx" if direction == "tx" else "tx"
    for seen in (total, mine):  # the device totals, and the peer's own counts
        assert seen["frames"][direction] == 2
        assert seen["bytes"][direction] == 2 * len(frame)
        assert seen["frames"][other] == 0
        assert seen["kinds"][direction] == {k: (2 if k in expected else 0) for k in KINDS}
        assert all(v == 0 for v in seen["kinds"][other].values())


def test_mac_sides_follow_direction() -> None:
    c = Counters()
    c.peer("berlin").lan_to_wan(ipv4_udp(), 1.0)  # source LOCAL, seen on the local side
    c.peer("berlin").wan_to_lan(eth(LOCAL, REMOTE, 0x0800, b"\x00" * 46), 2.0)
    c.peer("berlin").wan_to_lan(eth(LOCAL, REMOTE, 0x0800, b"\x00" * 100), 3.0)
    snap = c.snapshot(5.0)
    assert snap.local_macs["top"] == [
        {"mac": "02:00:00:00:00:01", "frames": 1, "bytes": len(ipv4_udp()), "last_seen_age": 4.0}
    ]
    assert snap.peers["berlin"].remote_macs["top"] == [
        {"mac": "02:00:00:00:00:02", "frames": 2, "bytes": 60 + 114, "last_seen_age": 2.0}
    ]


def test_removed_peer_keeps_device_totals_growing() -> None:
    c = Counters()
    c.peer("berlin").lan_to_wan(ipv4_udp(), 1.0)
    c.peer("berlin").tap_write_failed()
    c.peer("paris").wan_to_lan(ipv4_udp(LOCAL), 1.0)
    before = c.snapshot(2.0)
    c.remove_peer("berlin")
    c.remove_peer("never-there")  # harmless
    after = c.snapshot(2.0)
    assert list(after.peers) == ["paris"]
    assert after.frames == before.frames == {"tx": 1, "rx": 1}
    assert after.kinds == before.kinds
    assert after.drops["tap_write_failed"] == 1
    c.peer("berlin")  # re-added peers start from zero
    assert c.snapshot(3.0).peers["berlin"].frames == {"tx": 0, "rx": 0}


def test_a_run_counted_at_once_equals_its_frames_counted_one_by_one() -> None:
    """The fast path counts a superframe's segments in one call; totals must not change."""
    segments = [eth(REMOTE, LOCAL, 0x8100, b"\x00\x05\x08\x00" + bytes(size))
                for size in (1400, 1400, 321)]
    one_by_one, at_once = Counters(), Counters()
    for segment in segments:
        one_by_one.peer("berlin").lan_to_wan(segment, 1.0)
        one_by_one.peer("berlin").wan_to_lan(segment, 1.0)
    at_once.peer("berlin").lan_to_wan(segments[0], 1.0, len(segments), sum(map(len, segments)))
    at_once.peer("berlin").wan_to_lan(segments[0], 1.0, len(segments), sum(map(len, segments)))
    expected = one_by_one.snapshot(2.0)
    assert at_once.snapshot(2.0) == expected
    assert expected.frames == {"tx": 3, "rx": 3}
    assert expected.kinds["tx"]["vlan"] == expected.kinds["tx"]["ipv4"] == 3


def test_top_talkers_ranked_by_bytes() -> None:
    c = Counters()
    for i in range(20):
        src = bytes([2, 0, 0, 0, 0, i])
        for _ in range(i + 1):
            c.peer("berlin").lan_to_wan(eth(REMOTE, src, 0x0800, b"\x00" * 46), float(i))
    top = c.snapshot(20.0, top=3).local_macs["top"]
    assert [t["mac"] for t in top] == [f"02:00:00:00:00:{i:02x}" for i in (19, 18, 17)]
    assert [t["frames"] for t in top] == [20, 19, 18]


@pytest.mark.parametrize("side", ["local", "remote"])
def test_mac_table_bounded_under_flood(side: str) -> None:
    c = Counters(mac_table_size=1024)
    p = c.peer("berlin")
    count = p.lan_to_wan if side == "local" else p.wan_to_lan
    frame = bytearray(eth(REMOTE, LOCAL, 0x0800, b"\x00" * 46))
    for i in range(100_000):
        frame[6:12] = (0x020000000000 + i).to_bytes(6, "big")
        count(frame, i * 1e-5)
    snap = c.snapshot(1.0)
    macs = snap.local_macs if side == "local" else snap.peers["berlin"].remote_macs
    assert macs["count"] == 1024
    assert macs["evicted"] == 100_000 - 1024
    # the survivors are the most recently seen ones
    assert all(int(t["mac"].replace(":", ""), 16) >= 0x020000000000 + 100_000 - 1024
               for t in macs["top"])


def test_mac_table_lru_keeps_active_mac() -> None:
    table = MacTable(2)
    table.seen(b"a" * 6, 60, 1.0)
    table.seen(b"b" * 6, 60, 2.0)
    table.seen(b"a" * 6, 60, 3.0)  # refresh a: b is now the oldest
    table.seen(b"c" * 6, 60, 4.0)
    assert {row["mac"] for row in table.top(10, 5.0)} == {(b"a" * 6).hex(":"), (b"c" * 6).hex(":")}
    assert table.evicted == 1


def test_unregistered_reason_is_still_counted() -> None:
    """A typo in the daemon must not crash the data plane nor lose the drop."""
    c = Counters()
    c.peer("berlin").drop("not_a_reason")
    snap, mine = counts(c, 0.0)
    assert snap.drops["not_a_reason"] == mine["drops"]["not_a_reason"] == 1


def test_remote_mac_evictions_are_told_to_the_watcher_in_order() -> None:
    """A native lane's known-MAC set follows the remote table through this hook."""
    peer = Counters(mac_table_size=2).peer("b")
    gone: list[bytes] = []
    peer.on_remote_evict(gone.append)
    for k in range(4):
        peer.wan_to_lan(bytes(6) + bytes([2, 0, 0, 0, 0, k]) + b"\x08\x00", 0.0)
    assert gone == [bytes([2, 0, 0, 0, 0, 0]), bytes([2, 0, 0, 0, 0, 1])]
    assert set(peer.remote_macs) == {bytes([2, 0, 0, 0, 0, 2]), bytes([2, 0, 0, 0, 0, 3])}
    peer.on_remote_evict(None)
    peer.wan_to_lan(bytes(6) + bytes([2, 0, 0, 0, 0, 9]) + b"\x08\x00", 0.0)
    assert len(gone) == 2


def test_a_new_peer_and_a_peer_not_counted_yet_show_every_reason_at_zero() -> None:
    c = Counters(mac_table_size=64)
    c.peer("berlin")
    snap = c.snapshot(0.0)
    zeros = dict.fromkeys(DAEMON_DROP_REASONS, 0)
    for p in (snap.peers["berlin"], snap.idle_peer):
        assert p.drops == zeros and p.frames == {"tx": 0, "rx": 0}
        assert p.remote_macs == {"count": 0, "capacity": 64, "evicted": 0, "top": []}
    assert snap.drops == snap.device_drops == zeros


def test_drops_per_peer_and_device_are_summed_in_the_totals() -> None:
    c = Counters()
    c.peer("berlin").tap_write_failed()
    c.peer("berlin").drop("gso_malformed", 3)  # a superframe: its segments
    c.peer("paris").drop("tap_short_read")
    c.drop("udp_send_blocked", 2)
    snap = c.snapshot(0.0)
    assert snap.peers["berlin"].drops["tap_write_failed"] == 1
    assert snap.peers["berlin"].drops["gso_malformed"] == 3
    assert snap.device_drops["udp_send_blocked"] == 2 and snap.device_drops["gso_malformed"] == 0
    assert {r: snap.drops[r] for r in ("tap_write_failed", "gso_malformed", "tap_short_read",
                                       "udp_send_blocked")} == {
        "tap_write_failed": 1, "gso_malformed": 3, "tap_short_read": 1, "udp_send_blocked": 2}


def test_a_snapshot_is_a_copy_later_frames_do_not_change() -> None:
    c = Counters()
    c.peer("berlin").lan_to_wan(ipv4_udp(), 1.0)
    snap = c.snapshot(1.0)
    c.peer("berlin").lan_to_wan(ipv4_udp(), 2.0)
    c.peer("berlin").drop("tap_short_read")
    assert snap.frames["tx"] == snap.peers["berlin"].frames["tx"] == 1
    assert snap.peers["berlin"].drops["tap_short_read"] == 0
    assert snap.local_macs["top"][0]["frames"] == 1
