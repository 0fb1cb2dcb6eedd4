"""The running daemon's service side: peer tasks that come and go, reload,
remembered endpoints and the systemd notifications.

`bridger up` (``bridger.daemon``) builds the core, the forwarder and the host
session, then hands them to :class:`Live`; a reload builds peers from the same
parts (``bridger.shell.assembly``), never from ``up`` itself:

1. ``live.remember_endpoints(now)`` before serving: each peer without an
   endpoint gets its last authenticated one from ``STATE_DIR/endpoints.json``
   and initiates at once, so a restarted listen-only side does not wait for
   the other side's timers.
2. ``live.start(nursery)`` in the serve nursery, instead of starting the
   per-tap and socket tasks there: per peer a task group (its tap's
   ``tap_to_wan`` and its resolver) in its own cancel scope, the socket task
   (``wan_to_tap``, restarted when the device is replaced), and the service
   tasks: remembered endpoints, STATUS= lines, the watchdog, the kernel's
   storm counters (read once a second, never on the data path). Then
   ``live.ready()`` once everything runs (the bridge exists, the socket is
   bound): READY=1.
3. ``await live.reload()`` on SIGHUP: RELOADING=1, read the config again,
   refuse it with one line (the running configuration stays) or apply the
   plan of :func:`bridger.service.reload.plan_reload`; READY=1 either way.
4. ``live.stopping()`` when the run ends, before the host is restored:
   STOPPING=1 and a last write of the remembered endpoints.

A reload that fails half way (e.g. a tap name taken by another interface) keeps
what was applied and records it as the running configuration, so the next
reload starts from the truth.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import trio

from bridger.config import PeerSettings, UpConfig
from bridger.errors import BridgerError
from bridger.host import TapPlan
from bridger.host.storm import NftError
from bridger.protocol import Address, Device, DeviceConfig, Output, Peer
from bridger.service.endpoints import EndpointBook, remember_task
from bridger.service.notify import Notifier
from bridger.service.reload import ReloadPlan, plan_reload, refused_line
from bridger.service.watchdog import (
    STATUS_INTERVAL,
    overdue,
    peers_status,
    readable,
    status_task,
    watchdog_task,
)
from bridger.shell.assembly import Psks, lane_room, peer_config, read_keys
from bridger.shell.forward import Forwarder
from bridger.shell.lane import held_sessions, wipe_sessions
from bridger.shell.port import Port
from bridger.shell.resolver import resolve_peer

log = logging.getLogger("bridger")

#: A timer this late (seconds) counts as work the data plane has not taken.
TIMER_SLACK = 1.0
#: Seconds between two reads of the kernel's storm counters.
KERNEL_COUNTERS_INTERVAL = 1.0


class StormCounters(Protocol):
    """The kernel's storm drops per tap (``KernelStorm``, or the monitor's copy)."""

    drops: dict[str, int]

    def read(self) -> None: ...


class TapHost(Protocol):
    """What the running daemon asks of the host: a ``HostSession``, the data
    plane's stand-in that asks the privileged monitor (``WorkerHost``), or the
    prepared taps (``PreparedHost``)."""

    taps: dict[str, int]
    bridge_name: str

    @property
    def storm(self) -> StormCounters | None: ...

    def add_tap(self, tap: TapPlan) -> int: ...

    def remove_tap(self, name: str) -> None: ...


async def kernel_counters_task(storm: StormCounters) -> None:
    """Keep ``storm.drops`` current (an ``nft`` run in a worker thread, once a
    second); a failure is logged once and the last values stay."""
    failing = False
    while True:
        try:
            await trio.to_thread.run_sync(storm.read)
            failing = False
        except NftError as exc:
            if not failing:
                log.warning("storm control in the kernel: cannot read its counters (%s)", exc)
            failing = True
        await trio.sleep(KERNEL_COUNTERS_INTERVAL)


def retire_peer(device: Device, peer: Peer) -> None:
    """Remove ``peer`` from ``device`` for good (its tasks are stopped, so its
    port is out of the native lane's tables): what can be wiped is wiped.

    Wiped: the key copies of its native sessions (``Session.wipe``: zeroed
    with ``sodium_memzero``, then refused by seal/open and by the lane).
    Not wiped: the core's own copies, ``Keypair.send_key`` / ``receive_key``
    and the handshake state's keys, which are immutable ``bytes`` inside
    ``bridger.protocol`` (as are the private key and PSKs read from disk):
    ``remove_peer`` drops the last references, and their memory is freed,
    not overwritten, when collected."""
    sessions = held_sessions(peer)
    device.remove_peer(peer)
    wipe_sessions(sessions)

@dataclasses.dataclass
class _Tasks:
    """A group of tasks that can be stopped, and waited for, on its own."""

    scope: trio.CancelScope
    done: trio.Event


class Live:
    """The parts of a running daemon that change at run time (see the module docstring)."""

    def __init__(
        self,
        config: UpConfig,
        private: bytes,
        psks: Psks,
        fwd: Forwarder,
        host: TapHost,
        notifier: Notifier,
        *,
        reread: Callable[[], UpConfig] | None,
        make_port: Callable[[Peer, str, int], Port],
        on_config: Callable[[UpConfig], object],
        read_keys: Callable[[UpConfig], tuple[bytes, Psks]] = read_keys,
        run_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.private = private
        self.psks = psks
        self.fwd = fwd
        self.host = host
        self.notifier = notifier
        self.reread = reread
        # (core peer, tap name, tap fd) -> its Port, made as at start (counters by
        # peer name, so a peer re-created on its tap keeps counting; fast-path flags).
        self.make_port = make_port
        self.on_config = on_config  # status views follow the running config
        # The data plane split from its monitor cannot read root's key files:
        # the monitor reads them with the config (``bridger.host.privsep``).
        self.read_keys = read_keys
        # The state directory, or the data plane's own directory in it.
        self.book = EndpointBook(config.state_dir if run_dir is None else run_dir,
                                 keep=[p.public_key for p in config.peers])
        self._nursery: trio.Nursery | None = None
        self._peer_tasks: dict[str, _Tasks] = {}
        self._socket_task: _Tasks | None = None
        #: The STATUS line's first words (two gateways per site: "active (site x)").
        self.status_prefix: Callable[[], str] | None = None

    # -- what the service tasks read -----------------------------------------

    def port_of(self, name: str) -> Port:
        return next(port for peer, port in self.fwd.ports.items() if peer.name == name)

    def peer_states(self) -> list[tuple[str, str]]:
        now = self.fwd.now()
        return [(peer.name, peer.state(now)) for peer in self.fwd.ports]

    def _up_endpoints(self) -> list[tuple[bytes, Address | None]]:
        now = self.fwd.now()
        # (``state``, not ``stats().state``: this runs every second for every
        # peer, and a whole stats snapshot was a quarter of an idle
        # hub's work at 50 spokes, issue 26)
        return [(peer.public_key, peer.endpoint) for peer in self.fwd.ports
                if peer.state(now) == "up"]

    def _pending(self) -> bool:
        """Input waiting on the socket or a tap, or a timer overdue (for the watchdog)."""
        fwd = self.fwd
        fds = [fwd.udp.sock.fileno(), *(port.fd for port in fwd.ports.values())]
        return readable(fds) or overdue(fwd.device.next_deadline(), fwd.now(), TIMER_SLACK)

    # -- start and stop --------------------------------------------------------

    def remember_endpoints(self, now: float) -> None:
        """Give each peer without an endpoint its remembered one; it initiates."""
        out = Output()
        for peer in self.fwd.ports:
            remembered = self.book.get(peer.public_key)
            if remembered is not None and peer.endpoint is None:
                log.info("peer %s: last seen at %s; contacting it", peer.name,
                         f"[{remembered[0]}]:{remembered[1]}" if ":" in remembered[0]
                         else f"{remembered[0]}:{remembered[1]}")
                peer.set_endpoint(remembered, now, out)
                peer.initiate(now, out)
        self.fwd.handle(out, now)

    def start(self, nursery: trio.Nursery) -> None:
        """The forwarding tasks except the timers, and the service tasks."""
        self._nursery = nursery
        for settings in self.config.peers:
            self._start_peer(settings)
        self._socket_task = self._spawn(self.fwd.wan_to_tap)
        nursery.start_soon(remember_task, self.book, self._up_endpoints)
        nursery.start_soon(status_task, self.notifier, self.peer_states, STATUS_INTERVAL,
                           self.status_prefix)
        if self.host.storm is not None:
            nursery.start_soon(kernel_counters_task, self.host.storm)
        interval = self.notifier.watchdog_interval()
        if interval is not None:
            fwd = self.fwd
            nursery.start_soon(watchdog_task, self.notifier, lambda: fwd.heartbeat, interval,
                               self._pending)

    def ready(self) -> None:
        text = peers_status(self.peer_states())
        self.notifier.ready(text if self.status_prefix is None
                            else f"{self.status_prefix()}; {text}")

    def stopping(self) -> None:
        self.notifier.stopping()
        self.book.flush()

    def _spawn(self, *tasks: Callable[[], Awaitable[object]]) -> _Tasks:
        assert self._nursery is not None
        handle = _Tasks(trio.CancelScope(), trio.Event())

        async def run() -> None:
            try:
                with handle.scope:
                    async with trio.open_nursery() as inner:
                        for task in tasks:
                            inner.start_soon(task)
            finally:
                handle.done.set()

        self._nursery.start_soon(run)
        return handle

    def _start_peer(self, settings: PeerSettings) -> None:
        port = self.port_of(settings.name)
        fwd = self.fwd
        tasks: list[Callable[[], Awaitable[object]]] = [lambda: fwd.tap_to_wan(port)]
        if settings.host is not None:
            host, udp_port = settings.host, settings.port
            tasks.append(lambda: resolve_peer(fwd, port.peer, host, udp_port))
        self._peer_tasks[settings.name] = self._spawn(*tasks)

    async def _stop(self, handle: _Tasks | None) -> None:
        if handle is not None:
            handle.scope.cancel()
            await handle.done.wait()

    # -- reload ------------------------------------------------------------------

    async def reload(self) -> None:
        """SIGHUP: read the config again; apply it, or refuse it with one line."""
        if self.reread is None:
            log.warning("reload: bridger was started without a way to read its config again")
            return
        self.notifier.reloading()
        try:
            try:
                new = self.reread()
                private, psks = self.read_keys(new)
                plan = plan_reload(self.config, new, self.private, private,
                                   old_psks=self.psks, new_psks=psks)
                if self.fwd.lane is not None:
                    lane_room(new)
            except BridgerError as exc:
                log.error("%s", refused_line(exc))
                return
            if not plan.empty:
                try:
                    await self._apply(plan, new, private, psks)
                except (BridgerError, ValueError) as exc:
                    log.error("reload stopped part way (%s); running with what was applied", exc)
                    return
            self._commit(new, private, psks)
            log.info("%s", plan.describe())
        finally:
            self.notifier.ready(peers_status(self.peer_states()))

    def _commit(self, config: UpConfig, private: bytes, psks: Psks) -> None:
        self.config, self.private, self.psks = config, private, psks
        self.on_config(config)

    async def _apply(self, plan: ReloadPlan[PeerSettings], new: UpConfig, private: bytes,
                     psks: Psks) -> None:
        fwd = self.fwd
        now = fwd.now()
        # What is applied so far: on a failure it becomes the running configuration.
        running = {p.name: p for p in self.config.peers}
        running_psks = dict(self.psks)

        def applied(settings: PeerSettings) -> None:
            running[settings.name] = settings
            running_psks[settings.name] = psks[settings.name]

        try:
            for settings in plan.removed:
                await self._stop(self._peer_tasks.pop(settings.name, None))
                port = self.port_of(settings.name)
                del fwd.ports[port.peer]
                retire_peer(fwd.device, port.peer)
                fwd.counters.remove_peer(settings.name)
                if fwd.detector is not None:
                    fwd.detector.remove_peer(settings.name)
                self.book.forget(settings.public_key)
                del running[settings.name]
                running_psks.pop(settings.name, None)
                self.host.remove_tap(port.tap)
            if plan.rekey_all:
                await self._new_identity(new, private, psks, now)
                for change in plan.changed:
                    applied(change.new)
            else:
                for change in plan.changed:
                    await self._stop(self._peer_tasks.pop(change.name, None))
                    self._replace_peer(change.new, psks[change.name], now)
                    applied(change.new)
                    self._start_peer(change.new)
            for settings in plan.added:
                fd = self.host.add_tap(TapPlan(settings.tap, isolated=new.mode == "mesh"))
                peer = fwd.device.add_peer(peer_config(settings, psks[settings.name]), now)
                fwd.ports[peer] = self.make_port(peer, settings.tap, fd)
                applied(settings)
                self._start_peer(settings)
        except BaseException:
            self._commit(dataclasses.replace(self.config, peers=tuple(running.values())),
                         self.private, running_psks)
            raise
        finally:
            fwd.wake_timers.set()  # deadlines moved (and maybe the device)
        self.book.retain(p.public_key for p in new.peers)
        self.remember_endpoints(now)

    def _replace_peer(self, settings: PeerSettings, psk: bytes | None, now: float) -> None:
        """A new core peer on the same tap: a new handshake, the old sessions'
        native keys zeroed (``retire_peer``)."""
        fwd = self.fwd
        old = self.port_of(settings.name)
        del fwd.ports[old.peer]
        retire_peer(fwd.device, old.peer)
        peer = fwd.device.add_peer(peer_config(settings, psk), now)
        fwd.ports[peer] = self.make_port(peer, old.tap, old.fd)

    async def _new_identity(self, new: UpConfig, private: bytes, psks: Psks,
                            now: float) -> None:
        """A new private key: a new device, every staying peer re-created on its tap."""
        fwd = self.fwd
        staying = [p for p in new.peers if p.name in self._peer_tasks]
        await self._stop(self._socket_task)
        for name in list(self._peer_tasks):
            await self._stop(self._peer_tasks.pop(name))
        old_device = fwd.device
        old_ports = {port.peer.name: port for port in fwd.ports.values()}
        ok = False
        try:
            fwd.device = Device(DeviceConfig(private_key=private, wan_mtu=new.wan_mtu),
                                now=now, wall_clock=time.time(),
                                session_factory=old_device.session_factory)
            fwd.ports.clear()
            for settings in staying:
                old = old_ports[settings.name]
                peer = fwd.device.add_peer(peer_config(settings, psks[settings.name]), now)
                fwd.ports[peer] = self.make_port(peer, old.tap, old.fd)
            for peer in list(old_device.peers.values()):
                retire_peer(old_device, peer)
            self.private = private
            ok = True
        except BaseException:
            fwd.device = old_device
            fwd.ports.clear()
            fwd.ports.update({port.peer: port for port in old_ports.values()})
            raise
        finally:
            self._socket_task = self._spawn(fwd.wan_to_tap)
            settings_of = {p.name: p for p in (new.peers if ok else self.config.peers)}
            for peer in list(fwd.ports):
                self._start_peer(settings_of[peer.name])
