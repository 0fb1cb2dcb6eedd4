"""`bridger up`: the run of one daemon, in phases (:class:`Up`).

1. Check: keys are read and the core (one ``Device``, one ``Peer`` per
   configured peer) is built once before the host is touched: a bad key or
   config is one line and the host stays as it was.
2. Bring up: the UDP socket is bound, then the host set up (bridge, one tap per
   peer; in mode "mesh" the taps are isolated bridge ports: split horizon in
   the kernel). SIGINT/SIGTERM are only recorded (``StopSignals``) for the
   whole of `up`: during host set-up a signal rolls back, before the serve
   loop's own receiver exists it stops the Trio run at once, and the restore
   after the run is never cut short.
3. Serve: the Trio run. The bridge is assembled (``Up.assemble``: the core, the
   forwarder and its ports, the native lane, the status views, the live
   service) from the parts in ``bridger.shell.assembly``, privileges are
   dropped, then the control socket, the forwarding tasks (one per tap, one for
   the socket, the timers), the resolvers, the dashboard or log lines run until
   a signal. An error in any task ends the run with one line for the user.
4. Stop: STOPPING=1 and the remembered endpoints written, then leaving the host
   session restores the host network.

This is the top of the house below the CLI: it assembles the shell
(``bridger.shell``), the live service (``bridger.service``), the host and the
status views, and nothing below imports it.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import faulthandler
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from bridger.config import DEFAULT_USER, UpConfig, default_state_dir
from bridger.dataplane.accounting import KERNEL_DROP_REASON
from bridger.errors import BridgerError, HostError
from bridger.ha.gate import DirectGroupHost, GroupSockets, contain
from bridger.host import HostPlan, StopSignals, TapPlan, drop_privileges
from bridger.host import bring_up as set_up_host
from bridger.host.prepared import PreparedHost
from bridger.host.privileges import ServiceUser, ensure_user
from bridger.host.privsep import (
    enter_sandbox,
    preload,
    prepare_worker_dir,
    split,
    worker_dir,
)
from bridger.host.setup import add_prepared_taps
from bridger.host.storm import StormBudget
from bridger.keys import encode_key, public_key, read_private_key_file
from bridger.protocol import Peer
from bridger.service.live import Live
from bridger.service.notify import Notifier
from bridger.shell.assembly import (
    NATIVE,
    PYTHON,
    PortMaker,
    Psks,
    build_core,
    build_forwarder,
    data_path,
    native_module,
    read_keys,
    setup_fast_path,
)
from bridger.shell.forward import Forwarder
from bridger.shell.lane import NativeLane
from bridger.shell.port import Port
from bridger.shell.udp import UdpEndpoint, format_address
from bridger.status.control import control_path, serve_control
from bridger.status.dashboard import run_dashboard, run_log_lines
from bridger.status.document import DeviceInfo, PeerInfo, status_document
from bridger.status.logs import setup_logging, shutdown_logging

if TYPE_CHECKING:
    from bridger.ha.runner import HaRunner
    from bridger.host.storm import KernelStorm

log = logging.getLogger("bridger")

#: Seconds between drop summaries in the log.
DROP_SUMMARY_INTERVAL = 30.0


def run_up(config: UpConfig, reread: Callable[[], UpConfig] | None = None) -> int:
    """Everything `bridger up` does after the config is valid.

    ``reread`` reads and validates the config again (SIGHUP, ``systemctl reload``).
    """
    try:
        return Up(config, reread).run()
    finally:
        shutdown_logging()  # the last lines are written before the CLI's own error line


class _MonitorDone(Exception):  # a way out, not an error
    """The monitor's run is over: its exit code (the host is restored next)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Checked:
    """What the check phase read: the keys, and the native extension (or None)."""

    private: bytes
    psks: Psks
    native: Any
    #: Two gateways per site: the group's key (None: no group, or keepalived).
    group_key: bytes | None = None


