"""A lab of sites behind real NATs (issue 23): who dials whom, who can punch.

Built on :class:`bridger.lab.topology.Lab` (the sites, the WAN router, the
impairment engines, the teardown); what this module adds is a NAT namespace
(nftables masquerade) in front of each site that is not public::

  gwA  10.100.1.2 ───────────────────────────────┐   A: public, dialled by all
  gwB  172.16.2.2 ── [natB] 10.100.2.2 ──────────┤   B: masquerade, ports kept
  gwC  172.16.3.2 ── [natC] 10.100.3.2 ──────────┼─ [wan]   C: masquerade fully-random
  gwD  172.16.4.2 ── [natD] 100.64.4.2 ─ [cgnD] 10.100.4.2   D: double NAT (home
                                                 │      router behind a carrier NAT),
                                                 ┘      both keeping ports

What each kind means for a pair (Linux conntrack: mappings are per 5-tuple;
inbound passes only as the reply of an outbound flow to that exact address
and port):

* ``preserving``: the NAT keeps the gateway's source port whenever it is free,
  so the mapping looks endpoint-independent: the address and port a third site
  saw are the ones a punch must aim at.  Two such sites punch through.
* ``random``: every new flow gets a random port (``fully-random``): what a third
  site saw is useless to anyone else (a "symmetric" NAT).  Its pairs with other
  NATed sites need a relay; with a public site it dials out as usual.
* ``double``: two ``preserving`` NATs in a row (CGNAT): still punchable.

In the configs (:func:`write_nat_configs`) only public sites have a ``host``:
every NATed site knows the public ones by address and the other NATed sites
by key only, so those pairs connect only through introduction (and relay).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

from bridger.keys import generate_private_key, public_key, write_private_key_file
from bridger.lab.gateways import (
    GatewayFiles,
    PeerEntry,
    TomlValue,
    _write_private,
    peer_name,
    render_config,
)
from bridger.lab.topology import WAN_PREFIXLEN, Lab, LabError, LabOptions, _cmd

PUBLIC = "public"
PRESERVING = "preserving"
RANDOM = "random"
DOUBLE = "double"
KINDS = (PUBLIC, PRESERVING, RANDOM, DOUBLE)
#: The default plan: site -> the kind of NAT in front of it.
NAT_PLAN: dict[str, str] = {"A": PUBLIC, "B": PRESERVING, "C": RANDOM, "D": DOUBLE}
#: Inside a site's NAT: gateway .2, NAT .1 (site k: 172.16.k.0/24).
INSIDE_NET = "172.16"
#: Between a carrier NAT and the home router behind it (RFC 6598 shared space).
CGN_NET = "100.64"

#: Masquerade, and what every home or carrier router also does: nothing from
#: outside reaches the box itself unless it answers the box's own traffic.
#: (Without that drop, a punch that arrives before the other side's own packet
#: left is kept by conntrack as a flow to the box, and the outbound flow it
#: would have answered loses its port: see docs/nat.md.)
_NFT = """\
table ip nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan0" masquerade{flags}
  }}
}}
table ip filter {{
  chain input {{
    type filter hook input priority 0; policy accept;
    iifname "wan0" ct state new drop
  }}
}}
"""


class NatLab(Lab):
    """A :class:`Lab` whose sites sit behind the NATs of ``kinds`` (default NAT_PLAN)."""

    def __init__(self, options: LabOptions | None = None,
                 kinds: Mapping[str, str] | None = None) -> None:
        options = options or LabOptions(sites=4)
        if options.nat_b or options.path_mtu_b is not None:
            raise LabError("a NAT lab has its own NATs: no nat_b or path_mtu_b")
        super().__init__(options)
        plan = dict(kinds) if kinds is not None else dict(NAT_PLAN)
        self.kinds: dict[str, str] = {site: plan.get(site, PUBLIC) for site in self.sites}
        for site, kind in self.kinds.items():
            if kind not in KINDS:
                raise LabError(f"site {site}: NAT kind must be one of {', '.join(KINDS)}")

    # -- names
    def nat_roles(self, site: str) -> tuple[str, ...]:
        """The NAT namespaces of ``site``, outermost first."""
        kind = self.kinds[site]
        if kind == PUBLIC:
            return ()
        if kind == DOUBLE:
            return (f"cgn{site}", f"nat{site}")
        return (f"nat{site}",)

    def roles(self) -> list[str]:
        return [*super().roles(), *(r for s in self.sites for r in self.nat_roles(s))]

    def ns(self, role: str) -> str:
        if any(role in self.nat_roles(site) for site in self.sites):
            return f"{self.prefix}-{role}"
        return super().ns(role)

    def behind_nat(self, site: str) -> bool:
        self._check_site(site)
        return self.kinds[site] != PUBLIC

    def _site_wan_role(self, site: str) -> str:
        roles = self.nat_roles(site)
        return roles[0] if roles else f"gw{site}"

    # -- addresses
    def gateway_wan_address6(self, site: str) -> str:
        if self.behind_nat(site):
            raise LabError(f"site {site} is behind an IPv4 NAT: no IPv6 WAN address")
        return super().gateway_wan_address6(site)

    def gateway_private_address(self, site: str) -> str:
        """The gateway's own ``wan0`` address (its NAT's inside, or its public one)."""
        if not self.behind_nat(site):
            return self.gateway_wan_address(site)
        return f"{INSIDE_NET}.{self._number(site)}.2"

    def _number(self, site: str) -> int:
        return self.sites.index(site) + 1

    # -- building
    def _build(self) -> None:
        super()._build()
        for site in self.sites:
            if self.behind_nat(site):
                self._build_nats(site)

    def _build_nats(self, site: str) -> None:
        k = self._number(site)
        mtu = self.options.wan_mtu
        chain = [*self.nat_roles(site), f"gw{site}"]
        nets = [f"{CGN_NET}.{k}"] * (len(chain) - 2) + [f"{INSIDE_NET}.{k}"]
        for outer, inner, net in zip(chain[:-1], chain[1:], nets, strict=True):
            self._ip(outer, f"link add lan0 mtu {mtu} type veth"
                            f" peer name wan0 netns {self.ns(inner)} mtu {mtu}")
            self._ip(outer, f"addr add {net}.1/{WAN_PREFIXLEN} dev lan0")
            self._ip(outer, "link set lan0 up")
            self._sysctl(outer, "net.ipv4.ip_forward=1")
            self._ip(inner, f"addr add {net}.2/{WAN_PREFIXLEN} dev wan0")
            self._ip(inner, "link set wan0 up")
            self._ip(inner, f"route add default via {net}.1")
            flags = " fully-random" if self.kinds[site] == RANDOM else ""
            self._nft(outer, _NFT.format(flags=flags))

    def _nft(self, role: str, ruleset: str) -> None:
        if not shutil.which("nft"):
            raise LabError("a NAT lab needs nft (apt-get install nftables)")
        proc = subprocess.run(["ip", "netns", "exec", self.ns(role), "nft", "-f", "-"],
                              input=ruleset, capture_output=True, text=True, timeout=30,
                              check=False)
        if proc.returncode != 0:
            raise LabError(f"nft in {role} failed: {proc.stderr.strip()}")

    # -- changes while running
    def flush_conntrack(self, site: str) -> None:
        """Make every NAT of ``site`` forget its mappings (a router reboot, as
        far as the flows through it are concerned)."""
        if not self.behind_nat(site):
            raise LabError(f"site {site} is not behind a NAT")
        if not shutil.which("conntrack"):
            raise LabError("flushing a NAT needs conntrack (apt-get install conntrack)")
        for role in self.nat_roles(site):
            _cmd("ip", "netns", "exec", self.ns(role), "conntrack", "-F")

    def describe(self) -> Iterator[str]:
        yield from super().describe()
        for site in self.sites:
            if self.behind_nat(site):
                yield (f"  gw{site} {self.gateway_private_address(site)} behind"
                       f" {self.kinds[site]} NAT ({' -> '.join(self.nat_roles(site))})")


def write_nat_configs(
    lab: NatLab,
    workdir: Path,
    *,
    local: Mapping[str, TomlValue] | None = None,
    peer_extra: Mapping[str, TomlValue] | None = None,
) -> dict[str, GatewayFiles]:
    """Keys and a full-mesh config per site: public sites with their address,
    sites behind NAT with none (``peer_extra`` adds keys to every peer entry)."""
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    keys = {site: generate_private_key() for site in lab.sites}
    publics = {site: public_key(key) for site, key in keys.items()}
    written: dict[str, GatewayFiles] = {}
    for site in lab.sites:
        peers = tuple(
            PeerEntry(peer_name(other), publics[other],
                      None if lab.behind_nat(other) else lab.gateway_wan_address(other))
            for other in lab.sites if other != site
        )
        files = GatewayFiles(
            site=site, name=peer_name(site), mode="mesh", public_key=publics[site],
            key_file=workdir / f"gw{site}.key", config_file=workdir / f"gw{site}.toml",
            state_dir=workdir / f"state{site}", peers=peers,
        )
        write_private_key_file(files.key_file, keys[site])
        os.chmod(files.key_file, 0o600)
        _write_private(files.config_file, render_config(
            lan=lab.lan_ifname(f"gw{site}"), key_file=files.key_file,
            state_dir=files.state_dir, mode="mesh", peers=peers, local=local,
            peer_extra=peer_extra,
        ))
        written[site] = files
    return written


#: One-way delay of each WAN link by default (ms).  Two NATed sites punch
#: through only if each one's first packet leaves before the other's arrives:
#: a packet that finds no flow is kept by conntrack as a flow to the NAT box,
#: and the outbound flow it would answer then loses its port.  Real WANs give
#: that much time (tens of ms); a lab without delay would not.
NAT_LAB_DELAY_MS = 20.0


def nat_lab_options(sites: int = 4, **knobs: object) -> LabOptions:
    """LabOptions for a NAT lab of ``sites`` (3 or 4: A public, B, C, and D),
    with NAT_LAB_DELAY_MS on each WAN link unless ``delay_ms`` says otherwise."""
    if sites not in (3, 4):
        raise LabError("a NAT lab has 3 or 4 sites")
    knobs.setdefault("delay_ms", NAT_LAB_DELAY_MS)
    return replace(LabOptions(sites=sites), **knobs)  # type: ignore[arg-type]
