"""The native lane's packed guard config, built from a :class:`GuardConfig`.

``bridger.native._lane.guard_config`` takes plain arguments; this is the one
place that maps a GuardConfig onto them, so the lane's hot-path answer
(``guard_fast_out`` / ``guard_fast_in``) is about the same settings as the
Python :class:`~bridger.guard.policy.Guard` it stands in for.  Only what the
hot path reads is passed: the DHCP/RA guards, the VLAN allow-list and whether
storm control is on (the buckets, bursts and loop protection stay in Python,
which sees every frame the lane does not pass itself).
"""

from __future__ import annotations

from bridger.guard.policy import LOCAL, GuardConfig
from bridger.native import lane, unavailable


def guard_cfg(config: GuardConfig | None, free_probes: bytes | None = None) -> bytes:
    """The packed bn_guard_cfg for a port guarded by ``config`` (None: no guard,
    every frame passes); ``free_probes``: the Guard's site id, when
    other sites' probes from the tunnel need no look.  Raises RuntimeError when
    the extension is missing."""
    if lane is None:
        raise RuntimeError(f"the native lane is not available: {unavailable}")
    if config is None:
        packed = lane.guard_config(on=False)
    else:
        packed = lane.guard_config(
            dhcp_local=config.dhcp == LOCAL,
            ra_local=config.ra == LOCAL,
            vlans=config.vlans,
            untagged=config.untagged,
            flood_rate=config.flood_rate,
            site_id=free_probes,
        )
    assert isinstance(packed, bytes)
    return packed
