"""Network-namespace lab: two bridged sites and an impaired WAN, for tests and demos.

``python3 -m bridger.lab up`` builds one by hand; tests use :class:`Lab` as a
context manager. See ``netns-lab/README.md`` for the diagram.
"""

from __future__ import annotations

from bridger.lab.cli import main
from bridger.lab.impair import Impairment
from bridger.lab.topology import (
    ROLES,
    Lab,
    LabError,
    LabOptions,
    cleanup_stale,
    netem_available,
    remove_lab,
)

__all__ = [
    "ROLES",
    "Impairment",
    "Lab",
    "LabError",
    "LabOptions",
    "cleanup_stale",
    "main",
    "netem_available",
    "remove_lab",
]