class Up:
    """One run of `bridger up`: check, bring up, serve, stop (the module docstring)."""

    def __init__(self, config: UpConfig, reread: Callable[[], UpConfig] | None) -> None:
        self.config = config
        self.reread = reread
        self.notifier = Notifier.from_env()
        #: Once assembled: the live service (it says STOPPING=1 at the end).
        self.live: Live | None = None
        #: Two gateways per site: the group's raw sockets, opened while
        #: privileged (``open_group``), and whether its nft rule was made.
        self.group_sockets: GroupSockets | None = None
        self.group_contained = False
        #: Where the data plane writes (control socket, endpoints): the state
        #: directory, or its own directory in it once split from the monitor
        #: (or made by `bridger prepare` for the prepared-taps mode).
        self.run_dir = config.state_dir
        own = worker_dir(config.state_dir)
        if config.prepared_taps and os.path.isdir(own) and os.access(own, os.W_OK):
            self.run_dir = own

    def run(self) -> int:
        """All four phases; 0, or one error line (a ``BridgerError``)."""
        # SIGHUP's default action ends the process: ignored until serve receives it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # A watchdog kill (SIGABRT) leaves every thread's traceback in the journal.
        faulthandler.enable()
        with StopSignals() as stop:
            checked = self.check()
            user = self.service_user()
            console = setup_logging(self.config.dashboard and sys.stdout.isatty())
            with self.bring_up(stop, user) as (udp, host):
                try:
                    self.open_group(host)
                    host, console = self.separate(stop, user, host, console)
                except _MonitorDone as done:
                    return done.code
                except BridgerError as exc:
                    return outcome(exc)  # raises; leaving bring_up restores the host
                failure = self.serve(stop, checked, udp, host, console)
                if stop.first is not None:
                    log.info("%s: stopping and restoring the host network", stop.first.name)
        return outcome(failure)

    def separate(self, stop: StopSignals, user: ServiceUser | None, host: Any,
                 console: Any) -> tuple[Any, Any]:
        """The drop: as root, split into the monitor (which serves the data plane
        here until it ends: ``_MonitorDone``) and the data plane (which goes on,
        sandboxed); with prepared taps, only the sandbox. The data plane's
        host and console."""
        if user is not None or self.config.prepared_taps:
            self.notifier.connect()  # its path may be out of the data plane's reach
        if user is not None:
            side = split(host, user, self.config, self.reread, read_keys)
            if side.monitor is not None:
                if self.group_sockets is not None:  # the data plane's, not the monitor's
                    self.group_sockets.close()
                shutdown_logging()  # its thread would keep root's capabilities
                side.monitor.drop()
                notes = side.monitor.sandbox()  # still the only thread (Landlock)
                setup_logging(False)
                log.info("monitor: root with CAP_NET_ADMIN and CAP_KILL, no_new_privs, "
                         "system-call filter%s", "".join(f"; {note}" for note in notes))
                raise _MonitorDone(side.monitor.outcome(side.monitor.run(stop.received)))
            assert side.host is not None
            self.run_dir = Path(".")
            return side.host, self.sandbox(user, side.monitor_pid)
        if self.config.prepared_taps:
            return host, self.sandbox(None)
        return host, console

    def service_user(self) -> ServiceUser | None:
        """The user the data plane becomes: when started as root (and the taps
        are not prepared); the default one is made if missing (one line)."""
        if self.config.prepared_taps or os.geteuid() != 0:
            return None
        if self.config.user != DEFAULT_USER:  # a typo must not create an account
            return ServiceUser.lookup(self.config.user)
        user, created = ensure_user(self.config.user)
        if created:
            print(f"bridger: created the service user {user.name} (uid {user.uid})",
                  file=sys.stderr)
        return user

    def open_group(self, host: Any) -> None:
        """Two gateways per site, before the drop: the group's raw LAN sockets
        (they need CAP_NET_RAW to open, nothing to use) and the nftables rule
        that keeps its frames on the LAN (journaled: every restore removes it).
        The port gate, the flush and the FDB are asked at run time
        (``bridger.ha.gate.GroupHost``)."""
        ha = self.config.ha
        if ha is None:
            return
        bridge = host.bridge_name
        try:
            self.group_sockets = GroupSockets.open(bridge, receive=ha.follow is None)
        except OSError as exc:
            raise HostError(f"two gateways per site: cannot open the group's sockets on "
                            f"{bridge}: {exc.strerror or exc}") from exc
        journaled = getattr(host, "journaled", None)  # (prepared taps: no host session)
        self.group_contained = journaled is not None and contain(journaled, bridge)

    def sandbox(self, user: ServiceUser | None, monitor_pid: int = 0) -> Any:
        """The data plane's drop (``bridger.host.privsep.enter_sandbox``) with
        every module it will need loaded first; the log writer starts after."""
        preload(self.config)
        notes = enter_sandbox(user, monitor_pid, write_dir=self.run_dir)
        console = setup_logging(self.config.dashboard and sys.stdout.isatty())
        who = f"user {user.name} (uid {user.uid})" if user is not None else \
            f"uid {os.geteuid()}, prepared taps"
        log.info("data plane: %s, no capabilities, no_new_privs, system-call filter%s", who,
                 "".join(f"; {note}" for note in notes))
        return console

    def check(self) -> Checked:
        """Phase 1, before the host is touched: a bad key or setting is one line."""
        private, psks = read_keys(self.config)
        build_core(self.config, private, psks, 0.0, time.time())
        ha = self.config.ha
        group_key = None if ha is None or ha.group_key is None else \
            read_private_key_file(ha.group_key)
        return Checked(private, psks, native_module(self.config), group_key)

    @contextlib.contextmanager
    def bring_up(self, stop: StopSignals,
                 user: ServiceUser | None = None) -> Iterator[tuple[UdpEndpoint, Any]]:
        """Phase 2: the socket bound and the host set up (the taps given to
        ``user``), or the prepared taps attached; leaving restores the host
        network and closes the socket."""
        udp = UdpEndpoint.bind(self.config.listen)
        plan = host_plan(self.config)
        if self.config.prepared_taps:
            plan = dataclasses.replace(plan, state_dir=self.run_dir)
        if user is not None:
            plan = dataclasses.replace(plan, owner=(user.uid, user.gid))
        try:
            if self.config.prepared_taps:
                with PreparedHost(plan) as prepared:
                    yield udp, prepared
                return
            with set_up_host(plan, interrupted=stop.check) as host:
                yield udp, host
        finally:
            udp.sock.close()

    def serve(self, stop: StopSignals, checked: Checked, udp: UdpEndpoint, host: Any,
              console: Any) -> BaseException | None:
        """Phase 3: the Trio run; the error that ended it, or None (a signal)."""
        try:
            trio.run(partial(self._main, stop, checked, udp, host, console),
                     restrict_keyboard_interrupt_to_checkpoints=True)
        except BaseExceptionGroup as group:
            return _one_error(group)
        finally:
            self.stop()  # before the host is restored (leaving bring_up)
        return None

    def stop(self) -> None:
        """Phase 4, before the host is restored: STOPPING=1 (and the endpoints
        written, once the live service exists)."""
        if self.live is not None:
            self.live.stopping()
        else:
            self.notifier.stopping()

    async def _main(self, stop: StopSignals, checked: Checked, udp: UdpEndpoint,
                    host: Any, console: Any) -> None:
        # A signal before serve's receiver exists reaches StopSignals: it cancels
        # this scope (run_sync_soon is signal-safe).
        token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope, stop.notify(lambda: token.run_sync_soon(scope.cancel)):
            if stop.received:
                return
            now = float(trio.current_time())
            daemon, self.live = self.assemble(checked, udp, host, now)
            self.live.remember_endpoints(now)
            if self.config.metrics:
                # Imported only with --metrics: the Prometheus client costs every
                # other daemon memory (tests/foundation/test_memory.py).
                from bridger.status.metrics import start_metrics_server

                start_metrics_server(self.config.metrics, daemon.snapshot)
            if self.run_dir == self.config.state_dir and not self.config.prepared_taps \
                    and os.geteuid() != 0:
                # Not split (started without root but with CAP_NET_ADMIN):
                # keep CAP_NET_ADMIN alone.
                drop_privileges()
            await serve_tasks(daemon, console, self.live, self.run_dir)

    def assemble(self, checked: Checked, udp: UdpEndpoint, host: Any,
                 now: float) -> tuple[Daemon, Live]:
        """The running bridge: the core, the forwarder with one port per tap (fast
        path set), the native lane, the status views and the live service."""
        config, native = self.config, checked.native
        device, peers = build_core(config, checked.private, checked.psks, now, time.time(),
                                   None if native is None else native.Session)
        # A hub's spokes list only the hub: introductions would all be refused.
        device.traversal.introducing = config.mode == "mesh"
        # The kernel keeps probes from crossing between taps: its storm table's
        # forward chain, or (mode mesh, taps bridger made) isolated ports.
        tap_cut = host.storm is not None or (config.mode == "mesh"
                                             and not config.prepared_taps)
        fwd = build_forwarder(config, device, udp, tap_cut=tap_cut)
        fwd.flush_lan = host.flush_lan
        ports = PortMaker.of(config, fwd)
        for settings, peer in zip(config.peers, peers, strict=True):
            fwd.ports[peer] = ports.make(peer, settings.tap, host.taps[settings.tap])
        setup_fast_path(fwd, config.offload, PYTHON if native is None else NATIVE)
        if native is not None:
            fwd.lane = NativeLane(fwd, native)
        daemon = Daemon(config, fwd, {
            "lan": config.lan, "bridge": host.bridge_name, "listen": udp.listen,
        }, storm=host.storm)
        split_off = hasattr(host, "reread")  # the data plane of a split: the monitor reads
        if config.ha is not None:  # two gateways per site: every tap starts gated off
            from bridger.ha.runner import HaRunner

            assert self.group_sockets is not None
            daemon.ha = HaRunner(
                config.ha, public_key(checked.private), config.lan, host.bridge_name,
                lambda: [p.tap for p in fwd.ports.values()],
                host=host.group_host() if split_off else DirectGroupHost(config.lan),
                sockets=self.group_sockets, contained=self.group_contained,
                group_key=checked.group_key)
            daemon.ha.drain([port.fd for port in fwd.ports.values()])
        make_port = ports.make_prepared
        if daemon.ha is not None:
            ha = daemon.ha

            def make_port(peer: Peer, tap: str, fd: int) -> Port:
                """A reload's new tap, gated as the role wants before it carries
                anything (not at the runner's next look, up to 1 s later)."""
                ha.gate_new(tap, fd)
                return ports.make_prepared(peer, tap, fd)

        live = Live(config, checked.private, checked.psks, fwd, host, self.notifier,
                    reread=host.reread if split_off else self.reread,
                    read_keys=host.read_keys if split_off else read_keys,
                    make_port=make_port, on_config=daemon.set_config,
                    run_dir=self.run_dir)
        if daemon.ha is not None:
            live.status_prefix = daemon.ha.status_text
        return daemon, live


