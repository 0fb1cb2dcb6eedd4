"""Shared pytest setup for tests marked ``netns`` (real network namespaces).

As a non-root user they are skipped. As root -- how CI runs the suite
(``.ci/run``) -- they must run: a skip of any of them, whatever its cause
(a ``skip`` mark, ``pytest.skip()`` in a fixture or the test), is reported as
a failure, so a broken lab can never pass CI as "skipped".

Tests that measure the machine as much as the code -- floods, storms, WAN
attacks, path-MTU searches, timing bounds -- are ``load_sensitive``: marked
here by file (or by test), or by ``@pytest.mark.load_sensitive`` on the test.
``--load-sensitive=exclude`` leaves them out and ``only`` runs them alone:
scripts/test.sh runs the rest in parallel (pytest-xdist), then these one at
a time with nothing else of the suite running, as the whole suite used to.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

NETNS = "netns"
LOAD_SENSITIVE = "load_sensitive"
#: Files (or single tests, ``path::name``) whose assertions hold only on a machine that
#: the suite does not load itself: a share of pings kept or frames let through during a
#: flood, a storm or an attack, a search that times probes, a bound on seconds or cores.
LOAD_SENSITIVE_TESTS = (
    "tests/e2e/test_storm_lab.py",  # ping loss < 2% during a line-rate storm
    # a loop found within 2 s, gateways under half a core after; 95 of 100 pings in a flood
    "tests/e2e/test_guard_lab.py::test_backup_cable_loop_is_cut_at_the_tunnel_and_the_tunnel_"
    "comes_back",
    "tests/e2e/test_guard_lab.py::test_broadcast_flood_reaches_the_other_site_within_the_budget",
    "tests/e2e/test_wan_attack_lab.py",  # 20,000 datagrams/s at a gateway
    "tests/e2e/test_path_mtu_lab.py",  # probe timing; a stall shorter than 5 s
    # the pairs a restart does not touch see no reply gap of a second
    "tests/e2e/test_multisite.py::test_mesh4_transfers_stay_exact_while_one_site_restarts",
    "tests/adversarial/test_flood.py",  # an attack during a transfer
    "tests/service/test_daemon.py",  # watchdog pings 0.3-0.75 s apart
    "tests/service/test_notify.py::test_full_queue_fails_at_once_instead_of_blocking",
    "tests/lab/test_lab.py::test_delay_shows_in_rtt_and_changes_on_the_fly",  # RTT < 100 ms
    "tests/e2e/test_ha_lab.py",  # a failover's outage under 2 s (0.5 s for a clean stop)
    "tests/e2e/test_scale_lab.py",  # a loop between two spokes found within 2 s
    "tests/e2e/test_nat_lab.py",  # every pair pings within 10 s; stalls across a NAT flush
)


def must_run_netns() -> bool:
    """True when netns tests are required: running as root."""
    return os.geteuid() == 0


#: The longest modules (by --durations), run first: a parallel run then does not end
#: with one worker busy for minutes on a module it started last.
LONG_FIRST = (
    "tests/native/test_fuzz.py",
    "tests/native/test_coalesce_udp.py",
    "tests/e2e/test_resilience.py",
    "tests/native/test_native_protocol.py",
    "tests/native/test_build.py",
    "tests/foundation/test_install.py",
    "tests/host/test_up_signals.py",
    "tests/adversarial/test_soak.py",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--load-sensitive", choices=("include", "exclude", "only"), default="include",
        help="run the load-sensitive tests with the others (include), leave them out "
        "(exclude: for a parallel run) or run only them (only)")


def is_load_sensitive(item: pytest.Item) -> bool:
    path, _, name = item.nodeid.partition("::")
    test = f"{path}::{name.partition('[')[0]}"
    return (LOAD_SENSITIVE in item.keywords or path in LOAD_SENSITIVE_TESTS
            or test in LOAD_SENSITIVE_TESTS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # (a default: a conftest may import this hook without pytest_addoption)
    mode = config.getoption("--load-sensitive", "include")
    first = {path: rank for rank, path in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: first.get(item.nodeid.partition("::")[0], len(first)))
    if mode != "include":
        keep, drop = [], []
        for item in items:
            (keep if is_load_sensitive(item) == (mode == "only") else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
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
