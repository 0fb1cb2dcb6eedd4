"""How long the fuzz targets run: bounded in CI, longer on demand.

``BRIDGER_FUZZ_EXAMPLES`` sets the examples per target (default 200, about a
second or two each); e.g. ``BRIDGER_FUZZ_EXAMPLES=200000 pytest tests/fuzz``
for an overnight run.  The settings are per test (not a global hypothesis
profile) so they never change how other test directories run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("BRIDGER_FUZZ_EXAMPLES", "200"))


def fuzz(scale: float = 1.0) -> settings:
    """Settings for one fuzz target; ``scale`` trims costly targets."""
    return settings(
        max_examples=max(10, int(EXAMPLES * scale)),
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )
