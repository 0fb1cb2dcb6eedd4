"""BRIDGER_TEST_SESSIONS=native runs every test here with native sessions: each
Device made without a session factory gets the native lane's Session type, so
the core's counters and replay windows are the C ones (tests/native/
test_native_protocol.py runs this directory that way)."""

from __future__ import annotations

import os

if os.environ.get("BRIDGER_TEST_SESSIONS") == "native":
    from bridger.native import lane, unavailable
    from bridger.protocol import device as _device

    if lane is None:
        raise RuntimeError(f"BRIDGER_TEST_SESSIONS=native: {unavailable}")
    _init = _device.Device.__init__

    def _native_init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("session_factory") is None:
            kwargs["session_factory"] = lane.Session
        _init(self, *args, **kwargs)

    _device.Device.__init__ = _native_init  # type: ignore[method-assign]
