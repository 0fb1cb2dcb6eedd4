"""Two to eight sites around one WAN router in network namespaces, torn down on every exit path.

Modelled on the kernel WireGuard selftest ``netns.sh``; a test harness, so it
drives ``ip``, ``tc`` and ``nft``/``iptables`` as subprocesses (the product's
host code uses pyroute2)::

  hostA1 ─┐                                                              ┌─ hostB1
  hostA2 ─┴ [swA] ── eth1 [gwA] wan0 ──── wA [ wan ] wB ──── wan0 [gwB] eth1 ── [swB] ┴─ hostB2
                     .1.1    10.100.1.2   10.100.1.1  10.100.2.1   10.100.2.2   .1.2
  nat_b=True:   wB ── wan0 [natB] lan0 ── wan0 [gwB]     natB: 10.100.2.2 outside,
                                                         172.16.2.1 inside, gwB 172.16.2.2
  path_mtu_b=N: wB ══ wan0 [ispB] lan0 ── wan0 [gwB]     ispB: 10.100.2.2 (router side),
                   (the link wB-ispB has MTU N)          10.102.2.1 inside, gwB 10.102.2.2
                                                         routed, not NATed; IPv6 likewise
                                                         (fd00:100:2::2, fd00:102:2::/64)

With ``sites=N`` (up to :data:`MAX_SITES`) sites C, D, ... hang off the same
router the same way: site ``k`` (A=1, B=2, ...) has hosts ``192.168.1.k1`` and
``.k2`` (``fd00:b::k1``, ``::k2``), gateway LAN address ``.k`` (``fd00:b::k``),
and WAN link ``10.100.k.0/24`` + ``fd00:100:k::/64`` on router port ``w<site>``.

Impairments sit on the router's egress towards each gateway (``wA``, ``wB``,
...), so each one-way trip between two gateways is impaired exactly once.
Engines: kernel ``netem`` when the kernel has it; otherwise a userspace wire
(:mod:`bridger.lab.wire`) between each ``w?`` and the gateway's ``wan0``.
``direct`` routes in-kernel with no impairment at all, so a benchmark measures
the tunnel and not the userspace wire (which caps near 275 Mbit/s).

Every namespace is named ``<prefix>-<role>``; a marker file names the owning
process so ``cleanup`` only removes labs whose owner is dead.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from bridger.errors import HostError
from bridger.lab.impair import Impairment, ImpairmentError, ImpairmentKnobs

# --- addressing plan (the README diagram shows the same numbers) -----------------
#: Site letters in order; site number k = position + 1 numbers its addresses.
SITE_NAMES = ("A", "B", "C", "D", "E", "F", "G", "H")
MAX_SITES = len(SITE_NAMES)
MIN_SITES = 2
HOSTS_PER_SITE = 2
LAN_PREFIXLEN = 24
LAN6_PREFIXLEN = 64
#: Host role -> (IPv4, IPv6) LAN address: hostA1 is .11 / ::11, hostC2 .32 / ::32.
HOSTS: dict[str, tuple[str, str]] = {
    f"host{site}{n}": (f"192.168.1.{k * 10 + n}", f"fd00:b::{k * 10 + n}")
    for k, site in enumerate(SITE_NAMES, start=1)
    for n in range(1, HOSTS_PER_SITE + 1)
}
#: Site -> the gateway's own (IPv4, IPv6) LAN address: A is .1 / ::1, C is .3 / ::3.
GATEWAY_LAN: dict[str, tuple[str, str]] = {
    site: (f"192.168.1.{k}", f"fd00:b::{k}") for k, site in enumerate(SITE_NAMES, start=1)
}
#: Per site: the /24 between the router and the site's WAN attachment.
WAN_NET = {site: f"10.100.{k}" for k, site in enumerate(SITE_NAMES, start=1)}
ROUTER_HOST = 1
FIRST_WAN_HOST = 2
NAT_INSIDE_NET = "172.16.2"
WAN_PREFIXLEN = 24
#: Per site: the IPv6 /64 of the WAN link (sites not behind NAT have both families).
WAN6_NET = {site: f"fd00:100:{k}" for k, site in enumerate(SITE_NAMES, start=1)}
WAN6_PREFIXLEN = 64

ENGINES = ("auto", "netem", "wire", "direct")


def site_roles(site: str) -> tuple[str, ...]:
    """The namespaces of one site: its gateway, its hosts and its switch."""
    hosts = tuple(f"host{site}{n}" for n in range(1, HOSTS_PER_SITE + 1))
    return (f"gw{site}", *hosts, f"sw{site}")


#: Every role any lab can have (a lab has those of its own sites, "wan", maybe
#: "natB" or "ispB").
ROLES = (*(r for site in SITE_NAMES for r in site_roles(site)), "wan", "natB", "ispB",
         # bridger.lab.nat: a NAT in front of a site, and a carrier-grade NAT before it.
         *(f"nat{site}" for site in SITE_NAMES[2:]), *(f"cgn{site}" for site in SITE_NAMES),
         "gwA2")  # gwA2: site A's second gateway (bridger.lab.ha)
#: Behind ispB: gwB's routed WAN subnets (the router reaches them through ispB).
ISP_INSIDE_NET = "10.102.2"
ISP_INSIDE6_NET = "fd00:102:2"
PREFIX_RE = re.compile(r"^[A-Za-z0-9]{2,16}$")
#: Prefixes this module generates: ``bl`` + 6 hex digits.
AUTO_PREFIX_RE = re.compile(r"^bl[0-9a-f]{6}$")
MARKER_DIR = Path("/run/bridger-lab")
MIN_MTU, MAX_MTU = 576, 9000
NFT_MASQUERADE = """\
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan0" masquerade
  }
}
"""

#: The router's own ICMP errors that path-MTU discovery needs, dropped.
NFT_FILTER_ICMP = """\
table inet lab_pmtu {
  chain output {
    type filter hook output priority 0; policy accept;
    icmp type destination-unreachable icmp code frag-needed counter drop
    icmpv6 type packet-too-big counter drop
  }
}
"""


class LabError(HostError):
    """The lab cannot be built, changed or removed as asked."""


@dataclass(frozen=True)
class LabOptions(ImpairmentKnobs):
    """Knobs for one lab: the impairment knobs first (one-way: an RTT sees them
    twice; declared in :class:`ImpairmentKnobs`), then these."""

    wan_mtu: int = 1500
    #: Put a second router (``ispB``; with nat_b the NAT box is that router)
    #: between the WAN router and gwB, joined to the WAN router by a link of
    #: this MTU: a narrow hop in the middle of the path, between two routers,
    #: that neither gateway's interface shows (None: no narrow hop).
    #: :meth:`Lab.set_path_mtu` changes it while running.
    path_mtu_b: int | None = None
    #: The router drops the ICMP "fragmentation needed" / "packet too big" it
    #: would send (a path-MTU black hole, as behind many firewalls).
    filter_icmp: bool = False
    nat_b: bool = False
    #: How many sites (A, B, C, ...) hang off the router: 2 to MAX_SITES.
    sites: int = MIN_SITES
    prefix: str | None = None
    #: "auto" (netem if the kernel has it), "netem", "wire" (userspace), or
    #: "direct": plain veths routed in-kernel, no impairment possible (benchmarks).
    engine: str = "auto"
    #: Seeds the userspace wire's randomness (netem has its own).
    seed: int = 0

    def impairment(self) -> Impairment:
        """The impairment knobs as a validated record."""
        try:
            return Impairment.of(self)
        except ImpairmentError as exc:
            raise LabError(str(exc)) from exc

    def validate(self) -> None:
        """Raise :class:`LabError` for knobs that cannot be applied."""
        self.impairment()
        if isinstance(self.sites, bool) or not isinstance(self.sites, int) or not (
            MIN_SITES <= self.sites <= MAX_SITES
        ):
            raise LabError(f"sites must be {MIN_SITES} to {MAX_SITES}")
        if not MIN_MTU <= self.wan_mtu <= MAX_MTU:
            raise LabError(f"wan_mtu must be between {MIN_MTU} and {MAX_MTU}")
        if self.path_mtu_b is not None and not MIN_MTU <= self.path_mtu_b <= MAX_MTU:
            raise LabError(f"path_mtu_b must be between {MIN_MTU} and {MAX_MTU}")
        if self.prefix is not None and not PREFIX_RE.match(self.prefix):
            raise LabError("prefix must be 2-16 letters or digits")
        if self.engine not in ENGINES:
            raise LabError("engine must be auto, netem, wire or direct")
        if self.engine == "direct" and not self.impairment().is_noop:
            raise LabError("engine direct cannot impair the WAN; use netem or wire")


# --- small subprocess helpers -----------------------------------------------------


def _cmd(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a setup command; failures become one-line :class:`LabError`s."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{argv[0]}: {exc}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"`{' '.join(argv)}` failed: {detail[-1] if detail else proc.returncode}")
    return proc


def list_namespaces() -> list[str]:
    """All named network namespaces on this machine."""
    out = _cmd("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lab_owners(is_role: Callable[[str], bool] = ROLES.__contains__) -> dict[str, int | None]:
    """Prefix -> owning pid (None if unknown) for every lab namespace present
    (``is_role``: which ``<prefix>-<role>`` names are a lab's; the hub lab
    has roles of its own)."""
    owners: dict[str, int | None] = {}
    for name in list_namespaces():
        prefix, sep, role = name.partition("-")
        if not sep or not is_role(role) or prefix in owners:
            continue
        marker = MARKER_DIR / f"{prefix}.pid"
        pid: int | None = None
        with contextlib.suppress(OSError, ValueError):
            pid = int(marker.read_text().strip())
        owners[prefix] = pid
    return owners


def remove_lab(prefix: str, is_role: Callable[[str], bool] = ROLES.__contains__) -> list[str]:
    """Delete every namespace ``<prefix>-<role>`` (``is_role`` as for
    :func:`lab_owners`) and the marker; return what was removed."""
    if not PREFIX_RE.match(prefix):
        raise LabError("prefix must be 2-16 letters or digits")
    removed = []
    for name in list_namespaces():
        head, sep, role = name.partition("-")
        # Deleting a namespace destroys its veths, bridges and qdiscs with it.
        if (
            head == prefix
            and sep
            and is_role(role)
            and _cmd("ip", "netns", "del", name, check=False).returncode == 0
        ):
            removed.append(name)
    with contextlib.suppress(FileNotFoundError):
        (MARKER_DIR / f"{prefix}.pid").unlink()
    return removed


def cleanup_stale() -> list[str]:
    """Remove labs whose owning process is gone (crashed or SIGKILLed runs)."""
    removed: list[str] = []
    for prefix, pid in lab_owners().items():
        if pid is not None and _pid_alive(pid):
            continue
        if pid is None and not AUTO_PREFIX_RE.match(prefix):
            continue  # not obviously ours and no marker: leave it alone
        removed += remove_lab(prefix)
    return removed


_netem_available: bool | None = None


def netem_available() -> bool:
    """Whether ``tc qdisc ... netem`` works here (probed once, in a scratch namespace)."""
    global _netem_available
    if _netem_available is None:
        ns = f"blprobe{secrets.token_hex(3)}"
        _cmd("ip", "netns", "add", ns)
        try:
            _cmd("ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
            probe = _cmd("tc", "-n", ns, "qdisc", "add", "dev", "p0", "root", "netem", check=False)
            _netem_available = probe.returncode == 0
        finally:
            _cmd("ip", "netns", "del", ns, check=False)
    return _netem_available


def _netem_args(imp: Impairment) -> list[str]:
    args = ["limit", "10000"]
    if imp.delay_ms:
        args += ["delay", f"{imp.delay_ms}ms"]
        if imp.jitter_ms:
            args += [f"{imp.jitter_ms}ms"]
    if imp.loss_pct:
        args += ["loss", f"{imp.loss_pct}%"]
    if imp.reorder_pct:
        args += ["reorder", f"{imp.reorder_pct}%"]
    if imp.duplicate_pct:
        args += ["duplicate", f"{imp.duplicate_pct}%"]
    if imp.rate_mbit is not None:
        args += ["rate", f"{imp.rate_mbit}mbit"]
    return args


# --- the lab ------------------------------------------------------------------------


class Lab:
    """A built topology; a context manager that always tears down what it built."""

    def __init__(self, options: LabOptions | None = None) -> None:
        self.options = replace(options) if options is not None else LabOptions()
        self.options.validate()
        self.prefix = self.options.prefix or f"bl{secrets.token_hex(3)}"
        self.engine = "netem"
        self._impairment = self.options.impairment()
        #: The sites of this lab, in order: ("A", "B") for two.
        self.sites: tuple[str, ...] = SITE_NAMES[: self.options.sites]
        self._wan_host = dict.fromkeys(self.sites, FIRST_WAN_HOST)
        self._nat_inside_host = FIRST_WAN_HOST
        self._wire: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._built = False
        self._torn_down = False
        self._sigterm = SigtermTeardown()

    # -- names and commands
    def ns(self, role: str) -> str:
        """The namespace name of ``role`` (one of :meth:`roles`)."""
        if role not in ROLES:
            raise LabError(f"unknown role {role!r}; one of {', '.join(self.roles())}")
        if role == "natB" and not self.options.nat_b:
            raise LabError("this lab has no natB (build it with nat_b=True)")
        if role == "ispB" and (self.options.path_mtu_b is None or self.options.nat_b):
            raise LabError("this lab has no ispB (build it with path_mtu_b=MTU, no nat_b)")
        if role not in self.roles():
            raise LabError(f"this lab has no {role} (it has sites {', '.join(self.sites)})")
        return f"{self.prefix}-{role}"

    def roles(self) -> list[str]:
        """The roles present in this lab, site by site, then the router (and natB)."""
        roles = [r for site in self.sites for r in site_roles(site)]
        roles.append("wan")
        if self.options.nat_b:
            roles.append("natB")
        if self.options.path_mtu_b is not None and not self.options.nat_b:
            roles.append("ispB")
        return roles

    def hosts(self, site: str | None = None) -> list[str]:
        """The LAN host roles of ``site`` (all sites when None), e.g. ["hostA1", "hostA2"]."""
        if site is not None:
            self._check_site(site)
        sites = self.sites if site is None else (site,)
        return [r for s in sites for r in site_roles(s) if r.startswith("host")]

    @staticmethod
    def site_of(role: str) -> str:
        """The site letter of a gateway, host or switch role ("hostC2" -> "C")."""
        for head in ("gw", "host", "sw"):
            if role.startswith(head) and len(role) > len(head):
                site = role[len(head)]
                if site in SITE_NAMES and role in site_roles(site):
                    return site
        raise LabError(f"{role} belongs to no site")

    def run(
        self,
        role: str,
        *argv: str,
        check: bool = True,
        timeout: float | None = 30,
        **kw: Any,
    ) -> subprocess.CompletedProcess[str]:
        """``ip netns exec <ns> argv...``; output captured as text unless ``kw`` says otherwise."""
        if not {"stdout", "stderr", "capture_output"} & kw.keys():
            kw["capture_output"] = True
        kw.setdefault("text", True)
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(role), *argv], check=check, timeout=timeout, **kw
        )

    def popen(self, role: str, *argv: str, **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``role``'s namespace; the caller owns the process."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns(role), *argv], **kw)

    def _ip(self, role: str, command: str) -> None:
        """``ip -n <ns> command`` (our names never contain spaces)."""
        _cmd("ip", "-n", self.ns(role), *command.split())

    def _sysctl(self, role: str, *settings: str) -> None:
        _cmd("ip", "netns", "exec", self.ns(role), "sysctl", "-q", "-w", *settings)

    # -- addresses
    def _wan_addr(self, site: str) -> str:
        return f"{WAN_NET[site]}.{self._wan_host[site]}"

    def _router_addr(self, site: str) -> str:
        return f"{WAN_NET[site]}.{ROUTER_HOST}"

    def _site_wan_role(self, site: str) -> str:
        """The namespace whose ``wan0`` faces the router for ``site``."""
        if site == "B" and self.options.nat_b:
            return "natB"
        if site == "B" and self.options.path_mtu_b is not None:
            return "ispB"
        return f"gw{site}"

    def _behind_isp(self, site: str) -> bool:
        return site == "B" and self.options.path_mtu_b is not None and not self.options.nat_b

    def gateway_wan_address(self, site: str) -> str:
        """The address the other gateway sees for ``site``.

        For B behind NAT this is the NAT's public address: packets from gwB come
        from it, but nothing listens there, so A listens and B dials A.  Behind
        ispB it is gwB's own (routed) address.
        """
        self._check_site(site)
        if self._behind_isp(site):
            return f"{ISP_INSIDE_NET}.{FIRST_WAN_HOST}"
        return self._wan_addr(site)

    def gateway_wan_address6(self, site: str) -> str:
        """The gateway's IPv6 WAN address (not for B behind NAT: the NAT is IPv4 only)."""
        self._check_site(site)
        if site == "B" and self.options.nat_b:
            raise LabError("site B behind NAT has no IPv6 WAN address")
        if self._behind_isp(site):
            return f"{ISP_INSIDE6_NET}::{FIRST_WAN_HOST}"
        return f"{WAN6_NET[site]}::{FIRST_WAN_HOST}"

    def gateway_private_address(self, site: str) -> str:
        """gwB's own ``wan0`` address behind the NAT (equals the public one without NAT)."""
        self._check_site(site)
        if site == "B" and self.options.nat_b:
            return f"{NAT_INSIDE_NET}.{self._nat_inside_host}"
        return self.gateway_wan_address(site)

    def lan_address(self, role: str, family: int = 4) -> str:
        """A host's (or gateway's: role ``gwA``, ``gwC``, ...) LAN address, no prefix length."""
        if role in HOSTS:
            pair = HOSTS[role]
        elif role.startswith("gw") and role[2:] in SITE_NAMES:
            pair = GATEWAY_LAN[role[2:]]
        else:
            raise LabError(f"{role} has no LAN address")
        self._check_site(self.site_of(role))
        return pair[0] if family == 4 else pair[1]

    @staticmethod
    def lan_ifname(role: str) -> str:
        """The LAN interface of a host (``eth0``) or gateway (``eth1``)."""
        return "eth1" if role.startswith("gw") else "eth0"

    def _check_site(self, site: str) -> None:
        if site not in self.sites:
            raise LabError(f"site must be one of {', '.join(self.sites)}, not {site!r}")

    # -- lifecycle
    def __enter__(self) -> Lab:
        self.build()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    def build(self) -> None:
        """Create every namespace, link and rule; on any failure remove them again."""
        if self._built:
            raise LabError("lab already built")
        self._built = True
        atexit.register(self.teardown)
        self._sigterm.hold()
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        """Stop the wire and delete every namespace; safe to call twice or from atexit.

        A SIGTERM arriving meanwhile is held back until the namespaces are gone.
        """
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
        atexit.unregister(self.teardown)
        with self._sigterm.deferred():
            self._stop_wire()
            remove_lab(self.prefix)

    def _stop_wire(self) -> None:
        if self._wire is None:
            return
        with contextlib.suppress(OSError):
            if self._wire.stdin:
                self._wire.stdin.close()
        try:
            self._wire.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._wire.kill()
            self._wire.wait()

    def _build(self) -> None:
        opts = self.options
        if self.prefix in lab_owners():
            raise LabError(f"namespaces with prefix {self.prefix} already exist")
        if opts.engine == "auto":
            self.engine = "netem" if netem_available() else "wire"
        elif opts.engine == "netem" and not netem_available():
            raise LabError("engine netem asked for, but this kernel has no sch_netem")
        else:
            self.engine = opts.engine
        MARKER_DIR.mkdir(parents=True, exist_ok=True)
        (MARKER_DIR / f"{self.prefix}.pid").write_text(f"{os.getpid()}\n")
        for role in self.roles():
            _cmd("ip", "netns", "add", self.ns(role))
            self._ip(role, "link set lo up")
            # DAD off before any interface exists, so IPv6 is usable at once. No
            # router solicitations either (the lab has no IPv6 router; the kernel
            # would repeat them for an hour, flooded to every site as noise).
            self._sysctl(
                role,
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.router_solicitations=0",
                "net.ipv6.conf.default.router_solicitations=0",
                "net.ipv4.conf.all.promote_secondaries=1",
                "net.ipv4.conf.default.promote_secondaries=1",
            )
        for site in self.sites:
            self._build_site(site)
        self._build_wan()
        if opts.nat_b:
            self._build_nat()
        if opts.path_mtu_b is not None:
            if not opts.nat_b:
                self._build_isp()
            self.set_path_mtu("B", opts.path_mtu_b)
        if opts.filter_icmp:
            self.filter_icmp_too_big(True)
        self._apply_impairment(self._impairment)

    def _build_site(self, site: str) -> None:
        sw, gw = f"sw{site}", f"gw{site}"
        self._ip(sw, "link add br0 type bridge mcast_snooping 0")
        self._ip(sw, "link set br0 up")
        for index, host in enumerate(self.hosts(site), start=1):
            self._ip(sw, f"link add h{index} type veth peer name eth0 netns {self.ns(host)}")
            self._ip(sw, f"link set h{index} master br0 up")
            v4, v6 = HOSTS[host]
            self._ip(host, f"addr add {v4}/{LAN_PREFIXLEN} dev eth0")
            self._ip(host, f"addr add {v6}/{LAN6_PREFIXLEN} dev eth0 nodad")
            self._ip(host, "link set eth0 up")
        self._ip(sw, f"link add gw type veth peer name eth1 netns {self.ns(gw)}")
        self._ip(sw, "link set gw master br0 up")
        v4, v6 = GATEWAY_LAN[site]
        self._ip(gw, f"addr add {v4}/{LAN_PREFIXLEN} dev eth1")
        self._ip(gw, f"addr add {v6}/{LAN6_PREFIXLEN} dev eth1 nodad")
        self._ip(gw, "link set eth1 up")
        # The sites share one subnet; only bridger may join them, never IP forwarding.
        self._sysctl(gw, "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0")

    def _build_wan(self) -> None:
        mtu = self.options.wan_mtu
        self._sysctl("wan", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        for site in self.sites:
            attach = self._site_wan_role(site)
            rt_if = f"w{site}"
            if self.engine in ("netem", "direct"):
                self._ip(
                    "wan",
                    f"link add {rt_if} mtu {mtu} type veth"
                    f" peer name wan0 netns {self.ns(attach)} mtu {mtu}",
                )
            else:
                # wA <-> xA inside wan; pA <-> the site's wan0; the wire joins xA and pA.
                self._ip("wan", f"link add {rt_if} mtu {mtu} type veth peer name x{site} mtu {mtu}")
                self._ip(
                    "wan",
                    f"link add p{site} mtu {mtu} type veth"
                    f" peer name wan0 netns {self.ns(attach)} mtu {mtu}",
                )
                for port in (f"x{site}", f"p{site}"):
                    self._sysctl("wan", f"net.ipv6.conf.{port}.disable_ipv6=1")
                    self._ip("wan", f"link set {port} promisc on up")
            self._ip("wan", f"addr add {self._router_addr(site)}/{WAN_PREFIXLEN} dev {rt_if}")
            self._ip("wan", f"link set {rt_if} up")
            self._ip(attach, f"addr add {self._wan_addr(site)}/{WAN_PREFIXLEN} dev wan0")
            self._ip(attach, "link set wan0 up")
            self._ip(attach, f"route add default via {self._router_addr(site)}")
            if attach == f"gw{site}":  # IPv6 underlay too (the NAT box is IPv4 only)
                self._ip("wan", f"addr add {WAN6_NET[site]}::1/{WAN6_PREFIXLEN} dev {rt_if} nodad")
                self._ip(attach, f"addr add {self.gateway_wan_address6(site)}/{WAN6_PREFIXLEN}"
                                 " dev wan0 nodad")
                self._ip(attach, f"-6 route add default via {WAN6_NET[site]}::1")
            elif attach == "ispB":
                self._ip("wan", f"addr add {WAN6_NET[site]}::1/{WAN6_PREFIXLEN} dev {rt_if} nodad")
                self._ip(attach, f"addr add {WAN6_NET[site]}::{FIRST_WAN_HOST}/{WAN6_PREFIXLEN}"
                                 " dev wan0 nodad")
                self._ip(attach, f"-6 route add default via {WAN6_NET[site]}::1")
        if self.engine == "wire":
            self._offload_off("wan", *(f"w{site}" for site in self.sites))
            for site in self.sites:
                self._offload_off(self._site_wan_role(site), "wan0")
            self._start_wire()

    def _build_nat(self) -> None:
        mtu = self.options.wan_mtu
        self._ip(
            "natB",
            f"link add lan0 mtu {mtu} type veth peer name wan0 netns {self.ns('gwB')} mtu {mtu}",
        )
        self._ip("natB", f"addr add {NAT_INSIDE_NET}.1/{WAN_PREFIXLEN} dev lan0")
        self._ip("natB", "link set lan0 up")
        self._sysctl("natB", "net.ipv4.ip_forward=1")
        self._ip("gwB", f"addr add {self.gateway_private_address('B')}/{WAN_PREFIXLEN} dev wan0")
        self._ip("gwB", "link set wan0 up")
        self._ip("gwB", f"route add default via {NAT_INSIDE_NET}.1")
        natb = ["ip", "netns", "exec", self.ns("natB")]
        if shutil.which("nft"):
            proc = subprocess.run(
                [*natb, "nft", "-f", "-"],
                input=NFT_MASQUERADE,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if proc.returncode != 0:
                raise LabError(f"nft in natB failed: {proc.stderr.strip()}")
        elif shutil.which("iptables"):
            masquerade = "iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE"
            _cmd(*natb, *masquerade.split())
        else:
            raise LabError("nat_b needs nft or iptables (apt-get install nftables)")

    def _build_isp(self) -> None:
        """ispB: a plain router between the WAN router and gwB (no NAT), so that
        the narrow link is between two routers and each direction meets it
        while being forwarded (ICMP "fragmentation needed" / "packet too big"
        from whichever router cannot forward, unless filtered)."""
        mtu = self.options.wan_mtu
        self._ip(
            "ispB",
            f"link add lan0 mtu {mtu} type veth peer name wan0 netns {self.ns('gwB')} mtu {mtu}",
        )
        self._ip("ispB", f"addr add {ISP_INSIDE_NET}.1/{WAN_PREFIXLEN} dev lan0")
        self._ip("ispB", f"addr add {ISP_INSIDE6_NET}::1/{WAN6_PREFIXLEN} dev lan0 nodad")
        self._ip("ispB", "link set lan0 up")
        self._sysctl("ispB", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        gw_v4, gw_v6 = self.gateway_wan_address("B"), self.gateway_wan_address6("B")
        self._ip("gwB", f"addr add {gw_v4}/{WAN_PREFIXLEN} dev wan0")
        self._ip("gwB", f"addr add {gw_v6}/{WAN6_PREFIXLEN} dev wan0 nodad")
        self._ip("gwB", "link set wan0 up")
        self._ip("gwB", f"route add default via {ISP_INSIDE_NET}.1")
        self._ip("gwB", f"-6 route add default via {ISP_INSIDE6_NET}::1")
        isp_v4 = self._wan_addr("B")
        self._ip("wan", f"route add {ISP_INSIDE_NET}.0/{WAN_PREFIXLEN} via {isp_v4}")
        self._ip("wan", f"-6 route add {ISP_INSIDE6_NET}::/{WAN6_PREFIXLEN}"
                        f" via {WAN6_NET['B']}::{FIRST_WAN_HOST}")

    def _offload_off(self, role: str, *ifnames: str) -> None:
        argv = [sys.executable, "-m", "bridger.lab.wire", "offload-off", *ifnames]
        _cmd("ip", "netns", "exec", self.ns(role), *argv)

    def _start_wire(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self._wire = subprocess.Popen(
            [
                *("ip", "netns", "exec", self.ns("wan"), sys.executable, "-m", "bridger.lab.wire"),
                "run",
                *(arg for site in self.sites for arg in ("--pair", f"p{site}:x{site}")),
                *("--seed", str(self.options.seed)),
                *("--impairment", json.dumps(asdict(self._impairment))),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # a Ctrl-C on the terminal reaches us, not the wire
        )
        assert self._wire.stdout is not None
        if self._wire.stdout.readline().strip() != "ready":
            raise LabError("the userspace wire failed to start")

    def wire_stats(self) -> dict[str, dict[str, int]]:
        """Per-site counters of the userspace wire (engine ``wire`` only)."""
        if self._wire is None or self._wire.stdin is None or self._wire.stdout is None:
            raise LabError("this lab uses netem; there is no userspace wire")
        self._wire.stdin.write('{"cmd": "stats"}\n')
        self._wire.stdin.flush()
        stats: dict[str, dict[str, int]] = json.loads(self._wire.stdout.readline())
        return stats

    # -- changes while running
    def set_impairment(self, **netem_knobs: Any) -> None:
        """Replace the impairment knobs (unnamed knobs keep their current value)."""
        known = {f.name for f in fields(Impairment)}
        unknown = set(netem_knobs) - known
        if unknown:
            raise LabError(f"unknown impairment knob(s): {', '.join(sorted(unknown))}")
        try:
            imp = replace(self._impairment, **netem_knobs)
        except (ImpairmentError, TypeError) as exc:
            raise LabError(str(exc)) from exc
        self._apply_impairment(imp)
        self._impairment = imp

    @property
    def impairment(self) -> Impairment:
        """The knobs in force now."""
        return self._impairment

    def _apply_impairment(self, imp: Impairment) -> None:
        if self.engine == "direct":
            if not imp.is_noop:
                raise LabError("engine direct cannot impair the WAN; use netem or wire")
            return
        if self.engine == "wire":
            assert self._wire is not None and self._wire.stdin is not None
            self._wire.stdin.write(json.dumps({"impairment": asdict(imp)}) + "\n")
            self._wire.stdin.flush()
            return
        tc = ("tc", "-n", self.ns("wan"), "qdisc")
        for rt_if in (f"w{site}" for site in self.sites):
            if imp.is_noop:
                _cmd(*tc, "del", "dev", rt_if, "root", check=False)
            else:
                _cmd(*tc, "replace", "dev", rt_if, "root", "netem", *_netem_args(imp))

    def set_path_mtu(self, site: str, mtu: int | None) -> None:
        """Set the MTU of the link between the WAN router and ispB (None: back to
        wan_mtu); only site B, in a lab built with ``path_mtu_b``.

        Both ends are routers, so neither gateway can read the narrow hop off
        an interface: a packet too big for it is dropped where it would be
        forwarded onto it, with an ICMP "fragmentation needed" / "packet too
        big" back to its sender unless :meth:`filter_icmp_too_big`.
        """
        self._check_site(site)
        if site != "B" or self.options.path_mtu_b is None:
            raise LabError("only site B of a lab built with path_mtu_b has a narrow hop")
        value = self.options.wan_mtu if mtu is None else mtu
        if not MIN_MTU <= value <= MAX_MTU:
            raise LabError(f"MTU must be between {MIN_MTU} and {MAX_MTU}")
        self._ip(self._site_wan_role(site), f"link set wan0 mtu {value}")
        if self.engine == "wire":  # the wire's own veths carry what the link does
            for port in (f"x{site}", f"p{site}"):
                self._ip("wan", f"link set {port} mtu {value}")
        self._ip("wan", f"link set w{site} mtu {value}")

    def filter_icmp_too_big(self, on: bool = True) -> None:
        """Make the routers (the WAN router, and ispB where there is one) drop
        (``on``) or send again the ICMP errors path-MTU discovery relies on:
        IPv4 "fragmentation needed", ICMPv6 "packet too big"."""
        routers = ["wan"]
        if self.options.path_mtu_b is not None:
            routers.append(self._site_wan_role("B"))
        for router in routers:
            ns = ["ip", "netns", "exec", self.ns(router), "nft"]
            _cmd(*ns, "delete", "table", "inet", "lab_pmtu", check=False)
            if on:
                proc = subprocess.run(
                    [*ns, "-f", "-"], input=NFT_FILTER_ICMP, capture_output=True, text=True,
                    timeout=30, check=False,
                )
                if proc.returncode != 0:
                    raise LabError(f"nft in {router} failed: {proc.stderr.strip()}")

    def change_wan_address(self, site: str) -> str:
        """Roam: give ``site``'s gateway a new WAN address, drop the old, return the new.

        For B behind NAT this changes gwB's inside address (the NAT then maps it
        afresh); the public side is changed by :meth:`change_nat_mapping`.
        """
        self._check_site(site)
        if self._behind_isp(site):
            raise LabError("gwB behind ispB keeps its address (no roaming in that lab)")
        if site == "B" and self.options.nat_b:
            old = self.gateway_private_address("B")
            self._nat_inside_host = self._next_host(self._nat_inside_host)
            new = self.gateway_private_address("B")
            self._readdress("gwB", old, new, f"{NAT_INSIDE_NET}.1")
            return new
        old = self._wan_addr(site)
        self._wan_host[site] = self._next_host(self._wan_host[site])
        new = self._wan_addr(site)
        self._readdress(f"gw{site}", old, new, self._router_addr(site))
        return new

    def change_nat_mapping(self) -> None:
        """Give natB a new public address; masquerade forgets the old mappings with it."""
        if not self.options.nat_b:
            raise LabError("this lab has no NAT (build it with nat_b=True)")
        old = self._wan_addr("B")
        self._wan_host["B"] = self._next_host(self._wan_host["B"])
        new = self._wan_addr("B")
        self._readdress("natB", old, new, self._router_addr("B"))
        # Conntrack entries bound to the old address are dropped by the kernel's
        # masquerade address notifier; flush anyway where the tool exists.
        if shutil.which("conntrack"):
            _cmd("ip", "netns", "exec", self.ns("natB"), "conntrack", "-F", check=False)

    @staticmethod
    def _next_host(host: int) -> int:
        nxt = host + 1
        return nxt if nxt < 255 else FIRST_WAN_HOST + 1

    def _readdress(self, role: str, old: str, new: str, via: str) -> None:
        self._ip(role, f"addr add {new}/{WAN_PREFIXLEN} dev wan0")
        # promote_secondaries=1 keeps the new address when the old primary goes.
        self._ip(role, f"addr del {old}/{WAN_PREFIXLEN} dev wan0")
        self._ip(role, f"route replace default via {via} dev wan0 src {new}")

    # -- for humans
    def describe(self) -> Iterator[str]:
        """Lines naming the namespaces and showing how to use them."""
        yield f"lab {self.prefix} up (engine: {self.engine})"
        for role in self.roles():
            yield f"  {role:<7} {self.ns(role)}"
        for site in self.sites:
            nat = " (NAT public address)" if site == "B" and self.options.nat_b else ""
            yield f"  gw{site} WAN {self.gateway_wan_address(site)}{nat}"
        yield "examples:"
        yield f"  ip netns exec {self.ns('hostA1')} ping 192.168.1.12"
        yield f"  ip netns exec {self.ns('gwA')} ping {self.gateway_wan_address('B')}"
        yield f"  ip netns exec {self.ns('gwA')} bash"


class SigtermTeardown:
    """A lab's part in SIGTERM: while it lives SIGTERM is SystemExit, so its
    ``with`` block and atexit tear it down (only where nobody else handles
    SIGTERM; shared by all live labs, counted); while it tears down a SIGTERM
    is held back until the namespaces are gone.  The classic lab and the hub
    lab each hold one."""

    def __init__(self) -> None:
        self._holds = False

    def hold(self) -> None:
        """At build: SIGTERM becomes SystemExit (main thread only)."""
        global _sigterm_holders
        if threading.current_thread() is not threading.main_thread():
            return
        if _sigterm_holders == 0 and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _sigterm_to_exit)
        if signal.getsignal(signal.SIGTERM) is _sigterm_to_exit:
            _sigterm_holders += 1
            self._holds = True

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Around a teardown: a SIGTERM meanwhile is re-raised after it."""
        global _sigterm_holders, _sigterm_pending
        main = threading.current_thread() is threading.main_thread()
        deferring = main and signal.getsignal(signal.SIGTERM) is _sigterm_to_exit
        if deferring:
            signal.signal(signal.SIGTERM, _sigterm_record)
        try:
            yield
        finally:
            if self._holds:
                self._holds = False
                _sigterm_holders -= 1
            if deferring:
                signal.signal(
                    signal.SIGTERM, _sigterm_to_exit if _sigterm_holders else signal.SIG_DFL
                )
                if _sigterm_pending:
                    _sigterm_pending = False
                    raise SystemExit(128 + signal.SIGTERM)


#: Live labs relying on :func:`_sigterm_to_exit`; the last one restores SIG_DFL.
_sigterm_holders = 0
#: A SIGTERM arrived while a teardown was running; re-raised when it is done.
_sigterm_pending = False


def _sigterm_to_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _sigterm_record(signum: int, frame: FrameType | None) -> None:
    global _sigterm_pending
    _sigterm_pending = True
