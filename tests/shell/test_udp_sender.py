"""The shell's UDP sender: GSO groups, refusals judged per datagram."""

from __future__ import annotations

import errno
from typing import Any

from bridger.dataplane.accounting import Counters
from bridger.shell.udp import Sender, UdpEndpoint
from bridger.status.document import status_document

PEER = ("192.0.2.2", 55555)


class _Socket:
    """Stands in for a UDP socket on a 1500-byte path with GSO."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendmsg(self, buffers: list[bytes], cmsg: Any, flags: int, addr: Any) -> int:
        if max(map(len, buffers)) + 28 > 1500:
            raise OSError(errno.EMSGSIZE, "Message too long")
        self.sent.extend(buffers)
        return sum(map(len, buffers))

    def sendto(self, data: bytes, addr: Any) -> int:
        if len(data) + 28 > 1500:
            raise OSError(errno.EMSGSIZE, "Message too long")
        self.sent.append(data)
        return len(data)


def test_a_probe_grouped_with_a_real_datagram_loses_only_itself_uncounted() -> None:
    """Regression (review item 8, the `udp_send_too_big` at start): a path-MTU
    probe (beyond the path MTU) followed by a shorter datagram formed one GSO
    group; the kernel refused the group, the real datagram was lost with it and
    counted as too big."""
    sock = _Socket()
    udp = UdpEndpoint(sock, dual_stack=False, listen="0.0.0.0:55555", gso=True)  # type: ignore[arg-type]
    counters = Counters()
    sender = Sender(udp, counters, lambda addr: 1500)
    probe, data = bytes(1555), bytes(1472)
    sender.send([(probe, PEER), (data, PEER)])
    assert sock.sent == [data]
    snap = status_document(counters.snapshot(0.0), _device(), [])
    assert snap["drops"]["udp_send_too_big"] == 0


def test_a_datagram_within_the_path_mtu_that_is_refused_is_counted() -> None:
    sock = _Socket()
    udp = UdpEndpoint(sock, dual_stack=False, listen="0.0.0.0:55555", gso=True)  # type: ignore[arg-type]
    counters = Counters()
    sender = Sender(udp, counters, lambda addr: 1600)  # the core believes in 1600
    sender.send([(bytes(1555), PEER), (bytes(1555), PEER)])
    assert sock.sent == []
    drops = status_document(counters.snapshot(0.0), _device(), [])["drops"]
    assert drops["udp_send_too_big"] == 2


def _device() -> Any:
    from bridger.status.document import DeviceInfo

    return DeviceInfo()


def test_an_icmp_error_for_an_earlier_datagram_does_not_cost_the_next_one() -> None:
    """Regression (issue 20): with IP_RECVERR on, the kernel returns a pending
    ICMP error (here "port unreachable" from loopback; in the lab a path-MTU
    probe's "fragmentation needed") from the next send, which it aborts: the
    next probe of a search vanished and the search ended a byte short."""
    import select
    import socket

    udp = UdpEndpoint.bind(0)
    assert udp.recverr
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    closed_addr = ("127.0.0.1", closed.getsockname()[1])
    closed.close()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    counters = Counters()
    sender = Sender(udp, counters, lambda addr: 1500)
    try:
        sender.send([(b"to nobody", closed_addr)])
        poller = select.poll()
        poller.register(udp.sock, select.POLLERR)
        assert poller.poll(5000), "no ICMP error came back"
        sender.send([(b"real data", ("127.0.0.1", listener.getsockname()[1]))])
        assert listener.recv(100) == b"real data"
        drops = status_document(counters.snapshot(0.0), _device(), [])["drops"]
        assert drops["udp_send_failed"] == 0 and drops["udp_send_too_big"] == 0
        assert udp.kernel_mtu_reports() == []  # a port unreachable is no path-MTU news
    finally:
        listener.close()
        udp.sock.close()
