"""The guards (issue 14) in every status view: real Guard and LoopDetector objects put a
peer in a loop and a MAC to flapping; the document carries their snapshots, validates,
and the dashboard, `bridger status`, the log lines and the metrics show them."""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from rich.console import Console

from bridger.dataplane.accounting import DAEMON_DROP_REASONS, Counters
from bridger.guard import GUARD_DROP_REASONS, GuardConfig
from bridger.status.control import control_path, status_main
from bridger.status.dashboard import (
    History,
    guard_settings,
    peer_state,
    render,
    summary_lines,
)
from bridger.status.document import DeviceInfo, PeerInfo, status_document
from bridger.status.metrics import SnapshotCollector
from bridger.status.schema import SchemaError, validate
from tests.status.samples import (
    BERLIN,
    DEVICE,
    FLAPPER,
    LOCAL,
    PARIS,
    REMOTE,
    SITE_ID,
    GuardedSite,
    ipv4,
    peer,
)
from tests.status.test_status_control import with_server
from tests.status.test_status_dashboard import draw, row

FOUR = [BERLIN, PARIS, peer("rome"), peer("oslo", "handshaking", endpoint="192.0.2.77:51820")]
NAMES = tuple(p.name for p in FOUR)


def looped(peers: list[PeerInfo] = FOUR, flaps: int = 30,
           config: GuardConfig | None = None) -> tuple[dict[str, Any], History]:
    """Ten seconds of traffic; at t=8 a loop through the first peer (a probe sent to it
    came back from our LAN); FLAPPER moves between our LAN and paris ``flaps`` times from t=8.
    Snapshots at 1 s steps, the last at t=10."""
    c, history = Counters(), History()
    site = GuardedSite(c, tuple(p.name for p in peers), config)
    for t in range(11):
        now = float(t)
        for i, info in enumerate(peers):  # a host of its own behind each peer
            host = bytes.fromhex("0200000100") + bytes([i])
            site.outbound(info.name, ipv4(host, LOCAL, 500), now)
            site.inbound(info.name, ipv4(LOCAL, host, 500), now + 0.1)
        if t == 8:
            site.loop_via_lan(peers[0].name, now)
            site.flap("paris", flaps, now)
        history.sample(snapshot(c, site, peers, now), now)
    return snapshot(c, site, peers, 10.0), history


def snapshot(c: Counters, site: GuardedSite, peers: list[PeerInfo], now: float
             ) -> dict[str, Any]:
    return status_document(c.snapshot(now), site.device(now), [site.peer(p, now) for p in peers])


# -- counters -----------------------------------------------------------------------------------

def test_guard_reasons_are_registered_and_always_present() -> None:
    assert set(GUARD_DROP_REASONS) <= set(DAEMON_DROP_REASONS)
    b = PeerInfo(name="b", public_key="k")
    doc = status_document(Counters().snapshot(0.0), DeviceInfo(), [b])
    for drops in (doc["drops"], doc["device_drops"], doc["peers"][0]["drops"]):
        assert {reason: drops[reason] for reason in GUARD_DROP_REASONS} == dict.fromkeys(
            GUARD_DROP_REASONS, 0)


def test_drop_counts_a_superframe_as_its_segments() -> None:
    c = Counters()
    c.peer("berlin").drop("storm", 46)
    c.peer("berlin").drop("storm")
    c.drop("udp_send_blocked", 3)
    doc = status_document(c.snapshot(0.0), DeviceInfo(), [BERLIN])
    assert doc["peers"][0]["drops"]["storm"] == 47
    assert doc["device_drops"]["udp_send_blocked"] == 3
    assert doc["drops"]["storm"] == 47 and doc["drops"]["udp_send_blocked"] == 3


def test_remote_macs_is_the_live_table_read_only() -> None:
    c = Counters(mac_table_size=2)
    berlin = c.peer("berlin")
    macs = berlin.remote_macs
    assert macs is berlin.remote_macs  # one view, nothing copied per call
    assert REMOTE not in macs
    berlin.wan_to_lan(ipv4(LOCAL, REMOTE, 60), 1.0)
    berlin.lan_to_wan(ipv4(REMOTE, FLAPPER, 60), 1.0)  # a local MAC: not behind berlin
    assert REMOTE in macs and FLAPPER not in macs and len(macs) == 1
    for i in range(3):  # the bound evicts: the view follows
        berlin.wan_to_lan(ipv4(LOCAL, bytes([2, 0, 0, 0, 9, i]), 60), 2.0)
    assert REMOTE not in macs and len(macs) == 2
    with pytest.raises(TypeError):
        macs[REMOTE] = [0, 0, 0.0]  # type: ignore[index]


