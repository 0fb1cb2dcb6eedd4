"""A hub and N spokes in network namespaces: the scale lab (issue 26).

Each site is two namespaces, a gateway and one LAN host behind a small
switch (a bridge in the host's namespace, so a cable can join two LANs); all
gateways share one flat WAN segment (a bridge in the ``wan`` namespace, no
router and no impairment: the lab measures the gateways, not the path)::

   [hosthub lan0]─eth1 [gwhub] wan0 ─┐
   [host001 lan0]─eth1 [gw001] wan0 ─┼─ br0 [wan]      WAN 10.200.0.0/16
          ...                        │                 LAN 10.50.0.0/16, fd00:50::/64
   [hostNNN lan0]─eth1 [gwNNN] wan0 ─┘                 one broadcast domain

The hub lists every spoke without a host (``mode = "hub"``); each spoke lists
only the hub.  :meth:`HubLab.cable` joins two sites' LAN switches with a veth
(a loop through the tunnels), :meth:`HubLab.unplug` removes it.

Site 0 is the hub, sites 1..N the spokes.  Namespace names are
``<prefix>-<role>`` with roles ``wan``, ``gwhub``/``hosthub`` and
``gw001``/``host001``...; the owner marker and the SIGTERM-safe teardown are
those of :mod:`bridger.lab.topology`.  A test harness: it drives ``ip`` as
subprocesses (the product's host code uses pyroute2).
"""

from __future__ import annotations

import atexit
import compileall
import contextlib
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import bridger
from bridger.errors import BridgerError
from bridger.keys import generate_private_key, public_key, write_private_key_file
from bridger.lab.gateways import LAB_PORT, PeerEntry, TomlValue, render_config
from bridger.lab.topology import (
    MARKER_DIR,
    PREFIX_RE,
    LabError,
    SigtermTeardown,
    _cmd,
    _pid_alive,
    lab_owners,
    list_namespaces,
    remove_lab,
)
from bridger.lab.wait import wait_until
from bridger.status.control import control_path, query_status

#: Most spokes one lab holds (WAN and LAN addresses are /16s; names have 3 digits).
MAX_SPOKES = 250
HUB = 0
WAN_BASE = "10.200"
LAN_BASE = "10.50"
LAN6_BASE = "fd00:50::"
_ROLE_RE = re.compile(r"^(wan|gwhub|hosthub|gw\d{3}|host\d{3})$")
#: The prefixes HubLab picks by itself.
AUTO_HUB_PREFIX_RE = re.compile(r"^bh[0-9a-f]{6}$")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def site_label(site: int) -> str:
    """``hub`` for site 0, ``001``.. for the spokes."""
    return "hub" if site == HUB else f"{site:03d}"


def peer_name(site: int) -> str:
    """The site's name in the other sites' configs (and its tap there): ``hub``, ``s001``."""
    return "hub" if site == HUB else f"s{site:03d}"


def _numbered(base: str, site: int) -> str:
    """``base.X.Y`` for site ``site``: host number site + 1 in a /16."""
    n = site + 1
    return f"{base}.{n >> 8}.{n & 0xFF}"


def wan_address(site: int) -> str:
    return _numbered(WAN_BASE, site)


def lan_address(site: int) -> str:
    """The LAN host's IPv4 address (the gateways have none on the LAN)."""
    return _numbered(LAN_BASE, site)


def lan_address6(site: int) -> str:
    return f"{LAN6_BASE}{site + 1:x}"


def hub_lab_owners() -> dict[str, int | None]:
    """Prefix -> owning pid (None if unknown) of every hub lab with a namespace here
    (a gateway's or host's: ``wan`` alone is any lab's role)."""
    return lab_owners(lambda role: role != "wan" and _is_role(role))


def _is_role(role: str) -> bool:
    return _ROLE_RE.match(role) is not None


