"""Network-namespace lab: two to eight sites and an impaired WAN, for tests and demos.

``python3 -m bridger.lab up`` builds one by hand; tests use :class:`Lab` as a
context manager; :func:`write_gateway_configs` writes each gateway's
``[[peers]]`` config for a full mesh or a hub. See ``netns-lab/README.md``.
"""

from __future__ import annotations

from bridger.lab.cli import main
from bridger.lab.gateways import GatewayFiles, PeerEntry, peer_name, write_gateway_configs
from bridger.lab.impair import Impairment
from bridger.lab.topology import (
    MAX_SITES,
    ROLES,
    Lab,
    LabError,
    LabOptions,
    cleanup_stale,
    netem_available,
    remove_lab,
)

__all__ = [
    "MAX_SITES",
    "ROLES",
    "GatewayFiles",
    "Impairment",
    "Lab",
    "LabError",
    "LabOptions",
    "PeerEntry",
    "cleanup_stale",
    "main",
    "netem_available",
    "peer_name",
    "remove_lab",
    "write_gateway_configs",
]
