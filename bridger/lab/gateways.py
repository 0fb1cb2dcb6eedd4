"""Gateway configs for a lab of N sites: one TOML file and one key per site.

1. :func:`plan_links` decides which sites each site lists as ``[[peers]]``:
   ``mesh`` — every site lists every other; ``hub`` — the hub lists every
   spoke and each spoke lists only the hub.
2. :func:`plan_peers` fills in each entry: the peer's name (``site-b``), its
   public key, and ``host`` = its WAN address, or no host where it cannot be
   dialled (site B behind NAT; spokes, as seen from a hub that only waits).
3. :func:`render_config` turns one site's plan into TOML text (pure).
4. :func:`write_gateway_configs` generates the keys and writes the files,
   every one of them mode 0600.

The files follow the ``[[peers]]`` contract of :mod:`bridger.config`: a peer's
tap interface is named after the peer (``site-b``) unless ``tap`` says
otherwise, and the hub's ``[local] mode`` is ``"hub"`` (spokes: ``"mesh"``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridger.keys import encode_key, generate_private_key, public_key, write_private_key_file
from bridger.lab.topology import Lab, LabError

TOPOLOGIES = ("mesh", "hub")
#: What `bridger up` listens on in every gateway namespace (each has its own stack).
LAB_PORT = 55555
TomlValue = str | int | float | bool


def peer_name(site: str) -> str:
    """The name the other gateways give ``site``'s peer entry (and its tap): ``site-c``."""
    return f"site-{site.lower()}"


@dataclass(frozen=True)
class PeerEntry:
    """One ``[[peers]]`` table."""

    name: str
    public_key: bytes
    #: Where to dial the peer; None: wait to be contacted.
    host: str | None
    port: int = LAB_PORT


@dataclass(frozen=True)
class GatewayFiles:
    """What :func:`write_gateway_configs` wrote for one site."""

    site: str
    #: This site's name in the other sites' configs.
    name: str
    mode: str
    public_key: bytes
    key_file: Path
    config_file: Path
    state_dir: Path
    peers: tuple[PeerEntry, ...]

    def up_argv(self, python: str = sys.executable) -> list[str]:
        """The command that runs this gateway (inside its namespace)."""
        return [python, "-m", "bridger", "up", "--config", str(self.config_file)]

    def tap(self, site: str) -> str:
        """The tap interface on this gateway that carries ``site``'s frames."""
        name = peer_name(site)
        if all(p.name != name for p in self.peers):
            raise LabError(f"site {self.site} has no peer {name}")
        return name


def plan_links(
    sites: Sequence[str], topology: str = "mesh", hub: str = "A"
) -> dict[str, list[str]]:
    """Site -> the sites it lists as peers, in site order."""
    if topology not in TOPOLOGIES:
        raise LabError(f"topology must be mesh or hub, not {topology!r}")
    if len(sites) < 2 or len(set(sites)) != len(sites):
        raise LabError("a topology needs two or more distinct sites")
    if topology == "mesh":
        return {site: [s for s in sites if s != site] for site in sites}
    if hub not in sites:
        raise LabError(f"hub {hub!r} is not one of the sites {', '.join(sites)}")
    spokes = [s for s in sites if s != hub]
    return {site: spokes if site == hub else [hub] for site in sites}


def plan_peers(
    sites: Sequence[str],
    public_keys: Mapping[str, bytes],
    dial_address: Callable[[str], str | None],
    *,
    topology: str = "mesh",
    hub: str = "A",
    hub_dials: bool = False,
) -> dict[str, list[PeerEntry]]:
    """Site -> its ``[[peers]]`` entries.

    ``dial_address(site)`` is where others reach ``site`` (None: nowhere, e.g.
    behind NAT). A hub lists its spokes with their address only if ``hub_dials``.
    """
    links = plan_links(sites, topology, hub)

    def host(site: str, other: str) -> str | None:
        """Where ``site`` dials ``other``."""
        if topology == "hub" and site == hub and not hub_dials:
            return None
        return dial_address(other)

    for site, others in links.items():
        for other in others:  # links are symmetric: other lists site too
            if host(site, other) is None and host(other, site) is None:
                raise LabError(f"neither site {site} nor site {other} can dial the other")
    return {
        site: [PeerEntry(peer_name(o), public_keys[o], host(site, o)) for o in others]
        for site, others in links.items()
    }


