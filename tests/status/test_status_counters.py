"""Frame classification and MAC-table bounds, with real frame bytes."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from bridger.status.counters import KINDS, Counters, LinkInfo, MacTable
from bridger.status.schema import STATUS_SCHEMA, SchemaError, validate

LOCAL = bytes.fromhex("020000000001")
REMOTE = bytes.fromhex("020000000002")
BROADCAST = b"\xff" * 6


def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


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
    count = c.lan_to_wan if direction == "tx" else c.wan_to_lan
    count(frame, 10.0)
    count(memoryview(frame), 11.0)  # the daemon may hand over memoryviews of its buffer
    snap = c.snapshot(LinkInfo(state="up"), 12.0)
    other = "rx" if direction == "tx" else "tx"
    assert snap["frames"][direction] == 2
    assert snap["bytes"][direction] == 2 * len(frame)
    assert snap["frames"][other] == 0
    assert snap["kinds"][direction] == {k: (2 if k in expected else 0) for k in KINDS}
    assert all(v == 0 for v in snap["kinds"][other].values())


def test_mac_sides_follow_direction() -> None:
    c = Counters()
    c.lan_to_wan(ipv4_udp(), 1.0)  # source LOCAL, seen on the local side
    c.wan_to_lan(eth(LOCAL, REMOTE, 0x0800, b"\x00" * 46), 2.0)
    c.wan_to_lan(eth(LOCAL, REMOTE, 0x0800, b"\x00" * 100), 3.0)
    snap = c.snapshot(LinkInfo(state="up"), 5.0)
    assert snap["macs"]["local"]["top"] == [
        {"mac": "02:00:00:00:00:01", "frames": 1, "bytes": len(ipv4_udp()), "last_seen_age": 4.0}
    ]
    assert snap["macs"]["remote"]["top"] == [
        {"mac": "02:00:00:00:00:02", "frames": 2, "bytes": 60 + 114, "last_seen_age": 2.0}
    ]


def test_a_run_counted_at_once_equals_its_frames_counted_one_by_one() -> None:
    """The fast path counts a superframe's segments in one call; totals must not change."""
    segments = [eth(REMOTE, LOCAL, 0x8100, b"\x00\x05\x08\x00" + bytes(size))
                for size in (1400, 1400, 321)]
    one_by_one, at_once = Counters(), Counters()
    for segment in segments:
        one_by_one.lan_to_wan(segment, 1.0)
        one_by_one.wan_to_lan(segment, 1.0)
    at_once.lan_to_wan(segments[0], 1.0, len(segments), sum(map(len, segments)))
    at_once.wan_to_lan(segments[0], 1.0, len(segments), sum(map(len, segments)))
    expected = one_by_one.snapshot(LinkInfo(state="up"), 2.0)
    assert at_once.snapshot(LinkInfo(state="up"), 2.0) == expected
    assert expected["frames"] == {"tx": 3, "rx": 3}
    assert expected["kinds"]["tx"]["vlan"] == expected["kinds"]["tx"]["ipv4"] == 3


def test_top_talkers_ranked_by_bytes() -> None:
    c = Counters()
    for i in range(20):
        src = bytes([2, 0, 0, 0, 0, i])
        for _ in range(i + 1):
            c.lan_to_wan(eth(REMOTE, src, 0x0800, b"\x00" * 46), float(i))
    top = c.snapshot(LinkInfo(state="up"), 20.0, top=3)["macs"]["local"]["top"]
    assert [t["mac"] for t in top] == [f"02:00:00:00:00:{i:02x}" for i in (19, 18, 17)]
    assert [t["frames"] for t in top] == [20, 19, 18]


def test_mac_table_bounded_under_flood() -> None:
    c = Counters(mac_table_size=1024)
    frame = bytearray(eth(REMOTE, LOCAL, 0x0800, b"\x00" * 46))
    for i in range(100_000):
        frame[6:12] = (0x020000000000 + i).to_bytes(6, "big")
        c.lan_to_wan(frame, i * 1e-5)
    macs = c.snapshot(LinkInfo(state="up"), 1.0)["macs"]["local"]
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


def test_drops_merge_core_and_daemon() -> None:
    c = Counters()
    c.tap_write_failed()
    c.tap_write_failed()
    c.drop("udp_send_failed")
    c.drop("frame_too_big")
    link = LinkInfo(state="up", drops={"decrypt_failed": 3, "frame_too_big": 1, "replay": 0})
    drops = c.snapshot(link, 0.0)["drops"]
    assert drops == {"tap_write_failed": 2, "udp_send_failed": 1, "frame_too_big": 2,
                     "decrypt_failed": 3, "replay": 0}


def _full_snapshot() -> dict:
    c = Counters()
    for _, frame, _ in CASES:
        c.lan_to_wan(frame, 1.0)
        c.wan_to_lan(frame, 1.5)
    link = LinkInfo(
        state="up", endpoint="203.0.113.5:55555", peer_name="berlin.example", session_age=12.5,
        last_handshake_age=2.0, handshakes=3, rekeys=2, rtt_ms=14.2, path_mtu=1420,
        drops={"decrypt_failed": 1}, fragments={"sent": 4, "received": 2, "reassembled": 1},
        interface={"lan": "eth1", "bridge": "br0", "tap": "bt0", "listen": "0.0.0.0:55555"},
    )
    return c.snapshot(link, 2.0)


def test_snapshot_validates_and_is_json() -> None:
    snap = _full_snapshot()
    validate(snap)
    validate(json.loads(json.dumps(snap)))
    validate(Counters().snapshot(LinkInfo(state="down"), 0.0))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["frames"].update(tx=1.5), "$.frames.tx: expected integer"),
        (lambda s: s["frames"].update(tx=True), "$.frames.tx: expected integer"),
        (lambda s: s["drops"].update(decrypt_failed=-1), "$.drops.decrypt_failed: -1 is below"),
        (lambda s: s["link"].update(state="sideways"), "$.link.state: 'sideways' not one of"),
        (lambda s: s["link"].pop("rtt_ms"), "$.link: missing required key 'rtt_ms'"),
        (lambda s: s.update(extra=1), "$: unexpected key 'extra'"),
        (lambda s: s["macs"]["local"]["top"][0].update(frames="x"),
         "$.macs.local.top[0].frames: expected integer"),
    ],
)
def test_validator_rejects(mutate, message: str) -> None:
    snap = _full_snapshot()
    mutate(snap)
    with pytest.raises(SchemaError, match=message.replace("$", r"\$").replace("[", r"\[")):
        validate(snap)


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
