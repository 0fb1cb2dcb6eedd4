"""The native per-packet path: ``bridger.native._lane`` (C), optional.

``lane`` is the extension module, or None with ``unavailable`` saying why
(docs/native.md: how it is built, and what runs without it).
"""

from __future__ import annotations

import importlib
from types import ModuleType

lane: ModuleType | None = None
unavailable = ""
try:
    lane = importlib.import_module("bridger.native._lane")
except ModuleNotFoundError:
    unavailable = "not built (no C compiler, Python headers or libsodium headers at install)"
except ImportError as exc:  # built but not loadable (e.g. libsodium missing at run time)
    unavailable = str(exc) or type(exc).__name__
