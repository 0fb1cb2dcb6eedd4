"""Test support: a gateway namespace with a LAN NIC, and exact host snapshots.

Topology (names get a random suffix)::

    +------------- gw ns -------------+        +---- lanhost ns ----+
    | lan0 10.77.0.1/24 fd77::1/64    |--veth--| lanh 10.77.0.2/24  |
    | default via 10.77.0.254 (lan0)  |        |      fd77::2/64    |
    | default via fd77::fe  (lan0)    |        +--------------------+
    | 10.88.0.0/16 via .3 table 100   |
    +---------------------------------+

Tests compare normalised ``ip -j`` snapshots of the gateway namespace before
and after; a difference means the host was not given back exactly.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridger.host import HostPlan

REPO = Path(__file__).resolve().parents[2]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def ipj(ns: str, *args: str) -> Any:
    return json.loads(sh("ip", "-n", ns, "-j", *args).stdout or "[]")


_VOLATILE_ADDR = {"valid_life_time", "preferred_life_time"}
_VOLATILE_ROUTE = {"expires"}


def snapshot(ns: str) -> dict[str, Any]:
    """Addresses, routes (v4 + v6, all tables) and links, minus fields that drift on their own."""
    wait_settled(ns)
    addrs = []
    for link in ipj(ns, "addr"):
        infos = [
            {k: v for k, v in a.items() if k not in _VOLATILE_ADDR} for a in link["addr_info"]
        ]
        addrs.append((link["ifname"], sorted(json.dumps(a, sort_keys=True) for a in infos)))
    routes = sorted(
        json.dumps({k: v for k, v in r.items() if k not in _VOLATILE_ROUTE}, sort_keys=True)
        for fam in ("-4", "-6")
        for r in ipj(ns, fam, "route", "show", "table", "all")
    )
    links = sorted(json.dumps(link, sort_keys=True) for link in ipj(ns, "link"))
    return {"addrs": sorted(addrs), "routes": routes, "links": links}


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Readable differences between two snapshots (empty when equal)."""
    out = []
    for key in before:
        b = {json.dumps(x, sort_keys=True) for x in before[key]}
        a = {json.dumps(x, sort_keys=True) for x in after[key]}
        out += [f"{key} lost: {x}" for x in sorted(b - a)]
        out += [f"{key} new:  {x}" for x in sorted(a - b)]
    return out


def wait_settled(ns: str, timeout: float = 6.0) -> None:
    """Wait until IPv6 DAD is over, so the local routes it creates are there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = sh("ip", "-n", ns, "addr").stdout
        if "tentative" not in out:
            return
        time.sleep(0.1)


@dataclass
class Topo:
    gw: str
    lanhost: str
    state_dir: Path
    bridge: str
    tap: str

    def plan(self, **kw: Any) -> HostPlan:
        base: dict[str, Any] = {"lan": "lan0", "bridge": self.bridge, "tap": self.tap,
                                "state_dir": self.state_dir, "netns": self.gw}
        if "taps" in kw:
            del base["tap"]
        base.update(kw)
        return HostPlan(**base)

    def nsexec(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.gw, *args]


@contextlib.contextmanager
def make_topo(tmp_path: Path) -> Iterator[Topo]:
    suffix = secrets.token_hex(3)
    gw, lanhost = f"bgw-{suffix}", f"blan-{suffix}"
    sh("ip", "netns", "add", gw)
    sh("ip", "netns", "add", lanhost)
    try:
        cmds = [
            f"ip -n {gw} link set lo up",
            f"ip -n {lanhost} link set lo up",
            f"ip -n {gw} link add lan0 type veth peer name lanh netns {lanhost}",
            f"ip -n {gw} link set lan0 up",
            f"ip -n {lanhost} link set lanh up",
            f"ip -n {gw} addr add 10.77.0.1/24 dev lan0",
            f"ip -n {gw} addr add 10.77.0.9/24 dev lan0",
            f"ip -n {gw} addr add fd77::1/64 dev lan0",
            f"ip -n {lanhost} addr add 10.77.0.2/24 dev lanh",
            f"ip -n {lanhost} addr add fd77::2/64 dev lanh",
            f"ip -n {gw} route add default via 10.77.0.254 dev lan0 metric 20",
            f"ip -n {gw} -6 route add default via fd77::fe dev lan0 metric 30",
            f"ip -n {gw} route add 10.88.0.0/16 via 10.77.0.3 table 100",
            f"ip -n {gw} route add 10.99.0.0/16 dev lan0 scope link mtu lock 1400",
        ]
        for cmd in cmds:
            sh(*cmd.split())
        yield Topo(gw, lanhost, tmp_path / "state", f"bbr{suffix}", f"btap{suffix}")
    finally:
        sh("ip", "netns", "del", gw, check=False)
        sh("ip", "netns", "del", lanhost, check=False)


def ping(ns: str, addr: str) -> bool:
    flag = "-6" if ":" in addr else "-4"
    for _ in range(3):  # the first may wait for ARP/ND after the move
        res = sh("ip", "netns", "exec", ns, "ping", flag, "-c1", "-W2", addr, check=False)
        if res.returncode == 0:
            return True
    return False




def down_in_ns(topo: Topo, state_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`bridger down` for ``state_dir`` (default: the topology's), run in the gateway."""
    code = ("import sys; from pathlib import Path; from bridger.host import bring_down\n"
            "from bridger.errors import BridgerError\n"
            "try: print(bring_down(Path(sys.argv[1])))\n"
            "except BridgerError as e: print(type(e).__name__, e); sys.exit(2)")
    where = str(state_dir or topo.state_dir)
    return subprocess.run(topo.nsexec(sys.executable, "-c", code, where),
                          cwd=REPO, capture_output=True, text=True)


def bridge_ports(topo: Topo) -> dict[str, dict[str, Any]]:
    """``bridge -d -j link show`` of the gateway: port name -> its details."""
    out = sh("ip", "netns", "exec", topo.gw, "bridge", "-d", "-j", "link", "show").stdout
    return {p["ifname"]: p for p in json.loads(out or "[]")}
