"""Two gateways at site A, one at site B (issue 24): one forwards, the other takes over.

  hostA1 ─┐            ┌─ [gwA ] ─┐
  hostA2 ─┴─ [swA br0] ┤          ├─ [wan] ─ [gwB] ─ [swB] ─ hostB1
                       └─ [gwA2] ─┘

One lab and one set of daemons for every case (module fixture): hostA1 pings
hostB1 every 0.1 s while the active gateway of site A is SIGKILLed, loses its
LAN cable, loses its WAN cable, stops cleanly, and has its namespace deleted.
The outage is the longest run of unanswered pings (printed); duplicates (DUP!)
must be none.  Between them: twenty quiet seconds (no MAC flap, no loop), and a
partition of the group on site A's switch (the loop guard holds; it heals to
one active without a flap).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridger.lab.ha import (
    PEER_NAMES,
    SECOND,
    HaGateways,
    HaLab,
    Outage,
    ping_outage,
    wait_for,
)

pytestmark = pytest.mark.netns

HERE = Path(__file__).parent
INTERVAL = 0.1
#: The issue's bounds.
CRASH_BOUND = 2.0
CLEAN_BOUND = 0.5


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaGateways]:
    with HaLab() as lab, HaGateways(lab, tmp_path_factory.mktemp("ha")) as gws:
        for role in ("gwB", "gwA", SECOND):
            gws.start(role)
        assert wait_for(lambda: all(gws.peers_up(r) for r in ("gwA", SECOND, "gwB")), 40), \
            gws.logs()
        assert wait_for(lambda: len(gws.active()) == 1, 10), gws.logs()
        assert wait_for(lambda: lab.run("hostA1", "ping", "-c", "1", "-W", "1",
                                        lab.lan_address("hostB1"),
                                        check=False).returncode == 0, 20), gws.logs()
        yield gws


def other(role: str) -> str:
    return SECOND if role == "gwA" else "gwA"


def the_active(gws: HaGateways) -> str:
    """The one active gateway of site A (status queries may time out on a busy host)."""
    found: list[str] = []

    def one() -> bool:
        found[:] = gws.active()
        return len(found) == 1

    assert wait_for(one, 20), gws.logs()
    return found[0]


def through(gws: HaGateways, failure: Callable[[str], None], seconds: float = 5.0,
            lead: float = 1.0) -> tuple[Outage, str, str]:
    """Ping hostB1 from hostA1 every INTERVAL for ``seconds``; ``lead`` s in, apply
    ``failure`` to the active gateway of site A.  Returns the outage, the old and the
    new active."""
    lab = gws.lab
    old = the_active(gws)
    count = int(seconds / INTERVAL)
    ping = lab.popen("hostA1", "ping", "-n", "-i", str(INTERVAL), "-W", "1", "-c", str(count),
                     lab.lan_address("hostB1"), stdout=subprocess.PIPE, text=True)
    time.sleep(lead)  # the failure happens while the pings run
    failure(old)
    out, _ = ping.communicate(timeout=seconds + 30)
    result = ping_outage(out, INTERVAL)
    new = other(old)
    assert wait_for(lambda: gws.role_of(new) == "active", 10), gws.logs()
    return result, old, new


def diagnose(gws: HaGateways) -> str:
    """What the bridges and gateways think, for a failure message."""
    lab = gws.lab
    parts = [gws.logs()]
    for role, bridge in (("swA", "br0"), ("gwB", "bridger0"), ("gwA", "bridger0"),
                         (SECOND, "bridger0")):
        if role in ("gwA", SECOND) and role not in gws.procs:
            continue
        fdb = lab.run(role, "bridge", "fdb", "show", "br", bridge, "dynamic", check=False)
        parts.append(f"--- {role} fdb ---\n{fdb.stdout}")
        if role != "swA":
            links = lab.run(role, "bridge", "link", check=False).stdout
            stats = lab.run(role, "ip", "-s", "link", check=False).stdout
            parts.append(f"--- {role} links ---\n{links}\n{stats}")
    for role in ("gwA", SECOND, "gwB"):
        if role in gws.procs:
            doc = gws.status(role, timeout=40) or {}
            parts.append(f"--- {role} ---\n{doc.get('ha')}\nguard {doc.get('guard')}\n"
                         + "\n".join(
                f"{p['name']} {p['state']} {p['frames']} "
                f"{ {k: v for k, v in p['drops'].items() if v} }" for p in doc.get("peers", [])))
    return "\n".join(parts)


def status_part(gws: HaGateways, role: str, part: str) -> dict[str, Any]:
    """``part`` of ``role``'s status document (a query that times out on a busy host
    is asked again)."""
    found: dict[str, Any] = {}

    def answered() -> bool:
        found.update((gws.status(role, timeout=20) or {}).get(part) or {})
        return bool(found)

    assert wait_for(answered, 60), f"{role}: no status"
    return found


def ha_doc(gws: HaGateways, role: str) -> dict[str, Any]:
    return status_part(gws, role, "ha")


def guard_of(gws: HaGateways, role: str) -> dict[str, Any]:
    return status_part(gws, role, "guard")


def report(kind: str, result: Outage) -> None:
    print(f"\n{kind}: outage {result.outage:.1f} s ({result.lost} of {result.sent} pings "
          f"lost), {result.duplicates} duplicates")


def tunnel_carries(gws: HaGateways, role: str) -> bool:
    """gwB's bridge has learnt ``role``'s presence MAC behind ``role``'s tap: the
    standby's data reaches site B over its current session."""
    doc = gws.status(role) or {}
    presence = (doc.get("ha") or {}).get("presence")
    if not presence:
        return False
    tap = PEER_NAMES[role]
    fdb = gws.lab.run("gwB", "bridge", "fdb", "show", "br", "bridger0", "dynamic",
                      check=False).stdout
    return any(line.startswith(presence) and f"dev {tap} " in line for line in fdb.splitlines())


