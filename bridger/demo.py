"""`bridger lab demo`: two sites and a WAN on one machine, joined by bridger.

1. Build the namespace lab (bridger.lab) and fresh keys in a temporary dir.
2. Start a real `bridger up` in each gateway namespace (site B dials site A).
3. Wait for the handshake, then ping across from both sites (IPv4 and IPv6)
   while showing gateway A's live dashboard.
4. On Ctrl-C, SIGTERM or after ``--duration``: stop the gateways (they restore
   their hosts), tear the lab down, and print what crossed.
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
from typing import Any

from bridger.errors import BridgerError
from bridger.keys import encode_key, generate_private_key, public_key, write_private_key_file

#: Seconds to wait for both gateways to report the link up.
LINK_UP_TIMEOUT = 30.0


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


def wait_link_up(gateways: list[Gateway], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for gw in gateways:
            if gw.process.poll() is not None:
                tail = gw.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise BridgerError(f"gateway {gw.site} exited: {' | '.join(tail)}")
        snaps = [gw.snapshot() for gw in gateways]
        if all(s is not None and s["link"]["state"] == "up" for s in snaps):
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

    if os.geteuid() != 0:
        raise BridgerError("lab demo needs root (it builds network namespaces)")
    options = LabOptions(delay_ms=args.delay, loss_pct=args.loss, nat_b=args.nat)
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    old = signal.signal(signal.SIGTERM, request_stop)
    try:
        with tempfile.TemporaryDirectory(prefix="bridger-demo-") as tmp, Lab(options) as lab:
            return _demo(lab, Path(tmp), args, lambda: stop_requested)
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
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    from bridger.status.dashboard import History, render

    end = time.monotonic() + args.duration if args.duration else float("inf")
    console = Console()
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
                frames = snap["frames"] if snap else {}
                print(f"gateway A frames {frames}; pings answered IPv4 "
                      f"{replies(ping_logs[0])} IPv6 {replies(ping_logs[1])}", flush=True)
        return
    with Live(frame(), console=console, refresh_per_second=4, screen=False) as live:
        while time.monotonic() < end and not stopped():
            time.sleep(0.25)
            live.update(frame())
