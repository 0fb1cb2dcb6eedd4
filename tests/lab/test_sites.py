"""Labs of more than two sites: addressing, reachability, isolation, impairment, configs."""

from __future__ import annotations

import itertools
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridger.keys import decode_key, public_key, read_private_key_file
from bridger.lab import MAX_SITES, Lab, LabError, LabOptions, write_gateway_configs
from bridger.lab.fixtures import LabFactory
from bridger.lab.ping import cross_site_pairs, ping_pairs
from bridger.lab.topology import list_namespaces

netns = pytest.mark.netns


@pytest.fixture(scope="module")
def lab4() -> Iterator[Lab]:
    with Lab(LabOptions(sites=4)) as lab:
        yield lab


def test_addresses_are_distinct_per_site_on_one_segment() -> None:
    lab = Lab(LabOptions(sites=MAX_SITES))  # not built: addressing is arithmetic
    hosts = lab.hosts()
    assert len(hosts) == 2 * MAX_SITES and lab.hosts("C") == ["hostC1", "hostC2"]
    v4 = [lab.lan_address(h) for h in hosts] + [lab.lan_address(f"gw{s}") for s in lab.sites]
    v6 = [lab.lan_address(h, 6) for h in hosts] + [lab.lan_address(f"gw{s}", 6) for s in lab.sites]
    assert len(set(v4)) == len(v4) and len(set(v6)) == len(v6)
    assert all(a.startswith("192.168.1.") for a in v4)
    assert all(a.startswith("fd00:b::") for a in v6)
    assert lab.lan_address("hostC2") == "192.168.1.32" and lab.lan_address("gwD", 6) == "fd00:b::4"
    wans = [lab.gateway_wan_address(s) for s in lab.sites]
    assert wans[:3] == ["10.100.1.2", "10.100.2.2", "10.100.3.2"] and len(set(wans)) == MAX_SITES
    assert lab.site_of("hostH2") == "H" and lab.site_of("gwC") == "C"
    with pytest.raises(LabError):
        lab.site_of("wan")


def test_two_site_labs_have_only_two_sites() -> None:
    lab = Lab(LabOptions())
    assert lab.sites == ("A", "B") and len(lab.roles()) == 9
    for role in ("gwC", "hostC1", "swC"):
        with pytest.raises(LabError, match="has no"):
            lab.ns(role)
    with pytest.raises(LabError):
        lab.gateway_wan_address("C")
    with pytest.raises(LabError):
        lab.lan_address("hostC1")
    for bad in (1, MAX_SITES + 1, True):
        with pytest.raises(LabError, match="sites must be"):
            Lab(LabOptions(sites=bad))


@netns
def test_four_sites_build_and_reach_only_their_own_site_and_the_wan(lab4: Lab) -> None:
    names = [n for n in list_namespaces() if n.startswith(f"{lab4.prefix}-")]
    assert sorted(names) == sorted(lab4.ns(r) for r in lab4.roles()) and len(names) == 17
    # Within each site: host to host and host to gateway, both families.
    local = [(h, o) for s in lab4.sites for h, o in itertools.permutations(lab4.hosts(s), 2)]
    local += [(lab4.hosts(s)[0], f"gw{s}") for s in lab4.sites]
    results = ping_pairs(lab4, local, count=1)
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    # Across sites nothing joins the LANs (no bridger yet).
    apart = ping_pairs(lab4, cross_site_pairs(lab4), count=1, wait=1)
    assert len(apart) == 12 and not any(r.ok for r in apart), [r for r in apart if r.ok]


@netns
@pytest.mark.parametrize("family", [4, 6])
def test_every_gateway_reaches_every_other_over_the_wan(lab4: Lab, family: int) -> None:
    for a, b in itertools.combinations(lab4.sites, 2):
        dst = lab4.gateway_wan_address(b) if family == 4 else lab4.gateway_wan_address6(b)
        argv = ["ping", "-c", "1", "-W", "2", *(["-6"] if family == 6 else []), dst]
        assert lab4.run(f"gw{a}", *argv, check=False).returncode == 0, (a, b, family)


