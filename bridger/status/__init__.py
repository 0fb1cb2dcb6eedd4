"""Status views of a running bridger: counters, dashboard, control socket, metrics.

The data plane only bumps :class:`Counters`; everything else reads
:meth:`Counters.snapshot` documents (``docs/status.md``).
"""

from bridger.status.counters import Counters, LinkInfo

__all__ = ["Counters", "LinkInfo"]