def test_guard_storm_control_reads_the_live_mac_table() -> None:
    """Unicast to a MAC not (yet) known behind the peer was flooded by the bridge and
    costs flood budget; once the MAC has sent from behind the peer it is known unicast."""
    c = Counters()
    site = GuardedSite(c, ("berlin",), GuardConfig(flood_rate=4, loop_protection=False))
    to_remote = ipv4(REMOTE, LOCAL, 100)
    verdicts = [site.outbound("berlin", to_remote, 0.0) for _ in range(6)]
    assert verdicts == [None, None, None, "storm", "storm", "storm"]  # burst 4 x 3/4
    site.inbound("berlin", ipv4(LOCAL, REMOTE, 100), 0.0)
    assert [site.outbound("berlin", to_remote, 0.0) for _ in range(100)] == [None] * 100
    doc = status_document(c.snapshot(0.0), DeviceInfo(), [BERLIN])
    assert doc["peers"][0]["drops"]["storm"] == 3
    assert doc["peers"][0]["frames"]["tx"] == 103


# -- the document -------------------------------------------------------------------------------

def test_snapshot_carries_real_guard_snapshots_and_validates() -> None:
    snap, _ = looped()
    validate(snap)
    validate(json.loads(json.dumps(snap)))
    berlin, paris = snap["peers"][0], snap["peers"][1]
    assert berlin["guard"]["loop"] is True and berlin["guard"]["loop_via"] == "lan"
    assert 1.9 < berlin["guard"]["loop_for"] < 2.0  # blocked at 8.05, snapshot at 10
    assert berlin["guard"]["loops_detected"] == 1 and berlin["guard"]["probes_returned"] == 1
    assert paris["guard"]["loop"] is False and paris["guard"]["loop_via"] is None
    assert berlin["guard"]["flood_rate"] == 2000 and berlin["guard"]["dhcp"] == "shared"
    # nothing but probes crossed to or from berlin after the loop: counted as drops
    assert berlin["drops"]["loop_blocked"] == 4 and berlin["drops"]["loop_probe"] == 1
    assert snap["drops"]["loop_blocked"] == 4
    guard = snap["guard"]
    assert guard["loops_detected"] == 1 and guard["blocked"] == ["berlin"]
    assert guard["site_id"] == SITE_ID.hex()
    flaps = guard["mac_flaps"]
    assert flaps["total"] == 2 * 30 - 1  # lan -> paris -> lan ...: every move but the first
    assert flaps["worst"][0]["mac"] == FLAPPER.hex(":")
    assert flaps["worst"][0]["sides"] == ["lan", "paris"]


def test_without_guards_both_are_null() -> None:
    doc = status_document(Counters().snapshot(0.0), DEVICE, [BERLIN])
    assert doc["guard"] is None and doc["peers"][0]["guard"] is None
    validate(doc)


