"""One site twice, pure Python and native, fed the same tap reads and datagrams.

``Twin`` builds site A as two forwarders with identical keys, random streams
and so identical handshakes: ``ref`` runs the pure-Python data path, ``nat``
the native lane (sessions shared with its core; the lane's per-read steps are
driven here by hand, as its loop would, and whatever it hands over goes to
the real ``NativeLane._handle``).  Site B is a plain core that seals what A
receives.  Taps are SOCK_SEQPACKET socketpairs (one message per frame), the
WAN is real UDP on loopback.  Everything runs in one Trio run with a mock
clock; the lane's own clock is the monotonic one offset to Trio's.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass, field
from typing import Any

from bridger.dataplane.accounting import Counters
from bridger.guard.policy import Guard, GuardConfig
from bridger.native import lane as native
from bridger.native.contract import TapPunt, take_punts
from bridger.protocol import Device, DeviceConfig, Output, Peer, PeerConfig
from bridger.shell.forward import Forwarder
from bridger.shell.lane import NativeLane
from bridger.shell.port import Port
from bridger.shell.udp import UdpEndpoint
from tests.protocol.simnet import WALL_EPOCH, keypair

LOCALHOST = "127.0.0.1"


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCALHOST, 0))
    sock.setblocking(False)
    return sock


def _tap() -> tuple[int, socket.socket]:
    """A fake tap: our end's fd for the port, and the far end (the kernel's side)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.setblocking(False)
    return ours.detach(), theirs


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(1 << 17))
        except BlockingIOError:
            return out


@dataclass
class Side:
    """One forwarder of site A."""

    fwd: Forwarder
    peer: Peer
    port: Port
    tap: socket.socket  # the far end of the port's fake tap
    wan: socket.socket  # site B's socket this side talks to
    lane: NativeLane | None = None
    ident: int = -1
    handovers: int = 0

    def tap_reads(self, reads: list[bytes]) -> None:
        """Frames the kernel hands this side's tap, then one pass per read as the
        forwarding loop would (both paths drain the fd until EAGAIN)."""
        for data in reads:
            self.tap.send(data)
        if self.lane is None:
            while not self.fwd.tap_pass(self.port):
                pass
            return
        lane = self.lane.lane
        fd = self.port.fd
        while True:  # pump_tap
            try:
                data = os.read(fd, 1 << 17)
            except BlockingIOError:
                break
            if lane.tap_read(self.ident, data):
                continue
            lane.flush_tx(self.ident)  # what came before leaves first
            self.handovers += 1
            with self.lane.held():
                self.lane._handle([TapPunt(self.ident, data)])
        lane.flush_tx(self.ident)

    def datagrams(self, datagrams: list[bytes], one_by_one: bool,
                  sender: socket.socket | None = None) -> None:
        """Datagrams from site B's socket (or ``sender``) for this side, received
        together (one batch) or each in a receive of its own."""
        source = self.wan if sender is None else sender
        groups = [[d] for d in datagrams] if one_by_one else [datagrams]
        for group in groups:
            for d in group:
                source.sendto(d, (LOCALHOST, self.fwd.udp.sock.getsockname()[1]))
            if self.lane is None:
                while not self.fwd.udp_pass():
                    pass
                continue
            # The lane's loop would read these from the socket; here they are
            # taken off it and given to its receive step in one go.
            got = _recv_all(self.fwd.udp.sock, len(group))
            addr = self.fwd.udp.sockaddr(source.getsockname()[:2])
            lane = self.lane.lane
            while got:
                n = lane.udp_receive(got, addr)
                got = got[n:]
                punts = take_punts(lane)  # the socket handed over, or handshakes queued
                if punts:
                    self.handovers += -1 in lane.held
                    with self.lane.held():
                        self.lane._handle(punts)

    def sync(self) -> None:
        if self.lane is not None:
            with self.lane.held():
                self.lane.sync(self.fwd.now())


def _recv_all(sock: socket.socket, n: int) -> list[bytes]:
    import select

    out: list[bytes] = []
    while len(out) < n:
        select.select([sock], [], [], 1.0)
        try:
            out.append(sock.recv(1 << 17))
        except BlockingIOError:
            continue
    return out


