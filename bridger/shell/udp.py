"""The device's one UDP socket: bind (dual-stack where possible), send without
waiting (a full buffer or an error is a counted drop), the kernel's path-MTU
news from its error queue, address forms."""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bridger.dataplane.accounting import Counters
from bridger.errors import BridgerError, ConfigError
from bridger.fastpath import udp as fast_udp
from bridger.protocol import Address

log = logging.getLogger("bridger")

# Linux socket options missing from Python's socket module on some versions.
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
#: Set DF and ignore the kernel's path-MTU cache: the core fragments and probes itself.
PMTUDISC_PROBE = 3
#: Queue ICMP errors (and local ones) for the socket: the kernel's path-MTU news.
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
#: ``sock_extended_err.ee_origin`` (linux/errqueue.h).
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
#: struct sock_extended_err: errno, origin, type, code, pad, info, data.
EXTENDED_ERR = struct.Struct("=IBBBBII")
#: Error-queue entries read per pass at most (forged ICMP cannot hold the loop).
MAX_ERRORS_PER_PASS = 64
#: The smallest outer header: a datagram this much under the path MTU should fit.
IPV4_UDP_HEADERS = 28


def normalise_address(sockaddr: tuple[Any, ...]) -> Address:
    """(host, port) with IPv4-mapped IPv6 unwrapped and scope kept for link-local."""
    host, port = sockaddr[0], sockaddr[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


def format_address(addr: Address | None) -> str | None:
    if addr is None:
        return None
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    #: ICMP errors are queued on the socket (IP_RECVERR): read them with
    #: :meth:`kernel_mtu_reports`.
    recverr: bool = False

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
        recverr = True
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            if dual:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        except OSError:
            recverr = False  # path MTU from probes alone
        return cls(sock, dual, f"{'[::]' if dual else '0.0.0.0'}:{port}", recverr=recverr)

    def kernel_mtu_reports(self) -> list[tuple[Address, int, bool]]:
        """Drain the error queue: for each path-MTU error, (the destination of the
        datagram it is about, the MTU the kernel names, whether the local
        interface refused it: EMSGSIZE) rather than a router's ICMP "fragmentation
        needed" / "packet too big".  Other errors (port unreachable...) are
        dropped here; the core's timers cope with a silent peer."""
        reports: list[tuple[Address, int, bool]] = []
        if not self.recverr:
            return reports
        for _ in range(MAX_ERRORS_PER_PASS):
            try:
                _data, ancdata, _flags, sockaddr = self.sock.recvmsg(
                    0, 256, socket.MSG_ERRQUEUE)
            except OSError:  # EAGAIN: the queue is empty
                break
            for level, kind, data in ancdata:
                if (level, kind) not in ((socket.IPPROTO_IP, IP_RECVERR),
                                         (socket.IPPROTO_IPV6, IPV6_RECVERR)):
                    continue
                if len(data) < EXTENDED_ERR.size or not sockaddr:
                    continue
                err, origin, _type, _code, _pad, info, _ = EXTENDED_ERR.unpack_from(data)
                if err != errno.EMSGSIZE or not 0 < info <= 65535:
                    continue
                if origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6, SO_EE_ORIGIN_LOCAL):
                    reports.append((normalise_address(sockaddr), info,
                                    origin == SO_EE_ORIGIN_LOCAL))
        return reports

    def enable_offloads(self) -> None:
        self.gso = fast_udp.gso_supported(self.sock)
        self.gro = fast_udp.enable_gro(self.sock)

    def sockaddr(self, addr: Address) -> tuple[Any, ...]:
        host, port = addr
        if self.dual_stack and ":" not in host:
            return ("::ffff:" + host, port)
        return (host, port)


def _retry_stale(send: Callable[..., int], *args: Any) -> int:
    """``send(*args)``, once more if it failed other than for a full buffer: with
    IP_RECVERR an ICMP error that came for an earlier datagram (a path-MTU
    probe's "fragmentation needed", a "port unreachable") is returned by the
    next send on the socket and aborts it; the second answer is the real one."""
    try:
        return send(*args)
    except BlockingIOError:
        raise
    except OSError:
        return send(*args)


class Sender:
    """Sends datagrams without waiting; a full socket buffer or an error is a
    counted drop (UDP may lose). ``path_mtu`` tells, for a refused datagram,
    the path MTU the core believes in for that address: a datagram beyond it
    is a path-MTU probe whose loss is its answer, not a drop."""

    def __init__(
        self, udp: UdpEndpoint, counters: Counters, path_mtu: Callable[[Address], int]
    ) -> None:
        self.udp = udp
        self.counters = counters
        self.path_mtu = path_mtu

    def send(self, datagrams: list[tuple[bytes, Address]]) -> None:
        if self.udp.gso and len(datagrams) > 1:
            self._send_gso(datagrams)
        else:
            self._send_each(datagrams)

    def _send_gso(self, datagrams: list[tuple[bytes, Address]]) -> None:
        sock = self.udp.sock
        for group, addr, size in fast_udp.gso_batches(datagrams):
            if len(group) == 1 or (len(group) == 2 and len(group[1]) != size):
                # One size alone gains nothing from GSO; and probes of different
                # sizes (a path-MTU search) must each meet the path on their
                # own, where a router would judge a GSO batch by its largest.
                self._send_each([(d, addr) for d in group])
                continue
            try:
                _retry_stale(sock.sendmsg, group, fast_udp.gso_cmsg(size), 0,
                             self.udp.sockaddr(addr))
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
                    # One of them is too big for the path (a path-MTU probe that
                    # shares the group's size): send singly, so the others still
                    # leave and each refusal is judged on its own.
                    self._send_each([(d, addr) for d in group])
                else:
                    self.counters.drop("udp_send_failed")

    def _send_each(self, datagrams: Iterable[tuple[bytes, Address]]) -> None:
        sock = self.udp.sock
        for data, addr in datagrams:
            try:
                _retry_stale(sock.sendto, data, self.udp.sockaddr(addr))
            except BlockingIOError:
                self.counters.drop("udp_send_blocked")
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    self._too_big(len(data), addr)
                else:
                    self.counters.drop("udp_send_failed")

    def _too_big(self, size: int, addr: Address) -> None:
        if size + IPV4_UDP_HEADERS <= self.path_mtu(addr):
            self.counters.drop("udp_send_too_big")
        # else: a path-MTU probe beyond the current path MTU; its loss is the answer