def test_loop_protection_off_and_every_setting_validate() -> None:
    c = Counters()
    config = GuardConfig(dhcp="local", ra="local", vlans=(10, 20), untagged=False,
                         flood_rate=0, loop_protection=False)
    site = GuardedSite(c, ("berlin",), config)
    assert site.outbound("berlin", ipv4(REMOTE, LOCAL, 60), 0.0) == "guard_vlan"
    doc = status_document(c.snapshot(1.0), DEVICE, [site.peer(BERLIN, 1.0)])
    validate(doc)
    assert doc["peers"][0]["guard"] == {
        "loop": False, "dhcp": "local", "ra": "local", "vlans": [10, 20], "untagged": False,
        "flood_rate": 0, "flood_burst": 0, "loop_protection": False,
        "flood_tokens": None, "nd_tokens": None}
    assert doc["peers"][0]["drops"]["guard_vlan"] == 1


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["peers"][0]["guard"].update(loop="yes"),
         "$.peers[0].guard.loop: expected boolean"),
        (lambda s: s["peers"][0]["guard"].update(extra=1),
         "$.peers[0].guard: unexpected key 'extra'"),
        (lambda s: s["peers"][0]["guard"].pop("flood_rate"),
         "$.peers[0].guard: missing required key 'flood_rate'"),
        (lambda s: s["peers"][0]["guard"].update(dhcp="maybe"),
         "$.peers[0].guard.dhcp: 'maybe' not one of"),
        (lambda s: s["peers"][0]["guard"].update(vlans=[4095]),
         "$.peers[0].guard.vlans[0]: 4095 is above 4094"),
        (lambda s: s["peers"][0]["guard"].update(loop_for=-1),
         "$.peers[0].guard.loop_for: -1 is below"),
        (lambda s: s["peers"][0].pop("guard"), "$.peers[0]: missing required key 'guard'"),
        (lambda s: s.pop("guard"), "$: missing required key 'guard'"),
        (lambda s: s["guard"].update(blocked="berlin"), "$.guard.blocked: expected array"),
        (lambda s: s["guard"]["mac_flaps"].pop("rate"),
         "$.guard.mac_flaps: missing required key 'rate'"),
        (lambda s: s["guard"]["mac_flaps"]["worst"][0].update(flaps=1.5),
         "$.guard.mac_flaps.worst[0].flaps: expected integer"),
        (lambda s: s["guard"].update(loops_detected=None),
         "$.guard.loops_detected: expected integer"),
    ],
)
def test_validator_rejects_bad_guard_fields(mutate: Any, message: str) -> None:
    snap, _ = looped()
    doc = copy.deepcopy(snap)
    mutate(doc)
    with pytest.raises(SchemaError, match=re.escape(message)):
        validate(doc)


# -- dashboard and `bridger status` --------------------------------------------------------------

def test_looped_peer_shows_loop_with_its_duration_and_still_fits_80x24() -> None:
    snap, history = looped()
    lines = draw(snap, history, 80, 23)
    text = "\n".join(lines)
    assert lines[0].startswith("bridger 1 UP 1 HANDSHAKING 1 DOWN 1 LOOP  mesh"), lines[0]
    assert row(lines, "berlin")[:3] == ["berlin", "LOOP", "1s"]  # blocked for 1.95 s
    assert row(lines, "rome")[1] == "up"
    guard_line = next(line for line in lines if line.startswith("guard "))
    assert guard_line == ("guard loops detected 1  MAC flaps 59 5.90/s  "
                          "worst 02:aa:aa:aa:00:01 lan/paris"), guard_line
    assert "loop_blocked 4" in text
    for section in ("session", "LAN→WAN", "ucast", "drops "):  # nothing else was pushed out
        assert section in text, text
    # the details show each peer's guard settings
    assert "guards" in text and row(lines[8:], "berlin")[-2:] == ["flood", "2.0k"]


def test_loop_state_has_its_own_style() -> None:
    snap, _ = looped()
    label, style = peer_state(snap["peers"][0])
    assert label == "LOOP 1s"
    link_styles = {peer_state(p)[1] for p in snap["peers"][1:]}
    assert style and style not in link_styles
    assert peer_state(snap["peers"][2]) == ("up", "bold green")
    console = Console(width=80, height=24, record=True, file=io.StringIO(),
                      color_system="truecolor", markup=False, emoji=False)
    console.print(render(snap, History(), 80, 23))
    berlin_row = next(line for line in console.export_text(styles=True).splitlines()
                      if line.startswith("\x1b[36mberlin"))
    assert "LOOP 1s" in re.sub(r"\x1b\[[0-9;]*m", "", berlin_row)
    assert "\x1b[1;97;41m" in berlin_row or "\x1b[1;37;41m" in berlin_row, repr(berlin_row)


def test_guard_line_only_once_there_is_something_to_tell() -> None:
    c, history = Counters(), History()
    site = GuardedSite(c, ("berlin",))
    site.outbound("berlin", ipv4(REMOTE, LOCAL, 100), 0.0)
    doc = status_document(c.snapshot(1.0), site.device(1.0), [site.peer(BERLIN, 1.0)])
    assert not any(line.startswith("guard") for line in draw(doc, history, 80, 23))
    site.flap("berlin", 2, 1.0)
    doc = status_document(c.snapshot(2.0), site.device(2.0), [site.peer(BERLIN, 2.0)])
    lines = draw(doc, history, 80, 23)
    assert "guard loops detected 0  MAC flaps 3 0.30/s  worst 02:aa:aa:aa:00:01 lan/berlin" in (
        lines), "\n".join(lines)