def stop_namespace_processes(names: Sequence[str], timeout: float = 15.0) -> int:
    """SIGTERM what still runs in the namespaces ``names`` (a dead lab's gateways,
    which restore their host network on SIGTERM), SIGKILL what is left after
    ``timeout``; how many processes there were."""
    pids: set[int] = set()
    for name in names:
        out = _cmd("ip", "netns", "pids", name, check=False).stdout
        pids |= {int(word) for word in out.split() if word.isdigit()}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def cleanup_stale_hub_labs(only: Collection[str] | None = None) -> list[str]:
    """Remove hub labs whose owning process is gone (crashed or SIGKILLed runs):
    their gateways are stopped first, then every namespace goes.  A lab with no
    marker is removed only if its prefix is an automatic one (``bh`` + 6 hex
    digits).  ``only``: these prefixes alone (a test's own lab)."""
    removed: list[str] = []
    for prefix, pid in hub_lab_owners().items():
        if only is not None and prefix not in only:
            continue
        if pid is not None and _pid_alive(pid):
            continue
        if pid is None and not AUTO_HUB_PREFIX_RE.match(prefix):
            continue  # not obviously ours and no marker: leave it alone
        stop_namespace_processes([name for name in list_namespaces()
                                  if name.partition("-")[0] == prefix])
        removed += remove_hub_lab(prefix)
    return removed


def remove_hub_lab(prefix: str) -> list[str]:
    """Delete every namespace of hub lab ``prefix`` and its marker."""
    return remove_lab(prefix, _is_role)


@dataclass(frozen=True)
class Startup:
    """How long spokes took to come up, in seconds from their start."""

    #: Until every spoke had its tunnel to the hub up.
    all_up: float
    #: Until the last spoke answered at all (its process ready: Python start-up,
    #: taps, bridge; on a small loaded machine this is most of ``all_up``).
    last_ready: float
    #: Longest time from a spoke being ready to its tunnel being up (polled: at
    #: worst one polling round of the hub too long).
    handshake: float


def hub_handshakes(doc: dict[str, Any] | None) -> dict[str, int]:
    """Peer name -> handshakes completed, from the hub's status document."""
    return {str(p.get("name")): int(p.get("handshakes", 0)) for p in (doc or {}).get("peers", ())}


@dataclass
class Gateway:
    """One site's `bridger up`: its files and, while it runs, its process."""

    site: int
    config_file: Path
    state_dir: Path
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    #: Its ``NOTIFY_SOCKET`` (the lab's end, bound while it runs) and when it
    #: said ``READY=1`` there (monotonic; None: not yet).
    notify: socket.socket | None = None
    ready_at: float | None = None
    #: The hub's count of completed handshakes with it when it was started:
    #: it is up again once the hub counts one more (see :meth:`HubLab.wait_up`).
    handshakes_before: int = 0

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise LabError(f"gateway {site_label(self.site)} is not running")
        return self.proc.pid

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """Its status document, or None while it cannot answer."""
        try:
            return query_status(control_path(self.state_dir), timeout=timeout)
        except BridgerError:
            return None


