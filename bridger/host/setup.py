"""Bring the host's network up for bridging, and give it back exactly.

Flow of :func:`bring_up` (each numbered change is one journaled step):

0. Check everything (privileges, /dev/net/tun, NIC, names, routes), take the
   state-directory lock, refuse if an old journal is still pending.
1. Create the bridge (forward delay 0, STP as asked) -- or reuse the existing
   bridge the NIC is already in.
2. Give the bridge the NIC's MTU and MAC (neighbours' ARP caches stay right),
   up, before any port joins (else it would briefly take the lowest port MAC).
3. Open the tap (non-persistent), set its MTU to the NIC's, enslave it, up.
4. Remove the NIC's routes (through-gateway routes first), then its addresses.
5. Enslave the NIC to the bridge, up.
6. Add the NIC's addresses, then its routes (on-link routes first) to the bridge.

Before each step its undo record goes to the journal; undo runs in reverse,
on :meth:`HostSession.restore`, on a failed setup, or from a fresh process via
:func:`bring_down` after a crash.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bridger.config import DEFAULT_BRIDGE, DEFAULT_TAP, default_state_dir
from bridger.errors import HostError
from bridger.host import netlink as nl
from bridger.host.checks import Facts, check_links, check_process
from bridger.host.journal import Journal, Record, StateLock
from bridger.host.tap import open_tap

STP_FORWARD_DELAY = 200  # centiseconds: the kernel's minimum (2 s) while STP runs
TAP_KIND = "tun"


@dataclass(frozen=True)
class HostPlan:
    """What to set up; see docs/host.md."""

    lan: str
    bridge: str = DEFAULT_BRIDGE
    tap: str = DEFAULT_TAP
    state_dir: Path = field(default_factory=lambda: default_state_dir(DEFAULT_BRIDGE))
    stp: bool = False
    netns: str | None = None


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while undoing, so a second Ctrl-C cannot cut a restore short."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def apply_undo(ipr: IPRoute, rec: Record) -> None:
    """Apply one journal record; already-undone is success."""
    op = rec.get("op")
    if op == "del_link":
        nl.del_link(ipr, rec["ifname"], rec["kind"])
    elif op == "set_link":
        nl.set_link(ipr, rec["ifname"], rec["attrs"])
    elif op == "add_addr":
        nl.add_address(ipr, rec["ifname"], rec["addr"])
    elif op == "del_addr":
        nl.del_address(ipr, rec["ifname"], rec["addr"])
    elif op == "add_route":
        nl.add_route(ipr, rec["route"])
    elif op == "del_route":
        nl.del_route(ipr, rec["route"])
    else:
        raise HostError(f"unknown journal record {op!r}")


def replay(ipr: IPRoute, journal: Journal) -> int:
    """Undo every journaled change, newest first; returns how many were undone.

    A failing record does not stop the others (giving back as much as possible
    is what matters); failures stay in the journal and are reported together.
    """
    failed: list[Record] = []
    messages: list[str] = []
    done = 0
    with _signals_blocked():
        while journal.records:
            rec = journal.records[-1]
            try:
                apply_undo(ipr, rec)
                done += 1
            except (HostError, NetlinkError, OSError, KeyError, TypeError) as exc:
                failed.append(rec)
                messages.append(str(exc))
            journal.pop()
        if failed:
            journal.records = failed[::-1]
            journal.save()
            raise HostError(
                f"restore incomplete ({'; '.join(messages)}); journal kept in {journal.state_dir}"
            )
    return done


class HostSession:
    """A bridged host: holds the tap fd, the lock and the journal until :meth:`restore`."""

    def __init__(self, plan: HostPlan, ipr: IPRoute, lock: StateLock, journal: Journal) -> None:
        self.plan = plan
        self.tap_fd = -1
        self.tap_name = plan.tap
        self.bridge_name = plan.bridge
        self.mtu = 0
        self._ipr = ipr
        self._lock = lock
        self._journal = journal
        self._restored = False

    def restore(self) -> None:
        """Close the tap and undo every change in reverse (idempotent)."""
        if self._restored:
            return
        self._restored = True
        try:
            if self.tap_fd >= 0:
                os.close(self.tap_fd)
                self.tap_fd = -1
            replay(self._ipr, self._journal)
        finally:
            self._ipr.close()
            self._lock.release()

    def __enter__(self) -> HostSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()


class _Steps:
    """Runs (undo, do) pairs: journal the undo, then do; optional injected failure."""

    def __init__(self, journal: Journal, fail_after_step: int | None) -> None:
        self.journal = journal
        self.fail_after_step = fail_after_step
        self.count = 0

    def __call__(self, what: str, undo: Record, do: Callable[[], None]) -> None:
        if self.fail_after_step is not None and self.count >= self.fail_after_step:
            raise HostError(f"injected failure after step {self.count} (before: {what})")
        self.journal.push(undo)
        try:
            do()
        except NetlinkError as exc:
            raise HostError(f"cannot {what}: {exc}") from exc
        except OSError as exc:
            raise HostError(f"cannot {what}: {exc.strerror or exc}") from exc
        self.count += 1


def bring_up(plan: HostPlan, *, fail_after_step: int | None = None) -> HostSession:
    """Check, lock, journal and apply; on any failure roll back and raise.

    ``fail_after_step`` is for tests: raise after that many steps succeeded.
    """
    check_process(plan.netns)
    lock = StateLock(plan.state_dir)
    try:
        if Journal.load(plan.state_dir) is not None:
            raise HostError(
                f"{plan.state_dir} holds changes of an earlier run that were never undone; "
                f"run `bridger down --state-dir {plan.state_dir}` first"
            )
        ipr = nl.open_ipr(plan.netns)
    except BaseException:
        lock.release()
        raise
    meta = {"netns": plan.netns, "lan": plan.lan, "bridge": plan.bridge, "tap": plan.tap,
            "pid": os.getpid()}
    session = HostSession(plan, ipr, lock, Journal(plan.state_dir, meta, []))
    try:
        facts = check_links(ipr, plan.lan, plan.bridge, plan.tap)
        addrs: list[Record] = []
        routes: list[Record] = []
        if not facts.lan_in_bridge:
            addrs = nl.address_records(ipr, facts.lan)
            routes = nl.route_records(ipr, facts.lan)
        session.mtu = facts.lan.mtu
        _apply(plan, session, ipr, facts, addrs, routes,
               _Steps(session._journal, fail_after_step))
    except BaseException as exc:
        try:
            session.restore()
        except HostError as undo_exc:
            raise HostError(f"{exc}; rollback failed: {undo_exc}") from exc
        raise
    return session


def _apply(
    plan: HostPlan,
    session: HostSession,
    ipr: IPRoute,
    facts: Facts,
    addrs: list[Record],
    routes: list[Record],
    step: _Steps,
) -> None:
    lan, bridge = facts.lan, plan.bridge
    stp = 1 if plan.stp else 0

    # 1. the bridge
    if facts.bridge is None:
        step(
            f"create bridge {bridge}",
            {"op": "del_link", "ifname": bridge, "kind": "bridge"},
            lambda: ipr.link(
                "add", ifname=bridge, kind="bridge", br_stp_state=stp,
                br_forward_delay=STP_FORWARD_DELAY if plan.stp else 0,
            ),
        )
    elif plan.stp and nl.bridge_stp_state(ipr, facts.bridge) == 0:
        step(
            f"enable STP on {bridge}",
            {"op": "set_link", "ifname": bridge, "attrs": {"stp": 0}},
            lambda: nl.set_link(ipr, bridge, {"stp": 1}),
        )

    # 2. bridge MTU and MAC before any port joins (a port's MAC must never show)
    br = nl.require_link(ipr, bridge)
    step(f"configure {bridge}",
         {"op": "set_link", "ifname": bridge,
          "attrs": {"mtu": br.mtu, "address": br.address, "up": br.up}},
         lambda: nl.set_link(ipr, bridge, {"mtu": lan.mtu, "address": lan.address, "up": True}))

    # 3. the tap
    def make_tap() -> None:
        session.tap_fd, session.tap_name = open_tap(plan.tap, netns=plan.netns)
        nl.set_link(ipr, session.tap_name, {"mtu": lan.mtu, "master": bridge, "up": True})

    step(f"create tap {plan.tap}", {"op": "del_link", "ifname": plan.tap, "kind": TAP_KIND},
         make_tap)

    # 4.-5. take the NIC's routes and addresses, enslave it
    if not facts.lan_in_bridge:
        for rec in reversed(routes):
            step(f"remove route {nl.describe_route(rec)}",
                 {"op": "add_route", "route": rec},
                 lambda rec=rec: nl.del_route(ipr, rec))  # type: ignore[misc]
        for rec in reversed(addrs):
            step(f"remove address {rec['address']} from {lan.name}",
                 {"op": "add_addr", "ifname": lan.name, "addr": rec},
                 lambda rec=rec: nl.del_address(ipr, lan.name, rec))  # type: ignore[misc]
        step(f"enslave {lan.name} to {bridge}",
             {"op": "set_link", "ifname": lan.name, "attrs": {"master": None, "up": lan.up}},
             lambda: nl.set_link(ipr, lan.name, {"master": bridge, "up": True}))

    # 6. addresses and routes onto the bridge
    for rec in addrs:
        moved = dict(rec, label=nl.relabel(rec["label"], lan.name, bridge))
        if rec["family"] == nl.AF_INET6:
            moved["flags"] |= nl.IFA_F_NODAD  # already proven unique on this very link
        step(f"add address {rec['address']} to {bridge}",
             {"op": "del_addr", "ifname": bridge, "addr": moved},
             lambda moved=moved: nl.add_address(ipr, bridge, moved))  # type: ignore[misc]
    for rec in routes:
        moved = nl.move_route(rec, lan.name, bridge)
        step(f"add route {nl.describe_route(moved)}",
             {"op": "del_route", "route": moved},
             lambda moved=moved: nl.add_route(ipr, moved))  # type: ignore[misc]


def bring_down(state_dir: Path) -> str:
    """Crash recovery: replay the journal in ``state_dir`` from a fresh process."""
    lock = StateLock(state_dir)
    try:
        journal = Journal.load(state_dir)
        if journal is None:
            return f"nothing to restore in {state_dir}"
        netns = journal.meta.get("netns")
        ipr = nl.open_ipr(netns if isinstance(netns, str) else None)
        try:
            count = replay(ipr, journal)
        finally:
            ipr.close()
        return (
            f"restored: {count} changes undone (bridge {journal.meta.get('bridge')}, "
            f"LAN interface {journal.meta.get('lan')}) from {state_dir}"
        )
    finally:
        lock.release()
