"""Pytest fixtures for tests that need a lab.

Load them in a top-level conftest with ``pytest_plugins = ["bridger.lab.fixtures"]``
or import ``lab_factory`` / ``shared_lab`` into a directory's conftest.

Every lab a fixture builds is torn down when the fixture ends, also when the
test failed or was interrupted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bridger.lab.topology import Lab, LabOptions

LabFactory = Callable[..., Lab]


@pytest.fixture
def lab_factory() -> Iterator[LabFactory]:
    """``lab_factory(delay_ms=..., nat_b=True, ...)`` builds a lab; all removed afterwards."""
    labs: list[Lab] = []

    def make(**options: Any) -> Lab:
        lab = Lab(LabOptions(**options))
        labs.append(lab)
        lab.build()
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.teardown()


@pytest.fixture(scope="module")
def shared_lab() -> Iterator[Lab]:
    """One default lab shared by a module's tests (tests must undo what they change)."""
    with Lab(LabOptions()) as lab:
        yield lab
