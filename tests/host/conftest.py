"""Fixtures of the host tests: ``topo`` is a fresh gateway namespace per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.host.hostlab import Topo, make_topo


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topo]:
    with make_topo(tmp_path) as t:
        yield t
