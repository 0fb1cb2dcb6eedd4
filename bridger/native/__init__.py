"""The native per-packet path: ``bridger.native._lane`` (C), optional.

``lane`` is the extension module, or None with ``unavailable`` saying why.
"""

from __future__ import annotations

from types import ModuleType

lane: ModuleType | None
unavailable = ""
try:
    from bridger.native import _lane as lane
except ImportError as exc:  # not built (no compiler / headers) or not loadable
    lane = None
    unavailable = str(exc) or type(exc).__name__
