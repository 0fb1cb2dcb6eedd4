"""The election on a virtual clock: members joined by a fake LAN that can drop,
partition and replay frames (seeded), the way the protocol suite runs two devices."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable

import pytest

from bridger.ha import wire
from bridger.ha.election import (
    HELLO_INTERVAL,
    HOLD,
    PROBE_GAP,
    WAN_FRESH,
    WAN_HOLD,
    Election,
    Follower,
    GroupConfig,
    Reannounce,
    Role,
    RoleChanged,
    WanChanged,
)

GROUP_KEY = bytes(range(32))
STEP = 0.01


def config(n: int, priority: int = 100, site: str = "london",
           key: bytes = GROUP_KEY) -> GroupConfig:
    return GroupConfig(site=site, site_tag=wire.site_tag(site),
                       node=wire.node_id(bytes([n]) * 32), key=wire.auth_key(key, site),
                       priority=priority)


#: The remote peers' loop-guard probes: one through each tunnel every 0.5 +- 0.1 s
#: (the shell sees them up to 0.05 s late: PROBE_GAP).
PROBE_EVERY = (0.4, 0.6)


class FakeLan:
    """Members on one segment; every frame reaches every other member (unless cut).

    With ``wan`` each member also hears its peers (``peers_heard``) at the peers'
    probe rate, each with its own phase, unless its WAN cable is out (``wan_cut``)."""

    def __init__(self, seed: int = 1, loss: float = 0.0, wan: bool = True) -> None:
        self.members: dict[str, Election] = {}
        self.now = 0.0
        self.rng = random.Random(seed)
        self.loss = loss
        self.wan = wan
        self.next_probe: dict[str, float] = {}
        self.wan_cut: set[str] = set()  # members whose WAN cable is out
        #: Members not scheduled (a busy host): what reaches them waits in a queue.
        self.frozen: dict[str, list[bytes]] = {}
        self.cut: set[str] = set()  # members whose cable is out
        self.deaf: set[str] = set()  # members that receive nothing (one-way loss)
        self.dead: set[str] = set()
        self.heard: list[bytes] = []  # every payload sent (for replays)
        self.history: list[tuple[float, dict[str, Role]]] = []

    def add(self, name: str, cfg: GroupConfig) -> Election:
        member = Election(cfg, self.now, self.rng.randbytes(8))
        self.members[name] = member
        # The first probe after the tunnels' handshakes.
        self.next_probe[name] = self.now + 0.1 + self.rng.uniform(*PROBE_EVERY)
        return member

    def deliver(self, sender: str, payloads: Iterable[bytes]) -> None:
        for payload in payloads:
            self.heard.append(payload)
            if sender in self.cut:
                continue
            for name, member in self.members.items():
                if name == sender or name in self.dead or name in self.cut or name in self.deaf:
                    continue
                if self.rng.random() < self.loss:
                    continue
                if name in self.frozen:
                    self.frozen[name].append(payload)
                    continue
                member.receive_untrusted(payload, self.now)

    def thaw(self, name: str) -> None:
        """``name`` is scheduled again: the shell's first look sees the gap, then the
        queued frames count (the peers' frames come at their next probe)."""
        member = self.members[name]
        member.stalled(self.now)
        for payload in self.frozen.pop(name):
            member.receive_untrusted(payload, self.now)

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + STEP, 6)
            for name, member in list(self.members.items()):
                if name in self.dead or name in self.frozen:
                    continue
                if self.wan and self.now >= self.next_probe[name]:
                    self.next_probe[name] = self.now + self.rng.uniform(*PROBE_EVERY)
                    if name not in self.wan_cut:
                        member.peers_heard(self.now)
                if member.next_deadline(self.now) <= self.now:
                    self.deliver(name, member.tick(self.now))
            self.history.append((self.now, self.roles()))

    def roles(self) -> dict[str, Role]:
        return {n: m.role for n, m in self.members.items() if n not in self.dead}

    def active(self) -> list[str]:
        return [n for n, r in self.roles().items() if r is Role.ACTIVE]

    def when_active(self, name: str, after: float) -> float | None:
        for t, roles in self.history:
            if t > after and roles.get(name) is Role.ACTIVE:
                return t
        return None

    def max_active(self, after: float = 0.0) -> int:
        return max(sum(r is Role.ACTIVE for r in roles.values())
                   for t, roles in self.history if t > after)


