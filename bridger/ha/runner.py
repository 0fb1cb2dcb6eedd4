"""The group's shell: the election's frames on the LAN, the gate, the announcements.

1. Before the privileges go (root, ``bridger.daemon``): two AF_PACKET
   sockets (``GroupSockets``: receive EtherType 0x88B6 on the bridge; send:
   unbound) and, journaled by the host set-up, an nftables rule that keeps
   group frames from being forwarded by our own bridge into the taps (they
   stay on the LAN).  The runner is handed the sockets and a ``GroupHost``:
   the port-state, flush and FDB verbs, done in this process or asked of the
   root monitor (``bridger.ha.gate``).  At assembly every tap starts
   *disabled*: nothing forwards before the election says so.
2. Running: one task receives frames and feeds ``Election.receive_untrusted``;
   one sleeps until ``next_deadline``, ticks, sends HELLOs out of the LAN NIC,
   watches the LAN link's carrier (``Election.fault``) and re-applies the gate
   every second (a tap a reload adds joins forwarding); one looks at the taps'
   receive counters every PEER_POLL (what the data plane wrote into them: frames
   from the peers, whatever the gate) and tells ``Election.peers_heard``; a
   fourth, while active, sends the MAC lists (from the bridge's FDB) every
   SYNC_INTERVAL.  A HELLO the election wants sent at once (a role or WAN
   change, the answer to an active that lost its WAN) leaves from whichever
   task caused it.
3. A role change: one log line, the gate (disabled or forwarding), and on
   becoming active the announcements: each LAN MAC into every tap (the peers'
   bridges learn it behind us), each remote MAC out of the LAN NIC (the LAN
   switches learn it behind us); source = destination, so each frame dies at
   the first bridge.  Sent again 1, 3 and 7 s later (after a partition, the
   peers' loop guards may still block our tunnel for a few seconds).
4. Stop: an active gates itself off first, then sends BYE (the others take
   over at once); the host's restore removes the nftables rule.

``follow`` mode (keepalived): no frames; the role is read from a state file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bridger.config import HaSettings
from bridger.errors import HostError
from bridger.ha import wire
from bridger.ha.election import (
    HELLO_INTERVAL,
    Election,
    Follower,
    GroupConfig,
    Reannounce,
    Role,
    RoleChanged,
    WanChanged,
)
from bridger.ha.gate import (
    BR_STATE_DISABLED,
    BR_STATE_FORWARDING,
    GateError,
    GroupHost,
    GroupSockets,
)
from bridger.ha.gate import containment_script as containment_script  # (its old home)

log = logging.getLogger("bridger")

#: Seconds between re-applying the gate, reading the follow file, checking the LAN link.
ENFORCE_INTERVAL = 1.0
FOLLOW_POLL = 0.2
#: Seconds between looks at the taps' receive counters (``election.PROBE_GAP``
#: counts it in), and the gap between two looks that means we were not scheduled.
PEER_POLL = 0.05
PEER_STALL = 0.25
#: Announcements per batch, and the pause between batches (the peers' storm budget).
ANNOUNCE_BATCH = 200
ANNOUNCE_PAUSE = 0.05
#: When the announcements go again, seconds after the first (a peer's loop guard
#: releases a tunnel 2-2.5 s after a loop is gone, longer on a repeat).
ANNOUNCE_AGAIN = (1.0, 3.0, 7.0)


def _mac_of(ifname: str) -> bytes:
    text = Path(f"/sys/class/net/{ifname}/address").read_text().strip()
    return bytes.fromhex(text.replace(":", ""))


def _text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def _rx_packets() -> dict[str, int]:
    """Each interface's received packets (/proc/net/dev, one read for all).  For a
    tap: the frames the data plane wrote into it (from its peer), whatever the
    bridge port's state."""
    counts: dict[str, int] = {}
    try:
        text = Path("/proc/net/dev").read_text()
    except OSError:
        return counts
    for line in text.splitlines()[2:]:
        name, sep, fields = line.partition(":")
        values = fields.split()
        if sep and len(values) > 1 and values[1].isdigit():
            counts[name.strip()] = int(values[1])
    return counts


def _carrier(ifname: str) -> bool:
    try:
        return Path(f"/sys/class/net/{ifname}/carrier").read_text().strip() == "1"
    except OSError:
        return False