def toml_value(value: TomlValue) -> str:
    """One TOML value; strings are basic strings with every control character escaped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LabError(f"{value} has no place in a config file")
        return repr(value)
    # JSON escapes are TOML escapes (\" \\ \n \uXXXX); TOML also wants DEL escaped.
    return json.dumps(value, ensure_ascii=True).replace("\x7f", "\\u007f")


def _key(name: str) -> str:
    if not name or not all(c.isascii() and (c.isalnum() or c in "_-") for c in name):
        raise LabError(f"{name!r} is not a bare TOML key")
    return name


def render_config(
    *,
    lan: str,
    key_file: Path,
    state_dir: Path,
    mode: str,
    peers: Sequence[PeerEntry],
    local: Mapping[str, TomlValue] | None = None,
    peer_extra: Mapping[str, TomlValue] | None = None,
) -> str:
    """The TOML text of one gateway's config."""
    settings: dict[str, TomlValue] = {
        "lan": lan,
        "key": str(key_file),
        "state_dir": str(state_dir),
        "mode": mode,
        "dashboard": False,
    }
    settings.update(local or {})
    lines = ["# Written by bridger.lab.gateways for a namespace lab.", "", "[local]"]
    lines += [f"{_key(k)} = {toml_value(v)}" for k, v in settings.items()]
    for peer in peers:
        table: dict[str, TomlValue] = {"name": peer.name, "public_key": encode_key(peer.public_key)}
        if peer.host is not None:
            table["host"] = peer.host
        table["port"] = peer.port
        table.update(peer_extra or {})
        lines += ["", "[[peers]]"]
        lines += [f"{_key(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Create (or replace) ``path`` with mode 0600 whatever the umask or an older file said."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def write_gateway_configs(
    lab: Lab,
    workdir: Path,
    *,
    topology: str = "mesh",
    hub: str = "A",
    hub_dials: bool = False,
    wan_family: int = 4,
    local: Mapping[str, TomlValue] | None = None,
    peer_extra: Mapping[str, TomlValue] | None = None,
) -> dict[str, GatewayFiles]:
    """Keys and configs for every site of ``lab`` under ``workdir``; site -> what was written.

    ``wan_family`` 6 dials the peers' IPv6 WAN addresses (site B behind NAT has
    none and is dialled by nobody). ``local`` and ``peer_extra`` add keys to
    ``[local]`` and to every ``[[peers]]`` table (e.g. ``{"wan_mtu": 1400}``).
    """
    if wan_family not in (4, 6):
        raise LabError("wan_family must be 4 or 6")
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    keys = {site: generate_private_key() for site in lab.sites}
    publics = {site: public_key(key) for site, key in keys.items()}

    def dial_address(site: str) -> str | None:
        if site == "B" and lab.options.nat_b:
            return None  # only the NAT's address is visible, and nothing listens there
        if wan_family == 6:
            return lab.gateway_wan_address6(site)
        return lab.gateway_wan_address(site)

    plan = plan_peers(
        lab.sites, publics, dial_address, topology=topology, hub=hub, hub_dials=hub_dials
    )
    written: dict[str, GatewayFiles] = {}
    for site in lab.sites:
        mode = "hub" if topology == "hub" and site == hub else "mesh"
        files = GatewayFiles(
            site=site,
            name=peer_name(site),
            mode=mode,
            public_key=publics[site],
            key_file=workdir / f"gw{site}.key",
            config_file=workdir / f"gw{site}.toml",
            state_dir=workdir / f"state{site}",
            peers=tuple(plan[site]),
        )
        write_private_key_file(files.key_file, keys[site])
        os.chmod(files.key_file, 0o600)
        text = render_config(
            lan=lab.lan_ifname(f"gw{site}"),
            key_file=files.key_file,
            state_dir=files.state_dir,
            mode=mode,
            peers=files.peers,
            local=local,
            peer_extra=peer_extra,
        )
        _write_private(files.config_file, text)
        written[site] = files
    return written


def peer_states(status: Mapping[str, Any]) -> dict[str, str]:
    """Peer name -> state ("up", "handshaking", ...) from a `bridger status --json` document.

    Version 2 documents have a ``peers`` array; a version 1 document (one peer)
    gives ``{"peer": <link state>}``.
    """
    peers = status.get("peers")
    if isinstance(peers, list):
        return {str(p.get("name")): str(p.get("state")) for p in peers if isinstance(p, Mapping)}
    link = status.get("link")
    if isinstance(link, Mapping):
        return {"peer": str(link.get("state"))}
    return {}
