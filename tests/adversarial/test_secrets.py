"""Secrets, end to end through real `bridger up` processes in the lab.

* a private key or PSK file readable by group/others is refused (exit 2, one
  line, host untouched);
* with known keys and a PSK, nothing bridger prints (log, status JSON, the
  human status view) contains the private key or PSK, in base64 or hex;
* the control socket of a running daemon is mode 0600 and refuses another uid.
"""

from __future__ import annotations

import base64
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridger.keys import write_private_key_file
from bridger.lab import Lab, LabOptions
from bridger.status.control import control_path
from tests.e2e.bridged import BRIDGER, BridgedLab, host_address, wait_ping
from tests.e2e.test_resilience import snapshot_host

pytestmark = pytest.mark.netns

PSK = bytes(range(100, 132))


@pytest.fixture
def lab_link(tmp_path: Path) -> Iterator[BridgedLab]:
    with Lab(LabOptions(engine="direct")) as lab:
        psk = tmp_path / "lab" / "psk.key"
        psk.parent.mkdir(parents=True)
        write_private_key_file(psk, PSK)
        with BridgedLab(lab, tmp_path / "lab", extra_args=["--psk-file", str(psk)]) as link:
            yield link


#: A status client with no imports beyond the standard library (run as nobody).
CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(type(e).__name__); sys.exit(0)
s.sendall(b"status\\n")
print(s.recv(65536).decode())
"""


def _as_nobody(path: Path) -> str:
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
         "-S", "-c", CLIENT, str(path)], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _forms(secret: bytes) -> list[str]:
    b64 = base64.b64encode(secret).decode()
    return [b64, b64.rstrip("="), secret.hex(), secret.hex().upper(),
            base64.urlsafe_b64encode(secret).decode().rstrip("=")]


@pytest.mark.parametrize("which", ["key", "psk"])
def test_too_open_key_files_are_refused_and_leave_the_host_alone(
    lab_link: BridgedLab, which: str
) -> None:
    link, lab = lab_link, lab_link.lab
    before = snapshot_host(lab, "gwA")
    path = link.key_path("A") if which == "key" else link.workdir / "psk.key"
    os.chmod(path, 0o640)
    out = lab.run("gwA", *link.argv("A"), check=False, timeout=30)
    os.chmod(path, 0o600)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1 and "too open" in lines[0] and "Traceback" not in lines[0]
    assert snapshot_host(lab, "gwA") == before


def test_keys_never_appear_in_output_and_control_socket_refuses_others(
    lab_link: BridgedLab,
) -> None:
    link, lab = lab_link, lab_link.lab
    link.start_all()
    wait_ping(lab, "hostA1", host_address(lab, "hostB1"))
    seen = []
    for site in ("A", "B"):
        state = link.state_dir(site)
        seen.append(subprocess.run([*BRIDGER, "status", "--json", "--state-dir", str(state)],
                                   capture_output=True, text=True, timeout=10).stdout)
        seen.append(subprocess.run([*BRIDGER, "status", "--state-dir", str(state)],
                                   capture_output=True, text=True, timeout=10).stdout)
        sock = control_path(state)
        mode = stat.S_IMODE(os.stat(sock).st_mode)
        assert mode == 0o600, oct(mode)
        # Another uid, through a hard link outside the root-only temp dir: refused by
        # the socket's mode, and by the SO_PEERCRED check when the mode is widened.
        link_path = Path(f"/tmp/bridger-ctl-{os.getpid()}-{site}.sock")
        # (control.sock links to the data plane's own directory, issue 25: link the socket.)
        os.link(sock.resolve(), link_path)
        try:
            assert "PermissionError" in _as_nobody(link_path)
            os.chmod(sock, 0o666)
            try:
                answer = _as_nobody(link_path)
            finally:
                os.chmod(sock, 0o600)
        finally:
            link_path.unlink()
        assert "permission denied (root only)" in answer and '"peers"' not in answer
    for site in ("A", "B"):
        assert link.stop(site, signal.SIGTERM) == 0
    seen += [link.log_path(site).read_text(errors="replace") for site in ("A", "B")]
    text = "\n".join(seen)
    assert "handshake complete" in text  # the log really was captured
    for secret in (link.keys["A"], link.keys["B"], PSK):
        for form in _forms(secret):
            assert form not in text, "a secret appears in bridger's output"
