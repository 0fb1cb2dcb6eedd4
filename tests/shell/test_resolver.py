"""The resolver re-resolves a peer's DNS name only while the peer is silent.

Regression (review item 3): it used to re-apply the DNS answer every 60 s while
the link was up, overwriting an endpoint that had roamed (a NAT that rewrites
the source port), which cut the link until the next handshake.
"""

from __future__ import annotations

import socket
from typing import Any

import trio
import trio.testing

from bridger.dataplane.accounting import Counters
from bridger.protocol import Output
from bridger.shell.forward import Forwarder
from bridger.shell.resolver import resolve_peer
from bridger.shell.udp import UdpEndpoint
from tests.protocol.simnet import WALL_EPOCH
from tests.protocol.test_device import _established_pair


class _Resolver(trio.abc.HostnameResolver):
    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.calls = 0

    async def getaddrinfo(self, host: Any, port: Any, family: int = 0, type: int = 0,
                          proto: int = 0, flags: int = 0) -> Any:
        self.calls += 1
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (self.answer, port))]

    async def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
        raise NotImplementedError


def test_a_roamed_endpoint_of_a_live_peer_is_kept_and_a_silent_peer_is_re_resolved() -> None:
    _a, b, pa, pb, a_addr = _established_pair(21)
    roamed = (a_addr[0], 40123)  # the NAT in front of a rewrote its port
    kp = pa.current
    assert kp is not None
    keepalive = pa.send_frames([], 0.0, Output())  # nothing to send: no datagram
    assert not keepalive.datagrams
    pa.send_keepalive(0.5, keepalive)
    b.receive_datagrams([d for d, _ in keepalive.datagrams], roamed, 0.5, WALL_EPOCH)
    assert pb.endpoint == roamed
    resolver = _Resolver(a_addr[0])
    udp = UdpEndpoint.bind(0)
    seen: dict[str, Any] = {}

    async def main() -> None:
        trio.socket.set_custom_hostname_resolver(resolver)
        fwd = Forwarder(device=b, udp=udp, counters=Counters())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(resolve_peer, fwd, pb, "a.example", a_addr[1])
            await trio.sleep(305.0)  # five of the old 60 s re-resolutions
            seen["while_up"] = (pb.endpoint, resolver.calls)
            pb.unreachable = True  # the peer went silent (dead-peer timer fired)
            await trio.sleep(10.0)  # the next silence check comes within 10 s
            seen["silent"] = (pb.endpoint, resolver.calls)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        udp.sock.close()
    assert seen["while_up"] == (roamed, 1)
    assert seen["silent"] == (a_addr, 2)
