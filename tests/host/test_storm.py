"""Issue 21: storm control in the kernel, an nftables table made and undone through the journal.

The pure part (budgets, scripts, the counters' JSON) runs anywhere; the rest in a real
gateway namespace (hostlab.py), each test ending with no table and the host as before.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import pytest

from bridger.host import TapPlan, bring_up, storm
from bridger.host.storm import (
    StormBudget,
    counters_untrusted,
    nft_ident,
    table_name,
    tap_script,
)
from tests.host.hostlab import Topo, diff, down_in_ns, snapshot

BUDGET = StormBudget(500, 500)


# -- pure ---------------------------------------------------------------------------------------


def test_kernel_limits_are_the_guards_budgets_with_a_margin() -> None:
    # Guard: general 375/s burst 375, ARP/ND 125 of their own then the general, control 200.
    assert BUDGET.limits() == {"nd": (625, 625), "ctl": (250, 250), "flood": (469, 469)}
    assert StormBudget.of(0, 0, 0.25) is None  # flood_rate = 0: storm control off
    assert StormBudget.of(100, 0, 0.25) == StormBudget(100, 100)  # burst 0: one second's worth
    assert StormBudget(1, 1).limits()["flood"] == (1, 1)  # never a zero rate
    with pytest.raises(ValueError):
        StormBudget(0, 1)


def test_names_nft_cannot_take_are_made_identifiers_and_stay_distinct() -> None:
    assert nft_ident("site-b") == "site-b" and table_name("bridger0") == "bridger_bridger0"
    odd = [nft_ident(n) for n in ("a@b", "a+b", "a b")]
    assert len(set(odd)) == 3 and all(n.startswith("a_b_") for n in odd)


def test_tap_script_polices_group_frames_by_class() -> None:
    script = tap_script("bridger_br0", "site-b", BUDGET)
    assert "add limit bridge bridger_br0 flood_site-b { rate over 469/second burst 469 packets }" \
        in script
    assert 'add element bridge bridger_br0 taps { "site-b" : jump tap_site-b }' in script
    rules = [line for line in script.splitlines() if line.startswith("add rule")]
    # ARP (untagged, tagged), ND, probes, link-local: a limit then accept; the rest: a limit.
    assert len(rules) == 11 and rules[-1].endswith("limit name flood_site-b counter name "
                                                   "storm_site-b drop")
    assert all("counter name storm_site-b drop" in r or r.endswith(" accept") for r in rules)


def test_the_table_comes_with_the_planned_taps_or_alone_if_nft_refuses_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One nft run makes the table and the planned taps' chains; if nft refuses
    that whole, the table is made alone and no tap counts as policed (each is
    then added on its own as it is created, and a refusal is said per tap)."""
    runs: list[str] = []

    def nft(args: list[str], script: str | None, netns: str | None) -> str:
        runs.append(script or "")
        if refuse and "chain bridge bridger_br0 tap_" in (script or ""):
            raise storm.NftError("nft failed: Error: Could not process rule")
        return ""

    monkeypatch.setattr(storm, "run_nft", nft)
    refuse = False
    together = storm.KernelStorm("br0", BUDGET)
    together.create(["site-b", "site-c"])
    assert len(runs) == 1 and together.taps == {"site-b", "site-c"}
    assert "hook postrouting" in runs[0] and "tap_site-c" in runs[0]
    runs.clear()
    refuse = True
    alone = storm.KernelStorm("br0", BUDGET)
    alone.create(["site-b", "site-c"])
    assert len(runs) == 2 and "tap_" not in runs[1] and alone.taps == set()


def test_counters_json_is_read_untrusted() -> None:
    doc = {"nftables": [{"metainfo": {"version": "1.0.6"}},
                        {"counter": {"family": "bridge", "name": "storm_t0", "table": "T",
                                     "handle": 2, "packets": 42, "bytes": 1}},
                        {"counter": {"name": "storm_t1", "table": "other", "packets": 7}},
                        {"counter": {"name": "storm_t2", "table": "T", "packets": "x"}}]}
    assert counters_untrusted(json.dumps(doc), "T") == {"storm_t0": 42}
    for bad in ("", "[1]", '{"nftables": 3}', "{"):
        with pytest.raises(ValueError):
            counters_untrusted(bad, "T")


# -- in a gateway namespace ---------------------------------------------------------------------


def nft_tables(topo: Topo) -> str:
    return subprocess.run(topo.nsexec("nft", "list", "tables"), capture_output=True, text=True,
                          check=True).stdout