@dataclass
class Twin:
    """Site A as ``ref`` (pure Python) and ``nat`` (native lane), and site B."""

    guard: GuardConfig | None = field(default_factory=GuardConfig)
    vnet: bool = True
    seed: int = 1
    wan_mtu: int = 1500
    #: The taps take UDP_L4 superframes (runs of UDP datagrams are joined).
    udp_join: bool = False
    #: Counters' MAC tables (the guards' ``known`` is the peer's remote table).
    mac_table: int = 1024

    def __post_init__(self) -> None:
        assert native is not None
        rng = random.Random(self.seed)
        (a_priv, a_pub), (b_priv, b_pub) = keypair(rng), keypair(rng)
        self.b = Device(DeviceConfig(b_priv, wan_mtu=self.wan_mtu, pmtu_probing=False), now=0.0,
                        wall_clock=WALL_EPOCH, random_bytes=random.Random(7).randbytes)
        self.b_sock = _udp()
        self.ref = self._side(a_priv, b_pub, None)
        self.nat = self._side(a_priv, b_pub, native)
        self.b_peer = self.b.add_peer(PeerConfig(a_pub, endpoint=None, persistent_keepalive=0,
                                                 name="a"), 0.0)
        self._handshake()

    def _side(self, private: bytes, b_pub: bytes, module: Any) -> Side:
        device = Device(DeviceConfig(private, wan_mtu=self.wan_mtu, pmtu_probing=False), now=0.0,
                        wall_clock=WALL_EPOCH, random_bytes=random.Random(11).randbytes,
                        session_factory=None if module is None else module.Session)
        wan = _udp()
        peer = device.add_peer(PeerConfig(b_pub, endpoint=(LOCALHOST, wan.getsockname()[1]),
                                          persistent_keepalive=0, name="b"), 0.0)
        udp = UdpEndpoint.bind(0)
        counters = Counters(self.mac_table)
        fwd = Forwarder(device=device, udp=udp, counters=counters)
        fd, tap = _tap()
        pc = counters.peer("b")
        guard = None if self.guard is None else Guard(self.guard, "b", None,
                                                       known=pc.remote_macs)
        port = Port(peer=peer, counters=pc, tap="tap-b", fd=fd, vnet=self.vnet, guard=guard,
                    udp_join=self.udp_join and self.vnet)
        fwd.ports[peer] = port
        side = Side(fwd, peer, port, tap, wan)
        if module is not None:
            side.lane = NativeLane(fwd, module)
            fwd.lane = side.lane
            side.ident = side.lane.add_port(port)
        return side

    def _handshake(self) -> None:
        """A initiates (both copies send the same initiation); B answers once;
        both copies take the answer and confirm with the same keepalive."""
        outs = []
        for side in (self.ref, self.nat):
            out = Output()
            side.peer.initiate(0.0, out)
            outs.append([d for d, _ in out.datagrams])
        assert outs[0] == outs[1]
        a_addr = (LOCALHOST, 9)
        answer = self.b.receive_datagrams(outs[0], a_addr, 0.0, WALL_EPOCH)
        confirms = []
        for side in (self.ref, self.nat):
            out = side.fwd.device.receive_datagrams(
                [d for d, _ in answer.datagrams], (LOCALHOST, side.wan.getsockname()[1]), 0.0,
                WALL_EPOCH)
            confirms.append([d for d, _ in out.datagrams])
        assert confirms[0] == confirms[1]
        self.b.receive_datagrams(confirms[0], a_addr, 0.0, WALL_EPOCH)
        assert self.b_peer.current is not None and self.ref.peer.current is not None
        self.nat.lane.push(0.0)  # type: ignore[union-attr]

    def new_port(self, side: Side, name: str) -> tuple[Port, socket.socket]:
        """A reload's new peer (another site, another key) on ``side``, with its
        own fake tap: its port and the tap's far end."""
        rng = random.Random(name)
        _priv, pub = keypair(rng)
        wan = _udp()
        peer = side.fwd.device.add_peer(PeerConfig(pub, endpoint=(LOCALHOST, wan.getsockname()[1]),
                                                   persistent_keepalive=0, name=name), 0.0)
        wan.close()
        fd, tap = _tap()
        pc = side.fwd.counters.peer(name)
        guard = None if self.guard is None else Guard(self.guard, name, None,
                                                       known=pc.remote_macs)
        port = Port(peer=peer, counters=pc, tap=f"tap-{name}", fd=fd, vnet=self.vnet,
                    guard=guard, udp_join=self.udp_join and self.vnet)
        side.fwd.ports[peer] = port
        return port, tap

    def seal_from_b(self, frames: list[bytes], csum: tuple[int, int] | None = None) -> list[bytes]:
        """Datagrams site B's core seals for ``frames``."""
        out = Output()
        self.b_peer.send_frames(frames, 0.0, out, csum)
        return [d for d, _ in out.datagrams]

    def close(self) -> None:
        for side in (self.ref, self.nat):
            if side.lane is not None:
                side.lane.remove_port(side.port)
                side.lane.lane.close()
            side.fwd.udp.sock.close()
            os.close(side.port.fd)
            side.tap.close()
            side.wan.close()
        self.b_sock.close()


def peer_figures(peer: Peer) -> dict[str, Any]:
    """A peer's counters, without times."""
    s = peer.stats()
    return {k: v for k, v in s.__dict__.items()
            if k not in ("session_established_at", "last_handshake_at", "rtt", "endpoint")}


def counter_figures(fwd: Forwarder) -> dict[str, Any]:
    """The status document's peer counters, without times."""
    from bridger.status.document import DeviceInfo, PeerInfo, status_document

    b = PeerInfo(name="b", public_key="")
    snap = status_document(fwd.counters.snapshot(0.0), DeviceInfo(), [b])
    peer = snap["peers"][0]

    def rows(table: dict[str, Any]) -> list[tuple[Any, ...]]:
        return sorted((r["mac"], r["frames"], r["bytes"]) for r in table["top"])

    return {"frames": peer["frames"], "bytes": peer["bytes"], "kinds": peer["kinds"],
            "drops": peer["drops"], "remote": rows(peer["macs"]["remote"]),
            "local": rows(snap["macs"]["local"])}


def timer_shape(peer: Peer) -> tuple[bool, ...]:
    t = peer.timers
    return (t.new_handshake is not None, t.send_keepalive is not None,
            t.persistent_keepalive is not None, t.retransmit_handshake is not None)