def pair(priorities: tuple[int, int] = (100, 100), **kw: float) -> FakeLan:
    lan = FakeLan(**kw)  # type: ignore[arg-type]
    lan.add("a", config(1, priorities[0]))
    lan.add("b", config(2, priorities[1]))
    return lan


def test_two_members_agree_on_one_active_and_never_overlap() -> None:
    lan = pair()
    lan.run(3.0)
    assert len(lan.active()) == 1
    assert lan.max_active() == 1
    # Deterministic: equal priorities, the higher node id wins; the other is standby.
    winner = max(lan.members, key=lambda n: lan.members[n].config.node)
    assert lan.active() == [winner]
    assert all(m.changes <= 2 for m in lan.members.values())  # listening -> role, once


def test_priority_decides_whatever_the_ids() -> None:
    for prio in ((200, 100), (100, 200)):
        lan = pair(prio)
        lan.run(3.0)
        assert lan.active() == ["a" if prio[0] > prio[1] else "b"]


def test_active_silent_standby_takes_over_within_hold_plus_a_hello() -> None:
    lan = pair()
    lan.run(3.0)
    (old,) = lan.active()
    new = "a" if old == "b" else "b"
    died = lan.now
    lan.dead.add(old)  # SIGKILL: no BYE
    lan.run(3.0)
    took = lan.when_active(new, died)
    assert took is not None and took - died <= HOLD + HELLO_INTERVAL + 2 * STEP
    assert lan.members[new].take_events()[-1].reason.startswith("active member")


def test_goodbye_hands_over_at_once() -> None:
    lan = pair()
    lan.run(3.0)
    (old,) = lan.active()
    new = "a" if old == "b" else "b"
    lan.deliver(old, lan.members[old].goodbye(lan.now))
    assert lan.members[old].role is Role.STANDBY
    assert lan.members[new].role is Role.ACTIVE  # same instant
    assert "said goodbye" in lan.members[new].take_events()[-1].reason


def test_equal_newcomer_does_not_preempt_higher_priority_does_without_overlap() -> None:
    lan = FakeLan()
    lan.add("a", config(1))
    lan.run(2.0)
    assert lan.active() == ["a"]
    lan.add("b", config(9))  # higher node id, same priority
    lan.run(3.0)
    assert lan.active() == ["a"] and lan.members["a"].changes == 1
    joined = lan.now
    lan.add("c", config(3, priority=150))
    lan.run(3.0)
    assert lan.active() == ["c"]
    assert lan.max_active(after=joined) == 1  # the old active stepped down first
    gap = lan.when_active("c", joined)
    assert gap is not None and gap - joined <= HOLD + HELLO_INTERVAL + 0.05


def test_partition_heals_to_one_active_with_one_change_only() -> None:
    lan = pair()
    lan.run(3.0)
    (winner,) = lan.active()
    loser = "a" if winner == "b" else "b"
    lan.cut.add(loser)
    lan.run(3.0)
    assert sorted(lan.active()) == ["a", "b"]  # both forward: the loop guard's turn
    changes = {n: m.changes for n, m in lan.members.items()}
    lan.cut.clear()
    lan.run(3.0)
    assert lan.active() == [winner]
    assert lan.members[winner].changes == changes[winner]  # the winner never flapped
    assert lan.members[loser].changes == changes[loser] + 1


def test_lossy_lan_no_flaps() -> None:
    lan = pair(loss=0.2)
    lan.run(30.0)
    assert len(lan.active()) == 1
    assert all(m.changes <= 2 for m in lan.members.values()), \
        {n: m.changes for n, m in lan.members.items()}


def test_stranger_without_the_key_cannot_make_the_active_stand_down() -> None:
    lan = pair()
    lan.run(3.0)
    (active,) = lan.active()
    stranger = Election(config(9, priority=255, key=bytes(32)), lan.now, b"s" * 8)
    for _ in range(50):
        lan.now += 0.05
        lan.deliver("x", stranger.tick(lan.now) + stranger.goodbye(lan.now))
        lan.run(0.05)
    assert lan.active() == [active]
    assert lan.members[active].drops["auth"] > 0