def nft_table(topo: Topo) -> str:
    return subprocess.run(topo.nsexec("nft", "list", "table", "bridge", table_name(topo.bridge)),
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.netns
def test_table_follows_the_taps_and_goes_with_the_restore(
        topo: Topo, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(topo.gw)
    taps = (TapPlan(f"{topo.tap}a", isolated=True), TapPlan(f"{topo.tap}b"))
    runs: list[str] = []
    real_run_nft = storm.run_nft

    def counted(args: list[str], script: str | None, netns: str | None) -> str:
        runs.append(script or " ".join(args))
        return real_run_nft(args, script, netns)

    monkeypatch.setattr(storm, "run_nft", counted)
    with bring_up(topo.plan(taps=taps, storm=BUDGET)) as session:
        assert session.storm is not None and session.storm.taps == {t.name for t in taps}
        # The table and every planned tap's chain: one nft run (issue 26: a hub's start).
        assert len(runs) == 1 and all(f"chain bridge {session.storm.table} tap_{t.name}"
                                      in runs[0] for t in taps), runs
        table = nft_table(topo)
        assert "hook postrouting" in table, table
        for tap in taps:
            assert f'"{tap.name}" : jump tap_{tap.name}' in table
        assert "del_nft_table" in (topo.state_dir / "journal.json").read_text()
        added = f"{topo.tap}c"
        session.add_tap(TapPlan(added))
        assert f"tap_{added}" in nft_table(topo)
        session.remove_tap(taps[1].name)
        table = nft_table(topo)
        assert f"tap_{taps[1].name}" not in table and f"storm_{taps[1].name}" not in table
        assert session.storm.read() == {taps[0].name: 0, added: 0}
    assert table_name(topo.bridge) not in nft_tables(topo)
    assert not diff(before, snapshot(topo.gw))
    assert not (topo.state_dir / "journal.json").exists()


@pytest.mark.netns
def test_a_crash_leaves_the_table_to_bridger_down(topo: Topo) -> None:
    before = snapshot(topo.gw)
    session = bring_up(topo.plan(storm=BUDGET))
    for fd in session.taps.values():  # what the kernel does when the process dies
        os.close(fd)
    session.taps.clear()
    session._release()
    assert table_name(topo.bridge) in nft_tables(topo)
    done = down_in_ns(topo)
    assert done.returncode == 0 and done.stdout.startswith("restored:"), done
    assert table_name(topo.bridge) not in nft_tables(topo)
    assert not diff(before, snapshot(topo.gw))
    again = down_in_ns(topo)
    assert again.returncode == 0 and again.stdout.startswith("nothing to restore"), again


@pytest.mark.netns
def test_failure_at_every_step_leaves_no_table(topo: Topo) -> None:
    before = snapshot(topo.gw)
    step = 0
    while True:
        try:
            session = bring_up(topo.plan(storm=BUDGET), fail_after_step=step)
        except Exception as exc:
            assert "injected failure" in str(exc), exc
            assert table_name(topo.bridge) not in nft_tables(topo), step
            assert not diff(before, snapshot(topo.gw)), step
            step += 1
            continue
        session.restore()
        break
    assert step >= 4  # bridge, its settings, the table, the tap, ...


@pytest.mark.netns
def test_without_a_working_nft_one_line_and_the_guard_alone(
        topo: Topo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nft").write_text("#!/bin/sh\necho 'Error: Could not process rule' >&2\nexit 1\n")
    (fake / "nft").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    before = snapshot(topo.gw)
    with caplog.at_level(logging.WARNING, logger="bridger"), \
            bring_up(topo.plan(storm=BUDGET)) as session:
        assert session.storm is None
        assert "del_nft_table" not in (topo.state_dir / "journal.json").read_text()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["storm control in the kernel is off (nft failed: Error: Could not process "
                     "rule): the guard alone limits flooding, after the taps' queues"], lines
    assert not diff(before, snapshot(topo.gw))

    monkeypatch.setattr("bridger.host.storm.shutil.which", lambda name: None)  # no nft at all
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bridger"), \
            bring_up(topo.plan(storm=BUDGET)) as session:
        assert session.storm is None
    assert [r.getMessage() for r in caplog.records] == [
        "storm control in the kernel is off (nft not found): the guard alone limits flooding, "
        "after the taps' queues"]
    assert not diff(before, snapshot(topo.gw))
