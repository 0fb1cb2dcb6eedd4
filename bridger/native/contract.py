"""The contract between the native lane (``bn_lane.h``, ``bn_py_lane.c``) and
Python: the one module that knows the layout of what the lane hands over and
counts.  Everything else reads the records defined here.

1. ``take_punts(lane)``: the queued hand-overs, in order, each a record named
   by its ``Punt`` kind.  All but ``HandshakePunt`` come with the fd they came
   from held (the tap, or the UDP socket): Python runs its own pass over it and
   gives it back (``Lane.release``).
2. ``take_stats(lane)``: what the lane counted since the last take, as
   ``Stats`` (``LaneStats``, one ``PortStats`` per port that saw traffic, the
   source-MAC log); taking zeroes the lane's counters.

The C side exports its tuples' field order (``PORT_STAT_FIELDS``,
``LANE_STAT_FIELDS``, ``DIR_FIELDS``, ``MACLOG_FIELDS``); the constants below
copy ``#define``s of bn_lane.h.  ``tests/native/test_contract.py`` holds both
equal to the C, and the wire constants equal to ``bridger.protocol``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, NamedTuple

from bridger.protocol.constants import LABEL_MAC1
from bridger.protocol.noise import hash_

# --- implementation constants (bn_lane.h) ---------------------------------------------

#: Ports (peers' taps) one lane serves.
MAX_PORTS = 256
#: Reads per fd per wake-up of the lane's loop (``forward.BATCH``'s role).
BATCH = 64
#: Handshake messages waiting for Python at most; more are shed (counted).
HS_QUEUE = 256
#: Handshake messages admitted per second from sources that are no peer's endpoint
#: (each costs Python about 100 us, mostly for a cookie reply: at 500/s that was 5-8%
#: of a core under a spoofed flood; a hub's 100 spokes behind NATs, all strangers
#: after its restart, fit in the burst and one second).
HS_RATE = 100.0
#: ... and the burst of that bucket.
HS_BURST = 64.0
#: Of those, per source address (IPv4; IPv6: its /64) per second, and the burst.
HS_SOURCE_RATE = 20.0
HS_SOURCE_BURST = 5.0
#: Source addresses the lane keeps a bucket for (hashed slots).
HS_SOURCES = 1024
#: Transport indexes only Python holds (unconfirmed sessions) the lane is told of.
MAX_PY_INDEXES = 256
#: Seconds between two takes of path-MTU reports from the lane at least (it
#: reads the socket's error queue itself and keeps the smallest meanwhile).
MTU_INTERVAL = 0.05
#: Errors the lane reads off the socket's error queue per wake-up, at most.
ERRQ_BATCH = 64

# --- copies of specification constants (bn_lane.h / bn.h, tested equal) -------------

#: ``constants.REJECT_AFTER_TIME``: the lane refuses older sessions.
REJECT_AFTER_TIME = 180.0
#: ``HASH(LABEL_MAC1 || public key)`` length: the lane's mac1 key.
MAC1_KEY_LEN = 64


class Punt(IntEnum):
    """What the lane hands over (``BN_PUNT_*`` in bn_lane.h)."""

    #: A tap read the lane does not forward (no session, a broadcast, a frame
    #: the guards must see, one to fragment...); the tap is held.
    TAP = 1
    #: Datagrams as received (roaming, an index only Python holds) and those
    #: received after them.  The UDP socket is held.
    RAW = 2
    #: An opened, counted inner message other than a frame (fragments, path-MTU
    #: probes and acks); the UDP socket is held.
    PAYLOAD = 3
    #: An opened, counted frame the inbound guard must see; the UDP socket is held.
    FRAME = 4
    #: A handshake message that passed the lane's length and mac1 checks,
    #: through the bounded queue; nothing is held.
    HANDSHAKE = 5
    #: A path-MTU report the lane read off the socket's error queue, about a
    #: peer's endpoint (at most every MTU_INTERVAL; the smallest MTU per peer
    #: and kind meanwhile); nothing is held.
    MTU = 6


SockAddr = tuple[Any, ...]


class TapPunt(NamedTuple):
    port: int
    data: bytes


class RawPunt(NamedTuple):
    datagrams: list[bytes]
    sockaddr: SockAddr


class PayloadPunt(NamedTuple):
    port: int
    local_index: int
    plaintext: bytes
    #: The datagram's size (the payload's accounting).
    size: int
    sockaddr: SockAddr


class FramePunt(NamedTuple):
    port: int
    frame: bytes
    #: -1: no checksum to complete.
    csum_start: int
    csum_offset: int


class HandshakePunt(NamedTuple):
    data: bytes
    sockaddr: SockAddr


class MtuPunt(NamedTuple):
    port: int
    #: The endpoint the report is about (the datagram's destination).
    sockaddr: SockAddr
    mtu: int
    #: The local interface refused the datagram (EMSGSIZE), rather than a
    #: router's ICMP "fragmentation needed" / "packet too big".
    local: bool


HandOver = TapPunt | RawPunt | PayloadPunt | FramePunt | HandshakePunt | MtuPunt

_RECORDS: dict[int, Any] = {
    Punt.TAP: TapPunt, Punt.RAW: RawPunt, Punt.PAYLOAD: PayloadPunt, Punt.FRAME: FramePunt,
    Punt.HANDSHAKE: HandshakePunt, Punt.MTU: MtuPunt,
}


def take_punts(lane: Any) -> list[HandOver]:
    """The lane's queued hand-overs, in order (the queue is emptied)."""
    return [_RECORDS[row[0]](*row[1:]) for row in lane.take_punts()]


