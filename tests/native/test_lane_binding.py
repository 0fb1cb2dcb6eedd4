"""The native lane's loop through its binding, on real fds (issue 21).

Each test tells the story of one finding of a read of bn_lane.c (now bn_lane_*.c): a hand-over
queued for a port that a reload freed, receives the kernel cut short, and
epoll registrations that failed without a word.  The loop runs in a thread
(``Lane.run``, the GIL released); tests wait for what the loop signals (its
hand-over eventfd, its return), never for a fixed time.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from bridger.native import lane as native
from bridger.native.contract import HandshakePunt, TapPunt, take_punts, take_stats

pytestmark = pytest.mark.skipif(native is None, reason="bridger.native._lane is not built")

LOCALHOST = "127.0.0.1"
#: The lane's receive slot without UDP_GRO (bn_lane.c RX_SLOT).
RX_SLOT = 16384
#: A broadcast frame: with no session the lane hands every tap read over.
FRAME = b"\xff" * 6 + b"\x02\0\0\0\0\x01" + b"\x08\x06" + bytes(28)
WAIT = 10.0
#: A cookie reply's shape (type 3, 64 bytes): the lane queues it for Python.
MARKER = b"\x03\0\0\0" + bytes(60)
#: Linux asm-generic/socket.h (the socket module does not export it).
SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)


def wait_readable(fd: int) -> None:
    ready, _, _ = select.select([fd], [], [], WAIT)
    assert ready, f"fd {fd} not readable within {WAIT} s"


class Loop:
    """``lane.run()`` in a thread, with what it raised."""

    def __init__(self, lane: Any) -> None:
        self.lane = lane
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.lane.run()
        except OSError as exc:
            self.error = exc

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), f"the lane's loop did not return within {WAIT} s"


@contextmanager
def running(lane: Any) -> Iterator[Loop]:
    lane.reset()
    loop = Loop(lane)
    loop.thread.start()
    try:
        yield loop
    finally:
        lane.stop()
        loop.join()


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCALHOST, 0))
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.fixture
def lane(udp: socket.socket) -> Iterator[Any]:
    assert native is not None
    obj = native.Lane(udp.fileno(), False, False, False, 0.0)
    yield obj
    obj.stop()
    obj.close()


@pytest.fixture
def tap() -> Iterator[tuple[int, socket.socket]]:
    """A fake tap: the lane's fd and the kernel's end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    yield ours.fileno(), theirs
    ours.close()
    theirs.close()


def truncated(lane: Any) -> int:
    return take_stats(lane).lane.udp_truncated


# ---- 1. a freed port slot and its queued hand-overs ------------------------------------

def test_a_tap_read_handed_over_before_a_reload_never_reaches_the_slots_next_port(
        lane: Any, tap: tuple[int, socket.socket]) -> None:
    """A reload removes a peer and adds another at once; the lane gives the
    new port the freed slot.  A tap read of the old port still queued as a
    hand-over named only the slot, so Python ran it on the new port: one
    site's frame sealed to another.  Freeing the slot now drops those."""
    fd, far = tap
    old = lane.add_port(fd, False, None)
    with running(lane):
        far.send(FRAME)
        wait_readable(lane.punt_fd)
    assert lane.held == [old]
    lane.remove_port(old)
    other, other_far = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        new = lane.add_port(other.fileno(), False, None)
        assert new == old  # the slot is reused at once
        assert [p for p in take_punts(lane) if isinstance(p, TapPunt)] == []
        assert lane.held == []
    finally:
        other.close()
        other_far.close()


# ---- 2. receives cut short -------------------------------------------------------------

def test_a_datagram_longer_than_the_receive_slot_is_a_counted_drop(
        lane: Any, udp: socket.socket) -> None:
    """recvmmsg cut a datagram longer than the slot (MSG_TRUNC) and the lane
    took the first 16384 bytes as if they were the datagram.  Now it is
    dropped and counted (udp_truncated); the datagram after it is handled as
    ever (a cookie reply: queued for Python)."""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with running(lane):
            sender.sendto(b"\x04" + bytes(RX_SLOT + 100), udp.getsockname())
            sender.sendto(MARKER, udp.getsockname())
            wait_readable(lane.punt_fd)
        punts = take_punts(lane)
        assert punts == [HandshakePunt(MARKER, (LOCALHOST, sender.getsockname()[1]))]
        assert truncated(lane) == 1
    finally:
        sender.close()


def test_a_receive_with_its_control_messages_cut_short_is_a_counted_drop(
        lane: Any, udp: socket.socket) -> None:
    """MSG_CTRUNC: the control messages did not fit (here a timestamp the
    lane's buffer has no room for; in the field a GRO segment size could be
    the one lost, and the receive would be split wrongly).  Dropped, counted,
    never handed over."""
    udp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seen = 0

    def both_counted() -> bool:
        nonlocal seen
        seen += truncated(lane)  # take_stats zeroes: keep the sum
        return seen >= 2

    try:
        with running(lane):
            sender.sendto(b"\x04" + bytes(40), udp.getsockname())
            sender.sendto(b"junk", udp.getsockname())
            wait_for(both_counted)
        assert seen == 2
        assert take_punts(lane) == []
    finally:
        sender.close()


def wait_for(condition: Any) -> None:
    """Until ``condition()`` holds (checked every 10 ms, for at most WAIT s)."""
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        select.select([], [], [], 0.01)
    raise AssertionError(f"{condition.__name__} did not hold within {WAIT} s")


# ---- 3. epoll registrations that fail ---------------------------------------------------

def test_an_fd_epoll_refuses_is_an_error_of_add_port_and_leaves_the_slot_free(
        lane: Any, tap: tuple[int, socket.socket]) -> None:
    """epoll refuses a regular file (EPERM): add_port raised, but the slot
    stayed marked used, so each failure leaked one of the 64 slots."""
    with tempfile.TemporaryFile() as f:
        with pytest.raises(OSError) as info:
            lane.add_port(f.fileno(), False, None)
        assert info.value.errno == errno.EPERM
    assert lane.add_port(tap[0], False, None) == 0


def test_a_release_epoll_refuses_is_the_loops_fatal_error(
        lane: Any, tap: tuple[int, socket.socket]) -> None:
    """Python gives a handed-over tap back; were its fd no longer one epoll
    takes, the lane silently stopped polling it (a dead port).  Now the
    failed registration is the loop's fatal error, raised by run() with the
    port, as a failed read is."""
    fd, far = tap
    port = lane.add_port(fd, False, None)
    with running(lane):
        far.send(FRAME)
        wait_readable(lane.punt_fd)
    lane.take_punts()
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), fd)  # the same fd number, now a regular file
    lane.release(port)
    lane.reset()
    loop = Loop(lane)
    loop.thread.start()
    try:
        loop.join()
    finally:
        lane.stop()
        loop.thread.join(WAIT)
    assert loop.error is not None and loop.error.errno == errno.EPERM
    assert lane.error_port == port
