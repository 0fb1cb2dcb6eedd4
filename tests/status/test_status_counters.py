"""Frame classification, per-peer counting, MAC-table bounds and the drop-reason registry,
with real frame bytes."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from bridger.dataplane.accounting import DAEMON_DROP_REASONS, KINDS, Counters, MacTable
from bridger.protocol.events import DropReason
from bridger.status.document import DeviceInfo, PeerInfo, status_document
from bridger.status.schema import STATUS_SCHEMA, SchemaError, validate
from tests.status.samples import BERLIN, BROADCAST, DEVICE, LOCAL, PARIS, REMOTE, eth

REPO = Path(__file__).parents[2]
ONE = [PeerInfo(name="berlin", public_key="k", state="up")]


def snap(c: Counters, now: float, peers: list[PeerInfo] = ONE, **kw: int) -> dict:
    return status_document(c.snapshot(now, **kw), DeviceInfo(), peers)


def arp_request() -> bytes:
    # who-has 192.0.2.2 tell 192.0.2.1 (RFC 826 layout), broadcast
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, LOCAL, bytes([192, 0, 2, 1]),
                       b"\x00" * 6, bytes([192, 0, 2, 2]))
    return eth(BROADCAST, LOCAL, 0x0806, body + b"\x00" * 18)


def ipv4_udp(dst: bytes = REMOTE) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, bytes([192, 0, 2, 1]),
                     bytes([192, 0, 2, 2]))
    return eth(dst, LOCAL, 0x0800, ip + struct.pack("!HHHH", 1234, 53, 8, 0) + b"\x00" * 18)


def ipv6_ns() -> bytes:
    # neighbour solicitation to the solicited-node multicast group 33:33:ff:00:00:02
    ip6 = struct.pack("!IHBB16s16s", 0x60000000, 32, 58, 255, b"\xfe\x80" + b"\x00" * 13 + b"\x01",
                      b"\xff\x02" + b"\x00" * 9 + b"\x01\xff\x00\x00\x02")
    return eth(bytes.fromhex("3333ff000002"), LOCAL, 0x86DD, ip6 + b"\x87" + b"\x00" * 31)


def vlan(inner: bytes, vid: int = 5, tpid: int = 0x8100) -> bytes:
    return inner[:12] + struct.pack("!HH", tpid, vid) + inner[12:]


CASES = [
    # (name, frame, kinds expected to be 1; all others 0)
    ("arp broadcast", arp_request(), {"broadcast", "arp"}),
    ("ipv4 unicast", ipv4_udp(), {"unicast", "ipv4"}),
    ("ipv6 multicast", ipv6_ns(), {"multicast", "ipv6"}),
    ("ipv4 multicast", ipv4_udp(bytes.fromhex("01005e000001")), {"multicast", "ipv4"}),
    ("802.1Q ipv4", vlan(ipv4_udp()), {"unicast", "vlan", "ipv4"}),
    ("802.1Q arp", vlan(arp_request()), {"broadcast", "vlan", "arp"}),
    ("QinQ ipv6", vlan(vlan(ipv6_ns(), 7), 100, 0x88A8), {"multicast", "vlan", "ipv6"}),
    ("LLC/802.3 length", eth(REMOTE, LOCAL, 46, b"\x42\x42\x03" + b"\x00" * 43),
     {"unicast", "other"}),
    ("truncated tag", BROADCAST + LOCAL + b"\x81\x00\x00", {"broadcast", "vlan", "other"}),
    ("runt", b"\x00" * 10, {"runt"}),
]


@pytest.mark.parametrize(("name", "frame", "expected"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("direction", ["tx", "rx"])
def test_classification(name: str, frame: bytes, expected: set[str], direction: str) -> None:
    c = Counters()
    p = c.peer("berlin")
    count = p.lan_to_wan if direction == "tx" else p.wan_to_lan
    count(frame, 10.0)
    count(memoryview(frame), 11.0)  # the daemon may hand over memoryviews of its buffer
    doc = snap(c, 12.0)
    other = "rx" if direction == "tx" else "tx"
    for counts in (doc, doc["peers"][0]):  # the peer's own counts, and the device totals
        assert counts["frames"][direction] == 2
        assert counts["bytes"][direction] == 2 * len(frame)
        assert counts["frames"][other] == 0
        assert counts["kinds"][direction] == {k: (2 if k in expected else 0) for k in KINDS}
        assert all(v == 0 for v in counts["kinds"][other].values())


def test_mac_sides_follow_direction() -> None:
    c = Counters()
    c.peer("berlin").lan_to_wan(ipv4_udp(), 1.0)  # source LOCAL, seen on the local side
    c.peer("berlin").wan_to_lan(eth(LOCAL, REMOTE, 0x0800, b"\x00" * 46), 2.0)
    c.peer("berlin").wan_to_lan(eth(LOCAL, REMOTE, 0x0800, b"\x00" * 100), 3.0)
    doc = snap(c, 5.0)
    assert doc["macs"]["local"]["top"] == [
        {"mac": "02:00:00:00:00:01", "frames": 1, "bytes": len(ipv4_udp()), "last_seen_age": 4.0}
    ]
    assert doc["peers"][0]["macs"]["remote"]["top"] == [
        {"mac": "02:00:00:00:00:02", "frames": 2, "bytes": 60 + 114, "last_seen_age": 2.0}
    ]


def test_peers_are_counted_apart_and_summed() -> None:
    """Each peer has its own traffic, kinds and remote MACs; local MACs are the device's
    (read from any tap); the top level sums the peers."""
    c = Counters()
    site_b, site_p = bytes.fromhex("0200000000b1"), bytes.fromhex("0200000000a1")
    berlin, paris = c.peer("berlin"), c.peer("paris")
    assert c.peer("berlin") is berlin  # get, not create, the second time
    for _ in range(3):
        berlin.lan_to_wan(ipv4_udp(site_b), 1.0)
    berlin.wan_to_lan(eth(LOCAL, site_b, 0x0800, b"\x00" * 46), 1.0)
    paris.lan_to_wan(eth(BROADCAST, bytes.fromhex("020000000009"), 0x0806, b"\x00" * 46), 2.0)
    paris.wan_to_lan(eth(LOCAL, site_p, 0x86DD, b"\x00" * 46), 2.0)
    paris.wan_to_lan(eth(LOCAL, site_p, 0x86DD, b"\x00" * 46), 2.0)
    doc = status_document(c.snapshot(3.0), DEVICE, [BERLIN, PARIS])
    b, p = doc["peers"]
    assert (b["name"], p["name"]) == ("berlin", "paris")
    assert b["frames"] == {"tx": 3, "rx": 1} and p["frames"] == {"tx": 1, "rx": 2}
    assert doc["frames"] == {"tx": 4, "rx": 3}
    assert doc["bytes"]["rx"] == b["bytes"]["rx"] + p["bytes"]["rx"] == 3 * 60
    assert b["kinds"]["tx"]["ipv4"] == 3 and p["kinds"]["tx"]["arp"] == 1
    assert doc["kinds"]["rx"]["ipv6"] == 2 and doc["kinds"]["tx"]["broadcast"] == 1
    assert [m["mac"] for m in b["macs"]["remote"]["top"]] == ["02:00:00:00:00:b1"]
    assert [m["mac"] for m in p["macs"]["remote"]["top"]] == ["02:00:00:00:00:a1"]
    assert {m["mac"] for m in doc["macs"]["local"]["top"]} == {
        "02:00:00:00:00:01", "02:00:00:00:00:09"}
    # the link fields come from PeerInfo unchanged
    assert b["public_key"] == BERLIN.public_key and b["host"] == "berlin.example"
    assert (b["state"], b["endpoint"], b["rtt_ms"], b["path_mtu"]) == (
        "up", "203.0.113.5:55555", 14.2, 1420)
    assert (p["state"], p["endpoint"], p["host"], p["rtt_ms"]) == ("down", None, None, None)
    assert doc["mode"] == "mesh" and doc["interface"]["bridge"] == "br0"
    validate(doc)


def test_peer_without_counters_shows_zeros_and_unlisted_peer_still_counts() -> None:
    c = Counters()
    c.peer("gone").lan_to_wan(ipv4_udp(), 1.0)  # counted, but the core no longer lists it
    doc = status_document(c.snapshot(2.0), DEVICE, [PARIS])
    assert doc["peers"][0]["frames"] == {"tx": 0, "rx": 0}
    assert doc["peers"][0]["macs"]["remote"]["capacity"] == 1024
    assert doc["frames"]["tx"] == 1
    validate(doc)


def test_removed_peer_keeps_device_totals_growing() -> None:
    c = Counters()
    c.peer("berlin").lan_to_wan(ipv4_udp(), 1.0)
    c.peer("berlin").tap_write_failed()
    c.peer("paris").wan_to_lan(ipv4_udp(LOCAL), 1.0)
    before = status_document(c.snapshot(2.0), DEVICE, [BERLIN, PARIS])
    c.remove_peer("berlin")
    c.remove_peer("never-there")  # harmless
    after = status_document(c.snapshot(2.0), DEVICE, [PARIS])
    assert [p["name"] for p in after["peers"]] == ["paris"]
    assert after["frames"] == before["frames"] == {"tx": 1, "rx": 1}
    assert after["kinds"] == before["kinds"]
    assert after["drops"]["tap_write_failed"] == 1
    assert c.peer("berlin").lan_to_wan is not None  # re-added peers start from zero
    assert status_document(c.snapshot(3.0), DEVICE, [BERLIN])["peers"][0]["frames"]["tx"] == 0


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
    expected = snap(one_by_one, 2.0)
    assert snap(at_once, 2.0) == expected
    assert expected["frames"] == {"tx": 3, "rx": 3}
    assert expected["kinds"]["tx"]["vlan"] == expected["kinds"]["tx"]["ipv4"] == 3


def test_top_talkers_ranked_by_bytes() -> None:
    c = Counters()
    for i in range(20):
        src = bytes([2, 0, 0, 0, 0, i])
        for _ in range(i + 1):
            c.peer("berlin").lan_to_wan(eth(REMOTE, src, 0x0800, b"\x00" * 46), float(i))
    top = snap(c, 20.0, top=3)["macs"]["local"]["top"]
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
    doc = snap(c, 1.0)
    macs = doc["macs"]["local"] if side == "local" else doc["peers"][0]["macs"]["remote"]
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


def test_drops_merge_core_and_daemon_per_peer_and_device() -> None:
    c = Counters()
    c.peer("berlin").tap_write_failed()
    c.peer("berlin").tap_write_failed()
    c.peer("berlin").drop("tap_short_read")
    c.peer("paris").drop("gso_malformed")
    c.drop("udp_send_failed")
    device = DeviceInfo(drops={"malformed": 5, "unknown_index": 0})
    berlin = PeerInfo(name="berlin", public_key="k", drops={"auth_failed": 3, "replay": 0})
    paris = PeerInfo(name="paris", public_key="k", drops={"auth_failed": 1, "queue_full": 2})
    doc = status_document(c.snapshot(0.0), device, [berlin, paris])
    zeros = dict.fromkeys(DAEMON_DROP_REASONS, 0)
    assert doc["peers"][0]["drops"] == {**zeros, "tap_write_failed": 2, "tap_short_read": 1,
                                        "auth_failed": 3, "replay": 0}
    assert doc["peers"][1]["drops"] == {**zeros, "gso_malformed": 1, "auth_failed": 1,
                                        "queue_full": 2}
    assert doc["device_drops"] == {**zeros, "udp_send_failed": 1, "malformed": 5,
                                   "unknown_index": 0}
    assert doc["drops"] == {**zeros, "tap_write_failed": 2, "tap_short_read": 1,
                            "gso_malformed": 1, "udp_send_failed": 1, "malformed": 5,
                            "unknown_index": 0, "auth_failed": 4, "replay": 0, "queue_full": 2}
    assert list(doc["drops"]) == sorted(doc["drops"])  # stable order for diffing


def test_unregistered_reason_is_still_counted() -> None:
    """A typo in the daemon must not crash the data plane nor lose the drop."""
    c = Counters()
    c.peer("berlin").drop("not_a_reason")
    assert snap(c, 0.0)["drops"]["not_a_reason"] == 1


def _documented_drop_reasons() -> list[str]:
    """The reasons in the drop table of docs/status.md (rows "| `reason` | ...")."""
    text = (REPO / "docs" / "status.md").read_text()
    section = text.split("### Drop reasons", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `([a-z0-9_]+)` \|", section, re.MULTILINE)


def test_docs_list_exactly_the_drop_reasons_that_exist() -> None:
    documented = _documented_drop_reasons()
    assert len(documented) == len(set(documented)), "a reason is listed twice"
    existing = {r.value for r in DropReason} | set(DAEMON_DROP_REASONS)
    assert set(documented) == existing, (
        f"undocumented: {sorted(existing - set(documented))}, "
        f"documented but never counted: {sorted(set(documented) - existing)}")


def test_daemon_counts_only_registered_drop_reasons() -> None:
    """Every literal ``.drop("...")`` outside the core and the status package names a
    registered reason, so docs, schema and alerts know it."""
    used: dict[str, str] = {}
    for path in (REPO / "bridger").rglob("*.py"):
        if path.is_relative_to(REPO / "bridger" / "protocol") or \
                path.is_relative_to(REPO / "bridger" / "status"):
            continue
        for reason in re.findall(r"\.drop\(\s*[\"']([^\"']+)[\"']", path.read_text()):
            used[reason] = str(path.relative_to(REPO))
    assert used, "no drop calls found: has the daemon moved?"
    unknown = {r: where for r, where in used.items() if r not in DAEMON_DROP_REASONS}
    assert not unknown, f"register these in DAEMON_DROP_REASONS: {unknown}"
    assert not set(DAEMON_DROP_REASONS) & {r.value for r in DropReason}, (
        "a daemon reason shadows a core one")


def _full_snapshot() -> dict:
    c = Counters()
    for _, frame, _ in CASES:
        c.peer("berlin").lan_to_wan(frame, 1.0)
        c.peer("paris").wan_to_lan(frame, 1.5)
    return status_document(c.snapshot(2.0), DEVICE, [BERLIN, PARIS])


def test_snapshot_validates_and_is_json() -> None:
    doc = _full_snapshot()
    validate(doc)
    validate(json.loads(json.dumps(doc)))
    validate(status_document(Counters().snapshot(0.0), DeviceInfo(), []))
    assert doc["version"] == 2
    for element in doc["peers"]:  # the fields issue 13 asks for
        for key in ("name", "public_key", "state", "endpoint", "frames", "bytes", "drops"):
            assert key in element


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["frames"].update(tx=1.5), "$.frames.tx: expected integer"),
        (lambda s: s["frames"].update(tx=True), "$.frames.tx: expected integer"),
        (lambda s: s["drops"].update(auth_failed=-1), "$.drops.auth_failed: -1 is below"),
        (lambda s: s["drops"].pop("tap_write_failed"),
         "$.drops: missing required key 'tap_write_failed'"),
        (lambda s: s["peers"][1].update(state="sideways"),
         "$.peers[1].state: 'sideways' not one of"),
        (lambda s: s["peers"][0].pop("rtt_ms"), "$.peers[0]: missing required key 'rtt_ms'"),
        (lambda s: s["peers"][0]["frames"].update(rx=-3), "$.peers[0].frames.rx: -3 is below"),
        (lambda s: s.update(version=1), "$.version: 1 not one of"),
        (lambda s: s.update(mode="ring"), "$.mode: 'ring' not one of"),
        (lambda s: s.update(extra=1), "$: unexpected key 'extra'"),
        (lambda s: s.update(link={}), "$: unexpected key 'link'"),
        (lambda s: s["macs"]["local"]["top"][0].update(frames="x"),
         "$.macs.local.top[0].frames: expected integer"),
    ],
)
def test_validator_rejects(mutate, message: str) -> None:
    doc = _full_snapshot()
    mutate(doc)
    with pytest.raises(SchemaError, match=re.escape(message)):
        validate(doc)


def _property_names(schema: dict) -> set[str]:
    names = set(schema.get("properties", {}))
    children = list(schema.get("properties", {}).values())
    if isinstance(schema.get("additionalProperties"), dict):
        children.append(schema["additionalProperties"])
    if "items" in schema:
        children.append(schema["items"])
    for child in children:
        names |= _property_names(child)
    return names


def test_every_schema_field_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "status.md").read_text()
    missing = [name for name in sorted(_property_names(STATUS_SCHEMA))
               if not re.search(rf"[`.]{re.escape(name)}[`.\[]", doc)]
    assert not missing, f"fields missing from docs/status.md: {missing}"


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