def restart(gws: HaGateways, role: str) -> None:
    gws.start(role)
    assert wait_for(lambda: gws.role_of(role) == "standby" and gws.peers_up(role), 30), \
        gws.logs()
    assert wait_for(lambda: tunnel_carries(gws, role), 30), diagnose(gws)


def test_one_active_one_standby_no_duplicates_no_loop(ha: HaGateways) -> None:
    standby = other(the_active(ha))
    assert ha.role_of(standby) == "standby"
    doc = ha.status(standby) or {}
    assert set(doc["ha"]["gate"].values()) == {"disabled"}, doc["ha"]
    # Kernel-visible: the standby's taps are disabled bridge ports.
    links = ha.lab.run(standby, "bridge", "link").stdout.splitlines()
    taps = [line for line in links if " eth1" not in line and "master" in line]
    assert taps and all("state disabled" in line for line in taps), links
    assert any(" eth1" in line and "state forwarding" in line for line in links), links
    out = ha.lab.run("hostA1", "ping", "-n", "-i", "0.1", "-c", "20",
                     ha.lab.lan_address("hostB1"), check=False).stdout
    result = ping_outage(out, INTERVAL)
    assert result.received == result.sent and result.duplicates == 0, out
    for role in ("gwA", SECOND, "gwB"):
        guard = (ha.status(role) or {}).get("guard") or {}
        assert guard.get("loops_detected", 0) == 0, (role, guard)
    assert "flapping" not in ha.logs().lower()