class DirCounts(NamedTuple):
    """One direction's frames, bytes and frame kinds (``bn_dir``; the kinds in
    ``dataplane.accounting``' order)."""

    frames: int
    bytes: int
    kinds: tuple[int, ...]


class PortStats(NamedTuple):
    """One port's counts and timer facts since the last take (``bn_port_stats``)."""

    port: int
    tx_frames: int
    tx_datagrams: int
    tx_bytes: int
    rx_datagrams: int
    rx_bytes: int
    rx_frames: int
    drop_auth: int
    drop_replay: int
    drop_too_old: int
    drop_too_big: int
    drop_malformed: int
    drop_stale: int
    tap_write_failed: int
    lan_to_wan: DirCounts
    wan_to_lan: DirCounts
    #: Core-clock times, 0.0: none since the last take.
    tx_first_data: float
    tx_last: float
    rx_last: float
    rx_first_data: float


class LaneStats(NamedTuple):
    """The lane's own counts since the last take (``bn_lane_stats``; ``wakeups``
    is a running total)."""

    rx_datagrams: int
    rx_bytes: int
    udp_send_blocked: int
    udp_send_failed: int
    udp_send_too_big: int
    wakeups: int
    maclog_lost: int
    gso_refused: int
    udp_truncated: int
    drop_malformed: int
    drop_unknown_index: int
    drop_mac1: int
    handshakes_queued: int
    handshakes_shed: int
    #: Errors the lane read off the socket's error queue (ICMP, local), and
    #: the path-MTU reports among them it handed over (``MtuPunt``).
    udp_errors: int
    mtu_reports: int


class MacLogEntry(NamedTuple):
    """Frames from one source MAC the lane moved (``bn_maclog_entry``)."""

    port: int
    #: 0: tap -> WAN, 1: WAN -> tap.
    direction: int
    mac: bytes
    frames: int
    bytes: int

    @property
    def inbound(self) -> bool:
        return self.direction == 1


class Stats(NamedTuple):
    lane: LaneStats
    ports: list[PortStats]
    macs: list[MacLogEntry]


_LAN_TO_WAN = PortStats._fields.index("lan_to_wan")
_WAN_TO_LAN = PortStats._fields.index("wan_to_lan")


def _port_stats(row: tuple[Any, ...]) -> PortStats:
    fields = list(row)
    fields[_LAN_TO_WAN] = DirCounts(*fields[_LAN_TO_WAN])
    fields[_WAN_TO_LAN] = DirCounts(*fields[_WAN_TO_LAN])
    return PortStats(*fields)


def take_stats(lane: Any) -> Stats:
    """What the lane counted since the last take, as records (zeroes it)."""
    device, ports, macs = lane.take_stats()
    return Stats(LaneStats(*device), [_port_stats(row) for row in ports],
                 [MacLogEntry(*m) for m in macs])


def mac1_key(public_key: bytes) -> bytes:
    """The key the lane checks handshake messages' mac1 with
    (``cookie.CookieChecker``'s: HASH(LABEL_MAC1 || our static public key))."""
    return hash_(LABEL_MAC1 + public_key)
