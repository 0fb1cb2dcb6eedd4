"""The native lane's loop through its binding, on real fds (issue 21).

Each test tells the story of one finding of a read of bn_lane.c (now bn_lane_*.c): a hand-over
queued for a port that a reload freed, receives the kernel cut short, and
epoll registrations that failed without a word.  The loop runs in a thread
(``Lane.run``, the GIL released); tests wait for what the loop signals (its
hand-over eventfd, its return), never for a fixed time.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from bridger.native import contract
from bridger.native import lane as native
from bridger.native.contract import HandshakePunt, MtuPunt, TapPunt, take_punts, take_stats
from bridger.protocol.checksum import ones_sum

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


# ---- 4. forged ICMP errors towards the socket -------------------------------------------

#: Linux in.h (the socket module exports neither everywhere).
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
PMTUDISC_PROBE = 3
#: A peer's endpoint (TEST-NET-1): the forged errors claim to be about it.
PEER = ("192.0.2.1", 51820)
STRANGER = ("198.51.100.7", 4000)
#: Errors sent before waiting for the lane to read them: the socket's error
#: queue holds what its receive buffer does (~200 KB, ~1 KB an error); the
#: kernel drops the rest.
BURST = 50


def forged_icmp(lane_port: int, about: tuple[str, int], mtu: int = 0) -> bytes:
    """An ICMP "port unreachable" (mtu 0) or "fragmentation needed" (next-hop
    MTU ``mtu``) quoting a datagram from 127.0.0.1:lane_port to ``about``: to
    the kernel, news for the lane's socket about that destination."""
    inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, socket.IPPROTO_UDP, 0,
                        socket.inet_aton(LOCALHOST), socket.inet_aton(about[0]))
    inner += struct.pack("!HHHH", lane_port, about[1], 8, 0)
    code = 4 if mtu else 3
    body = struct.pack("!HH", 0, mtu) + inner
    checksum = ~ones_sum(struct.pack("!BBH", 3, code, 0) + body) & 0xFFFF
    return struct.pack("!BBH", 3, code, checksum) + body


@pytest.fixture
def icmp() -> Iterator[socket.socket]:
    if os.geteuid() != 0:
        pytest.skip("forging ICMP needs a raw socket (root)")
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    yield raw
    raw.close()


@pytest.fixture
def recverr(udp: socket.socket) -> socket.socket:
    """The lane's socket as bridger sets it up (udp.py): errors queued, PMTU probing."""
    udp.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    udp.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, PMTUDISC_PROBE)
    return udp


def test_a_flood_of_forged_icmp_errors_is_read_by_the_lane_never_handed_over(
        lane: Any, recverr: socket.socket, icmp: socket.socket) -> None:
    """Each ICMP error for the socket (IP_RECVERR) raised EPOLLERR, and the
    lane handed the socket to Python to read the error queue: a flood of
    forged errors (anyone can send them) cost one hand-over, a sync and a
    Python pass under the lane's mutex per few errors (401 hand-overs for
    20,000 errors in a second).  Now the lane reads the queue itself: errors
    that are no path-MTU news about a peer are counted (udp_errors) and
    dropped, as Python dropped them, and nothing is handed over."""
    port = recverr.getsockname()[1]
    errors = [forged_icmp(port, STRANGER), forged_icmp(port, PEER),
              forged_icmp(port, STRANGER, mtu=1280)]  # no peer's: no news
    sent = 300
    seen = 0

    def all_read(count: int) -> bool:
        nonlocal seen
        seen += take_stats(lane).lane.udp_errors
        return seen >= count

    with running(lane):
        for i in range(sent):
            icmp.sendto(errors[i % len(errors)], (LOCALHOST, 0))
            if i % BURST == BURST - 1:
                wait_for(lambda i=i: all_read(i + 1))  # the queue holds ~200 KB
    assert seen == sent
    assert take_punts(lane) == []
    assert lane.held == []


