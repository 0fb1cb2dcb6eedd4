#!/usr/bin/env bash
# The whole test suite, as CI runs it: setup, lint, type check, pytest.
# Tests marked `netns` need root (they build network namespaces); as a
# non-root user they are skipped and the unit tests still run. As root (CI)
# they must run: tests/conftest.py turns a skip of any of them into a failure.
# Extra arguments go to pytest unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
