"""The binding layer's argument handling (issue 21): every entry of
``bridger.native._lane`` called with generated bad arguments (wrong types,
None, negative and huge ints, odd buffers, closed fds, free port slots) must
return or raise a Python exception, never crash.  The calls run in a child
process (``binding_args.py``), so that a segfault or an abort is this test
failing with the call that did it, not the end of pytest.

``BRIDGER_FUZZ_EXAMPLES`` (default 200) sets the examples per group; e.g.
``BRIDGER_FUZZ_EXAMPLES=5000`` for a long run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridger.native import lane as native

pytestmark = pytest.mark.skipif(native is None, reason="bridger.native._lane is not built")

RUNNER = Path(__file__).with_name("binding_args.py")
EXAMPLES = int(os.environ.get("BRIDGER_FUZZ_EXAMPLES", "200"))


def test_every_binding_entry_refuses_bad_arguments_without_crashing() -> None:
    run = subprocess.run([sys.executable, str(RUNNER), str(EXAMPLES)], capture_output=True,
                         text=True, timeout=600)
    last = run.stderr.strip().splitlines()[-5:]
    assert run.returncode == 0, (
        f"exit {run.returncode} (a negative one is the signal that killed it); "
        f"the last calls:\n" + "\n".join(last) + "\n" + run.stdout[-2000:])
    assert "no crash" in run.stdout
