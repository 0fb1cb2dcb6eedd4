"""A lab with two gateways at site A (issue 24), built from topology.py's primitives::

  hostA1 ─┐            ┌─ eth1 [gwA ] wan0 ── wA  ┐
  hostA2 ─┴─ [swA br0] ┤                          [ wan ] ── wB ── wan0 [gwB] ── [swB] ── hostB1/2
                       └─ eth1 [gwA2] wan0 ── wA2 ┘
                          192.168.1.10   10.100.21.2

gwA and gwA2 declare ``site = "site-a"`` with one group key; gwB lists both as
peers (``site-a`` and ``site-a2``).  :class:`HaGateways` runs and stops the three
`bridger up` processes; :func:`ping_outage` measures an outage by counting pings.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bridger.keys import generate_private_key, public_key, write_private_key_file
from bridger.lab.gateways import LAB_PORT, PeerEntry, _write_private, render_config
from bridger.lab.hub import family
from bridger.lab.topology import LAN6_PREFIXLEN, LAN_PREFIXLEN, WAN_PREFIXLEN, Lab
from bridger.lab.wait import wait_until

#: The second gateway of site A.
SECOND = "gwA2"
SECOND_LAN = ("192.168.1.10", "fd00:b::10")
SECOND_WAN_NET = "10.100.21"
GROUP_SITE = "site-a"
GATEWAYS = ("gwA", SECOND, "gwB")
PEER_NAMES = {"gwA": "site-a", SECOND: "site-a2", "gwB": "site-b"}


class HaLab(Lab):
    """The two-site lab plus ``gwA2`` on site A's switch and the WAN router."""

    def roles(self) -> list[str]:
        roles = super().roles()
        if SECOND not in roles:
            roles.insert(roles.index("gwA") + 1, SECOND)
        return roles

    def _build(self) -> None:
        super()._build()
        sw, gw = "swA", SECOND
        self._ip(sw, f"link add gw2 type veth peer name eth1 netns {self.ns(gw)}")
        self._ip(sw, "link set gw2 master br0 up")
        self._ip(gw, f"addr add {SECOND_LAN[0]}/{LAN_PREFIXLEN} dev eth1")
        self._ip(gw, f"addr add {SECOND_LAN[1]}/{LAN6_PREFIXLEN} dev eth1 nodad")
        self._ip(gw, "link set eth1 up")
        self._sysctl(gw, "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0")
        self._ip("wan", f"link add wA2 type veth peer name wan0 netns {self.ns(gw)}")
        self._ip("wan", f"addr add {SECOND_WAN_NET}.1/{WAN_PREFIXLEN} dev wA2")
        self._ip("wan", "link set wA2 up")
        self._ip(gw, f"addr add {SECOND_WAN_NET}.2/{WAN_PREFIXLEN} dev wan0")
        self._ip(gw, "link set wan0 up")
        self._ip(gw, f"route add default via {SECOND_WAN_NET}.1")

    def wan_address(self, role: str) -> str:
        return f"{SECOND_WAN_NET}.2" if role == SECOND else self.gateway_wan_address(role[2:])

    def cut_lan(self, role: str, cut: bool = True) -> None:
        """Pull (or plug back) ``role``'s LAN cable: its port on site A's switch."""
        port = "gw2" if role == SECOND else "gw"
        self._ip("swA", f"link set {port} {'down' if cut else 'up'}")

    def cut_wan(self, role: str, cut: bool = True) -> None:
        """Pull (or plug back) ``role``'s WAN cable: the router's end of its WAN veth
        (the gateway's ``wan0`` loses its carrier; its addresses and routes stay)."""
        if role == SECOND:
            port = "wA2"
        else:
            site = role[2:]
            port = f"p{site}" if self.engine == "wire" else f"w{site}"
        self._ip("wan", f"link set {port} {'down' if cut else 'up'}")

    def split_group(self, split: bool = True) -> None:
        """Site A's switch stops (or resumes) carrying the group's frames between the
        two gateways (EtherType 0x88B6): they no longer hear each other."""
        table = "bridger_lab_split"
        script = f"add table bridge {table}\ndelete table bridge {table}\n"
        if split:
            script += (f"table bridge {table} {{ chain forward {{ type filter hook forward "
                       "priority 0; policy accept; ether type 0x88b6 drop; }; }\n")
        subprocess.run(["ip", "netns", "exec", self.ns("swA"), "nft", "-f", "-"],
                       input=script, text=True, check=True, timeout=30)

    def delete_gateway(self, role: str) -> None:
        """Delete ``role``'s namespace (its veths go with it)."""
        subprocess.run(["ip", "netns", "del", self.ns(role)], check=False, timeout=30)