def test_twenty_quiet_seconds_no_flap_no_loop_no_duplicate(ha: HaGateways) -> None:
    """Both gateways up: in steady state nothing moves, the loop guard never fires,
    no MAC-flap line is logged, and no frame is delivered twice."""
    active = the_active(ha)
    standby = other(active)
    before = {role: ha_doc(ha, role)["changes"] for role in (active, standby)}
    guards = {role: guard_of(ha, role) for role in ("gwA", SECOND, "gwB")}
    out = ha.lab.run("hostA1", "ping", "-n", "-i", str(INTERVAL), "-c", "200",
                     ha.lab.lan_address("hostB1"), check=False, timeout=120).stdout
    result = ping_outage(out, INTERVAL)
    print(f"\nsteady state: {result.received} of {result.sent} pings answered, "
          f"{result.duplicates} duplicates")
    assert result.received == result.sent and result.duplicates == 0, out
    assert {role: ha_doc(ha, role)["changes"] for role in (active, standby)} == before
    assert all(ha_doc(ha, role)["wan"] == "ok" for role in (active, standby))
    for role, before_guard in guards.items():
        guard = guard_of(ha, role)
        assert guard["loops_detected"] == before_guard["loops_detected"], (role, guard)
        assert guard["mac_flaps"]["total"] == before_guard["mac_flaps"]["total"], (
            role, guard["mac_flaps"])
    assert "flapping" not in ha.logs().lower()


def test_sigkill_of_the_active(ha: HaGateways) -> None:
    def kill(role: str) -> None:
        ha.stop(role, signal.SIGKILL)

    result, old, _new = through(ha, kill)
    report("SIGKILL", result)
    assert result.duplicates == 0
    assert result.outage <= CRASH_BOUND, diagnose(ha)
    ha.down(old)
    restart(ha, old)


def test_lan_cable_cut_of_the_active(ha: HaGateways) -> None:
    result, old, _new = through(ha, lambda role: ha.lab.cut_lan(role))
    report("LAN cable cut", result)
    assert result.duplicates == 0
    assert result.outage <= CRASH_BOUND, diagnose(ha)
    assert wait_for(lambda: ha.role_of(old) == "standby", 10), ha.logs()
    ha.lab.cut_lan(old, cut=False)
    time.sleep(0)  # the plugged gateway listens, hears the active and stays standby
    assert wait_for(lambda: ha.role_of(old) == "standby", 10)
    assert len(ha.active()) == 1


def test_wan_cable_cut_of_the_active(ha: HaGateways) -> None:
    """Its peers fall silent (the WAN veth loses its carrier): it steps down for the
    standby, which still hears them; with its WAN back it stays standby."""
    result, old, new = through(ha, lambda role: ha.lab.cut_wan(role))
    report("WAN cable cut", result)
    assert result.duplicates == 0
    assert result.outage <= CRASH_BOUND, diagnose(ha)
    assert wait_for(lambda: ha.role_of(old) == "standby", 10), ha.logs()
    assert ha_doc(ha, old)["wan"] == "lost"
    changes = ha_doc(ha, new)["changes"]
    ha.lab.cut_wan(old, cut=False)
    assert wait_for(lambda: ha_doc(ha, old)["wan"] == "ok", 30), ha.logs()
    assert wait_for(lambda: tunnel_carries(ha, old), 30), diagnose(ha)
    assert ha.role_of(old) == "standby" and ha.active() == [new]  # no handback
    assert ha_doc(ha, new)["changes"] == changes
    assert "WAN lost" in ha.files[old].log.read_text()


