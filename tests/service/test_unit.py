"""The shipped systemd unit: what it promises, `systemd-analyze verify`, and its exposure.

`systemd-analyze` needs the unit's executables to exist, so it runs against a
throwaway root holding the unit, stand-ins for /usr/local/bin/bridger and
/bin/kill, and (a link to) the host's own unit directory for the targets.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from bridger.cli import build_parser

UNIT = Path(__file__).resolve().parents[2] / "configs" / "systemd" / "bridger@.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


UNIT_DIRECTIVES = directives(UNIT.read_text())


def one(key: str) -> str:
    values = UNIT_DIRECTIVES[key]
    assert len(values) == 1, (key, values)
    return values[0]


def test_unit_promises() -> None:
    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert UNIT_DIRECTIVES["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert one("Restart") == "on-failure"
    assert re.fullmatch(r"\d+s", one("WatchdogSec"))
    # Issue 25: the daemon is the unprivileged service user with no capability;
    # only the `+` steps (prepare, down) run as root.
    assert one("User") == "bridger" and one("Group") == "bridger"
    assert one("CapabilityBoundingSet") == "" and one("AmbientCapabilities") == ""
    assert "--prepared-taps" in one("ExecStart").split()
    assert not one("ExecStart").startswith(("+", "!"))
    for key in ("ExecStartPre", "ExecReload", "ExecStopPost"):
        privileged = [v for v in UNIT_DIRECTIVES[key] if v.lstrip("-").startswith("+")]
        assert privileged, key
    assert "RuntimeDirectory" not in UNIT_DIRECTIVES  # /run/bridger is root's, not the user's
    assert set(one("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert one("DeviceAllow") == "/dev/net/tun rw"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables"):
        assert one(key) == "yes", key
    assert one("ProtectSystem") == "strict"


def _commands(key: str) -> list[list[str]]:
    out = []
    for value in UNIT_DIRECTIVES[key]:
        argv = shlex.split(value.lstrip("-+"))
        if argv[0] == "/bin/kill":
            continue
        assert argv[0] == "/usr/local/bin/bridger"
        out.append([arg.replace("%i", "site") for arg in argv[1:]])
    return out


def _command(key: str) -> list[str]:
    (argv,) = _commands(key)
    return argv


def test_exec_start_is_a_valid_bridger_command_line() -> None:
    args = build_parser().parse_args(_command("ExecStart"))
    assert args.command == "up"
    assert args.config == "/etc/bridger/site.toml"
    assert args.dashboard is False and args.prepared_taps is True


def test_exec_stop_post_is_a_valid_bridger_command_line() -> None:
    args = build_parser().parse_args(_command("ExecStopPost"))
    assert args.command == "down" and args.config == "/etc/bridger/site.toml"


def test_the_privileged_steps_are_valid_bridger_command_lines() -> None:
    pre = [build_parser().parse_args(argv) for argv in _commands("ExecStartPre")]
    assert [a.command for a in pre] == ["down", "prepare"]
    assert all(a.config == "/etc/bridger/site.toml" for a in pre)
    (reload,) = [build_parser().parse_args(argv) for argv in _commands("ExecReload")]
    assert reload.command == "prepare" and reload.add_taps is True


def fake_root(tmp_path: Path, unit_text: str) -> Path:
    root = tmp_path / "root"
    for exe in ("usr/local/bin/bridger", "bin/kill"):
        path = root / exe
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / "bridger@.service").write_text(unit_text)
    (root / "usr/lib/systemd").mkdir(parents=True)
    host_units = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                      if p.is_dir())
    (root / "usr/lib/systemd/system").symlink_to(host_units)
    return root


def verify(tmp_path: Path, unit_text: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    root = fake_root(tmp_path, unit_text)
    return subprocess.run(
        [ANALYZE, "verify", f"--root={root}", "--man=no", "bridger@site.service"],
        capture_output=True, text=True, timeout=60,
    )


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    result = verify(tmp_path, UNIT.read_text())
    assert result.returncode == 0, result.stderr
    assert "bridger@" not in result.stdout + result.stderr, result.stderr


@needs_analyze
def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    # The check above is only worth something if a mistake shows up in it.
    broken = UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs=")
    result = verify(tmp_path, broken)
    assert "Unknown key" in result.stderr and "WatchdogSecs" in result.stderr


@needs_analyze
def test_security_exposure_is_low(tmp_path: Path) -> None:
    assert ANALYZE is not None
    root = fake_root(tmp_path, UNIT.read_text())
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", f"--root={root}", "--no-pager",
         "bridger@site.service"],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for bridger@site\.service: ([0-9.]+)",
                      result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout  # issue 25: 1.4 when written