#: Where the default state directories live (``default_state_dir``).
DEFAULT_RUN_DIR = str(default_state_dir("x").parent)


def run_prepare(config: UpConfig, add_taps: bool = False) -> str:
    """`bridger prepare`: as root, set the host up for an unprivileged `bridger
    up --prepared-taps` (systemd's ``ExecStartPre=+``): the bridge, the NIC
    moved, one persistent tap per peer owned by the service user, all
    journaled for `bridger down`; the service user's directory in the state
    directory. ``add_taps`` (``ExecReload=+``): only the taps of peers the
    config gained. Returns the line to print."""
    user, created = ensure_user(config.user)
    plan = dataclasses.replace(host_plan(config), owner=(user.uid, user.gid), persist=True)
    made = f"created the service user {user.name}; " if created else ""
    if add_taps:
        added = add_prepared_taps(plan)
        return f"prepared: {made}" + (f"added taps {', '.join(added)}" if added
                                      else "no new tap")
    with StopSignals() as stop:
        set_up_host(plan, interrupted=stop.check).leave()
    prepare_worker_dir(config.state_dir, user)
    parent = config.state_dir.parent
    if parent == Path(DEFAULT_RUN_DIR):  # made 0700 under the unit's UMask: the user passes
        parent.chmod(0o755)
    taps = ", ".join(t.name for t in plan.taps)
    return (f"prepared: {made}{config.lan} in bridge {config.bridge}, taps {taps} owned by "
            f"{user.name}; now `bridger up --prepared-taps` as {user.name}; `bridger down` "
            "undoes it")


