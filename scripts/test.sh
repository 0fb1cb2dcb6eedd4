#!/usr/bin/env bash
# The whole test suite, as CI runs it: setup, lint, type check, pytest.
# Tests marked `netns` need root (they build network namespaces); as a
# non-root user they are skipped and the unit tests still run. As root (CI)
# they must run: tests/conftest.py turns a skip of any of them into a failure.
#
# pytest runs twice: every test but the load-sensitive ones in parallel
# (pytest-xdist, BRIDGER_TEST_JOBS workers, default 4: most of a lab test's
# time is spent waiting), then the load-sensitive ones (floods, storms,
# attacks, path-MTU searches, timing bounds: tests/conftest.py) one at a
# time, with nothing else of the suite running. BRIDGER_TEST_JOBS=0 runs
# everything in one serial pytest, as before.
# Extra arguments go to both pytest runs unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
jobs=${BRIDGER_TEST_JOBS:-4}
if [ "$jobs" = 0 ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi
status=0
run() {  # one pytest run; "no tests collected" (5) is no failure when the other has some
    local rc=0
    .venv/bin/python -m pytest -q "$@" || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then status=$rc; fi
}
echo "== in parallel ($jobs workers)"
run -n "$jobs" --dist loadscope --load-sensitive=exclude "$@"
echo "== load-sensitive, one at a time"
run --load-sensitive=only "$@"
exit "$status"
