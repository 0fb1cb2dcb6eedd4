"""The daemon's memory: what `bridger up` imports without a terminal, and the lean pyroute2.

Every module a daemon imports stays resident for its whole life.  Without a
terminal (log lines, no dashboard, no --metrics) it must not load rich, the
Prometheus client, or the parts of pyroute2 it never uses (NDB with sqlite3,
IPDB).  Each check runs in a fresh interpreter, as the daemon starts in one.
The resident size is printed (``pytest -s``), not asserted: it depends on the
Python build and the libraries installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: What `up` imports on its way to forwarding (bridger/daemon.py and its imports).
UP_IMPORTS = """
import bridger.cli
from bridger.daemon import run_up
from bridger.host import HostPlan, StopSignals, TapPlan, bring_up, drop_privileges
from bridger.service.live import Live
from bridger.status.logs import setup_logging, shutdown_logging
from bridger.status.control import control_path, serve_control
from bridger.status.dashboard import run_log_lines
from bridger.shell.lane import NativeLane
from bridger import native
from bridger.host.tap import IFF_VNET_HDR, enable_offloads, tap_flags
"""

#: Modules only a terminal, --metrics or another pyroute2 user needs.
NOT_IN_DAEMON = ("rich", "prometheus_client", "sqlite3", "pyroute2.ndb", "pyroute2.ipdb")


def run_python(program: str) -> dict[str, object]:
    """Run ``program`` in a fresh interpreter (this checkout first on the path, no
    terminal); it prints one JSON document as its last line."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=60, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    doc: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return doc


RSS = """
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
"""


def test_up_without_a_terminal_loads_no_rich_metrics_or_ndb() -> None:
    program = RSS + UP_IMPORTS + f"""
import json, sys
setup_logging(False)
shutdown_logging()
import bridger
assert bridger.__file__.startswith({str(ROOT)!r}), bridger.__file__
names = {NOT_IN_DAEMON!r}
loaded = sorted(m for m in sys.modules if any(m == n or m.startswith(n + ".") for n in names))
print(json.dumps({{"loaded": loaded, "rss_mb": rss_mb(), "modules": len(sys.modules)}}))
"""
    doc = run_python(program)
    print(f"\n`up` imports without a terminal: VmRSS {doc['rss_mb']:.1f} MB, "
          f"{doc['modules']} modules")
    assert doc["loaded"] == []


def test_lean_pyroute2_then_a_full_import_by_someone_else() -> None:
    """bridger's IPRoute skips pyroute2's package __init__; code importing pyroute2
    afterwards still gets the whole library, with the same classes."""
    program = RSS + """
import json, sys
before = rss_mb()
from bridger.host import pyroute
from bridger.host.netlink import get_link
lean_rss = rss_mb() - before
assert pyroute.lean
assert "pyroute2.ndb" not in sys.modules and "sqlite3" not in sys.modules
with pyroute.IPRoute() as ipr:
    lo = get_link(ipr, "lo")
assert lo is not None and lo.name == "lo"
import pyroute2
from pyroute2 import NDB, IPRoute, NetlinkError
from pyroute2.iproute import IPRoute as IPRoute2
assert not pyroute.lean
assert IPRoute is pyroute.IPRoute is IPRoute2 and NetlinkError is pyroute.NetlinkError
assert pyroute2.__version__ and NDB.__name__ == "NDB" and hasattr(pyroute2, "IPDB")
assert "__getattr__" not in vars(pyroute2)
print(json.dumps({"lean_mb": lean_rss, "full_mb": rss_mb() - before - lean_rss}))
"""
    doc = run_python(program)
    print(f"\nbridger.host with the lean pyroute2: +{doc['lean_mb']:.1f} MB; "
          f"the rest of pyroute2 after it: +{doc['full_mb']:.1f} MB")


def test_pyroute2_imported_first_is_used_as_it_is() -> None:
    program = """
import json
import pyroute2
from bridger.host import pyroute
assert not pyroute.lean
assert pyroute.IPRoute is pyroute2.IPRoute and pyroute.NetlinkError is pyroute2.NetlinkError
print(json.dumps({}))
"""
    run_python(program)


def test_an_unexpected_pyroute2_layout_falls_back_to_the_plain_import() -> None:
    """If the submodules are not where 0.7-0.9 keep them, nothing half-imported is
    left behind: the package is imported the ordinary way."""
    program = """
import importlib, json, sys
real = importlib.import_module
def moved(name, package=None):
    if name == "pyroute2.iproute.linux":
        raise ImportError("moved")
    return real(name, package)
importlib.import_module = moved
from bridger.host import pyroute
importlib.import_module = real
import pyroute2
assert not pyroute.lean
assert pyroute.IPRoute is pyroute2.IPRoute and "__getattr__" not in vars(pyroute2)
assert pyroute2.__spec__ is not None and hasattr(pyroute2, "NDB")
print(json.dumps({}))
"""
    run_python(program)