def host_plan(config: UpConfig) -> HostPlan:
    """The bridge and one tap per peer (isolated bridge ports in mode "mesh")."""
    isolated = config.mode == "mesh"
    return HostPlan(
        lan=config.lan, bridge=config.bridge,
        taps=tuple(TapPlan(p.tap, isolated=isolated) for p in config.peers),
        state_dir=config.state_dir, stp=config.stp, offload=config.offload,
        storm=StormBudget.of(config.guard.flood_rate, config.guard.burst, config.guard.nd_share),
    )


def outcome(failure: BaseException | None) -> int:
    """The exit code of a run that ended with ``failure``, or its one error line."""
    if failure is None:
        log.info("down: host network restored")
        return 0
    if isinstance(failure, KeyboardInterrupt):
        raise failure
    if isinstance(failure, BridgerError):
        error = BridgerError(f"{failure}; host network restored")
        error.exit_code = failure.exit_code
        raise error from None
    log.debug("daemon task failed", exc_info=failure)
    raise BridgerError(
        f"daemon stopped by an unexpected error ({type(failure).__name__}: {failure}); "
        "host network restored"
    ) from None


class Daemon:
    """The running daemon: the forwarder plus what status views read."""

    def __init__(
        self, config: UpConfig, fwd: Forwarder, interface: dict[str, str],
        storm: KernelStorm | None = None,
    ) -> None:
        self.config = config
        self.fwd = fwd
        self.interface = interface
        #: The kernel's storm cut; its ``drops`` (read in the slow path) are shown.
        self.storm = storm
        self._hosts = {s.name: s.host for s in config.peers}
        self._last_drops: dict[str, int] = {}
        #: Two gateways per site (bridger.ha): this gateway's part in its group.
        self.ha: HaRunner | None = None

    def set_config(self, config: UpConfig) -> None:
        """After a reload: status views show the new peers' settings."""
        self.config = config
        self._hosts = {s.name: s.host for s in config.peers}

    def snapshot(self) -> dict[str, Any]:
        fwd = self.fwd
        now = fwd.now()
        if fwd.lane is not None:
            with fwd.core():
                fwd.lane.sync(now)
        device = DeviceInfo(
            mode=self.config.mode, data_path=data_path(fwd),
            interface=dict(self.interface),
            drops={reason.value: n for reason, n in fwd.device.drops.items()},
            guard=None if fwd.detector is None else fwd.detector.snapshot(now),
        )
        peers = [self._peer_info(p, now) for p in fwd.ports]
        doc = status_document(fwd.counters.snapshot(now), device, peers)
        if self.ha is not None:
            doc["ha"] = self.ha.snapshot()
        return doc

    def _peer_info(self, peer: Peer, now: float) -> PeerInfo:
        stats = peer.stats(now)
        port = self.fwd.ports[peer]

        def age(t: float | None) -> float | None:
            return None if t is None else max(0.0, now - t)

        drops = dict(stats.drops)
        if self.storm is not None:
            drops[KERNEL_DROP_REASON] = self.storm.drops.get(port.tap, 0)

        path = self.fwd.device.traversal.path(peer)
        relayed = path.kind.value == "relayed"
        return PeerInfo(
            name=peer.name,
            public_key=encode_key(peer.public_key),
            state=stats.state,
            host=self._hosts.get(peer.name),
            tap=port.tap,
            endpoint=f"via {path.via}" if relayed else format_address(stats.endpoint),
            path=path.kind.value,
            via=path.via if relayed else None,
            endpoint_source=path.how.value if stats.endpoint is not None else "",
            session_age=age(stats.session_established_at),
            last_handshake_age=age(stats.last_handshake_at),
            handshakes=stats.handshakes,
            rekeys=stats.rekeys,
            rtt_ms=None if stats.rtt is None else stats.rtt * 1000.0,
            path_mtu=stats.path_mtu,
            path_mtu_source=stats.pmtu_source,
            drops=drops,
            fragments={
                "sent": stats.fragments_sent,
                "received": stats.fragments_received,
                "reassembled": stats.reassembled,
                "in_progress": stats.reassembly_in_progress,
            },
            guard=None if port.guard is None else port.guard.snapshot(now),
        )

    async def drop_summaries(self) -> None:
        """One log line per interval summarising drops, never one per packet."""
        while True:
            await trio.sleep(DROP_SUMMARY_INTERVAL)
            snap = self.snapshot()
            changed: list[str] = []
            for element in snap["peers"]:
                for reason, value in sorted(element["drops"].items()):
                    key = f"{element['name']}/{reason}"
                    delta = value - self._last_drops.get(key, 0)
                    self._last_drops[key] = value
                    if delta:
                        changed.append(f"{key}={delta}")
            for reason, value in sorted(snap["device_drops"].items()):
                delta = value - self._last_drops.get(reason, 0)
                self._last_drops[reason] = value
                if delta:
                    changed.append(f"{reason}={delta}")
            if changed:
                log.info("drops in the last %.0fs: %s", DROP_SUMMARY_INTERVAL, ", ".join(changed))


