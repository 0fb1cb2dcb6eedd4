"""The path-MTU state machine (bridger/protocol/pmtu.py) against a model path.

A :class:`ModelPath` carries a probe back as an ack after one round trip when
the probe fits its MTU (and is not lost); it can narrow or widen at any time,
send the kernel's ICMP report for what does not fit, and refuse locally what
is above the local interface.  Time is virtual: the harness jumps from one
deadline or ack to the next.
"""

from __future__ import annotations

import heapq
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridger.protocol.constants import (
    IPV6_MIN_MTU,
    MIN_WAN_MTU,
    PMTU_CONFIRM_INTERVAL,
    PMTU_KERNEL_DISTRUST,
    PMTU_RAISE_INTERVAL,
)
from bridger.protocol.pmtu import PathMtu, Source, floor_for

#: The bound of a default IPv4 peer: max_frame 1522 + 1 + 32 + 28.
BOUND = 1583


class ModelPath:
    def __init__(self, pmtu: PathMtu, mtu: int, *, rtt: float = 0.02, loss: float = 0.0,
                 icmp: bool = False, local: int | None = None, seed: int = 0) -> None:
        self.pmtu = pmtu
        self.mtu = mtu
        self.rtt = rtt
        self.loss = loss
        self.icmp = icmp
        self.local = local
        self.rng = random.Random(seed)
        self.now = 0.0
        self.acks: list[tuple[float, int, int]] = []
        self.sent = 0
        self.data = False  # frames flow: data_sent() every 0.1 s
        #: (time, value) each time the value in use changed.
        self.history: list[tuple[float, int]] = [(0.0, pmtu.value)]
        self.settled: list[tuple[float, int, int]] = []

    def _note(self) -> None:
        if self.pmtu.value != self.history[-1][1]:
            self.history.append((self.now, self.pmtu.value))
        report = self.pmtu.take_settled()
        if report is not None:
            self.settled.append((self.now, report.old, report.new))

    def _send(self) -> None:
        for probe_id, size in self.pmtu.due(self.now):
            if self.local is not None and size > self.local:
                self.pmtu.local_limit(self.local, self.now)
                continue
            self.sent += 1  # (probes on the wire)
            if size > self.mtu:
                if self.icmp:
                    self.pmtu.kernel_report(self.mtu, self.now)
                continue
            if self.rng.random() < self.loss:
                continue
            heapq.heappush(self.acks, (self.now + self.rtt, probe_id, size))
        self._note()

    def run(self, until: float) -> None:
        next_data = self.now
        stuck = 0
        while True:
            self._send()
            deadline = self.pmtu.next_deadline()
            stuck = stuck + 1 if deadline is not None and deadline <= self.now else 0
            assert stuck < 100, "a timer stays in the past: the shell would spin"
            candidates = [until]
            deadline = self.pmtu.next_deadline()
            if deadline is not None:
                candidates.append(max(deadline, self.now))
            if self.acks:
                candidates.append(self.acks[0][0])
            if self.data:
                candidates.append(next_data)
            t = min(candidates)
            if t >= until and t == until:
                self.now = until
                self._send()
                return
            self.now = t
            if self.data and self.now >= next_data:
                self.pmtu.data_sent(self.now)
                next_data = self.now + 0.1
            while self.acks and self.acks[0][0] <= self.now:
                _, probe_id, size = heapq.heappop(self.acks)
                self.pmtu.acked(probe_id, size, self.now)
                self._note()

    def value_at(self, t: float) -> int:
        value = self.history[0][1]
        for when, v in self.history:
            if when > t:
                break
            value = v
        return value


def started(mtu: int, *, bound: int = BOUND, floor: int = MIN_WAN_MTU, **kw: object) -> ModelPath:
    pmtu = PathMtu(bound, floor)
    path = ModelPath(pmtu, mtu, **kw)  # type: ignore[arg-type]
    pmtu.restart(0.0, bound, floor)
    return path


@pytest.mark.parametrize("mtu", [1500, 1492, 1480, 1460, 1452, 1428, 1400, 1380, 1300, 1280])
def test_finds_the_exact_path_mtu_quickly(mtu: int) -> None:
    path = started(mtu)
    path.run(5.0)
    assert path.pmtu.value == mtu
    assert path.pmtu.source is Source.PROBE
    assert not path.pmtu.searching
    # The value in use never exceeded the path (an ack is the only proof).
    assert all(v <= mtu for _, v in path.history)
    # The common sizes are right within one round trip; the others soon after.
    assert path.value_at(0.03) >= min(mtu, 1400) - 120
    if mtu != 1280:  # else the safe start was right: no change to report
        assert [new for _, _, new in path.settled] == [mtu]  # one report, when settled
        assert path.settled[-1][0] < 4.0
    assert path.sent < 60


@pytest.mark.parametrize("mtu", [1000, 700, 576])
def test_an_ipv4_path_below_the_base_is_found_too(mtu: int) -> None:
    path = started(mtu)
    path.run(8.0)
    assert path.pmtu.value == mtu


def test_ipv6_never_goes_below_1280() -> None:
    assert floor_for(True) == IPV6_MIN_MTU and floor_for(False) == MIN_WAN_MTU
    path = started(1400, bound=1603, floor=IPV6_MIN_MTU, icmp=True)
    path.run(3.0)
    assert path.pmtu.value == 1400
    path.pmtu.kernel_report(600, path.now)  # forged or broken: below the IPv6 minimum
    assert path.pmtu.value == IPV6_MIN_MTU
    path.run(path.now + 3.0)
    assert path.pmtu.value == 1400  # the report was false: back after one round


