"""The watchdog pings while the data plane forwards or is idle, and stops when it hangs.

Two kinds of test: with Trio's virtual clock and a scripted heartbeat (exact
periods), and with the real clock, a real socket and a data-plane stand-in that
hangs for real (a blocking call, a busy loop, or an await that never returns
while input waits).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from bridger.service.notify import Notifier
from bridger.service.watchdog import (
    peers_status,
    readable,
    status_task,
    watchdog_task,
)
from tests.service.listener import NotifyListener, parse


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    lst = NotifyListener(tmp_path)
    yield lst
    lst.close()


async def _record(sock: socket.socket, log: list[tuple[float, dict[str, str]]]) -> None:
    """Read the listener inside the run, stamping each datagram with Trio's clock."""
    sock.setblocking(False)
    while True:
        await trio.lowlevel.wait_readable(sock)
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                break
            log.append((trio.current_time(), parse(data)))


def run_virtual(
    listener: NotifyListener,
    heartbeat: Callable[[], int],
    pending: Callable[[], bool],
    duration: float,
    *,
    watchdog_usec: int = 2_000_000,
    driver: Callable[[], object] | None = None,
    grace: float | None = None,
) -> list[float]:
    """Run the watchdog on the virtual clock for ``duration``; the WATCHDOG=1 times."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.env_value,
                                  "WATCHDOG_USEC": str(watchdog_usec)})
    interval = notifier.watchdog_interval()
    assert interval is not None
    got: list[tuple[float, dict[str, str]]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_record, listener.sock, got)
            await trio.sleep(0)  # the recorder waits before the first ping
            if driver is not None:
                nursery.start_soon(driver)
            nursery.start_soon(lambda: watchdog_task(notifier, heartbeat, interval, pending,
                                                     grace=grace))
            await trio.sleep(duration)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return [t for t, fields in got if fields == {"WATCHDOG": "1"}]


class Beat:
    """A scripted heartbeat (a stand-in for ``Forwarder.heartbeat``)."""

    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> int:
        return self.value

    def every(self, step: float) -> Callable[[], object]:
        """A driver bumping the heartbeat every ``step`` seconds."""

        async def run() -> None:
            while True:
                self.value += 1
                await trio.sleep(step)

        return run


def test_pings_every_half_watchdog_usec_while_forwarding(listener: NotifyListener) -> None:
    beat = Beat()
    times = run_virtual(listener, beat, lambda: True, 10.5, watchdog_usec=2_000_000,
                        driver=beat.every(0.1))
    assert times == pytest.approx([float(i) for i in range(11)])


def test_idle_daemon_keeps_pinging(listener: NotifyListener) -> None:
    # No traffic at all: the heartbeat never moves, nothing is pending.
    times = run_virtual(listener, lambda: 0, lambda: False, 30.5, watchdog_usec=6_000_000)
    assert times == pytest.approx([0.0, *(3.0 * i for i in range(1, 11))])


def test_stuck_with_input_waiting_stops_pinging_until_it_moves_again(
    listener: NotifyListener, caplog: pytest.LogCaptureFixture
) -> None:
    # Forwarding runs until t=2.95, hangs with input waiting, and forwards again from t=6.99.
    beat = Beat()

    async def driver() -> None:
        while trio.current_time() < 2.95:
            beat.value += 1
            await trio.sleep(0.1)
        await trio.sleep_until(6.99)
        while True:
            beat.value += 1
            await trio.sleep(0.1)

    with caplog.at_level(logging.WARNING, logger="bridger"):
        times = run_virtual(listener, beat, lambda: True, 10.5, watchdog_usec=2_000_000,
                            driver=driver)
    assert times == pytest.approx([0.0, 1.0, 2.0, 3.0, 7.0, 8.0, 9.0, 10.0])
    messages = [r.getMessage() for r in caplog.records]
    assert sum("pings withheld" in m for m in messages) == 1  # once, not per tick
    assert sum("pings resumed" in m for m in messages) == 1


def test_work_that_just_arrived_gets_the_grace_time(listener: NotifyListener) -> None:
    # Idle; input arrives at t=2.99, just before a tick, and the forwarding task
    # takes it 0.2 s later: that ping comes after the grace, not withheld, and
    # the period stays where it was.
    beat = Beat()
    state = {"pending": False}

    async def driver() -> None:
        await trio.sleep_until(2.99)
        state["pending"] = True
        await trio.sleep(0.2)
        beat.value += 1
        state["pending"] = False

    times = run_virtual(listener, beat, lambda: state["pending"], 5.5,
                        watchdog_usec=2_000_000, driver=driver, grace=0.25)
    assert times == pytest.approx([0.0, 1.0, 2.0, 3.25, 4.0, 5.0])


def test_interval_must_be_positive(listener: NotifyListener) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.env_value})
    with pytest.raises(ValueError):
        trio.run(watchdog_task, notifier, lambda: 0, 0.0, lambda: False)


# -- real clock, real fds, a data plane that really hangs ---------------------

INTERVAL = 0.1


class DataPlane:
    """A stand-in for a forwarding task: reads datagrams from a real socket and
    bumps a heartbeat; ``hang`` picks how it fails at ``hang_at`` seconds."""

    def __init__(self, hang: str, hang_at: float, hang_for: float) -> None:
        self.rx, self.tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.rx.setblocking(False)
        self.heartbeat = 0
        self.hang = hang
        self.hang_at = hang_at
        self.hang_for = hang_for
        self.hung: tuple[float, float] | None = None

    def pending(self) -> bool:
        return readable([self.rx.fileno()])

    async def forward(self, started: float) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.rx)
            self.heartbeat += 1
            while True:
                try:
                    self.rx.recv(2048)
                except BlockingIOError:
                    break
            if self.hung is None and time.monotonic() - started >= self.hang_at:
                begin = time.monotonic()
                if self.hang == "blocking call":
                    time.sleep(self.hang_for)
                elif self.hang == "busy loop":
                    while time.monotonic() - begin < self.hang_for:
                        pass
                self.hung = (begin, begin + self.hang_for)
                if self.hang == "await that never returns":
                    await trio.sleep_forever()

    def close(self) -> None:
        self.rx.close()
        self.tx.close()


def traffic(plane: DataPlane, started: float, until: float,
            quiet: tuple[float, float] | None = None) -> threading.Thread:
    """A thread writing a datagram every 10 ms, except during ``quiet``."""

    def run() -> None:
        while (now := time.monotonic() - started) < until:
            if quiet is None or not quiet[0] <= now < quiet[1]:
                with contextlib.suppress(OSError):  # a full queue: the reader is stuck
                    plane.tx.send(b"frame")
            time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def run_real(listener: NotifyListener, plane: DataPlane, duration: float,
             quiet: tuple[float, float] | None = None) -> tuple[list[float], float]:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.env_value,
                                  "WATCHDOG_USEC": str(int(2 * INTERVAL * 1e6)),
                                  "WATCHDOG_PID": str(os.getpid())})
    listener.start()
    started = time.monotonic()
    writer = traffic(plane, started, duration, quiet)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(plane.forward, started)
            nursery.start_soon(watchdog_task, notifier, lambda: plane.heartbeat,
                               notifier.watchdog_interval(), plane.pending)
            await trio.sleep(duration)
            nursery.cancel_scope.cancel()

    trio.run(main)
    writer.join()
    return listener.times("WATCHDOG"), started


@pytest.mark.parametrize("hang", ["blocking call", "busy loop"])
def test_a_hung_loop_sends_no_ping(listener: NotifyListener, hang: str) -> None:
    plane = DataPlane(hang, hang_at=0.5, hang_for=1.0)
    try:
        times, started = run_real(listener, plane, 2.0)
    finally:
        plane.close()
    assert plane.hung is not None
    begin, end = plane.hung
    before = [t for t in times if t < begin]
    during = [t for t in times if begin + 0.05 < t < end]
    after = [t for t in times if t > end]
    assert len(before) >= 2, times  # ~5 expected; loose for a loaded machine
    assert during == [], (begin - started, [t - started for t in times])
    assert len(after) >= 2, times  # a daemon that recovers before systemd acts pings again


def test_idle_pings_on_and_stuck_with_input_stops(listener: NotifyListener) -> None:
    # 0-0.5 s traffic; 0.5-1.0 s no traffic (idle, alive); from 1.0 s traffic
    # again, but the first read after 1.05 s leaves the task awaiting forever.
    plane = DataPlane("await that never returns", hang_at=1.05, hang_for=0.0)
    try:
        times, started = run_real(listener, plane, 2.2, quiet=(0.5, 1.0))
    finally:
        plane.close()
    assert plane.hung is not None
    rel = [t - started for t in times]
    idle = [t for t in rel if 0.6 < t < 1.0]
    assert len(idle) >= 2, rel  # ~4 expected: idle is alive
    stuck_at = plane.hung[0] - started
    late = [t for t in rel if t > stuck_at + 2 * INTERVAL + 0.1]
    assert late == [], (stuck_at, rel)


def test_readable() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        assert not readable([a.fileno()])
        b.send(b"x")
        assert readable([a.fileno(), b.fileno()])
        assert readable([a.fileno()])  # polling does not consume
        a.recv(10)
        assert not readable([a.fileno()])
        assert not readable([])
    finally:
        a.close()
        b.close()
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    assert not readable([r])  # a closed fd is not work waiting


# -- STATUS= lines ------------------------------------------------------------

@pytest.mark.parametrize(("states", "text"), [
    ([("berlin", "up"), ("paris", "up"), ("rome", "handshaking")],
     "3 peers: berlin up, paris up, rome handshaking"),
    ([("berlin", "stale")], "1 peer: berlin stale"),
    ([], "0 peers"),
])
def test_peers_status(states: list[tuple[str, str]], text: str) -> None:
    assert peers_status(states) == text


def test_peers_status_is_bounded() -> None:
    states = [(f"site{i}", "up" if i % 2 else "down") for i in range(100)]
    text = peers_status(states)
    assert text.startswith("100 peers: site0 down, site1 up")
    assert text.endswith("and 80 more (50 of 100 up)")
    assert "site20" not in text


def test_status_task_sends_only_changes(listener: NotifyListener) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.env_value})
    states = [("berlin", "handshaking")]
    got: list[tuple[float, dict[str, str]]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_record, listener.sock, got)
            await trio.sleep(0)
            nursery.start_soon(status_task, notifier, lambda: states, 2.0)
            await trio.sleep(5)
            states[0] = ("berlin", "up")
            await trio.sleep(10)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [(t, f["STATUS"]) for t, f in got] == [
        (0.0, "1 peer: berlin handshaking"), (6.0, "1 peer: berlin up")]
