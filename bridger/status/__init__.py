"""Status views of a running bridger: counters, dashboard, control socket, metrics, logs.

The data plane only bumps :class:`Counters` / :class:`PeerCounters`; everything
else reads :meth:`Counters.snapshot` documents (``docs/status.md``).
"""

from bridger.status.counters import Counters, DeviceInfo, PeerCounters, PeerInfo

__all__ = ["Counters", "DeviceInfo", "PeerCounters", "PeerInfo"]