async def serve_tasks(daemon: Daemon, console: Any, live: Live, run_dir: Path | None = None,
                      ) -> None:
    """Every task of the running daemon, until SIGINT or SIGTERM (SIGHUP: a reload)."""
    cfg = daemon.config
    fwd = daemon.fwd
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            await nursery.start(serve_control, control_path(run_dir or cfg.state_dir),
                                daemon.snapshot)
            live.start(nursery)
            if daemon.ha is not None:
                nursery.start_soon(daemon.ha.run)
            nursery.start_soon(fwd.timers)
            nursery.start_soon(daemon.drop_summaries)
            if console is not None:
                nursery.start_soon(partial(run_dashboard, daemon.snapshot, console=console))
            else:
                nursery.start_soon(partial(run_log_lines, daemon.snapshot, log=log))
            names = ", ".join(
                f"{s.name} ({s.host}:{s.port})" if s.host else f"{s.name} (waits)"
                for s in cfg.peers
            )
            log.info("up: %s in bridge %s (%s), listening on %s; peers: %s",
                     cfg.lan, cfg.bridge, cfg.mode, fwd.udp.listen, names)
            live.ready()
            trim_memory()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await live.reload()
                    continue
                log.info("%s: stopping and restoring the host network", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def trim_memory() -> None:
    """Once running: give the start-up's garbage back to the system (about 1 MB
    of a gateway's RSS: config parsing, netlink dumps, the host plan). After a
    split the collection is a short one: the objects from before the fork are
    frozen (``bridger.host.privsep.split``)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)


def _one_error(exc: BaseExceptionGroup[Any]) -> BaseException:
    """The error to show for a failed Trio run (strict exception groups)."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        else:
            leaves.append(e)

    walk(exc)
    for leaf in leaves:
        if isinstance(leaf, BridgerError):
            return leaf
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt):
            return leaf
    return leaves[0] if leaves else exc
