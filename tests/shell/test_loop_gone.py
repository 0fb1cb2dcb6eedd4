"""When a loop is gone the forwarder has the bridge forget what it learnt on
the LAN port.

While a loop (a backup cable between two sites' LANs) lasted, the bridge
learnt the remote hosts' MACs on its LAN port: their frames came in through
the cable.  Once the cable is gone and the tunnel forwards again, a frame to
them would be dropped by that bridge (destination on the port it came from)
until the entry aged out (300 s) or the hosts re-resolved (the guard lab's
recovery took over 28 s in one CI run).  A switch forgets on a topology
change; so does bridger, once per loop gone.
"""

from __future__ import annotations

import logging
import random

import pytest

from bridger.dataplane.accounting import Counters
from bridger.errors import HostError
from bridger.guard.loop import LoopDetector
from bridger.protocol import Output
from bridger.shell.forward import Forwarder
from bridger.shell.udp import UdpEndpoint
from tests.protocol.test_device import _established_pair

SITE = b"S" * 8


def _looped_forwarder(flush: object) -> tuple[Forwarder, LoopDetector, UdpEndpoint]:
    """A forwarder whose detector has blocked peer "b" (its probe came back)."""
    _a, b, _pa, _pb, _addr = _established_pair(7)
    detector = LoopDetector(site_id=SITE, rng=random.Random(1))
    detector.add_peer("b")
    (name, frame), = detector.tick(0.0)
    assert name == "b"
    detector.probe_seen_untrusted(frame, 14, "b", True, 0.1)
    assert detector.peer("b").blocked
    udp = UdpEndpoint.bind(0)
    fwd = Forwarder(device=b, udp=udp, counters=Counters(), detector=detector)
    fwd.flush_lan = flush  # type: ignore[assignment]
    return fwd, detector, udp


def test_the_lan_port_is_flushed_once_when_a_loop_is_gone() -> None:
    calls: list[int] = []
    fwd, detector, udp = _looped_forwarder(lambda: calls.append(1))
    try:
        fwd.handle(Output(), 0.2, wake=False)  # the detection: no flush
        assert calls == []
        detector.tick(detector.peer("b").release_at() + 0.01)  # released: LoopGone
        fwd.handle(Output(), 30.0, wake=False)
        assert calls == [1]
        fwd.handle(Output(), 31.0, wake=False)
        assert calls == [1]
    finally:
        udp.sock.close()


def test_a_flush_that_fails_is_one_line_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    def refuse() -> None:
        raise HostError("eth1: no such interface")

    fwd, detector, udp = _looped_forwarder(refuse)
    try:
        detector.tick(detector.peer("b").release_at() + 0.01)
        with caplog.at_level(logging.WARNING, logger="bridger"):
            fwd.handle(Output(), 30.0, wake=False)
        assert [r.getMessage() for r in caplog.records if "flush" in r.getMessage()] == [
            "loop gone: could not flush the bridge's LAN port: eth1: no such interface"]
    finally:
        udp.sock.close()

