"""For the child processes that try things inside a sandbox (test_privsep,
test_seccomp_monitor): what one attempt came to."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from bridger.host.pyroute import NetlinkError


def outcome(action: Callable[[], Any]) -> str:
    """"done", or the errno name the action failed with (a netlink error's too)."""
    try:
        action()
    except NetlinkError as exc:
        return errno.errorcode.get(exc.code, str(exc.code))
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "done"
