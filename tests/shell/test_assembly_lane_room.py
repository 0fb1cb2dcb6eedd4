"""The native lane serves ``contract.MAX_PORTS`` taps: a configuration with more
peers runs the Python data path under "auto" (one log line) and is a one-line
error under "native" (issue 26: a hub of 100 spokes once stopped with ENOSPC
from the lane's add_port when it served 64)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from bridger import native
from bridger.config import PeerSettings, UpConfig
from bridger.errors import ConfigError
from bridger.native.contract import MAX_PORTS
from bridger.shell.assembly import lane_room, native_module


def config(peers: int, data_path: str) -> UpConfig:
    return UpConfig(lan="eth1", key_file=Path("/k"), data_path=data_path, peers=tuple(
        PeerSettings(name=f"s{i}", public_key=i.to_bytes(32, "big"), tap=f"s{i}")
        for i in range(1, peers + 1)))


def test_the_native_lane_serves_a_hub_of_a_hundred_spokes() -> None:
    assert MAX_PORTS >= 100
    if native.lane is not None:
        assert native.lane.MAX_PORTS == MAX_PORTS
        assert native_module(config(100, "auto")) is native.lane


def test_more_peers_than_ports_run_python_under_auto_with_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bridger"):
        assert native_module(config(MAX_PORTS + 1, "auto")) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"{MAX_PORTS + 1} peers: more than the native data path's {MAX_PORTS} ports; "
        "the Python data path runs"]
    assert native_module(config(MAX_PORTS + 1, "python")) is None


def test_more_peers_than_ports_are_one_line_under_native_and_refused_by_a_reload() -> None:
    many = config(MAX_PORTS + 1, "native")
    with pytest.raises(ConfigError, match=f"^{MAX_PORTS + 1} peers: the native data path "
                       f"serves at most {MAX_PORTS}"):
        native_module(many)
    with pytest.raises(ConfigError):
        lane_room(replace(many, data_path="auto"))  # what a reload with a lane running asks
    lane_room(config(MAX_PORTS, "native"))  # exactly full is fine
