"""Shared pytest setup for tests marked ``netns`` (real network namespaces).

As a non-root user they are skipped. As root -- how CI runs the suite
(``.ci/run``) -- they must run: a skip of any of them, whatever its cause
(a ``skip`` mark, ``pytest.skip()`` in a fixture or the test), is reported as
a failure, so a broken lab can never pass CI as "skipped".
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

NETNS = "netns"


def must_run_netns() -> bool:
    """True when netns tests are required: running as root."""
    return os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if must_run_netns():
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces")
    for item in items:
        if NETNS in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and not hasattr(report, "wasxfail") and NETNS in item.keywords
            and must_run_netns()):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        reason = str(reason).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = (f"netns test skipped while running as root ({reason}); "
                           "as root every netns test must run")
