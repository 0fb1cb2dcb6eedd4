"""Journal and lock behaviour that needs no root: atomic persistence, replay order, locking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridger.errors import AlreadyRunning, HostError
from bridger.host.journal import JOURNAL_NAME, Journal, StateLock
from bridger.host.netlink import move_route, relabel


def test_push_persists_before_change_and_pop_removes(tmp_path: Path) -> None:
    j = Journal(tmp_path, {"lan": "eth1"}, [])
    j.push({"op": "del_link", "ifname": "br0", "kind": "bridge"})
    j.push({"op": "del_link", "ifname": "tap0", "kind": "tun"})
    on_disk = json.loads((tmp_path / JOURNAL_NAME).read_text())
    assert on_disk["lan"] == "eth1"
    assert [r["ifname"] for r in on_disk["undo"]] == ["br0", "tap0"]
    loaded = Journal.load(tmp_path)
    assert loaded is not None and loaded.records == j.records
    j.pop()
    j.pop()
    assert not (tmp_path / JOURNAL_NAME).exists()
    assert Journal.load(tmp_path) is None
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("content", ["{", "[]", '{"version": 99, "undo": []}',
                                     '{"version": 1, "undo": [1]}'])
def test_corrupt_journal_is_one_line_error(tmp_path: Path, content: str) -> None:
    (tmp_path / JOURNAL_NAME).write_text(content)
    with pytest.raises(HostError, match="journal"):
        Journal.load(tmp_path)


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    first = StateLock(tmp_path / "s")
    with pytest.raises(AlreadyRunning, match=r"pid \d+"):
        StateLock(tmp_path / "s")
    first.release()
    first.release()
    StateLock(tmp_path / "s").release()


def test_relabel_keeps_alias_suffix_within_ifnamsiz() -> None:
    assert relabel("eth1:0", "eth1", "br0") == "br0:0"
    assert relabel("eth1", "eth1", "br0") == "br0"
    assert relabel("eth1:lan", "eth1", "bridger-long0") is None
    assert relabel(None, "eth1", "br0") is None


def test_move_route_rewrites_only_the_nic() -> None:
    rec = {"oif": None, "multipath": [{"oif": "eth1", "gateway": "10.0.0.1"},
                                      {"oif": "eth2", "gateway": "10.1.0.1"}]}
    moved = move_route(rec, "eth1", "br0")
    assert [nh["oif"] for nh in moved["multipath"]] == ["br0", "eth2"]
    assert rec["multipath"][0]["oif"] == "eth1"