def test_other_site_frames_are_ignored() -> None:
    lan = pair()
    other = Election(config(7, priority=255, site="paris"), 0.0, b"p" * 8)
    lan.run(3.0)
    (active,) = lan.active()
    lan.deliver("x", other.tick(lan.now))
    assert lan.members[active].drops["other_site"] == 1
    assert lan.active() == [active]


def test_replayed_hellos_of_a_dead_active_do_not_keep_it_alive() -> None:
    lan = pair()
    lan.run(3.0)
    (old,) = lan.active()
    new = "a" if old == "b" else "b"
    recorded = list(lan.heard)
    died = lan.now
    lan.dead.add(old)
    for payload in recorded[-40:]:  # the attacker replays what it captured
        lan.now += 0.02
        lan.members[new].receive_untrusted(payload, lan.now)
        lan.run(0.02)
    took = lan.when_active(new, died)
    assert took is not None and took - died <= HOLD + HELLO_INTERVAL + 0.1
    assert lan.members[new].drops["replay"] > 0


def test_frames_of_a_previous_run_never_count_again() -> None:
    lan = pair()
    lan.run(3.0)
    old_frames = [p for p in lan.heard[-20:]]
    # "b" restarts: a new Election (new nonce) under the same name.
    lan.members["b"] = Election(config(2), lan.now, b"n" * 8)
    lan.run(3.0)
    a = lan.members["a"]
    before = a.drops["replay"]
    for payload in old_frames:
        a.receive_untrusted(payload, lan.now)
    assert a.drops["replay"] >= before + 1
    assert len(lan.active()) == 1


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_are_counted_drops(seed: int) -> None:
    rng = random.Random(seed)
    member = Election(config(1), 0.0, b"m" * 8)
    good = Election(config(2), 0.0, b"g" * 8).tick(0.0)[0]
    for _ in range(300):
        choice = rng.random()
        if choice < 0.3:
            data = rng.randbytes(rng.randrange(0, 200))
        elif choice < 0.6:  # a genuine frame with bytes flipped or cut
            flipped = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            data = bytes(flipped)
        else:
            data = good[: rng.randrange(len(good))]
        member.receive_untrusted(data, 0.0)
    assert member.role is Role.LISTENING and not member.members.get(b"x")
    assert sum(member.drops.values()) >= 300 - 1


def test_mac_lists_reach_the_standby() -> None:
    lan = pair()
    lan.run(3.0)
    (active,) = lan.active()
    standby = "a" if active == "b" else "b"
    local = [os.urandom(6) for _ in range(250)]
    remote = [os.urandom(6) for _ in range(30)]
    assert lan.members[active].sync_due(lan.now)
    payloads = lan.members[active].macs(local, remote, lan.now)
    assert len(payloads) == 2
    lan.deliver(active, payloads)
    known_local, known_remote = lan.members[standby].known_macs(lan.now)
    assert known_local == set(local) and known_remote == set(remote)
    assert lan.members[standby].macs(local, remote, lan.now) == []  # standby sends none


def test_follower_maps_keepalived_states() -> None:
    follower = Follower(0.0, "state file")
    assert follower.role is Role.STANDBY and not follower.forwarding
    assert follower.set_untrusted("MASTER\n", 1.0) and follower.forwarding
    assert not follower.set_untrusted("bogus", 2.0) and follower.forwarding
    assert follower.set_untrusted("FAULT", 3.0) and not follower.forwarding
    assert [e.role for e in follower.take_events()] == [Role.ACTIVE, Role.STANDBY]


@pytest.mark.parametrize("offset", [0.0, 0.05, 0.3, 0.5, 0.99, 1.5])
@pytest.mark.parametrize("order", [(1, 2), (2, 1)])
def test_staggered_starts_settle_without_a_flap(offset: float, order: tuple[int, int]) -> None:
    lan = FakeLan()
    lan.add("first", config(order[0]))
    lan.run(offset)
    lan.add("second", config(order[1]))
    lan.run(4.0)
    assert len(lan.active()) == 1 and lan.max_active() == 1
    assert all(m.changes == 1 for m in lan.members.values()), \
        {n: [m.changes, m.role] for n, m in lan.members.items()}


