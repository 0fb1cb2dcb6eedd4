"""Issue 12 item 9: as root (how CI runs), a skipped netns test fails the run.

Before, a netns test that skipped itself (a missing tool, a lab that could not
be built) let CI pass green with the host tests never run. A tiny suite is run
in a child pytest with this repository's conftest hooks; what each test ends
as is read from its JUnit XML.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.host.hostlab import REPO

SUITE = '''
import pytest

@pytest.fixture
def broken_lab():
    pytest.skip("lab could not be built")

@pytest.mark.netns
def test_netns_runs():
    pass

@pytest.mark.netns
def test_netns_skips_itself():
    pytest.skip("no ip binary")

@pytest.mark.netns
@pytest.mark.skip(reason="marked skip")
def test_netns_marked_skip():
    pass

@pytest.mark.netns
@pytest.mark.skipif(True, reason="skipif")
def test_netns_skipif():
    pass

@pytest.mark.netns
def test_netns_fixture_skips(broken_lab):
    pass

@pytest.mark.netns
@pytest.mark.xfail(reason="known bug", strict=True)
def test_netns_xfail():
    raise AssertionError

def test_plain_skip_stays_a_skip():
    pytest.skip("not a netns test")
'''

SKIPPED_NETNS = ["test_netns_skips_itself", "test_netns_marked_skip", "test_netns_skipif",
                 "test_netns_fixture_skips"]


def outcomes(xml: Path) -> dict[str, str]:
    result = {}
    for case in ET.parse(xml).iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        skipped = case.find("skipped")
        if skipped is not None and skipped.get("type") == "pytest.xfail":
            kinds = ["xfail"]
        result[case.get("name", "")] = kinds[0] if kinds else "passed"
    return result


def test_skipped_netns_tests_fail_as_root(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_collection_modifyitems, pytest_runtest_makereport"
        "  # noqa: F401\n"
    )
    (tmp_path / "test_tiny.py").write_text(textwrap.dedent(SUITE))
    xml = tmp_path / "out.xml"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), "-c", os.devnull, f"--junitxml={xml}", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    got = outcomes(xml)
    assert got["test_plain_skip_stays_a_skip"] == "skipped", got
    if os.geteuid() == 0:
        assert res.returncode == 1, res.stdout
        assert got["test_netns_runs"] == "passed"
        assert got["test_netns_xfail"] == "xfail"
        for name in SKIPPED_NETNS:
            assert got[name] in ("failure", "error"), (name, got)
        case = next(c for c in ET.parse(xml).iter("testcase")
                    if c.get("name") == "test_netns_fixture_skips")
        text = ET.tostring(case, encoding="unicode")
        assert "netns test skipped while running as root (lab could not be built)" in text
    else:
        assert res.returncode == 0, res.stdout
        assert all(got[name] == "skipped" for name in [*SKIPPED_NETNS, "test_netns_runs"]), got
