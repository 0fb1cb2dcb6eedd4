"""A hub and 12 spokes (issue 26): idle, the hub forwards no spoke's loop probes
to the other spokes; spokes reach each other through the hub; the loop guard
still cuts a cable between two spokes' LANs and one between the hub's LAN and a
spoke's within 2 s; every spoke restarted at once comes back without a burst of
handshakes; ``python3 -m bridger.lab cleanup`` removes a dead run's hub lab,
a SIGTERMed run tears its own down.

  [hosthub]─gwhub ─┐
  [host001]─gw001 ─┼─ WAN       (bridger.lab.hub: one host per site behind a
     ...           │             small switch, so a cable can join two LANs)
  [host012]─gw012 ─┘

Figures (start-up, idle CPU) are printed; the machine may be shared, so only
bounds that cannot flake are asserted.  benchmarks/scale.py measures N up to 100.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridger.lab.hub import (
    HUB,
    HandshakeCapture,
    HubLab,
    cleanup_stale_hub_labs,
    hub_handshakes,
    hub_lab_owners,
    peer_name,
    sample_pairs,
)
from bridger.lab.topology import list_namespaces
from bridger.lab.wait import wait_until

pytestmark = pytest.mark.netns

SPOKES = 12
#: The hub's own probes: one per PROBE_INTERVAL (0.5 s, -10 %) to each spoke.
PROBES_PER_SECOND = 1 / 0.45


@pytest.fixture(scope="module")
def hub_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubLab]:
    with HubLab(SPOKES, tmp_path_factory.mktemp("hub")) as lab:
        took = lab.start_hub()
        began = lab.start(list(lab.sites)[1:])
        up = lab.wait_up(within=120, since=began)
        assert up is not None, f"spokes {lab.waiting()} not up\n{lab.logs()}"
        print(f"\nhub answered after {took:.1f} s; {SPOKES} spokes up {up.all_up:.1f} s after"
              f" their start (last process ready {up.last_ready:.1f} s, longest handshake"
              f" {up.handshake:.1f} s)")
        yield lab


#: Seconds a status query may take (the machine may be loaded).
QUERY = 10.0


def spoke_peer(lab: HubLab, site: int) -> dict[str, Any]:
    doc = lab.gateways[site].status(timeout=QUERY)
    assert doc is not None, lab.logs([site])
    peer: dict[str, Any] = doc["peers"][0]
    return peer


def hub_guard(lab: HubLab) -> dict[str, Any]:
    doc = lab.gateways[HUB].status(timeout=QUERY)
    assert doc is not None, lab.logs([HUB])
    return doc


def blocked_at_hub(lab: HubLab) -> dict[str, float]:
    """Peer -> when the hub blocked it, on our clock (its ``loop_for`` counted back from
    the moment we asked: the query's own delay on a loaded machine is not counted)."""
    asked = time.monotonic()  # the hub's snapshot is taken after this
    doc = hub_guard(lab)
    return {p["name"]: asked - float(p["guard"]["loop_for"]) for p in doc["peers"]
            if (p.get("guard") or {}).get("loop")}


def test_an_idle_hub_sends_each_spoke_only_its_own_probes(hub_lab: HubLab) -> None:
    """Before issue 26 each spoke received every other spoke's probes through the
    hub: 2 x 11 a second more than the hub's own 2."""
    lab = hub_lab
    spokes = [1, 6, 12]
    before = {s: spoke_peer(lab, s)["kinds"]["rx"]["other"] for s in spokes}
    began = time.monotonic()
    cpu = lab.idle_cpu([HUB, *spokes], 5.0)
    elapsed = time.monotonic() - began
    after = {s: spoke_peer(lab, s)["kinds"]["rx"]["other"] for s in spokes}
    spent = time.monotonic() - began
    for s in spokes:
        got = after[s] - before[s]
        # At most the hub's own probes (its clock, not ours, paces them).
        assert got <= PROBES_PER_SECOND * spent + 2, (s, got, spent)
    print(f"idle over {elapsed:.1f} s: hub {100 * cpu[HUB]:.1f}% of a core, spokes "
          + ", ".join(f"{100 * cpu[s]:.1f}%" for s in spokes)
          + f"; probes received per spoke {[after[s] - before[s] for s in spokes]}")
    assert cpu[HUB] < 0.5  # a sanity bound only: before the fix 12 spokes cost 4-8 %


def test_spokes_reach_each_other_through_the_hub(hub_lab: HubLab) -> None:
    for a, b in sample_pairs(SPOKES, 4):
        assert hub_lab.wait_ping(a, b, within=30) is not None, (a, b, hub_lab.logs([HUB, a, b]))


def wait_released(lab: HubLab, within: float = 40.0) -> None:
    assert wait_until(lambda: not blocked_at_hub(lab) and not any(
        (spoke_peer(lab, s).get("guard") or {}).get("loop") for s in lab.sites if s != HUB),
        within, 0.5) is not None, lab.logs(tail=5)


def test_a_cable_between_two_spokes_lans_is_cut_at_the_hub_within_2_s(
        hub_lab: HubLab) -> None:
    lab = hub_lab
    a, b = 3, 9
    cable = lab.cable(a, b)
    plugged = time.monotonic()  # (the cable is in: both ends up)
    try:
        seen = wait_until(lambda: bool(blocked_at_hub(lab)), 10.0, 0.05)
        assert seen is not None, f"no loop detected within 10 s\n{lab.logs([HUB, a, b])}"
        blocked = blocked_at_hub(lab)
        found = min(blocked.values()) - plugged  # the hub's own clock
        print(f"cable {a}-{b}: loop cut at the hub {found:.2f} s after the cable went in"
              f" (blocked: {sorted(blocked)})")
        assert found < 2.0
        assert set(blocked) <= {peer_name(a), peer_name(b)} and len(blocked) == 1, blocked
        # Both LANs still reach the rest: one through its tunnel, the other by the cable.
        for src, dst in ((a, 1), (b, 1), (a, b)):
            assert lab.wait_ping(src, dst, within=30) is not None, (src, dst)
    finally:
        lab.unplug(a, cable)
    wait_released(lab)


def test_a_cable_between_the_hubs_lan_and_a_spokes_lan_is_cut_within_2_s(
        hub_lab: HubLab) -> None:
    lab = hub_lab
    spoke = 5
    cable = lab.cable(HUB, spoke)
    plugged = time.monotonic()
    try:
        seen = wait_until(lambda: peer_name(spoke) in blocked_at_hub(lab), 10.0, 0.05)
        assert seen is not None, f"no loop detected within 10 s\n{lab.logs([HUB, spoke])}"
        found = blocked_at_hub(lab)[peer_name(spoke)] - plugged
        print(f"cable hub-{spoke}: loop cut at the hub {found:.2f} s after the cable went in")
        assert found < 2.0
        assert set(blocked_at_hub(lab)) == {peer_name(spoke)}
    finally:
        lab.unplug(HUB, cable)
    wait_released(lab)


#: Handshake messages one spoke may exchange with the hub within one second of a
#: restart of every spoke: its initiation, a crossing initiation of the hub's
#: (a retry towards the old process), the responses (4 seen), one spare; or its
#: initiation, a cookie reply of a hub under load, the initiation again with
#: the cookie, the response.
BURST_PER_SITE = 5
#: Seconds from a restarted spoke's first handshake message to the hub until
#: a response crossed (tcpdump's clock): one round trip, or a crossing the hub
#: settles within HANDSHAKE_RACE_RESEND (1 s), or a cookie reply and the retry
#: with the cookie within 0.05-0.38 s.  A retransmission (5 s) is over it.
HANDSHAKE_ON_THE_WIRE = 2.0


def wire_handshakes(lab: HubLab, capture: HandshakeCapture) -> dict[int, float | None]:
    """Spoke -> seconds from the first handshake message its new process sent
    the hub to the first response (either way) that no cookie reply refused
    (None: none seen), from the capture: the handshake itself, without the
    start-up of the process or the polling of its status."""
    wall = time.time() - time.monotonic()  # the capture's clock minus the lab's
    took: dict[int, float | None] = {}
    for site in lab.sites:
        if site == HUB:
            continue
        started = lab.gateways[site].started_at + wall
        mine = [m for m in capture.messages if m.spoke == site and m.at >= started]
        first = next((m.at for m in mine if m.inbound), None)
        took[site] = None
        for i, msg in enumerate(mine):
            if first is None or msg.at < first or msg.kind != "response":
                continue
            refused = any(m.kind == "cookie" and m.inbound != msg.inbound for m in mine[i + 1:])
            if not refused:
                took[site] = msg.at - first
                break
    return took


def test_every_spoke_restarted_at_once_comes_back_without_a_storm(hub_lab: HubLab) -> None:
    """Every spoke stopped, then all started at the same moment: each is back
    within the issue's 10 s once its process runs (on this shared two-core
    machine the start of a dozen Python processes is not bridger's to bound),
    its handshake takes under HANDSHAKE_ON_THE_WIRE from its first message to
    the hub (a hub under load made it wait for its 5 s retransmission with a
    cookie: 5.9 s at 50 spokes; the retry with the cookie now goes within
    0.4 s, and a burst of initiations is no load), and the hub's WAN link
    (tcpdump) never carries a burst of handshakes for
    one spoke: the hub's own retries towards the stopped spokes are jittered
    (its dead-peer timers all started on one probe round), not in lockstep."""
    lab = hub_lab
    before = hub_handshakes(hub_guard(lab))
    back, capture = lab.restart_spokes(within=120)
    assert back is not None, f"spokes {lab.waiting()} not back\n{lab.logs()}"
    after = hub_handshakes(hub_guard(lab))
    most = max(after[k] - before[k] for k in after)
    spoke, burst = capture.most_in_a_second()
    per_spoke = capture.per_spoke()
    wire = wire_handshakes(lab, capture)
    cookies = sum(m.kind == "cookie" for m in capture.messages)
    longest = max((t for t in wire.values() if t is not None), default=0.0)
    print(f"{SPOKES} spokes restarted at once: all up after {back.all_up:.1f} s (last process"
          f" ready {back.last_ready:.1f} s, longest handshake {back.handshake:.1f} s polled,"
          f" {longest:.2f} s on the wire, {cookies} cookie replies);"
          f" at most {most} handshakes per spoke at the hub; handshake messages per spoke"
          f" {min(per_spoke.values(), default=0)}-{max(per_spoke.values(), default=0)}, at most"
          f" {burst} within a second (spoke {spoke}), {capture.busiest_second()} in the hub's"
          f" busiest second")
    assert back.handshake < 10.0, back
    slow = {site: t for site, t in wire.items() if t is None or t > HANDSHAKE_ON_THE_WIRE}
    assert not slow, (slow, [m for m in capture.messages if m.spoke in slow])
    assert burst <= BURST_PER_SITE, [m for m in capture.messages if m.spoke == spoke]
    assert most <= 3  # no storm of handshakes: one each, a retry or two at most
    for a, b in sample_pairs(SPOKES, 2):
        assert lab.wait_ping(a, b, within=15) is not None, (a, b)


def test_status_of_the_hub_lists_every_spoke(hub_lab: HubLab) -> None:
    doc = hub_guard(hub_lab)
    assert sorted(p["name"] for p in doc["peers"]) == sorted(
        peer_name(s) for s in hub_lab.sites if s != HUB)
    assert doc["guard"]["relayed"] == 0  # no other hub: nothing to relay


def test_cleanup_stops_and_removes_a_dead_runs_hub_lab(tmp_path: Path) -> None:
    """A run SIGKILLed with its hub lab up (no teardown ran): ``python3 -m
    bridger.lab cleanup``'s hub part stops the gateways it left running and removes every
    namespace (before, the classic lab's cleanup removed the ``wan`` one alone
    and left the others unmarked).  Only this test's lab is looked at."""
    prefix = f"bh{secrets.token_hex(3)}"
    child, names, gateways = held_lab(prefix, tmp_path)
    child.kill()
    child.wait()
    assert prefix in hub_lab_owners()
    removed = cleanup_stale_hub_labs(only={prefix})
    assert sorted(removed) == sorted(names)
    assert not [n for n in list_namespaces() if n.partition("-")[0] == prefix]
    assert wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in gateways),
                      10.0) is not None, gateways


