"""`bridger lab demo`: sites and a WAN on one machine, joined by bridger.

Two sites (the default):

1. Build the namespace lab (bridger.lab) and fresh keys in a temporary dir.
2. Start a real `bridger up` in each gateway namespace (site B dials site A).
3. Wait for the handshake, then ping across from both sites (IPv4 and IPv6)
   while showing gateway A's live dashboard.
4. On Ctrl-C, SIGTERM or after ``--duration``: stop the gateways (they restore
   their hosts), tear the lab down, and print what crossed.

``--sites N`` (or ``--hub``): N sites in a full mesh (``--hub``: site A is the
hub, the other sites know only A):

1. Build an N-site lab; write each gateway's ``[[peers]]`` config and key.
2. Start `bridger up --config` on every gateway; wait until every peer is up.
3. Ping every pair of sites (each site's first host), IPv4 and IPv6, and print
   one line per pair.
4. Hold the lab until ``--duration`` ends or Ctrl-C/SIGTERM, then stop the
   gateways and tear the lab down. Exit 0 only if every pair answered.

``--nat`` (issue 23): the NAT lab (bridger.lab.nat): A public, B behind a NAT
that keeps ports, C behind one that randomises them, D behind two (``--sites
3`` leaves D out). Only A has a ``host`` in the configs:

1. Build it; write the configs; start every gateway.
2. Wait until every peer is up, ping every pair (IPv4), print one line per
   pair, and one line per gateway and peer: how it reaches the peer (direct
   and how the endpoint was learnt, or relayed via whom).
3. Hold as above; then print the paths again, stop and tear down.

Everything printed that comes from the network, the hosts or the configs is
built as rich ``Text`` on a console with markup and emoji off, so brackets and
``:name:`` in it are shown as they are.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridger.errors import BridgerError, ConfigError
from bridger.keys import encode_key, generate_private_key, public_key, write_private_key_file

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from bridger.lab.gateways import GatewayFiles
    from bridger.lab.ping import PingResult

#: Seconds to wait for both gateways to report the link up.
LINK_UP_TIMEOUT = 30.0
#: The same with N sites: every gateway handshakes with every peer.
MESH_UP_TIMEOUT = 60.0
DEFAULT_SITES = 2
#: ``--sites`` bound (the lab has room for more: bridger.lab.MAX_SITES).
MAX_DEMO_SITES = 8


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bridger lab demo` (bridger/cli.py hands its subparser here)."""
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help="stop by itself after this")
    parser.add_argument("--delay", type=float, default=0.0, metavar="MS",
                        help="WAN one-way delay")
    parser.add_argument("--loss", type=float, default=0.0, metavar="PCT",
                        help="WAN loss percent")
    parser.add_argument("--nat", action="store_true",
                        help="sites behind NAT (A public, B ports kept, C ports random, D "
                        "double NAT; --sites 3 or 4): direct where they can, relayed where "
                        "they must")
    parser.add_argument("--no-dashboard", action="store_true", help="plain output")
    parser.add_argument("--sites", type=_site_count, default=DEFAULT_SITES, metavar="N",
                        help=f"how many sites, 2-{MAX_DEMO_SITES} (default 2); more than 2: "
                        "a full mesh, one ping line per pair")
    parser.add_argument("--hub", action="store_true",
                        help="site A is the hub; the other sites know only A")
    parser.add_argument("--ha", action="store_true",
                        help="two gateways at site A (one group): the active fails every "
                             "--failover-every seconds, the standby takes over")
    parser.add_argument("--failover-every", type=float, default=10.0, metavar="SECONDS",
                        help="with --ha: seconds between failovers (10)")


def _site_count(text: str) -> int:
    if not text.isdigit() or not DEFAULT_SITES <= int(text) <= MAX_DEMO_SITES:
        raise argparse.ArgumentTypeError(f"must be {DEFAULT_SITES}..{MAX_DEMO_SITES}")
    return int(text)


def demo_console(**kw: Any) -> Console:
    """A console that prints data as it is: no markup, no emoji, no highlighting."""
    from rich.console import Console

    return Console(markup=False, emoji=False, highlight=False, **kw)