def test_lan_link_down_stands_down_and_back_listens() -> None:
    lan = pair()
    lan.run(3.0)
    (active,) = lan.active()
    member = lan.members[active]
    lan.cut.add(active)
    member.fault(True, lan.now)
    assert member.role is Role.STANDBY
    lan.run(2.0)
    other = "a" if active == "b" else "b"
    assert lan.active() == [other]
    lan.cut.clear()
    member.fault(False, lan.now)
    lan.run(3.0)
    assert lan.active() == [other]  # the group went on without it: no handback


# -- the WAN (issue 24: "its LAN or WAN cable cut") ---------------------------------------


def settled_pair(seed: int = 1, priorities: tuple[int, int] = (100, 100)) -> tuple[
        FakeLan, str, str]:
    lan = FakeLan(seed=seed)
    lan.add("a", config(1, priorities[0]))
    lan.add("b", config(2, priorities[1]))
    lan.run(3.0)
    (active,) = lan.active()
    for member in lan.members.values():
        member.take_events()
    return lan, active, "a" if active == "b" else "b"


@pytest.mark.parametrize("seed", range(10))
def test_wan_cut_of_the_active_hands_over_within_hold_plus_a_probe(seed: int) -> None:
    lan, old, new = settled_pair(seed)
    cut = lan.now
    lan.wan_cut.add(old)
    lan.run(3.0)
    assert lan.active() == [new] and lan.max_active(after=cut) == 1  # stepped down first
    took = lan.when_active(new, cut)
    # Its last probe came before the cut; the standby's proof (rule 4) comes at most
    # PROBE_GAP - WAN_FRESH after the active's loss.
    assert took is not None and round(took - cut, 6) <= WAN_HOLD + PROBE_GAP - WAN_FRESH + 5 * STEP
    events = lan.members[old].take_events()
    assert any(isinstance(e, WanChanged) and not e.ok for e in events), events
    (stepped,) = [e for e in events if isinstance(e, RoleChanged)]
    assert stepped.role is Role.STANDBY and "no peer heard" in stepped.reason
    took_over = lan.members[new].take_events()
    assert [type(e) for e in took_over] == [RoleChanged], took_over  # one announcement
    assert "hears no peer" in took_over[0].reason
    assert lan.members[old].snapshot(lan.now)["wan"] == "lost"
    assert lan.members[new].snapshot(lan.now)["members"][0]["wan"] == "lost"


def test_wan_back_does_not_hand_back() -> None:
    lan, old, new = settled_pair()
    lan.wan_cut.add(old)
    lan.run(3.0)
    changes = {n: m.changes for n, m in lan.members.items()}
    lan.wan_cut.clear()
    lan.run(5.0)
    assert lan.active() == [new]
    assert {n: m.changes for n, m in lan.members.items()} == changes
    assert any(isinstance(e, WanChanged) and e.ok for e in lan.members[old].take_events())


def test_standby_without_wan_never_takes_over_nor_disturbs() -> None:
    lan, active, standby = settled_pair()
    lan.wan_cut.add(standby)
    lan.run(5.0)
    lan.wan_cut.clear()
    lan.run(5.0)
    assert lan.active() == [active] and lan.members[active].changes == 1
    assert lan.members[standby].changes == 1


@pytest.mark.parametrize("seed", range(20))
def test_both_lose_the_wan_nobody_moves_nor_when_it_is_back(seed: int) -> None:
    """A shared uplink (rule 4): no handover while both are cut off, none when it
    comes back."""
    lan, active, _standby = settled_pair(seed)
    before = {n: m.changes for n, m in lan.members.items()}
    lan.wan_cut.update(lan.members)
    lan.run(10.0)
    assert lan.active() == [active]
    assert {n: m.changes for n, m in lan.members.items()} == before
    assert all(m.snapshot(lan.now)["wan"] == "lost" for m in lan.members.values())
    back = lan.now
    lan.wan_cut.clear()
    lan.run(10.0)
    assert lan.active() == [active] and lan.max_active(after=back) == 1
    assert {n: m.changes for n, m in lan.members.items()} == before


