"""Bring the host's network up for bridging, and give it back exactly.

Flow of :func:`bring_up` (each numbered change is one journaled step):

0. Check everything (privileges, /dev/net/tun, NIC, names, routes), take the
   state-directory lock, refuse if an old journal is still pending.
1. Create the bridge (forward delay 0, STP as asked) -- or reuse the existing
   bridge the NIC is already in.
2. Give the bridge the NIC's MTU and MAC (neighbours' ARP caches stay right),
   up, before any port joins (else it would briefly take the lowest port MAC).
   With a flood budget (``HostPlan.storm``): the nftables table that cuts
   storms before the taps' queues (``bridger.host.storm``).
3. Open each planned tap (non-persistent), set its MTU to the NIC's, enslave
   it, mark the port ``isolated`` if planned, police its flooding in the
   table, up.
4. Remove the NIC's routes (through-gateway routes first), then its addresses.
5. Enslave the NIC to the bridge, up.
6. Add the NIC's addresses, then its routes (on-link routes first) to the bridge.

Before each step its undo record goes to the journal; undo runs in reverse,
on :meth:`HostSession.restore`, on a failed or interrupted setup, or from a
fresh process via :func:`bring_down` after a crash. Taps added or removed at
run time (:meth:`HostSession.add_tap`, :meth:`HostSession.remove_tap`) are
journaled the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from types import TracebackType

from bridger.config import DEFAULT_BRIDGE, DEFAULT_TAP, default_state_dir
from bridger.errors import HostError
from bridger.host import netlink as nl
from bridger.host import storm as nft
from bridger.host.checks import Facts, check_links, check_new_tap, check_process
from bridger.host.journal import Journal, Record, StateLock
from bridger.host.pyroute import IPRoute, NetlinkError
from bridger.host.signals import Interrupted, signals_blocked
from bridger.host.storm import KernelStorm, NftError, StormBudget
from bridger.host.tap import open_tap, set_owner, set_persistent, silence_ipv6

log = logging.getLogger("bridger")

STP_FORWARD_DELAY = 200  # centiseconds: the kernel's minimum (2 s) while STP runs
TAP_KIND = "tun"
#: Frames the kernel holds for bridger in a tap's ring. The default 1000 fills
#: in milliseconds during a broadcast storm (bridger reads every flooded frame
#: before storm control drops it) and then the kernel drops unicast with the
#: flood; the ring only fills while bridger is behind.
TAP_TXQUEUELEN = 10000


@dataclass(frozen=True)
class TapPlan:
    """One tap port of the bridge (one per peer)."""

    name: str
    #: Bridge-port flag ``isolated``: no frame from this port goes to another
    #: isolated port (split horizon between peers in mode "mesh").
    isolated: bool = False


@dataclass(frozen=True)
class HostPlan:
    """What to set up; see docs/host.md.

    ``tap="name"`` is shorthand for ``taps=(TapPlan("name"),)``.
    """

    lan: str
    bridge: str = DEFAULT_BRIDGE
    taps: tuple[TapPlan, ...] = (TapPlan(DEFAULT_TAP),)
    state_dir: Path = field(default_factory=lambda: default_state_dir(DEFAULT_BRIDGE))
    stp: bool = False
    netns: str | None = None
    #: Open the taps with a virtio-net header (the fast path's offloads).
    offload: bool = True
    #: Each tap's flood budget, enforced in the kernel before its queue (the
    #: guard's; None: no kernel storm control).
    storm: StormBudget | None = None
    #: (uid, gid) the taps are given to (TUNSETOWNER/TUNSETGROUP), so the
    #: unprivileged data plane may use them (None: root's).
    owner: tuple[int, int] | None = None
    #: Persistent taps (TUNSETPERSIST): they outlive this process (`bridger prepare`).
    persist: bool = False
    tap: InitVar[str | None] = None

    def __post_init__(self, tap: str | None) -> None:
        taps = tuple(self.taps)
        if tap is not None:
            if taps != (TapPlan(DEFAULT_TAP),) and taps != (TapPlan(tap),):
                raise ValueError("HostPlan: give tap= or taps=, not both")
            taps = (TapPlan(tap),)
        object.__setattr__(self, "taps", taps)


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
    elif op == nft.UNDO_OP:
        nft.apply_undo(rec)
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
    with signals_blocked():
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
                f"restore incomplete ({'; '.join(dict.fromkeys(messages))}); journal kept: run "
                f"`bridger down --state-dir {journal.state_dir}`"
            )
    return done


def _tap_record(name: str) -> Record:
    return {"op": "del_link", "ifname": name, "kind": TAP_KIND}


class HostSession:
    """A bridged host: holds the tap fds, the lock and the journal until :meth:`restore`."""

    def __init__(self, plan: HostPlan, ipr: IPRoute, lock: StateLock, journal: Journal) -> None:
        self.plan = plan
        #: Tap name -> non-blocking fd, in the order the taps were created.
        self.taps: dict[str, int] = {}
        self.bridge_name = plan.bridge
        #: The bridge's index, once known (0: not yet).
        self.bridge_index = 0
        self.mtu = 0
        #: The kernel's storm cut (None: off, or nft missing or refused).
        self.storm: KernelStorm | None = None
        self._lan = plan.lan
        self._ipr = ipr
        self._lock = lock
        self._journal = journal
        self._restored = False

    # The first tap, for callers of the one-tap era.
    @property
    def tap_name(self) -> str:
        return next(iter(self.taps), self.plan.taps[0].name if self.plan.taps else "")

    @property
    def tap_fd(self) -> int:
        return next(iter(self.taps.values()), -1)

    @property
    def restored(self) -> bool:
        """True once every change has been undone."""
        return self._restored

    # -- taps ----------------------------------------------------------------

    def _create_tap(self, tap: TapPlan) -> None:
        """Open ``tap``, enslave it with the NIC's MTU, flag it; the record is journaled."""
        fd, actual = open_tap(tap.name, vnet=self.plan.offload, netns=self.plan.netns)
        self.taps[actual] = fd
        if self.plan.owner is not None:
            set_owner(fd, actual, *self.plan.owner)
        if self.plan.persist:
            set_persistent(fd, actual)
        # Four netlink requests: its index, its port settings (two with
        # isolation), up. A hub makes one tap per spoke.
        index = nl.require_link(self._ipr, actual).index
        nl.set_new_port(self._ipr, actual, index, master=self._bridge_index(), mtu=self.mtu,
                        txqlen=TAP_TXQUEUELEN, isolated=tap.isolated)
        if self.storm is not None and actual not in self.storm.taps:
            self.storm.add_tap(actual)  # before the port forwards anything
        silence_ipv6(actual, self.plan.netns)
        nl.set_up(self._ipr, actual, index)

    def _bridge_index(self) -> int:
        """The bridge's interface index (asked once: it stays while the session lasts)."""
        if not self.bridge_index:
            self.bridge_index = nl.require_link(self._ipr, self.bridge_name).index
        return self.bridge_index

    def _close_tap(self, name: str) -> None:
        fd = self.taps.pop(name, -1)
        if fd >= 0:
            os.close(fd)  # a non-persistent tap: the kernel deletes it now

    def add_tap(self, tap: TapPlan) -> int:
        """Create one more tap port at run time (journaled); returns its fd."""
        if self._restored:
            raise HostError(f"cannot add tap {tap.name}: the host was already restored")
        check_new_tap(self._ipr, tap.name, self._lan, self.bridge_name, self.taps)
        self._journal.push(_tap_record(tap.name))
        try:
            self._create_tap(tap)
        except BaseException as exc:
            with signals_blocked():
                self._close_tap(tap.name)
                try:
                    nl.del_link(self._ipr, tap.name, TAP_KIND)
                    self._forget(tap.name)
                except HostError as undo_exc:
                    raise HostError(f"{_why(exc)}; undo failed: {undo_exc}") from exc
            if isinstance(exc, (NetlinkError, OSError)):
                raise HostError(f"cannot create tap {tap.name}: {_why(exc)}") from exc
            raise
        return self.taps[tap.name]

    def remove_tap(self, name: str) -> None:
        """Delete a tap port at run time and drop its journal record."""
        if name not in self.taps:
            raise HostError(f"tap {name} is not one of this session's taps")
        with signals_blocked():
            self._close_tap(name)
            nl.del_link(self._ipr, name, TAP_KIND)
            self._forget(name)
            if self.storm is not None:
                self.storm.remove_tap(name)

    def _forget(self, name: str) -> None:
        self._forget_record(_tap_record(name))

    def _forget_record(self, rec: Record) -> None:
        records = self._journal.records
        for i in range(len(records) - 1, -1, -1):
            if records[i] == rec:
                del records[i]
                self._journal.save()
                return

    def journaled(self, what: str, undo: Record, do: Callable[[], None]) -> None:
        """A change another part makes to the host for this run (the HA group's
        nft rule, ``bridger.ha.gate.contain``): its undo is journaled first, as
        each set-up step's, so the restore (or `bridger down` after a crash)
        undoes it too. If ``do`` raises, the record goes and the error passes."""
        if self._restored:
            raise HostError(f"cannot {what}: the host was already restored")
        self._journal.push(undo)
        try:
            do()
        except BaseException:
            self._forget_record(undo)
            raise

    def flush_lan(self) -> None:
        """Forget what the bridge learnt on the LAN port (loop protection, when a
        loop is gone: remote MACs learnt there through the loop would black-hole
        their traffic until they age out)."""
        from bridger.ha.gate import PortGate

        gate = PortGate()
        try:
            gate.flush(self._lan)
        finally:
            gate.close()

    # -- storm control in the kernel ------------------------------------------

    def _start_storm(self, budget: StormBudget, undo: Record) -> None:
        """Create the storm table (its undo is journaled); if nft refuses, say so
        in one line and go on without it (one nft transaction: nothing was made,
        so the record goes again)."""
        storm = KernelStorm(self.bridge_name, budget, self.plan.netns)
        try:
            storm.create([t.name for t in self.plan.taps])  # their chains too: one nft run
        except NftError as exc:
            log.warning("storm control in the kernel is off (%s): the guard alone limits "
                        "flooding, after the taps' queues", exc)
            self._forget_record(undo)
            return
        self.storm = storm

    # -- restore -------------------------------------------------------------

    def restore(self) -> None:
        """Close the taps and undo every change in reverse (idempotent).

        Runs with SIGINT/SIGTERM blocked. Only a complete restore counts: if it
        raises, the journal keeps what is left (for ``bridger down``) and a
        second call tries again.
        """
        if self._restored:
            return
        with signals_blocked():
            for name in list(self.taps):
                self._close_tap(name)
            replay(self._ipr, self._journal)
            self._restored = True
            self._release()

    def _release(self) -> None:
        self._ipr.close()
        self._lock.release()

    def leave(self) -> None:
        """Keep every change and end this session without restoring (`bridger
        prepare`: the taps are persistent, the journal stays for `bridger down`)."""
        self._restored = True
        for fd in self.taps.values():
            os.close(fd)
        self.taps.clear()
        self._release()

    def detach(self) -> dict[str, int]:
        """In the forked data plane (``bridger.host.privsep``): give up the
        netlink socket, the lock and the journal, which stay the monitor's, and
        never restore from here; returns the tap fds, now this process's."""
        self._restored = True
        # Not IPRoute.close(): the monitor shares its sockets. The netlink fd is
        # pointed at /dev/null instead, so this process holds no root-opened
        # netlink socket (and the number is never reused under pyroute2's feet).
        with contextlib.suppress(OSError, AttributeError):
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            try:
                os.dup2(null, self._ipr.fileno())
            finally:
                os.close(null)
        self._lock.release()
        taps, self.taps = dict(self.taps), {}
        return taps

    def __enter__(self) -> HostSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


