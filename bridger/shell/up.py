"""`bridger up`: orchestration around the data plane.

1. Keys are read and the core (one ``Device``, one ``Peer`` per configured
   peer) is checked before the host is touched: a bad key or config is one line
   and the host stays as it was.
2. SIGINT/SIGTERM are only recorded (``StopSignals``) for the whole of `up`:
   during host set-up a signal rolls back, before the serve loop's own receiver
   exists it stops the Trio run at once, and the restore after the run is
   never cut short.
3. The UDP socket is bound, then the host set up (bridge, one tap per peer;
   in mode "mesh" the taps are isolated bridge ports: split horizon in the
   kernel), then privileges dropped.
4. The Trio run: the control socket, the forwarding tasks (one per tap, one for
   the socket, the timers), the resolvers, the dashboard or log lines. An error
   in any task ends the run with one line for the user; leaving the host
   session restores the host network.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import signal
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from bridger.config import PeerSettings, UpConfig, is_ip_literal
from bridger.errors import BridgerError, ConfigError
from bridger.guard.loop import LoopDetector
from bridger.guard.policy import Guard
from bridger.keys import encode_key, read_private_key_file
from bridger.protocol import Device, DeviceConfig, Peer, PeerConfig
from bridger.service.notify import Notifier
from bridger.shell.forward import Forwarder
from bridger.shell.port import Port
from bridger.shell.udp import UdpEndpoint, format_address
from bridger.status.counters import KERNEL_DROP_REASON, Counters, DeviceInfo, PeerInfo

if TYPE_CHECKING:
    from bridger.host.storm import KernelStorm

log = logging.getLogger("bridger")

#: Seconds between drop summaries in the log.
DROP_SUMMARY_INTERVAL = 30.0
#: The per-packet implementations (shown in status and the start-up line).
NATIVE, PYTHON = "native", "python"


def native_module(config: UpConfig) -> Any:
    """The native extension when the config's data path uses it, else None
    (the config's validation refused "native" where it is not built)."""
    if config.data_path == PYTHON:
        return None
    from bridger import native

    return native.lane


#: Each peer's PSK, by peer name.
Psks = dict[str, bytes | None]


def read_keys(config: UpConfig) -> tuple[bytes, Psks]:
    """This site's private key and each peer's PSK (one-line errors)."""
    psks = {p.name: None if p.psk_file is None else read_private_key_file(p.psk_file)
            for p in config.peers}
    return read_private_key_file(config.key_file), psks


def peer_config(settings: PeerSettings, psk: bytes | None) -> PeerConfig:
    """The core's view of one configured peer."""
    endpoint = None
    if settings.host is not None and is_ip_literal(settings.host):
        endpoint = (settings.host, settings.port)
    return PeerConfig(public_key=settings.public_key, psk=psk, endpoint=endpoint,
                      persistent_keepalive=settings.persistent_keepalive, name=settings.name)


def build_core(
    config: UpConfig, private: bytes, psks: Psks, now: float, wall_clock: float,
    session_factory: Any = None,
) -> tuple[Device, list[Peer]]:
    """The device and its peers, from a validated config (``session_factory``:
    the native lane's Session type, so that the lane shares every keypair)."""
    try:
        device = Device(DeviceConfig(private_key=private, wan_mtu=config.wan_mtu),
                        now=now, wall_clock=wall_clock, session_factory=session_factory)
        peers = [device.add_peer(peer_config(s, psks[s.name]), now) for s in config.peers]
    except ValueError as exc:
        raise ConfigError(f"tunnel settings: {exc}") from None
    return device, peers


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
        return fwd.counters.snapshot(device, [self._peer_info(p, now) for p in fwd.ports], now)

    def _peer_info(self, peer: Peer, now: float) -> PeerInfo:
        stats = peer.stats(now)
        port = self.fwd.ports[peer]

        def age(t: float | None) -> float | None:
            return None if t is None else max(0.0, now - t)

        drops = dict(stats.drops)
        if self.storm is not None:
            drops[KERNEL_DROP_REASON] = self.storm.drops.get(port.tap, 0)

        return PeerInfo(
            name=peer.name,
            public_key=encode_key(peer.public_key),
            state=stats.state,
            host=self._hosts.get(peer.name),
            tap=port.tap,
            endpoint=format_address(stats.endpoint),
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


def prepare_port(port: Port, offload: bool) -> int:
    """The fast-path flags of one tap; returns the offloads granted."""
    from bridger.host.tap import IFF_VNET_HDR, enable_offloads, takes_udp_superframes, tap_flags

    if not offload:
        return 0
    try:
        port.vnet = bool(tap_flags(port.fd) & IFF_VNET_HDR)
    except OSError:
        port.vnet = False
    granted = enable_offloads(port.fd) if port.vnet else 0
    port.udp_join = takes_udp_superframes(port.fd, granted)
    return granted


def data_path(fwd: Forwarder) -> str:
    return PYTHON if fwd.lane is None else NATIVE


def setup_fast_path(fwd: Forwarder, offload: bool, path: str = PYTHON) -> None:
    """Turn on the offloads this kernel has (none if ``offload`` is off); one log
    line, naming the data path (``path``) too."""
    if not offload:
        log.info("data path: %s; fast path off (offload = false)", path)
        return
    fwd.udp.enable_offloads()
    granted = 0
    vnet = udp_join = False
    for port in fwd.ports.values():
        offloads = prepare_port(port, offload)
        if port.vnet:
            vnet = True
            granted = offloads
            udp_join = port.udp_join
    names = [name for bit, name in ((1, "csum"), (2, "tso4"), (4, "tso6"), (8, "tso-ecn"))
             if granted & bit] + (["udp-joins"] if udp_join else [])
    log.info(
        "data path: %s; fast path: tap %s, UDP GSO %s, UDP GRO %s", path,
        ("offloads " + ",".join(names)) if names else
        ("virtio-net header without offloads" if vnet else "without virtio-net header"),
        "on" if fwd.udp.gso else "unavailable", "on" if fwd.udp.gro else "unavailable",
    )


async def serve(daemon: Daemon, console: Any, live: Any) -> None:
    from bridger.status.control import control_path, serve_control

    cfg = daemon.config
    fwd = daemon.fwd
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            await nursery.start(serve_control, control_path(cfg.state_dir), daemon.snapshot)
            live.start(nursery)
            nursery.start_soon(fwd.timers)
            nursery.start_soon(daemon.drop_summaries)
            if console is not None:
                from bridger.status.dashboard import run_dashboard

                nursery.start_soon(partial(run_dashboard, daemon.snapshot, console=console))
            else:
                from bridger.status.dashboard import run_log_lines

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
    of a gateway's RSS: config parsing, netlink dumps, the host plan)."""
    import ctypes
    import gc

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


def run_up(config: UpConfig, reread: Callable[[], UpConfig] | None = None) -> int:
    """Everything `bridger up` does after the config is valid.

    ``reread`` reads and validates the config again (SIGHUP, ``systemctl reload``).
    """
    from bridger.status.logs import shutdown_logging

    try:
        return _run_up(config, reread)
    finally:
        shutdown_logging()  # the last lines are written before the CLI's own error line


def _run_up(config: UpConfig, reread: Callable[[], UpConfig] | None) -> int:
    from bridger.host import HostPlan, StopSignals, TapPlan, bring_up, drop_privileges
    from bridger.host.storm import StormBudget
    from bridger.service.live import Live
    from bridger.status.logs import setup_logging

    notifier = Notifier.from_env()
    # SIGHUP's default action ends the process: ignored until serve receives it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # A watchdog kill (SIGABRT) leaves every thread's traceback in the journal.
    faulthandler.enable()

    with StopSignals() as stop:
        private, psks = read_keys(config)
        build_core(config, private, psks, 0.0, time.time())  # checked before the host is touched
        native = native_module(config)
        dashboard = config.dashboard and sys.stdout.isatty()
        console = setup_logging(dashboard)
        udp = UdpEndpoint.bind(config.listen)
        isolated = config.mode == "mesh"
        failure: BaseException | None = None
        try:
            plan = HostPlan(
                lan=config.lan, bridge=config.bridge,
                taps=tuple(TapPlan(p.tap, isolated=isolated) for p in config.peers),
                state_dir=config.state_dir, stp=config.stp, offload=config.offload,
                storm=StormBudget.of(config.guard.flood_rate, config.guard.burst,
                                     config.guard.nd_share),
            )
            with bring_up(plan, interrupted=stop.check) as host:
                async def main() -> None:
                    # A signal before serve's receiver exists reaches StopSignals:
                    # it cancels this scope (run_sync_soon is signal-safe).
                    token = trio.lowlevel.current_trio_token()
                    with trio.CancelScope() as scope, stop.notify(
                        lambda: token.run_sync_soon(scope.cancel)
                    ):
                        if stop.received:
                            return
                        now = float(trio.current_time())
                        device, peers = build_core(
                            config, private, psks, now, time.time(),
                            None if native is None else native.Session,
                        )
                        counters = Counters()
                        gc = config.guard
                        detector = (LoopDetector(vlans=gc.vlans, untagged=gc.untagged)
                                    if gc.loop_protection else None)
                        fwd = Forwarder(device=device, udp=udp, counters=counters,
                                        detector=detector)

                        def make_port(peer: Peer, tap: str, fd: int) -> Port:
                            """A peer's port: at start, and when a reload adds or re-creates it."""
                            peer_counters = counters.peer(peer.name)
                            return Port(
                                peer=peer, counters=peer_counters, tap=tap, fd=fd,
                                guard=Guard(
                                    gc, peer.name, detector, known=peer_counters.remote_macs,
                                    flaps=None if detector is None else detector.flaps,
                                    lan_side=config.mode == "mesh",
                                ),
                            )

                        def make_live_port(peer: Peer, tap: str, fd: int) -> Port:
                            port = make_port(peer, tap, fd)
                            prepare_port(port, config.offload)
                            return port

                        for settings, peer in zip(config.peers, peers, strict=True):
                            fwd.ports[peer] = make_port(peer, settings.tap,
                                                        host.taps[settings.tap])
                        setup_fast_path(fwd, config.offload,
                                        PYTHON if native is None else NATIVE)
                        if native is not None:
                            from bridger.shell.lane import NativeLane

                            fwd.lane = NativeLane(fwd, native)
                        daemon = Daemon(config, fwd, {
                            "lan": config.lan, "bridge": host.bridge_name,
                            "listen": udp.listen,
                        }, storm=host.storm)

                        live = Live(
                            config, private, psks, fwd, host, notifier, reread=reread,
                            make_port=make_live_port, on_config=daemon.set_config,
                        )
                        lives.append(live)
                        live.remember_endpoints(now)
                        if config.metrics:
                            from bridger.status.metrics import start_metrics_server

                            start_metrics_server(config.metrics, daemon.snapshot)
                        # From here on only the taps, the UDP socket and the restore
                        # are needed.
                        drop_privileges()
                        await serve(daemon, console, live)

                lives: list[Any] = []
                try:
                    trio.run(main, restrict_keyboard_interrupt_to_checkpoints=True)
                except BaseExceptionGroup as group:
                    failure = _one_error(group)
                finally:
                    # Before the host is restored (leaving bring_up).
                    if lives:
                        lives[0].stopping()
                    else:
                        notifier.stopping()
                if stop.first is not None:
                    log.info("%s: stopping and restoring the host network", stop.first.name)
        finally:
            udp.sock.close()
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
