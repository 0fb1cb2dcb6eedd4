"""`bridger up`: the Trio I/O shell around the protocol core.

Outbound and inbound flow:

1. Host setup (bridger.host) gives a non-blocking tap fd; a UDP socket is
   bound on the listen port (dual-stack where the kernel allows).
2. ``_tap_to_wan``: drain the tap until EAGAIN (bounded batch), count each
   frame, hand it to ``Tunnel.send_frame`` and send the datagrams it returns.
   With the fast path (bridger.fastpath) a read may be a TCP superframe: it is
   cut into segments that each fit one datagram, their checksums left partial;
   datagrams of one size leave in one UDP_SEGMENT ``sendmsg``.
3. ``_wan_to_tap``: drain the UDP socket the same way (UDP_GRO: one receive
   may hold many datagrams), feed each datagram to ``Tunnel.receive_datagram``,
   write delivered frames to the tap (fast path: TCP segments re-joined into
   superframes, partial checksums left to the kernel), send any replies
   (handshake responses, keepalives).
4. ``_timers``: sleep until ``Tunnel.next_deadline()``, then ``tick``; woken
   early when a data path moved the deadline.
5. ``_resolver``: resolves a peer DNS name off the data path, again when the
   peer goes silent (dynamic DNS); failures are logged and retried.
6. Control socket, dashboard or log lines, metrics: they only sample
   ``Counters`` and ``Tunnel.stats()``; the data plane never waits for them.

Every task runs in one nursery; SIGINT/SIGTERM cancel it, and leaving the
``HostSession`` context restores the host network.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from bridger.config import UpConfig
from bridger.errors import BridgerError, ConfigError
from bridger.fastpath import udp as fast_udp
from bridger.fastpath.segment import (
    MAX_SYN_FRAME,
    SegmentError,
    clamp_mss,
    coalesce,
    segment_tcp,
)
from bridger.fastpath.vnet import VNET_HDR_LEN, GsoType, VnetError, decode_vnet_hdr_untrusted
from bridger.keys import read_private_key_file
from bridger.protocol import (
    EndpointChanged,
    Event,
    HandshakeCompleted,
    HandshakeGaveUp,
    HandshakeInitiated,
    Output,
    PathMtuChanged,
    PeerUnreachable,
    SessionExpired,
    Tunnel,
    TunnelConfig,
)
from bridger.protocol.checksum import complete_checksum
from bridger.status.counters import Counters, LinkInfo

log = logging.getLogger("bridger")

#: Frames or datagrams handled per wake-up before yielding to other tasks.
BATCH = 128
#: Largest datagram, frame or (fast path) superframe plus virtio-net header read in one call.
READ_SIZE = 65536 + 1024
#: TSO superframe types the fast path segments (ECN bit masked off).
_TCP_GSO = (GsoType.TCPV4, GsoType.TCPV6)
_GSO_NONE = int(GsoType.NONE)
_NEEDS_CSUM = 1
#: Seconds between re-resolutions of a peer name while the link is not up.
RESOLVE_RETRY = (2.0, 5.0, 10.0)
# Linux socket options missing from Python's socket module on some versions.
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
#: Set DF and ignore the kernel's path-MTU cache: the core fragments and probes itself.
PMTUDISC_PROBE = 3

#: The smallest outer header: a datagram this much under the path MTU should fit.
IPV4_UDP_HEADERS = 28

#: Seconds between drop summaries in the log.
DROP_SUMMARY_INTERVAL = 30.0

Address = tuple[str, int]


def normalise_address(sockaddr: tuple[Any, ...]) -> Address:
    """(host, port) with IPv4-mapped IPv6 unwrapped and scope kept for link-local."""
    host, port = sockaddr[0], sockaddr[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


@dataclass
class UdpEndpoint:
    """The tunnel's UDP socket, IPv6 dual-stack when possible, else IPv4."""

    sock: socket.socket
    dual_stack: bool
    listen: str
    #: Fast path: datagrams of one size leave in one sendmsg (UDP_SEGMENT).
    gso: bool = False
    #: Fast path: the kernel may join received datagrams (UDP_GRO).
    gro: bool = False

    @classmethod
    def bind(cls, port: int) -> UdpEndpoint:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            dual = True
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            dual = False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            # Outer packets must never be fragmented by IP: the core fragments itself.
            if dual:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, PMTUDISC_PROBE)
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, PMTUDISC_PROBE)
            sock.bind(("::" if dual else "0.0.0.0", port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"--listen: UDP port {port} is already in use") from exc
            raise BridgerError(f"cannot open UDP port {port}: {exc.strerror}") from exc
        sock.setblocking(False)
        return cls(sock, dual, f"{'[::]' if dual else '0.0.0.0'}:{port}")

    def sockaddr(self, addr: Address) -> tuple[Any, ...]:
        host, port = addr
        if self.dual_stack and ":" not in host:
            return ("::ffff:" + host, port)
        return (host, port)


class _SmallFrames:
    """Consecutive plain (non-superframe) tap frames with the same checksum
    state, sealed together by one ``Tunnel.send_frames`` call: the core then
    looks up the key, limits and timers once per run instead of per frame."""

    __slots__ = ("csum", "frames", "now", "out", "tunnel")

    def __init__(self, tunnel: Tunnel, now: float, out: Output) -> None:
        self.tunnel = tunnel
        self.now = now
        self.out = out
        self.frames: list[bytes] = []
        self.csum: tuple[int, int] | None = None

    def add(self, frame: bytes, csum: tuple[int, int] | None) -> None:
        if self.frames and csum != self.csum:
            self.flush()
        self.frames.append(frame)
        self.csum = csum

    def flush(self) -> None:
        """Seal the waiting frames into ``out``."""
        if self.frames:
            self.tunnel.send_frames(self.frames, self.now, self.out, self.csum)
            self.frames = []


@dataclass
class Daemon:
    """The running daemon's state shared by its tasks."""

    config: UpConfig
    tunnel: Tunnel
    counters: Counters
    udp: UdpEndpoint
    tap_fd: int
    host_info: dict[str, str]
    #: The tap carries a virtio-net header on every read and write.
    vnet: bool = False
    wake_timers: trio.Event = field(default_factory=trio.Event)
    timer_at: float = math.inf
    last_drop_log: dict[str, int] = field(default_factory=dict)

    # -- helpers -----------------------------------------------------------

    def _now(self) -> float:
        return float(trio.current_time())

    def _send_all(self, datagrams: list[tuple[bytes, Address]]) -> None:
        """Send without waiting; a full socket buffer is a counted drop (UDP may lose)."""
        if self.udp.gso and len(datagrams) > 1:
            self._send_gso(datagrams)
            return
        self._send_each(datagrams)

    def _send_gso(self, datagrams: list[tuple[bytes, Address]]) -> None:
        sock = self.udp.sock
        for group, addr, size in fast_udp.gso_batches(datagrams):
            if len(group) == 1:
                self._send_each([(group[0], addr)])
                continue
            try:
                sock.sendmsg(group, fast_udp.gso_cmsg(size), 0, self.udp.sockaddr(addr))
            except BlockingIOError:
                self.counters.drop("udp_send_blocked")
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    # The egress device cannot segment (no checksum offload): send singly.
                    log.warning("UDP GSO refused (%s): sending datagrams one by one",
                                exc.strerror)
                    self.udp.gso = False
                    self._send_each([(d, addr) for d in group])
                elif exc.errno == errno.EMSGSIZE:
                    self.counters.drop("udp_send_too_big")
                else:
                    self.counters.drop("udp_send_failed")

    def _send_each(self, datagrams: Iterable[tuple[bytes, Address]]) -> None:
        sock = self.udp.sock
        for data, addr in datagrams:
            try:
                sock.sendto(data, self.udp.sockaddr(addr))
            except BlockingIOError:
                self.counters.drop("udp_send_blocked")
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:
                    self.counters.drop("udp_send_failed")
                elif len(data) + IPV4_UDP_HEADERS <= self.tunnel.path_mtu:
                    self.counters.drop("udp_send_too_big")
                # else: a path-MTU probe beyond the current path MTU; its loss is the answer

    def _deliver(self, frames: list[bytes], csum: dict[int, tuple[int, int]], now: float) -> None:
        fd = self.tap_fd
        counters = self.counters
        if self.vnet:
            for hdr, frame, count, nbytes in coalesce(frames, csum):
                try:
                    os.writev(fd, (hdr, frame))
                except OSError:
                    counters.tap_write_failed()
                    continue
                counters.wan_to_lan(frame, now, count, nbytes)
            return
        for index, frame in enumerate(frames):
            meta = csum.get(index) if csum else None
            if meta is not None:
                frame = complete_checksum(frame, meta[0], meta[1])
            try:
                os.write(fd, frame)
            except OSError:
                counters.tap_write_failed()
                continue
            counters.wan_to_lan(frame, now)

    def _handle(self, out: Output, now: float) -> None:
        if out.datagrams:
            self._send_all(out.datagrams)
        if out.frames:
            self._deliver(out.frames, out.csum, now)
        for event in out.events:
            log_event(event)
        deadline = self.tunnel.next_deadline()
        if deadline is not None and deadline < self.timer_at:
            self.wake_timers.set()

    # -- tasks -------------------------------------------------------------

    def _from_tap(self, data: bytes, now: float, room: int, small: _SmallFrames) -> None:
        """Fast path: one tap read with its virtio-net header, maybe a TCP superframe.

        Plain frames wait in ``small`` so that a run of them is sealed in one
        ``send_frames`` call; a superframe first flushes them (order is kept).
        """
        try:
            hdr = decode_vnet_hdr_untrusted(data)
        except VnetError:
            self.counters.drop("tap_short_read")
            return
        frame = data[VNET_HDR_LEN:]
        counters = self.counters
        if hdr.gso_type == _GSO_NONE:
            partial = bool(hdr.flags & _NEEDS_CSUM)
            if len(frame) <= MAX_SYN_FRAME:
                clamped = clamp_mss(frame, room, partial)
                if clamped is not None:
                    frame = clamped
            counters.lan_to_wan(frame, now)
            small.add(frame, (hdr.csum_start, hdr.csum_offset) if partial else None)
            return
        small.flush()
        if hdr.gso_type & 0x7F not in _TCP_GSO:
            counters.drop("gso_unsupported")
            return
        try:
            segments, csum_start = segment_tcp(frame, hdr, room)
        except SegmentError:
            counters.drop("gso_malformed")
            return
        counters.lan_to_wan(segments[0], now, len(segments), sum(map(len, segments)))
        self.tunnel.send_frames(segments, now, small.out, (csum_start, 16))

    async def tap_to_wan(self) -> None:
        fd = self.tap_fd
        tunnel = self.tunnel
        counters = self.counters
        vnet = self.vnet
        while True:
            await trio.lowlevel.wait_readable(fd)
            now = self._now()
            small = _SmallFrames(tunnel, now, Output())
            room = tunnel.frame_room(csum=True)
            drained = False
            for _ in range(BATCH):
                try:
                    frame = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    drained = True
                    break
                except OSError as exc:
                    raise BridgerError(f"tap read failed: {exc.strerror}") from exc
                if vnet:
                    self._from_tap(frame, now, room, small)
                    if len(small.out.datagrams) + len(small.frames) >= BATCH:
                        small.flush()
                        self._handle(small.out, now)
                        small.out = Output()
                    continue
                counters.lan_to_wan(frame, now)
                tunnel.send_frame(frame, now, small.out)
            small.flush()
            self._handle(small.out, now)
            if not drained:  # wait_readable is a checkpoint too; a full batch yields here
                await trio.lowlevel.checkpoint()

    async def wan_to_tap(self) -> None:
        sock = self.udp.sock
        tunnel = self.tunnel
        gro = self.udp.gro
        split = fast_udp.split_gro
        cmsg_space = fast_udp.GRO_CMSG_SPACE
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = self._now()
            wall = time.time()
            out = Output()
            # Datagrams from one sender go to the core together, across reads:
            # without GRO (or when a path splits the sender's GSO batches) that
            # is still one core call per batch rather than per datagram.
            batch: list[bytes] = []
            batch_from: tuple[Any, ...] = ()
            drained = False
            for _ in range(BATCH):
                try:
                    if gro:
                        data, ancdata, _flags, sockaddr = sock.recvmsg(READ_SIZE, cmsg_space)
                    else:
                        data, sockaddr = sock.recvfrom(READ_SIZE)
                        ancdata = None
                except BlockingIOError:
                    drained = True
                    break
                except OSError:
                    # ICMP errors (port unreachable) surface here; the core's timers cope.
                    continue
                if sockaddr != batch_from and batch:
                    tunnel.receive_datagrams(batch, normalise_address(batch_from), now, wall, out)
                    batch = []
                batch_from = sockaddr
                if ancdata:
                    batch.extend(split(data, ancdata))
                else:
                    batch.append(data)
                if len(batch) + len(out.frames) >= BATCH:
                    tunnel.receive_datagrams(batch, normalise_address(batch_from), now, wall, out)
                    batch = []
                    self._handle(out, now)
                    out = Output()
            if batch:
                tunnel.receive_datagrams(batch, normalise_address(batch_from), now, wall, out)
            self._handle(out, now)
            if not drained:
                await trio.lowlevel.checkpoint()

    async def timers(self) -> None:
        while True:
            deadline = self.tunnel.next_deadline()
            self.timer_at = math.inf if deadline is None else deadline
            self.wake_timers = trio.Event()
            with trio.move_on_at(self.timer_at):
                await self.wake_timers.wait()
            now = self._now()
            if deadline is not None and now >= deadline:
                self._handle(self.tunnel.tick(now, time.time()), now)

    async def resolver(self, host: str, port: int) -> None:
        """Keep the peer endpoint current for a DNS name (or set a literal once)."""
        family = 0 if self.udp.dual_stack else socket.AF_INET
        attempt = 0
        while True:
            try:
                infos = await trio.socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
            except (socket.gaierror, OSError) as exc:
                delay = RESOLVE_RETRY[min(attempt, len(RESOLVE_RETRY) - 1)]
                log.warning("peer %s does not resolve (%s); retrying in %.0fs", host, exc, delay)
                attempt += 1
                await trio.sleep(delay)
                continue
            attempt = 0
            addrs = [normalise_address(info[4]) for info in infos]
            current = self.tunnel.endpoint
            if current not in addrs and addrs:
                if current is not None:
                    log.info("peer %s now resolves to %s", host, format_address(addrs[0]))
                now = self._now()
                self._handle(self.tunnel.set_endpoint(addrs[0], now), now)
            if is_ip_literal(host):
                return
            # Re-resolve while the link is not up (dynamic DNS); slowly otherwise.
            await trio.sleep(10.0 if self.tunnel.stats().state != "up" else 60.0)

    async def drop_summaries(self) -> None:
        """One log line per interval summarising drops, never one per packet."""
        while True:
            await trio.sleep(DROP_SUMMARY_INTERVAL)
            drops = self.snapshot()["drops"]
            delta = {k: v - self.last_drop_log.get(k, 0) for k, v in drops.items()}
            self.last_drop_log = dict(drops)
            changed = {k: v for k, v in delta.items() if v}
            if changed:
                text = ", ".join(f"{k}={v}" for k, v in sorted(changed.items()))
                log.info("drops in the last %.0fs: %s", DROP_SUMMARY_INTERVAL, text)

    def snapshot(self) -> dict[str, Any]:
        return self.counters.snapshot(link_info(self), self._now())


def setup_fast_path(daemon: Daemon) -> None:
    """Turn on the offloads this kernel has (BRIDGER_OFFLOAD=0: none); one log line."""
    from bridger.host.tap import IFF_VNET_HDR, enable_offloads, offload_requested, tap_flags

    if not offload_requested():
        log.info("fast path off (BRIDGER_OFFLOAD=0)")
        return
    udp = daemon.udp
    udp.gso = fast_udp.gso_supported(udp.sock)
    udp.gro = fast_udp.enable_gro(udp.sock)
    try:
        vnet = bool(tap_flags(daemon.tap_fd) & IFF_VNET_HDR)
    except OSError:
        vnet = False
    offloads = enable_offloads(daemon.tap_fd) if vnet else 0
    daemon.vnet = vnet
    names = [name for bit, name in ((1, "csum"), (2, "tso4"), (4, "tso6"), (8, "tso-ecn"))
             if offloads & bit]
    log.info(
        "fast path: tap %s, UDP GSO %s, UDP GRO %s",
        ("offloads " + ",".join(names)) if names else
        ("virtio-net header without offloads" if vnet else "without virtio-net header"),
        "on" if udp.gso else "unavailable", "on" if udp.gro else "unavailable",
    )


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True


def format_address(addr: Address | None) -> str | None:
    if addr is None:
        return None
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def link_info(daemon: Daemon) -> LinkInfo:
    """Fill the status module's LinkInfo from the core's stats."""
    now = daemon._now()
    stats = daemon.tunnel.stats(now)
    cfg = daemon.config

    def age(t: float | None) -> float | None:
        return None if t is None else max(0.0, now - t)

    return LinkInfo(
        state=stats.state,
        endpoint=format_address(stats.endpoint),
        peer_name=None if cfg.peer_host is None or is_ip_literal(cfg.peer_host) else cfg.peer_host,
        session_age=age(stats.session_established_at),
        last_handshake_age=age(stats.last_handshake_at),
        handshakes=stats.handshakes,
        rekeys=stats.rekeys,
        rtt_ms=None if stats.rtt is None else stats.rtt * 1000.0,
        path_mtu=stats.path_mtu,
        drops=dict(stats.drops),
        fragments={
            "sent": stats.fragments_sent,
            "received": stats.fragments_received,
            "reassembled": stats.reassembled,
            "in_progress": stats.reassembly_in_progress,
        },
        interface=daemon.host_info,
    )


def log_event(event: Event) -> None:
    """One line per meaningful protocol event (retries and cookies stay quiet)."""
    match event:
        case HandshakeCompleted(rekey=True):
            log.debug("rekeyed")
        case HandshakeCompleted(rtt=rtt):
            rtt_text = "" if rtt is None else f" (rtt {rtt * 1000:.1f} ms)"
            log.info("handshake complete: link up%s", rtt_text)
        case HandshakeInitiated(retry=False):
            log.info("handshake: contacting peer")
        case HandshakeGaveUp(after=after, frames_dropped=n):
            log.warning("peer unreachable: no handshake answer for %.0fs (%d frames dropped)",
                        after, n)
        case EndpointChanged(old=old, new=new):
            log.info("peer endpoint %s -> %s", format_address(old) or "unknown",
                     format_address(new))
        case PeerUnreachable(silent_for=silent):
            log.warning("peer silent for %.0fs: re-handshaking", silent)
        case SessionExpired():
            log.warning("session expired after long silence: link down")
        case PathMtuChanged(old=old_mtu, new=new_mtu):
            log.info("path MTU %d -> %d", old_mtu, new_mtu)
        case _:
            log.debug("%s", event)


def setup_logging(dashboard: bool) -> Any:
    """Log lines to stderr, or through the dashboard's console so they print above it.

    Returns that shared rich Console (or None without a dashboard).
    """
    console = None
    if dashboard:
        from rich.console import Console
        from rich.logging import RichHandler

        console = Console()
        handler: logging.Handler = RichHandler(
            console=console, show_path=False, rich_tracebacks=False
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s bridger: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("bridger")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    return console


def read_psk(path: Path | None) -> bytes | None:
    return None if path is None else read_private_key_file(path)


async def _serve(daemon: Daemon, console: Any) -> None:
    from bridger.status.control import control_path, serve_control

    cfg = daemon.config
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await nursery.start(serve_control, control_path(cfg.state_dir), daemon.snapshot)
            nursery.start_soon(daemon.tap_to_wan)
            nursery.start_soon(daemon.wan_to_tap)
            nursery.start_soon(daemon.timers)
            nursery.start_soon(daemon.drop_summaries)
            if cfg.peer_host is not None:
                nursery.start_soon(daemon.resolver, cfg.peer_host, cfg.peer_port)
            if console is not None:
                from bridger.status.dashboard import run_dashboard

                nursery.start_soon(partial(run_dashboard, daemon.snapshot, console=console))
            else:
                from bridger.status.dashboard import run_log_lines

                nursery.start_soon(partial(run_log_lines, daemon.snapshot, log=log))
            log.info(
                "up: %s + %s in bridge %s, listening on %s%s",
                cfg.lan, cfg.tap, cfg.bridge, daemon.udp.listen,
                f", peer {cfg.peer_host}:{cfg.peer_port}" if cfg.peer_host else
                ", waiting for the peer",
            )
            async for signum in signals:
                log.info("%s: stopping and restoring the host network", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def run_up(config: UpConfig) -> int:
    """Everything `bridger up` does after the config is valid.

    SIGINT/SIGTERM are only recorded (``StopSignals``) for the whole of it:
    during host set-up a signal rolls back, before the serve loop's own
    receiver exists it stops the Trio run at once, and the restore after the
    run is never cut short.
    """
    from bridger.host import HostPlan, StopSignals, bring_up, drop_privileges
    from bridger.host.tap import OFFLOAD_ENV, offload_requested

    with StopSignals() as stop:
        private = read_private_key_file(config.key_file)
        psk = read_psk(config.psk_file)
        dashboard = config.dashboard and sys.stdout.isatty()
        try:
            tunnel_config = TunnelConfig(
                private_key=private,
                peer_public_key=config.peer_public_key,
                psk=psk,
                persistent_keepalive=config.persistent_keepalive,
                wan_mtu=config.wan_mtu,
            )
        except ValueError as exc:
            raise ConfigError(f"tunnel settings: {exc}") from None
        # The taps get the value; setup_fast_path still reads the environment.
        offload = config.offload and offload_requested()
        if not offload:
            os.environ[OFFLOAD_ENV] = "0"
        console = setup_logging(dashboard)
        udp = UdpEndpoint.bind(config.listen)
        try:
            plan = HostPlan(
                lan=config.lan, bridge=config.bridge, tap=config.tap,
                state_dir=config.state_dir, stp=config.stp, offload=offload,
            )
            with bring_up(plan, interrupted=stop.check) as host:
                metrics_hostport = config.metrics
                counters = Counters()

                def build_daemon() -> Daemon:
                    now = float(trio.current_time())
                    tunnel = Tunnel(tunnel_config, now=now, wall_clock=time.time())
                    return Daemon(
                        config=config, tunnel=tunnel, counters=counters, udp=udp,
                        tap_fd=host.tap_fd,
                        host_info={
                            "lan": config.lan, "bridge": host.bridge_name,
                            "tap": host.tap_name, "listen": udp.listen,
                        },
                    )

                async def main() -> None:
                    # A signal before _serve's receiver exists reaches StopSignals:
                    # it cancels this scope (run_sync_soon is signal-safe).
                    token = trio.lowlevel.current_trio_token()
                    with trio.CancelScope() as scope, stop.notify(
                        lambda: token.run_sync_soon(scope.cancel)
                    ):
                        if stop.received:
                            return
                        daemon = build_daemon()
                        setup_fast_path(daemon)
                        if metrics_hostport:
                            from bridger.status.metrics import start_metrics_server

                            start_metrics_server(metrics_hostport, daemon.snapshot)
                        # From here on only the tap fd, the UDP socket and the restore
                        # are needed.
                        drop_privileges()
                        await _serve(daemon, console)

                trio.run(main, restrict_keyboard_interrupt_to_checkpoints=True)
                if stop.first is not None:
                    log.info("%s: stopping and restoring the host network", stop.first.name)
        finally:
            udp.sock.close()
    log.info("down: host network restored")
    return 0
