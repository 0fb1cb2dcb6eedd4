"""The one place bridger imports pyroute2: IPRoute and NetlinkError, at half the memory.

``import pyroute2`` runs the package's ``__init__``, which imports every part of
the library (NDB with sqlite3, IPDB, nftables, plan9, multiprocessing, unittest...):
about 12 MB of resident memory in a daemon that only needs rtnetlink.  Here:

1. If pyroute2 is already imported, or its layout is not the one expected, this
   is a plain ``from pyroute2 import IPRoute``.
2. Otherwise the ``pyroute2`` package module is created from its spec without
   running its ``__init__``, and only ``pyroute2.iproute.linux`` and
   ``pyroute2.netlink.exceptions`` are imported below it.
3. The first attribute anyone asks of that package module that it lacks (``from
   pyroute2 import NDB``, ``pyroute2.__version__``) runs the real ``__init__`` in
   it, so code that imports pyroute2 after bridger sees the whole library.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any

#: Whether the package ``__init__`` was skipped (True until someone needs it).
lean = False


def _complete(module: ModuleType, lock: threading.RLock) -> Any:
    """The package module's ``__getattr__``: run the real ``__init__`` once, then look again."""

    def __getattr__(name: str) -> Any:
        global lean
        with lock:
            if module.__dict__.get("__getattr__") is __getattr__:
                del module.__dict__["__getattr__"]
                spec = module.__spec__
                assert spec is not None and spec.loader is not None
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    module.__dict__["__getattr__"] = __getattr__
                    raise
                lean = False
        try:
            return module.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}") from None

    return __getattr__


def _lean_import() -> tuple[Any, Any] | None:
    """IPRoute and NetlinkError without the package ``__init__``, or None if that fails."""
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return None
    before = set(sys.modules)
    package = importlib.util.module_from_spec(spec)
    sys.modules["pyroute2"] = package
    try:
        linux = importlib.import_module("pyroute2.iproute.linux")
        exceptions = importlib.import_module("pyroute2.netlink.exceptions")
        found = linux.IPRoute, exceptions.NetlinkError
    except Exception:
        for name in set(sys.modules) - before:
            if name == "pyroute2" or name.startswith("pyroute2."):
                del sys.modules[name]
        return None
    package.__getattr__ = _complete(package, threading.RLock())  # type: ignore[method-assign]
    return found


def _load() -> tuple[Any, Any]:
    global lean
    if "pyroute2" not in sys.modules:
        found = _lean_import()
        if found is not None:
            lean = True
            return found
    from pyroute2 import IPRoute, NetlinkError

    return IPRoute, NetlinkError


if TYPE_CHECKING:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
else:
    IPRoute, NetlinkError = _load()

__all__ = ["IPRoute", "NetlinkError"]