def test_path_mtu_reports_reach_python_at_most_every_interval_with_the_smallest_kept(
        lane: Any, recverr: socket.socket, icmp: socket.socket,
        tap: tuple[int, socket.socket]) -> None:
    """A path-MTU report about a peer's endpoint is news for the core: the
    lane passes it on (MtuPunt, nothing held), the first at once and then at
    most one per MTU_INTERVAL, keeping the smallest MTU meanwhile, so a flood
    of forged "fragmentation needed" wakes Python at most 20 times a second
    and the smallest MTU any of them named still arrives."""
    ident = lane.add_port(tap[0], False, None)
    lane.set_port(ident, None, PEER, 1400, 1396, 1396, 1514, False)
    port = recverr.getsockname()[1]
    mtus = [1400 - (i * 37) % 200 for i in range(400)]
    reports: list[MtuPunt] = []
    read = handed = 0

    def reports_taken(count: int) -> bool:
        nonlocal read, handed
        for punt in take_punts(lane):
            assert isinstance(punt, MtuPunt), punt
            reports.append(punt)
        stats = take_stats(lane).lane
        read += stats.udp_errors
        handed += stats.mtu_reports
        return read >= count

    def all_read_and_the_smallest_arrived() -> bool:
        return reports_taken(len(mtus)) and any(r.mtu == min(mtus) for r in reports)

    start = time.monotonic()
    with running(lane):
        for i, mtu in enumerate(mtus):
            icmp.sendto(forged_icmp(port, PEER, mtu=mtu), (LOCALHOST, 0))
            if i % BURST == BURST - 1:
                wait_for(lambda i=i: reports_taken(i + 1))
        wait_for(all_read_and_the_smallest_arrived)
        elapsed = time.monotonic() - start
    assert {(r.port, r.sockaddr, r.local) for r in reports} == {(ident, PEER, False)}
    assert {r.mtu for r in reports} <= set(mtus)
    assert 1 <= len(reports) <= 1 + elapsed / contract.MTU_INTERVAL
    assert handed == len(reports) and read == len(mtus)


# ---- 5. the local interface refuses a datagram --------------------------------------

CLONE_NEWNET = 0x40000000
#: The MTU of the interface towards PEER in the throwaway namespace below.
NARROW = 1400


@contextmanager
def narrow_route_socket() -> Iterator[socket.socket]:
    """The lane's socket as bridger sets it up (recverr), made in a throwaway
    network namespace whose interface towards PEER carries at most NARROW
    bytes: a larger datagram to PEER is refused there (EMSGSIZE)."""
    name = f"bn-emsg-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # (The socket probes: its datagrams meet the interface's MTU, not a route's.)
        for line in (f"link add narrow0 mtu {NARROW} type veth peer name narrow1 mtu {NARROW}",
                     "link set narrow0 up", "link set narrow1 up",
                     "addr add 10.77.1.1/24 dev narrow0",
                     f"route add {PEER[0]}/32 via 10.77.1.2 dev narrow0 onlink"):
            subprocess.run(["ip", "-n", name, *line.split()], check=True)
        libc = ctypes.CDLL(None, use_errno=True)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(there, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            finally:
                if libc.setns(home, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back")
        finally:
            os.close(home)
            os.close(there)
        with sock:
            sock.bind(("0.0.0.0", 0))
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, PMTUDISC_PROBE)
            yield sock
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.netns
def test_a_datagram_the_local_interface_refused_is_news_for_every_peer_at_that_address(
        tap: tuple[int, socket.socket]) -> None:
    """The kernel names the address but not the port of a datagram the local
    interface refused (an unconnected socket: ip_local_error has no port).
    The lane looked the report up by address and port, found no peer, and
    dropped it: a hub's path-MTU searches upwards never learnt the local
    limit and probed above it by loss, 13 sizes twice each per peer every 30
    s (a third of an idle hub's sends, all refused).  Now every peer at that
    address hears it, each under its own endpoint; a peer elsewhere does not."""
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace)")
    assert native is not None
    other_fd, other_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with narrow_route_socket() as sock, other_fd, other_end:
        lane = native.Lane(sock.fileno(), False, False, False, 0.0)
        try:
            ident = lane.add_port(tap[0], False, None)
            lane.set_port(ident, None, PEER, 1400, 1396, 1396, 1514, False)
            second = lane.add_port(other_fd.fileno(), False, None)
            lane.set_port(second, None, (PEER[0], PEER[1] + 1), 1400, 1396, 1396, 1514, False)
            elsewhere = lane.add_port(other_end.fileno(), False, None)
            lane.set_port(elsewhere, None, STRANGER, 1400, 1396, 1396, 1514, False)
            with pytest.raises(OSError) as refused:
                sock.sendto(bytes(NARROW), PEER)  # 1428 bytes of IP packet
            assert refused.value.errno == errno.EMSGSIZE
            reports: list[MtuPunt] = []

            def both_told() -> bool:
                reports.extend(p for p in take_punts(lane) if isinstance(p, MtuPunt))
                return len(reports) >= 2

            with running(lane):
                wait_for(both_told)
            assert sorted((r.port, r.sockaddr, r.local, r.mtu) for r in reports) == sorted([
                (ident, PEER, True, NARROW),
                (second, (PEER[0], PEER[1] + 1), True, NARROW)])
        finally:
            lane.stop()
            lane.close()