def test_the_wan_outranks_the_priority_and_the_priority_preempts_when_it_is_back() -> None:
    lan, active, _standby = settled_pair(priorities=(200, 100))
    assert active == "a"
    lan.wan_cut.add("a")
    lan.run(3.0)
    assert lan.active() == ["b"]
    lan.wan_cut.clear()
    lan.run(3.0)
    assert lan.active() == ["a"] and lan.max_active() == 1  # the admin's priority, as set


def test_a_member_without_wan_still_takes_over_from_a_dead_active() -> None:
    """Alone it is the best there is (and it forwards as soon as its WAN is back)."""
    lan, old, new = settled_pair()
    lan.wan_cut.add(new)
    lan.run(2.0)
    lan.dead.add(old)
    lan.run(3.0)
    assert lan.active() == [new]


def test_members_that_never_hear_their_peers_elect_as_before() -> None:
    """No probes through the tunnels (the peers' loop guards off, nothing sent): every
    member says WAN_LOST, so the WAN decides nothing."""
    lan = FakeLan(wan=False)
    lan.add("a", config(1))
    lan.add("b", config(2))
    lan.run(10.0)
    winner = max(lan.members, key=lambda n: lan.members[n].config.node)
    assert lan.active() == [winner] and all(m.changes == 1 for m in lan.members.values())


@pytest.mark.parametrize("seed", range(10))
def test_a_stalled_active_does_not_take_its_own_silence_for_a_cut_wan(seed: int) -> None:
    """Not scheduled for 1 s (under the LAN's HOLD): at its first look the peers'
    frames still wait in its queues and the standby's HELLOs that say WAN_FRESH
    were sent long ago.  Nothing moves."""
    lan, active, _standby = settled_pair(seed)
    before = {n: m.changes for n, m in lan.members.items()}
    lan.frozen[active] = []
    lan.run(1.0)
    lan.thaw(active)
    lan.run(3.0)
    assert lan.active() == [active]
    assert {n: m.changes for n, m in lan.members.items()} == before


def test_listening_starts_when_the_shell_begins_not_when_it_was_built() -> None:
    """A gateway whose host set-up took 3 s (a busy host) listens for HOLD from its
    first read, and hears the active member: standby, not a second active."""
    lan = FakeLan()
    lan.add("a", config(1))
    lan.run(3.0)
    late = Election(config(2, priority=100), lan.now - 3.0, b"L" * 8)  # built 3 s ago
    late.begin(lan.now)
    lan.members["b"] = late
    lan.next_probe["b"] = lan.now + 0.3
    lan.run(3.0)
    assert lan.active() == ["a"] and lan.max_active() == 1
    assert late.changes == 1 and late.role is Role.STANDBY


def test_partition_heals_with_a_reannouncement_even_if_the_loser_was_never_heard_active(
        ) -> None:
    """The loser heard the winner first and stepped down before the winner counted
    one of its frames: the winner must still announce again (the switches and the
    peers learnt the MACs behind the loser meanwhile)."""
    lan, winner, loser = settled_pair()
    lan.cut.add(loser)
    lan.run(3.0)
    assert sorted(lan.active()) == ["a", "b"]
    lan.members[winner].take_events()
    # Only the winner's frames cross at first: the loser steps down.
    lan.cut.discard(loser)
    lan.deaf = {winner}
    lan.run(0.5)
    assert lan.members[loser].role is Role.STANDBY
    lan.deaf.clear()
    lan.run(1.0)
    events = lan.members[winner].take_events()
    assert any(isinstance(e, Reannounce) for e in events), events
    assert lan.active() == [winner]


def test_a_starting_member_waits_for_a_member_it_hears_but_cannot_count_yet() -> None:
    """Its HELLOs do not reach the active for 1.5 s (a busy host): the active's
    frames come but do not echo its nonce, so they do not count.  It listens on
    (LISTEN_EXTRA at most) instead of going active beside it."""
    lan = FakeLan()
    lan.add("a", config(1))
    lan.run(3.0)
    lan.add("b", config(2))
    lan.deaf = {"a"}
    lan.run(1.5)
    assert lan.members["b"].role is Role.LISTENING
    lan.deaf.clear()
    lan.run(2.0)
    assert lan.active() == ["a"] and lan.max_active() == 1
    assert lan.members["b"].role is Role.STANDBY and lan.members["b"].changes == 1