@dataclass
class HubLab:
    """A hub and ``spokes`` spokes; a context manager that removes all of it."""

    spokes: int
    workdir: Path
    prefix: str = field(default_factory=lambda: f"bh{secrets.token_hex(3)}")
    #: Extra ``[local]`` settings for every gateway (e.g. ``{"data_path": "python"}``).
    local: dict[str, TomlValue] = field(default_factory=dict)
    #: False: interfaces the gateways create (taps, bridge) get no IPv6 stack
    #: (``net.ipv6.conf.default.disable_ipv6=1`` in the gateway namespaces), as if
    #: bridger made its taps without one: each tap's own router solicitations, MLD
    #: reports and DAD then never enter the tunnels (see docs/operations.md).
    gateway_ipv6: bool = True
    #: Extra ``[local]`` settings for the hub only (over ``local``).
    hub_local: dict[str, TomlValue] = field(default_factory=dict)
    gateways: dict[int, Gateway] = field(default_factory=dict)
    _built: bool = False
    _torn_down: bool = False
    _cables: set[str] = field(default_factory=set)
    _sigterm: SigtermTeardown = field(default_factory=SigtermTeardown)
    #: Reads the gateways' notifications for as long as the lab lives.
    _notices: threading.Thread | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.spokes <= MAX_SPOKES:
            raise LabError(f"spokes must be 1-{MAX_SPOKES}")
        if not PREFIX_RE.match(self.prefix):
            raise LabError("prefix must be 2-16 letters or digits")

    @property
    def sites(self) -> range:
        """Every site: 0 (the hub), then the spokes."""
        return range(self.spokes + 1)

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def gw(self, site: int) -> str:
        return self.ns(f"gw{site_label(site)}")

    def host(self, site: int) -> str:
        return self.ns(f"host{site_label(site)}")

    def run(self, ns: str, *argv: str, timeout: float = 30,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                              text=True, timeout=timeout, check=check)

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> HubLab:
        self.build()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.teardown()

    def build(self) -> None:
        """Namespaces, links and configs; on any failure everything is removed again."""
        if self._built:
            raise LabError("lab already built")
        self._built = True
        atexit.register(self.teardown)
        self._sigterm.hold()
        try:
            MARKER_DIR.mkdir(parents=True, exist_ok=True)
            (MARKER_DIR / f"{self.prefix}.pid").write_text(f"{os.getpid()}\n")
            # Up-to-date bytecode first, as an installed bridger has it: else
            # each of the N gateways starting at once compiles every module
            # again (a third of a start's CPU with an editable checkout).
            compileall.compile_dir(Path(bridger.__file__).parent, quiet=1)
            self._build_links()
            self._wait_links_up()
            self._write_configs()
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        """Stop every gateway and delete every namespace (safe to call twice)."""
        if self._torn_down:
            return
        self._torn_down = True
        atexit.unregister(self.teardown)
        with self._sigterm.deferred():
            self.stop(list(self.gateways))
            if self._notices is not None:
                self._notices.join(timeout=2.0)
            remove_hub_lab(self.prefix)

    def _batch(self, lines: Sequence[str], ns: str | None = None) -> None:
        """Many ``ip`` commands in one process (``ip [-n NS] -batch``)."""
        argv = ["ip", *(("-n", ns) if ns else ()), "-force", "-batch", "-"]
        proc = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True,
                              text=True, timeout=300, check=False)
        if proc.returncode != 0:
            detail = proc.stderr.strip().splitlines()
            raise LabError(f"ip -batch failed: {detail[-1] if detail else proc.returncode}")

    def _build_links(self) -> None:
        wan = self.ns("wan")
        lines = [f"netns add {wan}"]
        for site in self.sites:
            lines += [f"netns add {self.gw(site)}", f"netns add {self.host(site)}"]
        self._batch(lines)
        wan_lines = ["link add br0 type bridge", "link set br0 up"]
        for site in self.sites:
            gw, host, label = self.gw(site), self.host(site), site_label(site)
            # WAN: wan0 in the gateway, w<label> on the WAN bridge; LAN: eth1 in the
            # gateway, eth0 on the host's switch lan0.
            if not self.gateway_ipv6:
                _cmd("ip", "netns", "exec", gw, "sysctl", "-q", "-w",
                     "net.ipv6.conf.default.disable_ipv6=1")
            self._batch([
                "link set lo up",
                f"link add wan0 type veth peer name w{label} netns {wan}",
                f"addr add {wan_address(site)}/16 dev wan0",
                "link set wan0 up",
                f"link add eth1 type veth peer name eth0 netns {host}",
                "link set eth1 up",
            ], gw)
            self._batch([
                "link set lo up",
                "link add lan0 type bridge",
                "link set eth0 master lan0",
                "link set eth0 up",
                f"addr add {lan_address(site)}/16 dev lan0",
                f"addr add {lan_address6(site)}/64 dev lan0 nodad",
                "link set lan0 up",
            ], host)
            wan_lines += [f"link set w{label} master br0", f"link set w{label} up"]
        self._batch(wan_lines, wan)

    def _wait_links_up(self, within: float = 10.0) -> None:
        """Until every veth of the lab is up.  The kernel turns a new link's
        carrier on from a batch that runs at most once a second (linkwatch),
        and until then the link drops what it is given: on a lab just built,
        the first ARP requests of gateways started at once were lost, and
        their first handshake waited for the ARP retry, 1 s."""
        waiting = [self.ns("wan")] + [self.gw(s) for s in self.sites] + [
            self.host(s) for s in self.sites]
        deadline = time.monotonic() + within
        while waiting:
            still = []
            for ns in waiting:
                out = _cmd("ip", "-n", ns, "-o", "link", "show", "type", "veth").stdout
                if any(" state UP " not in line for line in out.splitlines()):
                    still.append(ns)
            waiting = still
            if waiting and time.monotonic() > deadline:
                raise LabError(f"links not up within {within:g} s in {', '.join(waiting[:3])}")
            if waiting:
                time.sleep(0.05)

    def _write_configs(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        workdir = self.workdir.resolve()
        keys = {site: generate_private_key() for site in self.sites}
        for site in self.sites:
            label = site_label(site)
            key_file = workdir / f"gw{label}.key"
            write_private_key_file(key_file, keys[site])
            os.chmod(key_file, 0o600)
            others = [s for s in self.sites if s != HUB] if site == HUB else [HUB]
            peers = [
                PeerEntry(peer_name(o), public_key(keys[o]),
                          None if site == HUB else wan_address(HUB), LAB_PORT)
                for o in others
            ]
            gateway = Gateway(site, workdir / f"gw{label}.toml", workdir / f"state{label}",
                              workdir / f"gw{label}.log")
            text = render_config(lan="eth1", key_file=key_file, state_dir=gateway.state_dir,
                                 mode="hub" if site == HUB else "mesh", peers=peers,
                                 local={**self.local, **(self.hub_local if site == HUB else {})})
            fd = os.open(gateway.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            self.gateways[site] = gateway

    # -- gateways --------------------------------------------------------------------------

    def start(self, sites: Sequence[int] | None = None) -> float:
        """Start the gateways of ``sites`` (all by default) at once; the start time.

        Each gets its own ``NOTIFY_SOCKET`` (as under systemd): :meth:`wait_up`
        learns that a gateway is ready from its ``READY=1`` instead of asking
        it, so that waiting for a hundred starting gateways costs them nothing."""
        sites = list(self.sites) if sites is None else list(sites)
        if self._notices is None:
            self._notices = threading.Thread(target=self._read_notices, daemon=True,
                                             name="hub-lab-notices")
            self._notices.start()
        before = hub_handshakes(self.gateways[HUB].status()) if HUB not in sites else {}
        began = time.monotonic()
        for site in sites:
            gateway = self.gateways[site]
            path = self.workdir.resolve() / f"notify{site_label(site)}.sock"
            self._close_notify(gateway)
            path.unlink(missing_ok=True)
            gateway.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            gateway.notify.bind(str(path))
            gateway.notify.setblocking(False)
            gateway.ready_at = None
            gateway.handshakes_before = before.get(peer_name(site), 0)
            with open(gateway.log_file, "ab") as log:
                gateway.proc = subprocess.Popen(
                    ["ip", "netns", "exec", self.gw(site), sys.executable, "-m", "bridger",
                     "up", "--config", str(gateway.config_file)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, "NOTIFY_SOCKET": str(path)},
                )
            gateway.started_at = began
        return began

    @staticmethod
    def _close_notify(gateway: Gateway) -> None:
        if gateway.notify is not None:
            gateway.notify.close()
            gateway.notify = None

    def _read_notices(self) -> None:
        """The lab's reader of every gateway's notifications, until teardown:
        each ``READY=1`` is noted with the time it arrived.  What else they say
        (STATUS= lines) is read and dropped: a socket nobody reads holds ten
        datagrams, and the gateway's next notification would fail (a warning
        in its log)."""
        while not self._torn_down:
            socks = {g.notify: g for g in list(self.gateways.values()) if g.notify is not None}
            try:
                readable = select.select(list(socks), [], [], 0.1)[0] if socks else []
            except (OSError, ValueError):  # one was closed meanwhile (a stop)
                continue
            if not socks:
                time.sleep(0.1)
            at = time.monotonic()
            for sock in readable:
                gateway = socks[sock]
                with contextlib.suppress(OSError):  # drained (or closed meanwhile)
                    while True:
                        data = sock.recv(4096)
                        if b"READY=1" in data.split(b"\n") and gateway.ready_at is None:
                            gateway.ready_at = at

    def stop(self, sites: Sequence[int], timeout: float = 20.0) -> None:
        """SIGTERM the gateways of ``sites`` together, wait, SIGKILL stragglers."""
        running = [self.gateways[s] for s in sites
                   if self.gateways[s].proc is not None]
        for gateway in running:
            assert gateway.proc is not None
            with contextlib.suppress(ProcessLookupError):
                gateway.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for gateway in running:
            assert gateway.proc is not None
            try:
                gateway.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                gateway.proc.kill()
                gateway.proc.wait()
            gateway.proc = None
            self._close_notify(gateway)

    def up_peers(self) -> set[str]:
        """Names of the hub's peers that are up (empty while the hub cannot answer)."""
        doc = self.gateways[HUB].status()
        if doc is None:
            return set()
        return {str(p.get("name")) for p in doc.get("peers", ()) if p.get("state") == "up"}

    def spoke_state(self, site: int) -> str | None:
        """Spoke ``site``'s own view of its tunnel to the hub ("up", "handshaking",
        ...), or None while it cannot answer (still starting)."""
        doc = self.gateways[site].status(timeout=1.0)
        if doc is None:
            return None
        return next((str(p.get("state")) for p in doc.get("peers", ())
                     if p.get("name") == "hub"), "")

    def spoke_up(self, site: int) -> bool:
        return self.spoke_state(site) == "up"

    def start_hub(self, within: float = 120.0) -> float:
        """Start the hub alone and wait until it answers; seconds it took."""
        self.start([HUB])
        took = wait_until(lambda: self.gateways[HUB].status() is not None, within, 0.2)
        if took is None:
            raise LabError(f"the hub did not start within {within:g} s\n{self.logs([HUB])}")
        return took

    def wait_up(self, within: float, since: float | None = None,
                step: float = 0.25) -> Startup | None:
        """Wait until the hub has a new session with every spoke (None: not
        within ``within`` seconds of ``since``, default now).

        A spoke is up once the hub counts one handshake more with it than when
        the spoke was started, and the peer is "up": the hub, the responder,
        counts a handshake only when the spoke's first message on the new
        session arrives, so the spoke's own side is up too.  Only the hub is
        asked (every ``step`` s, one status for all); the spokes say when they
        are ready (``READY=1``, see :meth:`start`)."""
        since = time.monotonic() if since is None else since
        spokes = {peer_name(s): self.gateways[s] for s in self.sites if s != HUB}
        up_at: dict[str, float] = {}
        while True:
            asked = time.monotonic()
            doc = self.gateways[HUB].status()
            at = time.monotonic()
            for peer in (doc or {}).get("peers", ()):
                name = str(peer.get("name"))
                gateway = spokes.get(name)
                if (gateway is None or name in up_at or peer.get("state") != "up"
                        or int(peer.get("handshakes", 0)) <= gateway.handshakes_before):
                    continue
                up_at[name] = at
            elapsed = at - since
            if len(up_at) == len(spokes):
                ready = {name: min(up_at[name], g.ready_at if g.ready_at is not None
                                   else up_at[name]) for name, g in spokes.items()}
                return Startup(elapsed, max(ready.values()) - since,
                               max(up_at[n] - ready[n] for n in spokes))
            if elapsed >= within:
                return None
            time.sleep(max(0.0, asked + step - time.monotonic()))

    def waiting(self) -> list[int]:
        """The spokes whose tunnel to the hub is not up."""
        return [s for s in self.sites if s != HUB and not self.spoke_up(s)]

    def logs(self, sites: Sequence[int] | None = None, tail: int = 20) -> str:
        parts = []
        for site in self.sites if sites is None else sites:
            gateway = self.gateways[site]
            with contextlib.suppress(OSError):
                lines = gateway.log_file.read_text(errors="replace").splitlines()
                parts.append(f"--- gw{site_label(site)}\n" + "\n".join(lines[-tail:]))
        return "\n".join(parts)

    def log_lines(self, site: int) -> list[str]:
        try:
            return self.gateways[site].log_file.read_text(errors="replace").splitlines()
        except OSError:
            return []

    # -- measurements ----------------------------------------------------------------------

    def cpu_seconds(self, site: int) -> float:
        return cpu_seconds(self.gateways[site].pid)

    def rss_mb(self, site: int) -> float:
        return rss_mb(self.gateways[site].pid)

    def idle_cpu(self, sites: Sequence[int], seconds: float) -> dict[int, float]:
        """Share of one core each gateway of ``sites`` used over ``seconds``."""
        before = {s: self.cpu_seconds(s) for s in sites}
        began = time.monotonic()
        time.sleep(seconds)
        spent = time.monotonic() - began
        return {s: (self.cpu_seconds(s) - before[s]) / spent for s in sites}

    def ping(self, src: int, dst: int, count: int = 1, wait: float = 2.0) -> bool:
        proc = self.run(self.host(src), "ping", "-n", "-q", "-c", str(count), "-W",
                        f"{wait:g}", lan_address(dst), timeout=wait * count + 10)
        return proc.returncode == 0

    def wait_ping(self, src: int, dst: int, within: float = 10.0) -> float | None:
        began = time.monotonic()
        while time.monotonic() - began < within:
            if self.ping(src, dst, wait=1.0):
                return time.monotonic() - began
        return None

    def capture_handshakes(self) -> HandshakeCapture:
        """The handshake messages on the hub's WAN link while the ``with`` lasts."""
        return HandshakeCapture(self)

    def restart_spokes(self, within: float) -> tuple[Startup | None, HandshakeCapture]:
        """Stop every spoke, then start them all at the same moment, and wait
        until all are back (None: not within ``within`` s of their start);
        with the handshake messages the hub's link carried meanwhile (until
        two seconds after the last one was back: retries and the hub's own
        initiations to the old processes' addresses are counted too)."""
        spokes = [s for s in self.sites if s != HUB]
        with self.capture_handshakes() as capture:
            # A gateway killed before it restored its host refuses to start
            # again (its journal waits for `bridger down`): a hundred stopping
            # at once on two loaded cores need more than the usual 20 s.
            self.stop(spokes, timeout=20.0 + len(spokes))
            began = self.start(spokes)
            back = self.wait_up(within=within, since=began)
            time.sleep(2.0)  # what a straggler or a late retry still sends
        return back, capture

    # -- cables ----------------------------------------------------------------------------

    def cable(self, a: int, b: int) -> str:
        """Join site ``a``'s and site ``b``'s LAN switches with a veth (a loop)."""
        name = f"c{site_label(a)}{site_label(b)}"[:12]
        self._batch([f"link add {name}a type veth peer name {name}b netns {self.host(b)}",
                     f"link set {name}a master lan0", f"link set {name}a up"], self.host(a))
        self._batch([f"link set {name}b master lan0", f"link set {name}b up"], self.host(b))
        self._cables.add(f"{a} {name}a")
        return name

    def unplug(self, a: int, name: str) -> None:
        _cmd("ip", "-n", self.host(a), "link", "del", f"{name}a", check=False)
        self._cables.discard(f"{a} {name}a")


#: Lengths of the handshake messages on the wire (bridger.protocol.messages).
HANDSHAKE_LENGTHS = {148: "initiation", 92: "response", 64: "cookie"}
#: tcpdump's line for one UDP datagram: time, source, destination, payload length.
_TCPDUMP_RE = re.compile(
    r"^(\d+\.\d+) IP (\d+\.\d+\.\d+\.\d+)\.\d+ > (\d+\.\d+\.\d+\.\d+)\.\d+: UDP, length (\d+)")


@dataclass(frozen=True)
class HandshakeMessage:
    """One handshake message seen on the hub's WAN link."""

    at: float
    spoke: int
    #: "initiation", "response" or "cookie".
    kind: str
    #: True: from the spoke to the hub.
    inbound: bool


@dataclass
class HandshakeCapture:
    """The handshake messages (initiations, responses, cookie replies: the
    outer message types 1-3, by their first payload byte) on the hub's WAN
    link, captured by tcpdump in the hub's namespace while it runs."""

    lab: HubLab
    messages: list[HandshakeMessage] = field(default_factory=list)
    _proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> HandshakeCapture:
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.gw(HUB), "tcpdump", "-i", "wan0", "-nn", "-tt",
             "-l", "--immediate-mode", f"udp port {LAB_PORT} and udp[8] >= 1 and udp[8] <= 3"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._proc.stderr is not None
        # tcpdump says "listening on wan0" once the capture is attached.
        for line in self._proc.stderr:
            if "listening" in line:
                return self
        self._proc.kill()
        self._proc.wait()
        raise LabError("tcpdump did not start (no capture on the hub's wan0)")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> list[HandshakeMessage]:
        """End the capture; the messages seen, in order."""
        proc, self._proc = self._proc, None
        if proc is None:
            return self.messages
        proc.send_signal(signal.SIGINT)
        try:
            out, _err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _err = proc.communicate()
        sites = {wan_address(site): site for site in self.lab.sites}
        for line in out.splitlines():
            match = _TCPDUMP_RE.match(line)
            if match is None:
                continue
            at, src, dst, length = match.groups()
            inbound = sites.get(dst) == HUB
            spoke = sites.get(src if inbound else dst)
            kind = HANDSHAKE_LENGTHS.get(int(length))
            if spoke is None or spoke == HUB or kind is None:
                continue
            self.messages.append(HandshakeMessage(float(at), spoke, kind, inbound))
        return self.messages

    def per_spoke(self) -> dict[int, int]:
        """Spoke -> handshake messages it sent or was sent."""
        counts: dict[int, int] = {}
        for msg in self.messages:
            counts[msg.spoke] = counts.get(msg.spoke, 0) + 1
        return counts

    def most_in_a_second(self) -> tuple[int, int]:
        """(spoke, count): the most messages one spoke exchanged with the hub
        within any one second (a sliding window)."""
        times: dict[int, list[float]] = {}
        for msg in self.messages:
            times.setdefault(msg.spoke, []).append(msg.at)
        best = (0, 0)
        for spoke, seen in times.items():
            seen.sort()
            first = 0
            for last, at in enumerate(seen):
                while at - seen[first] >= 1.0:
                    first += 1
                if last - first + 1 > best[1]:
                    best = (spoke, last - first + 1)
        return best

    def busiest_second(self) -> int:
        """The most handshake messages the hub's link carried within one second."""
        seen = sorted(msg.at for msg in self.messages)
        best = first = 0
        for last, at in enumerate(seen):
            while at - seen[first] >= 1.0:
                first += 1
            best = max(best, last - first + 1)
        return best


def family(pid: int) -> list[int]:
    """``pid`` and its living descendants: a gateway started as root is a
    monitor and its unprivileged data plane (issue 25), and both cost."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its descendants
    (/proc/PID/stat fields 14 and 15)."""
    total = 0
    for p in family(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants in MB (/proc/PID/statm)."""
    total = 0
    for p in family(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1])
        except OSError:
            continue
    return total * PAGE_SIZE / 1e6


def sample_pairs(spokes: int, count: int) -> Iterator[tuple[int, int]]:
    """Up to ``count`` spoke pairs spread over the lab (deterministic)."""
    if spokes < 2:
        return
    step = max(1, spokes // count)
    seen = 0
    for a in range(1, spokes + 1, step):
        b = (a + spokes // 2 - 1) % spokes + 1
        if a != b:
            yield a, b
            seen += 1
            if seen >= count:
                return
