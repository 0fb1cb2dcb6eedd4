"""A peer's port: the per-frame steps at its tap, on a datagram socket pair as the tap.

A frame read from the tap is counted (lan_to_wan) and sealed for the port's
peer; runs of plain frames with one checksum state go to the core in one
``send_frames`` call; the peer's frames are written into the tap and counted
(wan_to_lan), and a failed write is a counted drop, never an exception.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import pytest

from bridger.dataplane.accounting import Counters
from bridger.fastpath.vnet import VNET_HDR_LEN, GsoType, VnetHdr, csum_hdr
from bridger.protocol import Output, Peer
from bridger.shell.port import Port, SmallFrames
from tests.protocol.test_device import _established_pair
from tests.status.samples import LOCAL, REMOTE, arp_broadcast, ipv4


@pytest.fixture
def tap() -> Iterator[tuple[int, int]]:
    """A datagram socket pair standing in for a tap (one frame per read, like a
    tap): (the kernel's end, the port's end)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fds = (a.detach(), b.detach())
    yield fds
    for fd in fds:
        with contextlib.suppress(OSError):  # the test closed it already
            os.close(fd)


def _port(fd: int, vnet: bool = False) -> tuple[Port, Peer, Counters]:
    _a, _b, pa, _pb, _addr = _established_pair(7)
    counters = Counters()
    return Port(peer=pa, counters=counters.peer(pa.name), tap="tap-b", fd=fd, vnet=vnet), \
        pa, counters


def test_plain_frames_are_counted_and_sealed_together(
    tap: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, peer, counters = _port(tap[1])
    calls: list[int] = []
    send = Peer.send_frames

    def counting(self: Peer, frames: list[bytes], *args: object) -> Output:
        calls.append(len(frames))
        return send(self, frames, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Peer, "send_frames", counting)
    out = Output()
    small = SmallFrames(peer, 1.0, out)
    frames = [ipv4(REMOTE, LOCAL), arp_broadcast(LOCAL), ipv4(REMOTE, LOCAL, 300)]
    for frame in frames:
        port.plain_from_tap(frame, 1.0, small)
    small.flush()
    assert calls == [3]  # one core call for the run
    assert len(out.datagrams) == 3
    snap = counters.snapshot(1.0).peers[peer.name]
    assert snap.frames["tx"] == 3 and snap.bytes["tx"] == sum(map(len, frames))
    assert snap.kinds["tx"]["ipv4"] == 2 and snap.kinds["tx"]["arp"] == 1


def test_a_change_of_checksum_state_ends_a_run(tap: tuple[int, int]) -> None:
    port, peer, _counters = _port(tap[1], vnet=True)
    out = Output()
    small = SmallFrames(peer, 1.0, out)
    frame = ipv4(REMOTE, LOCAL)
    port.from_tap(bytes(VNET_HDR_LEN) + frame, 1.0, peer.frame_room(), small)
    assert small.frames == [frame] and small.csum is None
    port.from_tap(csum_hdr(34, 6) + frame, 1.0, peer.frame_room(), small)
    # the plain frame went to the core; the partial one waits with its checksum
    assert small.frames == [frame] and small.csum == (34, 6)
    assert len(out.datagrams) == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00" * (VNET_HDR_LEN - 1), "tap_short_read"),
        (VnetHdr(0, GsoType.UDP_L4, 42, 1000, 0, 0).encode() + ipv4(REMOTE, LOCAL, 3000),
         "gso_unsupported"),
    ],
    ids=["short", "udp-superframe"],
)
def test_unusable_tap_reads_are_counted_drops(
    tap: tuple[int, int], data: bytes, reason: str
) -> None:
    port, peer, counters = _port(tap[1], vnet=True)
    out = Output()
    port.from_tap(data, 1.0, peer.frame_room(), SmallFrames(peer, 1.0, out))
    snap = counters.snapshot(1.0)
    assert snap.drops[reason] == 1 and snap.frames["tx"] == 0
    assert not out.datagrams


def test_delivered_frames_reach_the_tap_and_are_counted(tap: tuple[int, int]) -> None:
    port, peer, counters = _port(tap[1])
    frames = [ipv4(LOCAL, REMOTE), ipv4(LOCAL, REMOTE, 200)]
    port.deliver(frames, {}, 2.0)
    assert [os.read(tap[0], 2048) for _ in frames] == frames
    snap = counters.snapshot(2.0).peers[peer.name]
    assert snap.frames["rx"] == 2 and snap.remote_macs["count"] == 1


def test_a_failed_tap_write_is_a_counted_drop(tap: tuple[int, int]) -> None:
    port, peer, counters = _port(tap[1])
    os.close(tap[0])  # the tap is gone: writes fail
    port.deliver([ipv4(LOCAL, REMOTE)], {}, 2.0)
    snap = counters.snapshot(2.0).peers[peer.name]
    assert snap.drops["tap_write_failed"] == 1 and snap.frames["rx"] == 0