@pytest.mark.parametrize(("config", "text"), [
    (GuardConfig(), "flood 2.0k"),
    (GuardConfig(dhcp="local", ra="local", vlans=(10, 20)),
     "flood 2.0k local dhcp,ra vlan u,10,20"),
    (GuardConfig(ra="local", vlans=(7,), untagged=False, flood_rate=0, loop_protection=False),
     "flood off local ra vlan 7 loop off"),
])
def test_guard_settings_compact(config: GuardConfig, text: str) -> None:
    site = GuardedSite(Counters(), ("berlin",), config)
    assert guard_settings(site.guards["berlin"].snapshot(0.0)) == text


def test_guard_settings_in_the_details_wide_and_narrow() -> None:
    config = GuardConfig(dhcp="local", vlans=(10,))
    snap, history = looped(config=config)
    wide = draw(snap, history, 160, 40)
    details = [line for line in wide if line.startswith("berlin ")][1]
    assert "flood 2.0k local dhcp vlan u,10" in details and BERLIN.public_key in details
    narrow = draw(snap, history, 80, 23)
    details = [line for line in narrow if line.startswith("berlin ")][1]
    assert BERLIN.public_key[:10] not in details  # the key makes room for them
    # (the path MTU column, "1420 probe", takes some of that room)
    assert details.endswith(" flood 2.0k local d…"), details


@pytest.mark.parametrize(("width", "height"), [(80, 23), (80, 12), (60, 15), (40, 8), (20, 1),
                                               (120, 40)])
def test_looped_dashboard_degrades_to_fit(width: int, height: int) -> None:
    snap, history = looped()
    lines = draw(snap, history, width, height)
    assert lines[0].startswith("bridger")
    if height >= 12:
        assert any(line.startswith("guard ") for line in lines)


def test_markup_in_peer_names_and_flap_sides_is_verbatim() -> None:
    hostile = PeerInfo(name="[bold]x:smile:", public_key="[red]k:cd:", state="up",
                       endpoint="[i]e:cd:1")
    snap, history = looped([hostile, PARIS])
    console = Console(width=100, height=40, record=True, file=io.StringIO(), color_system=None,
                      markup=True, emoji=True)
    text = "\n".join(draw(snap, history, 100, 40, console))
    assert "[bold]x:smile: LOOP 1s" in text and "lan/paris" in text, text
    assert "😄" not in text and "💿" not in text


def test_log_line_names_the_loop() -> None:
    snap, history = looped()
    lines = summary_lines(snap, history, {})
    assert lines[0].startswith("peer berlin up LOOP 1s via lan 203.0.113.5:55555 rtt 14.2ms")
    assert lines[2].startswith("peer rome up 198.51.100.4:51820")


def test_bridger_status_prints_loop_and_flaps(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    snap, _ = looped()

    def client() -> tuple[str, str]:
        assert status_main(tmp_path, as_json=False, watch=False) == 0
        table = capsys.readouterr().out
        assert status_main(tmp_path, as_json=True, watch=False) == 0
        return table, capsys.readouterr().out

    table, as_json = with_server(control_path(tmp_path), lambda: snap, client)
    assert re.search(r"^berlin +LOOP 1s ", table, re.MULTILINE), table
    assert "guard loops detected 1  MAC flaps 59 5.90/s" in table
    doc = json.loads(as_json)
    assert doc["peers"][0]["guard"]["loop"] is True and doc["guard"]["loops_detected"] == 1


# -- metrics ------------------------------------------------------------------------------------

def samples(snap: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snap))
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_loop_gauge_loops_and_flaps_counters() -> None:
    snap, _ = looped()
    m = samples(snap)
    assert m[("bridger_peer_loop", (("peer", "berlin"),))] == 1
    assert m[("bridger_peer_loop", (("peer", "paris"),))] == 0
    assert m[("bridger_loops_detected_total", ())] == 1
    assert m[("bridger_mac_flaps_total", ())] == 59
    assert m[("bridger_peer_drops_total", (("peer", "berlin"), ("reason", "loop_blocked")))] == 4
    assert m[("bridger_peer_drops_total", (("peer", "paris"), ("reason", "storm")))] == 0
    without = samples(status_document(Counters().snapshot(0.0), DEVICE, [BERLIN]))
    assert not any(name in ("bridger_peer_loop", "bridger_loops_detected_total",
                            "bridger_mac_flaps_total") for name, _ in without)