def test_a_jumbo_path_is_used_up_to_what_carries_the_largest_frame() -> None:
    path = started(9000, bound=9277)
    path.run(6.0)
    assert path.pmtu.value == 9000
    path = started(9000, bound=1583)
    path.run(6.0)
    assert path.pmtu.value == 1583


def test_the_local_interface_bounds_the_search() -> None:
    path = started(1500, bound=9277, local=1500)
    path.run(6.0)
    assert path.pmtu.value == 1500
    assert path.pmtu.ceiling == 1500


@pytest.mark.parametrize("icmp", [False, True])
def test_a_shrinking_path_is_noticed_within_seconds_while_data_flows(icmp: bool) -> None:
    path = started(1500, icmp=icmp)
    path.run(5.0)
    assert path.pmtu.value == 1500
    path.data = True
    path.run(20.0)
    assert path.pmtu.value == 1500  # confirmations pass: nothing changes
    path.mtu = 1400
    shrunk = path.now
    path.run(shrunk + 10.0)
    assert path.pmtu.value == 1400
    fixed = next(t for t, v in path.history if t >= shrunk and v <= 1400)
    # (The model sends the ICMP report for probes only: the first confirmation
    # after the shrink; a real router sends it for the first data packet.)
    assert fixed - shrunk < PMTU_CONFIRM_INTERVAL + (0.1 if icmp else 2.5)


@pytest.mark.parametrize("data", [False, True])
def test_a_path_that_grows_back_is_used_again(data: bool) -> None:
    """Also while data flows: the confirmations every second must not keep
    putting the look upwards off (they did, in the first lab run)."""
    path = started(1400)
    path.data = data
    path.run(5.0)
    path.mtu = 1500
    path.run(5.0 + PMTU_RAISE_INTERVAL + 5.0)
    assert path.pmtu.value == 1500


def test_a_quiet_peer_is_not_confirmed() -> None:
    """No data, no confirmations; and on a path as wide as the local interface
    the periodic look upwards puts nothing on the wire (refused locally)."""
    path = started(1500, local=1500)
    path.run(5.0)
    sent = path.sent
    path.run(5.0 + 3 * PMTU_RAISE_INTERVAL)
    assert path.sent == sent


def test_a_forged_icmp_report_costs_one_round_and_is_then_distrusted() -> None:
    path = started(1500)
    path.run(5.0)
    path.pmtu.kernel_report(700, path.now)
    assert (path.pmtu.value, path.pmtu.source) == (700, Source.ICMP)
    path.run(path.now + 2.0)
    assert (path.pmtu.value, path.pmtu.source) == (1500, Source.PROBE)
    path.pmtu.kernel_report(700, path.now)
    assert path.pmtu.value == 1500  # distrusted for a while
    path.run(path.now + PMTU_KERNEL_DISTRUST + 1.0)
    path.pmtu.kernel_report(1400, path.now)
    assert path.pmtu.value == 1400


def test_a_dead_path_changes_nothing_and_the_search_ends() -> None:
    path = started(1500)
    path.run(5.0)
    path.mtu = 0  # everything lost
    path.data = True
    path.run(30.0)
    assert path.pmtu.value == 1500  # no ack, no proof of a smaller path
    path.data = False
    path.run(60.0)
    assert not path.pmtu.searching
    deadline = path.pmtu.next_deadline()
    assert deadline is None or deadline > path.now  # no timer left in the past


def test_probing_off_is_the_configured_value_forever() -> None:
    pmtu = PathMtu(1500, MIN_WAN_MTU, probing=False)
    pmtu.restart(0.0, 1500, MIN_WAN_MTU)
    assert (pmtu.value, pmtu.source) == (1500, Source.CONFIGURED)
    pmtu.kernel_report(1400, 1.0)
    pmtu.local_limit(1300, 1.0)
    pmtu.data_sent(1.0)
    assert pmtu.due(5.0) == [] and pmtu.next_deadline() is None
    assert pmtu.value == 1500


def test_an_ack_for_nothing_outstanding_is_ignored() -> None:
    path = started(1500)
    path.run(5.0)
    assert not path.pmtu.acked(123456, 1500, path.now)
    probes = []
    path.pmtu.restart(path.now, BOUND, MIN_WAN_MTU)
    probes = path.pmtu.due(path.now)
    probe_id, size = probes[0]
    assert not path.pmtu.acked(probe_id, size - 1, path.now)  # wrong size: not this probe
    assert path.pmtu.value == 1280


@settings(max_examples=60, deadline=None)
@given(mtu=st.integers(1280, BOUND), loss=st.sampled_from([0.0, 0.02, 0.1]),
       rtt=st.sampled_from([0.001, 0.05, 0.3]), seed=st.integers(0, 1000),
       icmp=st.booleans())
def test_never_above_the_path_and_close_to_it(
    mtu: int, loss: float, rtt: float, seed: int, icmp: bool
) -> None:
    """Whatever the loss and round trip: the value in use never exceeds the
    path, and ends within the ladder step below it (exact without loss)."""
    path = started(mtu, loss=loss, rtt=rtt, seed=seed, icmp=icmp)
    path.data = True
    path.run(30.0)
    assert all(v <= mtu for _, v in path.history)
    if loss == 0.0:
        assert path.pmtu.value == mtu
    else:
        assert mtu - path.pmtu.value < 120  # a size lost twice by chance: up to a step
