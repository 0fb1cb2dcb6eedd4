"""Issue 26: the native lane's ``push`` looks only at the ports of the peers a
pass touched, so a hand-over costs a hub of 100 spokes what it costs one tunnel;
every port is still looked at when no caller can say which peers changed (no
``peers``), when the loop guard has news, and at least every FULL_PUSH_INTERVAL.

Observed through what a push does to a peer whose keys the core dropped: its
native sessions are wiped (and the lane stops sealing with them) when, and only
when, a push looks at its port.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from bridger.native import lane as native
from bridger.protocol import Output
from bridger.shell.lane import FULL_PUSH_INTERVAL

pytestmark = pytest.mark.skipif(native is None, reason="bridger.native._lane is not built")


def run(fn: Any) -> None:
    """``fn(twin, other)``: site A's native side with a second peer ``other``
    (registered in the lane, no session), in a Trio run with a mock clock."""
    from tests.native.lanesim import Twin

    async def main() -> None:
        twin = Twin()
        port, tap = twin.new_port(twin.nat, "c")
        assert twin.nat.lane is not None
        twin.nat.lane.add_port(port)
        try:
            fn(twin, port.peer)
        finally:
            twin.nat.lane.remove_port(port)
            tap.close()
            twin.close()

    trio.run(main, clock=trio.testing.MockClock())


def test_a_push_for_other_peers_leaves_the_port_alone_until_the_safety_net() -> None:
    def scenario(twin: Any, other: Any) -> None:
        nat = twin.nat
        session = nat.peer.current.session
        nat.peer.zero_keys(Output())
        nat.lane.push(0.1, [other])  # not this peer's: its port is not looked at
        assert not session.wiped
        nat.lane.push(0.1 + FULL_PUSH_INTERVAL, [other])  # the periodic full look
        assert session.wiped

    run(scenario)


def test_a_push_for_the_peer_takes_its_change() -> None:
    def scenario(twin: Any, other: Any) -> None:
        nat = twin.nat
        session = nat.peer.current.session
        nat.peer.zero_keys(Output())
        nat.lane.push(0.1, [other, nat.peer])
        assert session.wiped

    run(scenario)


def test_a_push_without_peers_looks_at_every_port() -> None:
    def scenario(twin: Any, other: Any) -> None:
        nat = twin.nat
        session = nat.peer.current.session
        nat.peer.zero_keys(Output())
        nat.lane.push(0.1)
        assert session.wiped

    run(scenario)


def test_news_of_the_loop_guard_makes_a_push_look_at_every_port() -> None:
    """A block or release concerns the peer the probe was sent to, not the one
    whose frame revealed it: any guard news makes the push a full one."""
    def scenario(twin: Any, other: Any) -> None:
        nat = twin.nat
        session = nat.peer.current.session
        nat.peer.zero_keys(Output())
        nat.fwd.detector = SimpleNamespace(has_events=True)  # (push reads no more of it)
        try:
            nat.lane.push(0.1, [other])
        finally:
            nat.fwd.detector = None
        assert session.wiped

    run(scenario)