@dataclass
class Files:
    config: Path
    state_dir: Path
    log: Path


class HaGateways:
    """`bridger up` on gwA, gwA2 (one group) and gwB; keys and configs under ``workdir``."""

    def __init__(self, lab: HaLab, workdir: Path, local: dict[str, Any] | None = None) -> None:
        self.lab = lab
        self.workdir = workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        keys = {role: generate_private_key() for role in GATEWAYS}
        group_key = self.workdir / "site-a-group.key"
        write_private_key_file(group_key, generate_private_key())
        self.files: dict[str, Files] = {}
        for role in GATEWAYS:
            key_file = self.workdir / f"{role}.key"
            write_private_key_file(key_file, keys[role])
            others = [o for o in GATEWAYS if o != role and "gwB" in (o, role)]
            peers = [PeerEntry(PEER_NAMES[o], public_key(keys[o]), lab.wan_address(o), LAB_PORT)
                     for o in others]
            extra: dict[str, Any] = dict(local or {})
            if role != "gwB":
                extra.update(site=GROUP_SITE, group_key=str(group_key))
            files = Files(self.workdir / f"{role}.toml", self.workdir / f"state-{role}",
                          self.workdir / f"{role}.log")
            _write_private(files.config, render_config(
                lan="eth1", key_file=key_file, state_dir=files.state_dir, mode="mesh",
                peers=peers, local=extra))
            self.files[role] = files

    def __enter__(self) -> HaGateways:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def start(self, role: str) -> None:
        with self.files[role].log.open("ab") as log:
            self.procs[role] = self.lab.popen(
                role, sys.executable, "-m", "bridger", "up", "--config",
                str(self.files[role].config), stdout=log, stderr=subprocess.STDOUT)

    def stop(self, role: str, sig: int = signal.SIGTERM) -> int:
        """``sig`` to ``role``'s gateway.  SIGKILL is a crash of the whole gateway:
        its data plane (the root monitor's child since issue 25) dies first and at
        once, as with a power cut; killed alone, the monitor's death would make the
        data plane stop cleanly and hand over (a goodbye, no crash)."""
        proc = self.procs.pop(role)
        if sig == signal.SIGKILL:
            for pid in reversed(family(proc.pid)[1:]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        proc.send_signal(sig)
        return proc.wait(30)

    def down(self, role: str) -> None:
        """After a SIGKILL: replay the journal (what systemd's ExecStopPost does)."""
        self.lab.run(role, sys.executable, "-m", "bridger", "down", "--state-dir",
                     str(self.files[role].state_dir), check=False)

    def status(self, role: str, timeout: float = 10) -> dict[str, Any] | None:
        try:
            out = subprocess.run(
                [sys.executable, "-m", "bridger", "status", "--json", "--state-dir",
                 str(self.files[role].state_dir)], capture_output=True, text=True,
                timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if out.returncode != 0:
            return None
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

    def role_of(self, role: str) -> str | None:
        doc = self.status(role)
        return None if doc is None or "ha" not in doc else str(doc["ha"]["role"])

    def peers_up(self, role: str) -> bool:
        doc = self.status(role)
        return doc is not None and bool(doc["peers"]) and all(
            p["state"] == "up" for p in doc["peers"])

    def active(self) -> list[str]:
        return [r for r in ("gwA", SECOND) if r in self.procs and self.role_of(r) == "active"]

    def logs(self) -> str:
        return "\n".join(f"--- {r} ---\n" + f.log.read_text(errors="replace")[-3000:]
                         for r, f in self.files.items() if f.log.exists())


def wait_for(condition: Callable[[], bool], within: float, step: float = 0.1) -> bool:
    """:func:`bridger.lab.wait.wait_until` as a yes or no."""
    return wait_until(condition, within, step) is not None


_SEQ = re.compile(r"icmp_seq=(\d+)")


@dataclass(frozen=True)
class Outage:
    sent: int
    received: int
    duplicates: int
    #: Longest run of unanswered pings times the interval (seconds).
    outage: float
    lost: int


def ping_outage(output: str, interval: float) -> Outage:
    """Parse ``ping -i INTERVAL`` output: the longest run of missing sequence numbers."""
    seen: set[int] = set()
    duplicates = 0
    for line in output.splitlines():
        match = _SEQ.search(line)
        if match is None or "bytes from" not in line:
            continue
        seq = int(match.group(1))
        if "DUP!" in line:
            duplicates += 1
        seen.add(seq)
    sent_match = re.search(r"(\d+) packets transmitted", output)
    sent = int(sent_match.group(1)) if sent_match else (max(seen) if seen else 0)
    longest = run = 0
    for seq in range(1, sent + 1):
        run = 0 if seq in seen else run + 1
        longest = max(longest, run)
    return Outage(sent, len(seen), duplicates, longest * interval, sent - len(seen))



# -- `bridger lab demo --ha` ---------------------------------------------------------------------


def _outage_since(path: Path, start_seq: int, interval: float) -> Outage:
    """The outage among the pings after ``start_seq`` in a running ping's output."""
    seen: set[int] = set()
    duplicates = 0
    for line in path.read_text(errors="replace").splitlines():
        match = _SEQ.search(line)
        if match is not None and "bytes from" in line and int(match.group(1)) > start_seq:
            duplicates += "DUP!" in line
            seen.add(int(match.group(1)))
    last = max(seen, default=start_seq)
    longest = run = 0
    for seq in range(start_seq + 1, last + 1):
        run = 0 if seq in seen else run + 1
        longest = max(longest, run)
    return Outage(last - start_seq, len(seen), duplicates, longest * interval,
                  last - start_seq - len(seen))


def _last_seq(path: Path) -> int:
    seqs = [int(m.group(1)) for m in _SEQ.finditer(path.read_text(errors="replace"))]
    return max(seqs, default=0)


def _has_role(gws: HaGateways, role: str, wanted: str) -> bool:
    return gws.role_of(role) == wanted


def run_ha_demo(workdir: Path, every: float, duration: float | None,
                stopped: Callable[[], bool], say: Callable[[str], None]) -> int:
    """Two gateways at site A, one at B; hostA1 pings hostB1 every 0.1 s; every
    ``every`` seconds the active of site A fails (SIGKILL, clean stop and WAN cable
    cut in turn) and comes back as standby.  One line per event and per failover's
    outage."""
    interval = 0.1
    lab = HaLab()
    with lab, HaGateways(lab, workdir) as gws:
        say(f"lab {lab.prefix}: gwA and gwA2 (site {GROUP_SITE}) on site A's switch, gwB at "
            "site B; starting bridger on each")
        for role in ("gwB", "gwA", SECOND):
            gws.start(role)
        if not wait_for(lambda: all(gws.peers_up(r) for r in GATEWAYS) and len(gws.active()) == 1,
                        40):
            say("the gateways did not come up:\n" + gws.logs())
            return 1
        say(f"up: {gws.active()[0]} active, the other standby; hostA1 pings hostB1 every "
            f"{interval} s; a failover every {every:.0f} s (Ctrl-C stops)")
        ping_log = workdir / "ping.log"
        with ping_log.open("w") as out:
            ping = lab.popen("hostA1", "ping", "-n", "-i", str(interval),
                             lab.lan_address("hostB1"), stdout=out, stderr=subprocess.STDOUT)
        end = math.inf if duration is None else time.monotonic() + duration
        kinds = ("SIGKILL", "clean stop", "WAN cable cut")
        n = 0
        try:
            next_failover = time.monotonic() + every
            while time.monotonic() < end and not stopped():
                time.sleep(0.2)
                if time.monotonic() < next_failover:
                    continue
                active = gws.active()
                if len(active) != 1:
                    continue
                (old,) = active
                kind = kinds[n % len(kinds)]
                n += 1
                before = _last_seq(ping_log)
                say(f"{kind} of the active {old} ...")
                if kind == "WAN cable cut":
                    lab.cut_wan(old)
                else:
                    gws.stop(old, signal.SIGKILL if kind == "SIGKILL" else signal.SIGTERM)
                new = SECOND if old == "gwA" else "gwA"
                wait_for(partial(_has_role, gws, new, "active"), 10)
                time.sleep(3.0)
                result = _outage_since(ping_log, before, interval)
                say(f"  {new} is active; outage {result.outage:.1f} s "
                    f"({result.lost} pings lost), {result.duplicates} duplicates")
                if kind == "WAN cable cut":
                    lab.cut_wan(old, cut=False)
                    say(f"  {old}'s WAN cable is back; {old} is {gws.role_of(old)}")
                else:
                    if kind == "SIGKILL":
                        gws.down(old)
                    gws.start(old)
                    wait_for(partial(_has_role, gws, old, "standby"), 20)
                    say(f"  {old} is back as standby")
                next_failover = time.monotonic() + every
        finally:
            ping.send_signal(signal.SIGINT)
            ping.wait(10)
    return 0