def held_lab(prefix: str, tmp_path: Path) -> tuple[subprocess.Popen[str], list[str], list[int]]:
    """A child run holding a hub lab of one spoke (HOLD_LAB), once ready: the
    process, the lab's namespaces and the gateways' pids (the child is killed
    if it never gets there)."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LAB, prefix, str(tmp_path)], stdout=subprocess.PIPE,
        text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        assert line == "ready", line
        names = [n for n in list_namespaces() if n.partition("-")[0] == prefix]
        assert len(names) == 5, names  # wan, gwhub, hosthub, gw001, host001
        gateways = [int(pid) for name in names for pid in subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True,
            check=False).stdout.split()]
        assert gateways
    except BaseException:
        child.kill()
        child.wait()
        raise
    return child, names, gateways


#: A hub lab of one spoke, held until killed ("ready" once the hub answers).
HOLD_LAB = """
import sys, time
from pathlib import Path
from bridger.lab.hub import HubLab
lab = HubLab(1, Path(sys.argv[2]), prefix=sys.argv[1])
lab.build()
lab.start_hub()
lab.start([1])
print("ready", flush=True)
time.sleep(600)
"""


def test_a_sigtermed_run_tears_its_hub_lab_down(tmp_path: Path) -> None:
    """SIGTERM to a run holding a hub lab (a benchmark stopped with kill or
    timeout) stops its gateways and removes its namespaces, as the classic
    lab does: nothing is left for ``cleanup``."""
    prefix = f"bh{secrets.token_hex(3)}"
    child, _names, gateways = held_lab(prefix, tmp_path)
    try:
        child.terminate()
        assert child.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        cleanup_stale_hub_labs(only={prefix})
    assert not [n for n in list_namespaces() if n.partition("-")[0] == prefix]
    assert prefix not in hub_lab_owners()
    assert not any(Path(f"/proc/{pid}").exists() for pid in gateways), gateways