@dataclass
class Gateway:
    site: str
    process: subprocess.Popen[bytes]
    state_dir: Path
    log_path: Path

    def snapshot(self) -> dict[str, Any] | None:
        from bridger.status.control import control_path, query_status

        try:
            return query_status(control_path(self.state_dir), timeout=1.0)
        except BridgerError:
            return None

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_gateway(
    lab: Any, site: str, workdir: Path, key: bytes, peer_pub: bytes, peer: str | None
) -> Gateway:
    state_dir = workdir / f"gw{site}"
    key_path = workdir / f"gw{site}.key"
    write_private_key_file(key_path, key)
    log_path = workdir / f"gw{site}.log"
    argv = [
        sys.executable, "-m", "bridger", "up", "--lan", "eth1", "--key", str(key_path),
        "--peer-key", encode_key(peer_pub), "--state-dir", str(state_dir), "--no-dashboard",
    ]
    if peer is not None:
        argv += ["--peer", peer]
    log_file = log_path.open("wb")
    process = lab.popen(f"gw{site}", *argv, stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    return Gateway(site, process, state_dir, log_path)


def wait_link_up(
    gateways: list[Gateway], timeout: float, expected: dict[str, set[str]] | None = None
) -> None:
    """Wait until every gateway reports all its peers up (``expected``: site -> peer names)."""
    from bridger.lab.gateways import peer_states

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for gw in gateways:
            if gw.process.poll() is not None:
                tail = gw.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise BridgerError(f"gateway {gw.site} exited: {' | '.join(tail)}")
        ready = 0
        for gw in gateways:
            snap = gw.snapshot()
            states = peer_states(snap) if snap is not None else {}
            names = expected[gw.site] if expected is not None else set(states)
            if states and names and all(states.get(n) == "up" for n in names):
                ready += 1
        if ready == len(gateways):
            return
        time.sleep(0.2)
    raise BridgerError(f"the link did not come up within {timeout:.0f}s")


_REPLY = re.compile(rb"bytes from")


def replies(path: Path) -> int:
    try:
        return len(_REPLY.findall(path.read_bytes()))
    except OSError:
        return 0


def run_demo_command(args: argparse.Namespace) -> int:
    from bridger.lab import Lab, LabOptions

    sites = getattr(args, "sites", DEFAULT_SITES)
    hub = getattr(args, "hub", False)
    if not DEFAULT_SITES <= sites <= MAX_DEMO_SITES:
        raise ConfigError(f"--sites: must be {DEFAULT_SITES}..{MAX_DEMO_SITES}")
    if os.geteuid() != 0:
        raise BridgerError("lab demo needs root (it builds network namespaces)")
    options = LabOptions(delay_ms=args.delay, loss_pct=args.loss, sites=sites)
    demo = _demo if sites == DEFAULT_SITES and not hub else _mesh_demo
    lab_class: Any = Lab
    if args.nat:
        from bridger.lab.nat import NAT_LAB_DELAY_MS, NatLab, nat_lab_options

        if hub:
            raise ConfigError("--nat: every site lists every other (no --hub)")
        options = nat_lab_options(sites if sites in (3, 4) else 4, loss_pct=args.loss,
                                  delay_ms=args.delay or NAT_LAB_DELAY_MS)
        demo, lab_class = _nat_demo, NatLab
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    old = signal.signal(signal.SIGTERM, request_stop)
    if getattr(args, "ha", False):  # two gateways at site A (bridger.lab.ha)
        from rich.text import Text

        from bridger.lab.ha import run_ha_demo

        console = demo_console()
        try:
            with tempfile.TemporaryDirectory(prefix="bridger-demo-") as tmp:
                return run_ha_demo(Path(tmp), args.failover_every, args.duration,
                                   lambda: stop_requested, lambda line: console.print(Text(line)))
        except KeyboardInterrupt:
            return 130
        finally:
            signal.signal(signal.SIGTERM, old)
    try:
        with tempfile.TemporaryDirectory(prefix="bridger-demo-") as tmp, \
                lab_class(options) as lab:
            return demo(lab, Path(tmp), args, lambda: stop_requested)
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)