@netns
def test_impairment_reaches_every_site(lab_factory: LabFactory) -> None:
    lab = lab_factory(sites=3, engine="wire", delay_ms=60)
    for a, b in (("A", "C"), ("C", "B")):
        dst = lab.gateway_wan_address(b)
        lab.run(f"gw{a}", "ping", "-c", "1", "-W", "3", dst, check=False)  # ARP first
        out = lab.run(f"gw{a}", "ping", "-c", "2", "-i", "0.2", "-W", "3", dst).stdout
        rtts = [float(t.split("=")[1]) for t in out.split() if t.startswith("time=")]
        assert rtts and min(rtts) >= 120, out  # 60 ms each way
    stats = lab.wire_stats()
    assert set(stats) == {"pA", "pB", "pC"} and stats["pC"]["delivered"] > 0


@netns
def test_change_wan_address_of_a_third_site(lab4: Lab) -> None:
    # Other tests of this module look the address up afresh, so it may stay changed.
    old = lab4.gateway_wan_address("C")
    new = lab4.change_wan_address("C")
    assert new != old and lab4.gateway_wan_address("C") == new
    assert lab4.run("gwD", "ping", "-c", "1", "-W", "2", new, check=False).returncode == 0
    assert lab4.run("gwD", "ping", "-c", "1", "-W", "1", old, check=False).returncode != 0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("topology", ["mesh", "hub"])
def test_config_writer_on_a_lab(tmp_path: Path, topology: str) -> None:
    lab = Lab(LabOptions(sites=4, nat_b=True))  # not built: the writer only reads addresses
    files = write_gateway_configs(lab, tmp_path / "cfg", topology=topology, local={"wan_mtu": 1400})
    assert list(files) == ["A", "B", "C", "D"]
    publics = {site: f.public_key for site, f in files.items()}
    assert len(set(publics.values())) == 4
    for site, f in files.items():
        assert _mode(f.key_file) == 0o600 and _mode(f.config_file) == 0o600
        assert public_key(read_private_key_file(f.key_file)) == f.public_key
        doc = tomllib.loads(f.config_file.read_text())
        local = doc["local"]
        assert local["lan"] == "eth1" and local["wan_mtu"] == 1400
        assert Path(local["key"]) == f.key_file and Path(local["state_dir"]) == f.state_dir
        assert local["mode"] == ("hub" if topology == "hub" and site == "A" else "mesh")
        listed = {p["name"]: p for p in doc["peers"]}
        if topology == "mesh" or site == "A":
            expected = {s for s in lab.sites if s != site}
        else:
            expected = {"A"}
        assert set(listed) == {f"site-{s.lower()}" for s in expected}
        for other in expected:
            table = listed[f"site-{other.lower()}"]
            assert decode_key(table["public_key"], "test") == publics[other]
            hub_waits = topology == "hub" and site == "A"
            if other == "B" or hub_waits:  # B is behind NAT: nobody dials it
                assert "host" not in table
            else:
                assert table["host"] == lab.gateway_wan_address(other)
        assert f.up_argv()[-2:] == ["--config", str(f.config_file)]


def test_config_writer_can_dial_ipv6_and_rewrites_files_private(tmp_path: Path) -> None:
    lab = Lab(LabOptions(sites=3))
    target = tmp_path / "cfg"
    target.mkdir()
    (target / "gwA.toml").write_text("old\n")
    (target / "gwA.toml").chmod(0o644)
    files = write_gateway_configs(lab, target, wan_family=6)
    assert _mode(files["A"].config_file) == 0o600
    hosts = [p["host"] for p in tomllib.loads(files["A"].config_file.read_text())["peers"]]
    assert hosts == [lab.gateway_wan_address6("B"), lab.gateway_wan_address6("C")]
    assert files["A"].tap("C") == "site-c"
    with pytest.raises(LabError):
        files["A"].tap("A")