def test_clean_stop_hands_over_and_tcp_survives(ha: HaGateways) -> None:
    lab = ha.lab
    receiver = lab.popen("hostB1", sys.executable, str(HERE / "tcpxfer.py"), "recv", "5201",
                         stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "listening"
    sender = lab.popen("hostA1", sys.executable, str(HERE / "tcpxfer.py"), "send",
                       lab.lan_address("hostB1"), "5201", "4s",
                       stdout=subprocess.PIPE, text=True)
    result, old, _new = through(ha, lambda role: ha.stop(role, signal.SIGTERM))
    report("clean stop", result)
    sent_out, _ = sender.communicate(timeout=60)
    got_out, _ = receiver.communicate(timeout=60)
    assert sent_out.split()[-2:] == got_out.split()[-2:], (sent_out, got_out)
    print(f"TCP across the handover: {sent_out.split()[-2]} bytes, byte-exact")
    assert result.duplicates == 0
    assert result.outage <= CLEAN_BOUND, diagnose(ha)
    restart(ha, old)


def switch_frames(gws: HaGateways) -> int:
    """Frames in and out of every port of site A's switch so far."""
    text = gws.lab.run("swA", "cat", "/proc/net/dev").stdout
    return sum(int(fields[1]) + int(fields[9]) for line in text.splitlines()[2:]
               if len(fields := line.partition(":")[2].split()) > 9)


#: Frames through site A's switch in the partition's three seconds of pings (about
#: 150 are pings, probes and group frames); a storm is thousands a second.
STORM = 3000


def test_partition_loop_guard_holds_and_heals_to_one_active(ha: HaGateways) -> None:
    """The gateways stop hearing each other on the LAN (group frames dropped by the
    switch): both forward; site B's loop guard blocks one tunnel, so there is no
    storm and nothing arrives twice (pings may still go to the blocked tunnel until
    the hosts re-resolve: the switch learnt site B's hosts behind it).  Healed, one
    steps down once; the other never moves."""
    lab = ha.lab
    first = the_active(ha)
    second = other(first)
    loops = guard_of(ha, "gwB")["loops_detected"]
    lab.split_group()
    try:
        assert wait_for(lambda: ha.role_of(second) == "active", 15), ha.logs()
        assert wait_for(lambda: guard_of(ha, "gwB")["loops_detected"] > loops, 20), diagnose(ha)
        frames = switch_frames(ha)
        out = lab.run("hostA1", "ping", "-n", "-i", str(INTERVAL), "-c", "30", "-W", "1",
                      lab.lan_address("hostB1"), check=False, timeout=60).stdout
        frames = switch_frames(ha) - frames
        during = ping_outage(out, INTERVAL)
        print(f"\npartition: {during.received} of {during.sent} pings answered, "
              f"{during.duplicates} duplicates, {frames} frames through site A's switch "
              "(the loop guard's cut)")
        assert frames < STORM and during.duplicates == 0, out
        changes = {role: ha_doc(ha, role)["changes"] for role in (first, second)}
    finally:
        lab.split_group(False)
    assert wait_for(lambda: len(ha.active()) == 1, 15), ha.logs()
    (winner,) = ha.active()
    loser = other(winner)
    assert ha_doc(ha, winner)["changes"] == changes[winner]  # the winner never moved
    assert ha_doc(ha, loser)["changes"] == changes[loser] + 1  # one step down
    # The guard lets go once no probe comes back; then nothing is delivered twice.
    assert wait_for(lambda: not guard_of(ha, "gwB")["blocked"], 60), diagnose(ha)
    assert wait_for(lambda: tunnel_carries(ha, loser), 30), diagnose(ha)
    out = lab.run("hostA1", "ping", "-n", "-i", str(INTERVAL), "-c", "20",
                  lab.lan_address("hostB1"), check=False, timeout=60).stdout
    after = ping_outage(out, INTERVAL)
    assert after.received == after.sent and after.duplicates == 0, out


def test_namespace_deletion_of_the_active(ha: HaGateways) -> None:
    """Once an expected failure: about one run in three (every run in CI) the outage
    was the rest of the ping window (~4 s).  Site B's bridge kept site A's MACs
    behind the deleted gateway because nothing from the new active reached site B
    at all: without netem the lab's WAN is a userspace wire, and it ended as soon
    as one of its interfaces vanished (the deleted gateway's veth), taking every
    site's WAN with it.  It happened whenever the kernel dismantled the namespace
    within the ping window.  The wire now ends only the vanished pair."""

    def delete(role: str) -> None:
        ha.stop(role, signal.SIGKILL)
        ha.lab.delete_gateway(role)

    result, _old, _new = through(ha, delete)
    report("namespace deleted", result)
    assert result.duplicates == 0
    assert result.outage <= CRASH_BOUND, diagnose(ha)
    if ha.lab.engine == "wire":  # the lab's WAN outlived the deleted gateway's cable
        assert "pB" in ha.lab.wire_stats()