def _demo(lab: Any, workdir: Path, args: argparse.Namespace, stopped: Any) -> int:
    key_a, key_b = generate_private_key(), generate_private_key()
    pub_a, pub_b = public_key(key_a), public_key(key_b)
    addr_a = lab.gateway_wan_address("A")
    addr_b = None if args.nat else lab.gateway_wan_address("B")
    print(f"lab {lab.prefix}: site A gateway {addr_a}, site B gateway "
          f"{addr_b or 'behind NAT'}; starting bridger on both gateways")
    gateways = [
        start_gateway(lab, "A", workdir, key_a, pub_b, addr_b),
        start_gateway(lab, "B", workdir, key_b, pub_a, addr_a),
    ]
    pings: list[subprocess.Popen[bytes]] = []
    try:
        wait_link_up(gateways, LINK_UP_TIMEOUT)
        print("link up: hostA1 -> hostB1 (IPv4) and hostB2 -> hostA2 (IPv6) pinging across")
        ping_logs = [workdir / "ping4.log", workdir / "ping6.log"]
        for (role, argv), path in zip(
            [("hostA1", ["ping", "-i", "0.2", "192.168.1.21"]),
             ("hostB2", ["ping", "-6", "-i", "0.2", lab.lan_address("hostA2", 6)])],
            ping_logs, strict=True,
        ):
            with path.open("wb") as out:
                pings.append(lab.popen(role, *argv, stdout=out, stderr=subprocess.STDOUT))
        _show(gateways[0], ping_logs, args, stopped)
    finally:
        for p in pings:
            p.send_signal(signal.SIGINT)
            p.wait(5)
        codes = [gw.stop() for gw in gateways]
    got = [replies(p) for p in ping_logs]
    print(f"pings answered across the bridge: IPv4 {got[0]}, IPv6 {got[1]}; "
          f"gateways exited with {codes}")
    return 0 if all(got) and codes == [0, 0] else 1


def _show(gateway: Gateway, ping_logs: list[Path], args: argparse.Namespace, stopped: Any) -> None:
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from bridger.status.dashboard import History, render

    end = time.monotonic() + args.duration if args.duration else float("inf")
    console = demo_console()
    history = History()
    live_view = console.is_terminal and not args.no_dashboard
    last_print = 0.0

    def frame() -> Any:
        snap = gateway.snapshot()
        pings = f"pings answered: IPv4 {replies(ping_logs[0])}  IPv6 {replies(ping_logs[1])}"
        if snap is None:
            return Text("gateway A is not answering " + pings)
        history.sample(snap, time.monotonic())
        size = console.size
        return Group(render(snap, history, size.width, size.height - 1), Text(pings))

    if not live_view:
        while time.monotonic() < end and not stopped():
            time.sleep(0.25)
            if time.monotonic() - last_print >= 5:
                last_print = time.monotonic()
                snap = gateway.snapshot()
                frames = snap.get("frames", {}) if snap else {}
                print(f"gateway A frames {frames}; pings answered IPv4 "
                      f"{replies(ping_logs[0])} IPv6 {replies(ping_logs[1])}", flush=True)
        return
    with Live(frame(), console=console, refresh_per_second=4, screen=False) as live:
        while time.monotonic() < end and not stopped():
            time.sleep(0.25)
            live.update(frame())


# -- N sites ------------------------------------------------------------------------------------


def _mesh_demo(lab: Any, workdir: Path, args: argparse.Namespace, stopped: Any) -> int:
    from rich.text import Text

    from bridger.lab.gateways import write_gateway_configs
    from bridger.lab.ping import cross_site_pairs, ping_pairs

    console = demo_console()
    topology = "hub" if args.hub else "mesh"
    files = write_gateway_configs(lab, workdir, topology=topology)
    for line in mesh_plan_lines(lab, files):
        console.print(line, soft_wrap=True)
    gateways = [_start_configured(lab, f, workdir) for f in files.values()]
    try:
        expected = {site: {p.name for p in f.peers} for site, f in files.items()}
        wait_link_up(gateways, MESH_UP_TIMEOUT, expected)
        console.print(Text("all peers up; pinging every pair of sites (IPv4 and IPv6)"))
        results = ping_pairs(lab, cross_site_pairs(lab))
        console.print(pair_table(results))
        _hold(console, args, stopped)
    finally:
        codes = [gw.stop() for gw in gateways]
    answered = sum(r.ok for r in results)
    console.print(Text(f"{answered} of {len(results)} pair pings answered; "
                       f"gateways exited with {codes}"))
    return 0 if answered == len(results) and not any(codes) else 1