class _Steps:
    """Runs (undo, do) pairs: journal the undo, then do.

    Before each step: ``interrupted()`` (raises to abort) and the optional
    injected failure of the tests.
    """

    def __init__(
        self,
        journal: Journal,
        fail_after_step: int | None,
        interrupted: Callable[[], None] | None,
    ) -> None:
        self.journal = journal
        self.fail_after_step = fail_after_step
        self.interrupted = interrupted
        self.count = 0

    def __call__(self, what: str, undo: Record, do: Callable[[], None]) -> None:
        if self.interrupted is not None:
            self.interrupted()
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


def bring_up(
    plan: HostPlan,
    *,
    fail_after_step: int | None = None,
    interrupted: Callable[[], None] | None = None,
) -> HostSession:
    """Check, lock, journal and apply; on any failure roll back and raise.

    ``interrupted`` runs before the checks and before every journaled step; it
    raises (e.g. :meth:`StopSignals.check`) to abort, and the host is rolled
    back. ``fail_after_step`` is for tests: raise after that many steps succeeded.
    """
    if interrupted is not None:
        interrupted()
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
    meta = {"netns": plan.netns, "lan": plan.lan, "bridge": plan.bridge,
            "tap": plan.taps[0].name if plan.taps else None,
            "taps": [t.name for t in plan.taps], "pid": os.getpid()}
    session = HostSession(plan, ipr, lock, Journal(plan.state_dir, meta, []))
    try:
        facts = check_links(ipr, plan.lan, plan.bridge, [t.name for t in plan.taps])
        addrs: list[Record] = []
        routes: list[Record] = []
        if not facts.lan_in_bridge:
            addrs = nl.address_records(ipr, facts.lan)
            routes = nl.route_records(ipr, facts.lan)
        session.mtu = facts.lan.mtu
        step = _Steps(session._journal, fail_after_step, interrupted)
        _apply(plan, session, ipr, facts, addrs, routes, step)
        if interrupted is not None:
            interrupted()
    except BaseException as exc:
        try:
            session.restore()
        except HostError as undo_exc:
            with contextlib.suppress(Exception):
                session._release()
            raise HostError(f"{exc}; rollback failed: {undo_exc}") from exc
        if isinstance(exc, Interrupted):
            raise Interrupted(f"{exc} during host set-up; every change was undone",
                              exc.signum) from exc
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
    session.bridge_index = br.index
    step(f"configure {bridge}",
         {"op": "set_link", "ifname": bridge,
          "attrs": {"mtu": br.mtu, "address": br.address, "up": br.up}},
         lambda: nl.set_link(ipr, bridge, {"mtu": lan.mtu, "address": lan.address, "up": True}))

    # 2b. storm control in the kernel, before any tap exists
    if plan.storm is not None:
        if nft.nft_path() is None:
            log.warning("storm control in the kernel is off (nft not found): the guard alone "
                        "limits flooding, after the taps' queues")
        else:
            undo = nft.undo_record(nft.table_name(bridge), plan.netns)
            budget = plan.storm
            step("create the storm-control table", undo,
                 lambda: session._start_storm(budget, undo))

    # 3. the taps
    for tap in plan.taps:
        step(f"create tap {tap.name}", _tap_record(tap.name),
             lambda tap=tap: session._create_tap(tap))  # type: ignore[misc]

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


def add_prepared_taps(plan: HostPlan) -> list[str]:
    """`bridger prepare --add-taps` (a reload of the unprivileged service): the
    planned taps that the journal in ``plan.state_dir`` does not have yet are
    created as at start (persistent, the service user's, enslaved, journaled);
    returns their names."""
    lock = StateLock(plan.state_dir)
    try:
        journal = Journal.load(plan.state_dir)
        if journal is None:
            raise HostError(f"nothing prepared in {plan.state_dir}: run `bridger prepare` first")
        ipr = nl.open_ipr(plan.netns)
    except BaseException:
        lock.release()
        raise
    session = HostSession(plan, ipr, lock, journal)
    try:
        session.mtu = nl.require_link(ipr, plan.bridge).mtu
        if plan.storm is not None and any(r.get("op") == nft.UNDO_OP for r in journal.records):
            session.storm = KernelStorm(plan.bridge, plan.storm, plan.netns)
        known = {r.get("ifname") for r in journal.records
                 if r.get("op") == "del_link" and r.get("kind") == TAP_KIND}
        added = []
        for tap in plan.taps:
            if tap.name not in known:
                session.add_tap(tap)
                added.append(tap.name)
        return added
    finally:
        session.leave()


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