class HaRunner:
    """One gateway's part in its site's group (module docstring)."""

    def __init__(self, settings: HaSettings, public_key: bytes, lan: str, bridge: str,
                 taps: Callable[[], list[str]], host: GroupHost, sockets: GroupSockets,
                 contained: bool, group_key: bytes | None) -> None:
        """``host``: the port-state, flush and FDB verbs; ``sockets``: opened while
        privileged (both are the runner's to close); ``contained``: whether the
        host set-up made the nftables rule (for status); ``group_key``: the
        contents of ``settings.group_key``, read before the drop (the file is
        root's; None when following keepalived)."""
        self.settings = settings
        self.lan = lan
        self.bridge = bridge
        self.taps = taps
        self.host = host
        self.sockets = sockets
        self.tx = sockets.tx
        now = time.monotonic()
        self.core: Election | Follower
        if settings.follow is not None:
            self.core = Follower(now, f"state file {settings.follow}")
        else:
            assert settings.site is not None and group_key is not None
            self.core = Election(GroupConfig(
                site=settings.site, site_tag=wire.site_tag(settings.site),
                node=wire.node_id(public_key), key=wire.auth_key(group_key, settings.site),
                priority=settings.priority,
            ), now, secrets.token_bytes(8))
        self.rx = sockets.rx if isinstance(self.core, Election) else None
        try:
            self.src = _mac_of(bridge)
        except OSError as exc:
            raise HostError(f"two gateways per site: cannot read the MAC of {bridge}: "
                            f"{exc.strerror or exc}") from exc
        #: Our standby presence MAC: locally administered unicast, new each start (a
        #: peer's bridge that has it behind our tap takes data of this run).
        self.presence = bytes([0x06]) + secrets.token_bytes(5)
        self.gated: dict[str, int] = {}
        self.announced = {"to_peers": 0, "to_lan": 0, "rounds": 0}
        #: The MACs of the last announcement (at most 32 of each), for status.
        self.last_announce: dict[str, list[str]] = {"local": [], "remote": []}
        self.errors = {"send": 0, "gate": 0}
        self.contained = contained
        self._nursery: trio.Nursery | None = None
        self._last_reason = ""
        self._tap_rx: dict[str, int] = {}  # each tap's rx_packets at the last look
        self._announcing: trio.CancelScope | None = None
        self._looked_at = time.monotonic()
        self.apply_gate(force=True)

    # -- what status views read -----------------------------------------------------------

    @property
    def role(self) -> Role:
        return self.core.role

    def status_text(self) -> str:
        """The systemd STATUS line's first words, e.g. ``active (site london)``."""
        where = (f"site {self.settings.site}" if self.settings.site else "keepalived")
        return f"{self.core.role.value} ({where})"

    def snapshot(self) -> dict[str, Any]:
        doc = self.core.snapshot(time.monotonic())
        doc["presence"] = _text(self.presence)
        doc["announced"] = dict(self.announced)
        doc["last_announce"] = dict(self.last_announce)
        doc["errors"] = dict(self.errors)
        doc["gate"] = {tap: ("forwarding" if state == BR_STATE_FORWARDING else "disabled")
                       for tap, state in sorted(self.gated.items())}
        return doc

    # -- the gate ---------------------------------------------------------------------------

    def apply_gate(self, force: bool = False, want: int | None = None) -> None:
        """Every tap's bridge port as the role wants it (errors counted, logged once)."""
        if want is None:
            want = self._wanted()
        for tap in self.taps():
            if force or self.gated.get(tap) != want:
                self._gate(tap, want)

    def gate_new(self, tap: str, fd: int) -> None:
        """A tap a reload just added: its port as the role wants it at once (the
        bridge enslaved it forwarding), and what it queued meanwhile discarded."""
        self._gate(tap, self._wanted())
        self.drain([fd])

    def _wanted(self) -> int:
        """The bridge port state the role wants of every tap."""
        return BR_STATE_FORWARDING if self.core.forwarding else BR_STATE_DISABLED

    def _gate(self, tap: str, want: int) -> None:
        try:
            self.host.set_port_state(tap, want)
        except GateError as exc:
            if self.errors["gate"] == 0:
                log.warning("ha: cannot set the bridge port state of %s (%s)", tap, exc)
            self.errors["gate"] += 1
            return
        self.gated[tap] = want

    def drain(self, fds: list[int]) -> int:
        """Discard what the taps queued before the gate closed (the bridge put the
        LAN's floods there between the host set-up and now); the frames read."""
        dropped = 0
        for fd in fds:
            while select.select([fd], [], [], 0)[0]:
                try:
                    os.read(fd, 65536)
                except OSError:
                    break
                dropped += 1
        return dropped

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if isinstance(self.core, Election):
                    self.core.begin(time.monotonic())
                self._handle(self.core.take_events())
                if self.rx is not None:
                    nursery.start_soon(self._receive)
                    nursery.start_soon(self._sync)
                    nursery.start_soon(self._watch_peers)
                nursery.start_soon(self._timers)
        finally:
            self.stop()

    def stop(self) -> None:
        """Gate off, then BYE (a clean stop hands over at once); idempotent."""
        if self._nursery is None:
            return
        self._nursery = None
        was_active = self.core.forwarding
        payloads = (self.core.goodbye(time.monotonic()) if isinstance(self.core, Election)
                    else [])
        self.apply_gate(force=True, want=BR_STATE_DISABLED)
        for payload in payloads:
            self._send(wire.frame(self.src, payload), self.lan)
        if was_active:
            log.info("ha: stopping: forwarding handed over (goodbye sent)")
        self.sockets.close()
        self.host.close()

    async def _receive(self) -> None:
        assert self.rx is not None
        while True:
            await trio.lowlevel.wait_readable(self.rx)
            self._take_frames()

    def _take_frames(self) -> None:
        """Every frame waiting on the socket, into the election.  Also run before each
        tick: after the process was not scheduled for a while, the HELLOs that queued
        meanwhile count before anyone is declared silent."""
        if self.rx is None or not isinstance(self.core, Election):
            return
        self._look_at_peers()  # a stall is known before a frame is weighed
        while True:
            try:
                data, address = self.rx.recvfrom(2048)
            except BlockingIOError:
                return
            except OSError:
                self.core.drops["socket"] += 1
                return
            if address[2] == socket.PACKET_OUTGOING:
                continue
            self.core.receive_untrusted(data[wire.ETH_HLEN:], time.monotonic())
            self._send_due()

    async def _timers(self) -> None:
        next_enforce = 0.0
        while True:
            now = time.monotonic()
            if now >= next_enforce:
                next_enforce = now + ENFORCE_INTERVAL
                self._enforce(now)
            if isinstance(self.core, Election):
                self._take_frames()
                self._send_due()
                wake = min(self.core.next_deadline(time.monotonic()), next_enforce)
            else:
                wake = min(time.monotonic() + FOLLOW_POLL, next_enforce)
                self._follow(time.monotonic())
            await trio.sleep(max(0.0, min(wake - time.monotonic(), HELLO_INTERVAL)))

    async def _sync(self) -> None:
        """The active's MAC lists, in a task of their own (an FDB read never delays a
        HELLO)."""
        assert isinstance(self.core, Election)
        while True:
            if self.core.sync_due(time.monotonic()):
                local, remote = await trio.to_thread.run_sync(self._read_fdb)
                for payload in self.core.macs(sorted(local), sorted(remote), time.monotonic()):
                    self._send(wire.frame(self.src, payload), self.lan)
            await trio.sleep(HELLO_INTERVAL)

    def _send_due(self) -> None:
        """The election's timers, now: what it wants sent goes out, its events are
        handled.  The taps' counters are looked at first: after the process was not
        scheduled for a while, frames from the peers meanwhile count before our WAN
        is declared silent (as ``_take_frames`` does for the group's frames)."""
        assert isinstance(self.core, Election)
        self._look_at_peers()
        for payload in self.core.tick(time.monotonic()):
            self._send(wire.frame(self.src, payload), self.lan)
        self._handle(self.core.take_events())

    async def _watch_peers(self) -> None:
        while True:
            if self._look_at_peers():
                self._send_due()
            await trio.sleep(PEER_POLL)

    def _look_at_peers(self) -> bool:
        """Tell the election if any tap received frames (from its peer) since the last
        look: our WAN works (``Election.peers_heard``).  Whether one did."""
        assert isinstance(self.core, Election)
        now = time.monotonic()
        if now - self._looked_at > PEER_STALL:
            self.core.stalled(now)
        self._looked_at = now
        counts = _rx_packets()
        seen = {tap: counts[tap] for tap in self.taps() if tap in counts}
        heard = any(count > self._tap_rx.get(tap, count) for tap, count in seen.items())
        self._tap_rx = seen
        if heard:
            self.core.peers_heard(time.monotonic())
        return heard

    def _enforce(self, now: float) -> None:
        if isinstance(self.core, Election):
            self.core.fault(not _carrier(self.lan), now)
            self._handle(self.core.take_events())
        self.apply_gate(force=True)
        if not self.core.forwarding:
            # Data through each tunnel, so each peer holds a confirmed session with
            # us when we take over (a peer answering our handshake keeps its old
            # session until data comes on the new one).  From a MAC of our own that
            # nothing else uses: the peers' bridges learn it behind us, no flap.
            for tap in self.taps():
                self._send(wire.announcement(self.presence), tap)

    def _follow(self, now: float) -> None:
        assert isinstance(self.core, Follower) and self.settings.follow is not None
        try:
            text = self.host.read_follow(self.settings.follow)
        except OSError:
            return  # no state yet: stay as we are
        if not self.core.set_untrusted(text, now) and self.core.bad_states == 1:
            log.warning("ha: %s holds %r, not a state (MASTER, BACKUP, FAULT, STOP, active, "
                        "standby)", self.settings.follow, text.strip()[:20])
        self._handle(self.core.take_events())

    def _handle(self, events: list[RoleChanged | Reannounce | WanChanged] | list[RoleChanged],
                ) -> None:
        for event in events:
            if isinstance(event, WanChanged):
                log.info("ha: WAN %s (%s)", "back" if event.ok else "lost", event.reason)
                continue
            if isinstance(event, Reannounce):
                log.info("ha: %s; announcing the MACs again", event.reason)
                self._start_announce()
                continue
            log.info("ha: %s -> %s (%s)", event.previous.value, event.role.value, event.reason)
            self.apply_gate(force=True)
            if event.role is Role.ACTIVE:
                self._start_announce()

    # -- announcements ----------------------------------------------------------------------

    def _start_announce(self) -> None:
        """Announce from now on; an announcement still going is superseded (its
        later rounds would repeat this one's)."""
        if self._announcing is not None:
            self._announcing.cancel()
        if self._nursery is not None:
            self._announcing = trio.CancelScope()
            self._nursery.start_soon(self._announce, self._announcing)

    async def _announce(self, scope: trio.CancelScope) -> None:
        with scope:
            await self._announce_rounds()

    async def _announce_rounds(self) -> None:
        start = trio.current_time()
        for round_, offset in enumerate((0.0, *ANNOUNCE_AGAIN)):
            if round_:
                await trio.sleep_until(start + offset)
            if not self.core.forwarding:
                return
            fdb_local, fdb_remote = await trio.to_thread.run_sync(self._read_fdb)
            synced_local: set[bytes] = set()
            synced_remote: set[bytes] = set()
            if isinstance(self.core, Election):
                synced_local, synced_remote = self.core.known_macs(time.monotonic())
            # The old active's lists say which side a MAC is on; our own FDB's LAN port
            # also holds remote MACs the old active flooded onto the LAN.
            remote = (synced_remote | fdb_remote) - fdb_local - {self.src}
            local = (synced_local | fdb_local | {self.src}) - synced_remote - fdb_remote
            if round_ == 0:
                # Our bridge learnt the remote MACs on its LAN port while standby (the
                # old active flooded their frames onto the LAN): forget them, so that
                # frames to them go to the taps (as STP does on a topology change).
                try:
                    self.host.flush_lan()
                except GateError as exc:
                    self.errors["gate"] += 1
                    log.warning("ha: cannot flush the LAN port's learnt MACs (%s)", exc)
            self.last_announce = {
                "local": [_text(m) for m in sorted(local)][:32],
                "remote": [_text(m) for m in sorted(remote)][:32],
            }
            frames = [(wire.announcement(mac), tap) for mac in sorted(local)
                      for tap in self.taps()]
            frames += [(wire.announcement(mac), self.lan) for mac in sorted(remote)]
            for start in range(0, len(frames), ANNOUNCE_BATCH):
                if start:
                    await trio.sleep(ANNOUNCE_PAUSE)
                for data, ifname in frames[start:start + ANNOUNCE_BATCH]:
                    if self._send(data, ifname):
                        self.announced["to_lan" if ifname == self.lan else "to_peers"] += 1
            self.announced["rounds"] += 1
            if round_ == 0:
                log.info("ha: announced %d LAN MACs to the peers and %d remote MACs to the LAN",
                         len(local), len(remote))

    def _read_fdb(self) -> tuple[set[bytes], set[bytes]]:
        """(MACs learnt on the LAN port, MACs learnt on the taps) from the bridge's FDB."""
        local: set[bytes] = set()
        remote: set[bytes] = set()
        try:
            lan_index = socket.if_nametoindex(self.lan)
            bridge_index = socket.if_nametoindex(self.bridge)
            taps = set()
            for tap in self.taps():
                with contextlib.suppress(OSError):
                    taps.add(socket.if_nametoindex(tap))
            entries = self.host.read_fdb()
        except OSError:
            self.errors["fdb"] = self.errors.get("fdb", 0) + 1
            return local, remote
        for port, master, mac in entries:
            if master != bridge_index:
                continue
            if port == lan_index:
                local.add(mac)
            elif port in taps:
                remote.add(mac)
        return local, remote

    def _send(self, data: bytes, ifname: str) -> bool:
        try:
            self.tx.sendto(data, (ifname, 0))
        except OSError:
            self.errors["send"] += 1
            return False
        return True


def describe(settings: HaSettings) -> str:
    if settings.follow is not None:
        return f"following {settings.follow}"
    return f"site {settings.site}, priority {settings.priority}"