def _nat_demo(lab: Any, workdir: Path, args: argparse.Namespace, stopped: Any) -> int:
    from rich.text import Text

    from bridger.lab.nat import write_nat_configs
    from bridger.lab.ping import cross_site_pairs, ping_pairs

    console = demo_console()
    files = write_nat_configs(lab, workdir)
    console.print(Text(f"lab {lab.prefix}: {len(files)} sites behind NATs, full mesh; only A "
                       "has a host in the configs"))
    for site in files:
        where = (f"{lab.gateway_private_address(site)} behind a {lab.kinds[site]} NAT "
                 f"({lab.gateway_wan_address(site)} outside)" if lab.behind_nat(site)
                 else f"{lab.gateway_wan_address(site)} (public)")
        console.print(Text(f"  site {site}: gateway {where}"))
    gateways = [_start_configured(lab, f, workdir) for f in files.values()]
    results: list[PingResult] = []
    try:
        expected = {site: {p.name for p in f.peers} for site, f in files.items()}
        wait_link_up(gateways, MESH_UP_TIMEOUT, expected)
        results = ping_pairs(lab, cross_site_pairs(lab), (4,))
        console.print(pair_table(results))
        for line in nat_path_lines(gateways):
            console.print(line)
        _hold(console, args, stopped)
        for line in nat_path_lines(gateways):
            console.print(line)
    finally:
        codes = [gw.stop() for gw in gateways]
    answered = sum(r.ok for r in results)
    console.print(Text(f"{answered} of {len(results)} pair pings answered; "
                       f"gateways exited with {codes}"))
    return 0 if results and answered == len(results) and not any(codes) else 1


def nat_path_lines(gateways: list[Gateway]) -> list[Any]:
    """One line per gateway and peer: how it reaches the peer (from its status)."""
    from rich.text import Text

    lines = []
    for gw in gateways:
        snap = gw.snapshot() or {}
        for peer in snap.get("peers", []):
            path = peer.get("path") or "none"
            if path == "relayed":
                how = f"relayed via {peer.get('via')}"
            elif path == "direct":
                how = f"direct to {peer.get('endpoint')} ({peer.get('endpoint_source')})"
            else:
                how = "no path"
            lines.append(Text(f"  site {gw.site} -> {peer.get('name')}: {how}"))
    return lines


def _start_configured(lab: Any, files: GatewayFiles, workdir: Path) -> Gateway:
    log_path = workdir / f"gw{files.site}.log"
    with log_path.open("wb") as log_file:
        process = lab.popen(f"gw{files.site}", *files.up_argv(), stdout=log_file,
                            stderr=subprocess.STDOUT)
    return Gateway(files.site, process, files.state_dir, log_path)


def _hold(console: Console, args: argparse.Namespace, stopped: Any) -> None:
    from rich.text import Text

    if args.duration is None:
        console.print(Text("holding the lab; press Ctrl-C to stop"))
    end = time.monotonic() + args.duration if args.duration is not None else float("inf")
    while time.monotonic() < end and not stopped():
        time.sleep(0.25)


def mesh_plan_lines(lab: Any, files: dict[str, GatewayFiles]) -> list[Any]:
    """One line for the lab, one per site: its WAN address and the peers it dials or awaits."""
    from rich.text import Text

    hub = next((f.site for f in files.values() if f.mode == "hub"), None)
    shape = f"hub at site {hub}" if hub else "full mesh"
    lines = [Text(f"lab {lab.prefix}: {len(files)} sites, {shape}; starting bridger on every "
                  "gateway")]
    for site, f in files.items():
        peers = ", ".join(f"{p.name} ({p.host if p.host else 'awaits'})" for p in f.peers)
        nat = " behind NAT" if site == "B" and lab.options.nat_b else ""
        lines.append(Text(f"  site {site}: gateway {lab.gateway_wan_address(site)}{nat}, "
                          f"mode {f.mode}, peers {peers}"))
    return lines


def pair_table(results: list[PingResult]) -> Table:
    """One row per pair of hosts: the IPv4 and IPv6 answers and average round trips."""
    from rich.table import Column, Table
    from rich.text import Text

    columns = [Column(header=Text(name)) for name in ("pair", "IPv4", "IPv6")]
    table = Table(*columns, box=None, pad_edge=False)
    rows: dict[tuple[str, str], dict[int, PingResult]] = {}
    for result in results:
        rows.setdefault((result.src, result.dst), {})[result.family] = result
    for (src, dst), by_family in rows.items():
        cells = [Text(f"{src} -> {dst}")]
        for family in (4, 6):
            found = by_family.get(family)
            cells.append(_ping_cell(found) if found is not None else Text("-"))
        table.add_row(*cells)
    return table


def _ping_cell(r: PingResult) -> Any:
    from rich.text import Text

    cell = Text(f"{r.address} ")
    if r.ok:
        rtt = f" {r.rtt_avg_ms:.2f} ms" if r.rtt_avg_ms is not None else ""
        cell.append(f"{r.received}/{r.sent}{rtt}", style="green")
    else:
        cell.append(f"{r.received}/{r.sent} no answer", style="bold red")
    return cell
