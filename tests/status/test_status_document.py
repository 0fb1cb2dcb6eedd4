"""The status document built from the data plane's counts and the core's news: peers
in order with their link fields, core and daemon drops merged, the drop-reason
registry against the docs and the code, the schema; status/ never imports the guard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bridger.dataplane.accounting import DAEMON_DROP_REASONS, Counters
from bridger.protocol.events import DropReason
from bridger.status.document import DeviceInfo, PeerInfo, status_document
from bridger.status.schema import STATUS_SCHEMA, SchemaError, validate
from tests.status.samples import BERLIN, BROADCAST, CASES, DEVICE, LOCAL, PARIS, eth, ipv4_udp

REPO = Path(__file__).parents[2]
ONE = [PeerInfo(name="berlin", public_key="k", state="up")]


def snap(c: Counters, now: float, peers: list[PeerInfo] = ONE, **kw: int) -> dict:
    return status_document(c.snapshot(now, **kw), DeviceInfo(), peers)


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



def test_status_never_imports_the_guard_and_lists_its_modes() -> None:
    """status/ reads snapshots only: the guard's names reach it through the data
    plane's vocabulary, and the schema's copy of the guard modes stays equal."""
    from bridger.guard.policy import MODES
    from bridger.status.schema import GUARD_MODES
    from tests.foundation.test_import_graph import import_graph

    graph = import_graph()
    status = {name: deps for name, deps in graph.items() if name.startswith("bridger.status")}
    assert status, "no status modules found"
    reaching = {name: sorted(d for d in deps if d.startswith("bridger.guard"))
                for name, deps in status.items()}
    assert not any(reaching.values()), reaching
    assert tuple(GUARD_MODES) == tuple(MODES)
