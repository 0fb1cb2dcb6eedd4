"""scripts/soak.py for about a minute in CI (hours are documented in docs/security.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adversarial.labtools import REPO

pytestmark = pytest.mark.netns


def test_soak_sixty_seconds(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "soak.py"), "--duration", "60", "--seed", "3",
         "--json", str(report_path)],
        capture_output=True, text=True, timeout=400,
    )
    print(out.stdout[-3000:])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    report = json.loads(report_path.read_text())
    kinds = {e["event"].split()[0] for e in report["events"]}
    assert {"term", "kill", "roam", "impair"} <= kinds, kinds
    assert all(e["recovered_s"] is not None for e in report["events"])
    assert report["failures"] == []
    rss = [r[f"rss_kib_{s}"] for r in report["samples"] for s in "AB" if f"rss_kib_{s}" in r]
    assert max(rss) - min(rss) < 32 * 1024  # no daemon grew by more than 32 MiB
    for final in report["final"].values():
        assert final["drops"].get("internal_error", 0) == 0
