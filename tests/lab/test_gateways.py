"""Who lists whom in a mesh or a hub, and the TOML each gateway gets (no root needed)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import bridger.config
from bridger.keys import decode_key, generate_private_key, write_private_key_file
from bridger.lab.gateways import (
    LAB_PORT,
    PeerEntry,
    peer_name,
    peer_states,
    plan_links,
    plan_peers,
    render_config,
    toml_value,
)
from bridger.lab.topology import LabError

SITES4 = ("A", "B", "C", "D")
KEYS = {site: bytes([i]) * 32 for i, site in enumerate(SITES4, start=1)}
WAN = {site: f"10.100.{i}.2" for i, site in enumerate(SITES4, start=1)}



def test_mesh_lists_every_other_site_and_hub_only_the_hub() -> None:
    assert plan_links(SITES4, "mesh") == {
        "A": ["B", "C", "D"],
        "B": ["A", "C", "D"],
        "C": ["A", "B", "D"],
        "D": ["A", "B", "C"],
    }
    assert plan_links(SITES4, "hub", hub="C") == {
        "A": ["C"],
        "B": ["C"],
        "C": ["A", "B", "D"],
        "D": ["C"],
    }


@pytest.mark.parametrize(
    ("sites", "topology", "hub", "message"),
    [
        (SITES4, "ring", "A", "mesh or hub"),
        (SITES4, "hub", "E", "not one of the sites"),
        (("A",), "mesh", "A", "two or more"),
        (("A", "B", "A"), "mesh", "A", "distinct"),
    ],
)
def test_impossible_plans_are_one_clear_error(
    sites: tuple[str, ...], topology: str, hub: str, message: str
) -> None:
    with pytest.raises(LabError, match=message):
        plan_links(sites, topology, hub)


def test_mesh_peers_dial_each_others_wan_address() -> None:
    plan = plan_peers(SITES4, KEYS, WAN.get)
    assert [e.name for e in plan["B"]] == ["site-a", "site-c", "site-d"]
    for site, entries in plan.items():
        for entry in entries:
            other = entry.name[-1].upper()
            assert other != site
            assert entry.host == WAN[other]
            assert entry.public_key == KEYS[other]
            assert entry.port == LAB_PORT


def test_a_site_behind_nat_is_awaited_and_dials_out() -> None:
    def dial(site: str) -> str | None:
        return None if site == "B" else WAN[site]

    plan = plan_peers(SITES4, KEYS, dial)
    for site in ("A", "C", "D"):
        entry = next(e for e in plan[site] if e.name == "site-b")
        assert entry.host is None
    assert all(e.host is not None for e in plan["B"])


def test_hub_waits_for_spokes_unless_told_to_dial() -> None:
    plan = plan_peers(SITES4, KEYS, WAN.get, topology="hub")
    assert [(e.name, e.host) for e in plan["A"]] == [
        ("site-b", None),
        ("site-c", None),
        ("site-d", None),
    ]
    for spoke in ("B", "C", "D"):
        assert plan[spoke] == [PeerEntry("site-a", KEYS["A"], WAN["A"])]
    dialling = plan_peers(SITES4, KEYS, WAN.get, topology="hub", hub_dials=True)
    assert [e.host for e in dialling["A"]] == [WAN["B"], WAN["C"], WAN["D"]]


def test_two_sites_that_cannot_dial_each_other_are_refused() -> None:
    # A hub that waits, and a spoke nobody can reach (behind NAT) that cannot reach the hub.
    def dial(site: str) -> str | None:
        return None if site == "A" else WAN[site]

    with pytest.raises(LabError, match="neither site A nor site B"):
        plan_peers(SITES4, KEYS, dial, topology="hub")


def test_rendered_config_parses_back_to_the_plan(tmp_path: Path) -> None:
    peers = plan_peers(SITES4, KEYS, WAN.get, topology="hub")["A"]
    text = render_config(
        lan="eth1",
        key_file=tmp_path / "gwA.key",
        state_dir=tmp_path / "stateA",
        mode="hub",
        peers=peers,
        local={"wan_mtu": 1400, "offload": False},
        peer_extra={"persistent_keepalive": 5.0},
    )
    doc = tomllib.loads(text)
    assert doc["local"] == {
        "lan": "eth1",
        "key": str(tmp_path / "gwA.key"),
        "state_dir": str(tmp_path / "stateA"),
        "mode": "hub",
        "dashboard": False,
        "wan_mtu": 1400,
        "offload": False,
    }
    assert [p["name"] for p in doc["peers"]] == ["site-b", "site-c", "site-d"]
    for table, entry in zip(doc["peers"], peers, strict=True):
        assert "host" not in table  # the hub waits to be contacted
        assert decode_key(table["public_key"], "test") == entry.public_key
        assert table["port"] == LAB_PORT
        assert table["persistent_keepalive"] == 5.0


@pytest.mark.parametrize(
    "value",
    ['quote " and \\ backslash', "new\nline\ttab", "del\x7f and nul\x00", "ümlaut ☃", "[x] :y:"],
)
def test_strings_survive_toml_quoting(value: str) -> None:
    assert tomllib.loads(f"k = {toml_value(value)}")["k"] == value


def test_values_that_toml_cannot_hold_are_refused() -> None:
    with pytest.raises(LabError):
        toml_value(float("nan"))
    with pytest.raises(LabError, match="bare TOML key"):
        render_config(
            lan="eth1",
            key_file=Path("/k"),
            state_dir=Path("/s"),
            mode="mesh",
            peers=[],
            local={"a b": 1},
        )


def test_peer_names_fit_the_name_rule_and_an_interface_name() -> None:
    for site in "ABCDEFGH":
        name = peer_name(site)
        assert name == f"site-{site.lower()}"
        assert len(name) <= 15 and name.replace("-", "").isalnum() and name.islower()


def test_peer_states_reads_both_status_versions() -> None:
    v1 = {"version": 1, "link": {"state": "up"}}
    v2 = {
        "version": 2,
        "peers": [{"name": "site-b", "state": "up"}, {"name": "site-c", "state": "handshaking"}],
    }
    assert peer_states(v1) == {"peer": "up"}
    assert peer_states(v2) == {"site-b": "up", "site-c": "handshaking"}
    assert peer_states({"version": 2, "peers": "junk"}) == {}


def test_the_daemon_config_reads_what_the_writer_wrote(tmp_path: Path) -> None:
    """The writer and bridger.config agree on [[peers]], taps and mode."""
    peers = plan_peers(SITES4, KEYS, WAN.get, topology="hub")
    key = tmp_path / "gwA.key"
    write_private_key_file(key, generate_private_key())
    for site, mode in (("A", "hub"), ("B", "mesh")):
        path = tmp_path / f"gw{site}.toml"
        path.write_text(
            render_config(
                lan="eth1", key_file=key, state_dir=tmp_path / site, mode=mode, peers=peers[site]
            )
        )
        config = bridger.config.build_up_config({}, path)
        assert config.mode == mode
        assert [(p.name, p.tap, p.host, p.public_key) for p in config.peers] == [
            (e.name, e.name, e.host, e.public_key) for e in peers[site]
        ]
        assert config.lan == "eth1" and config.state_dir == tmp_path / site
