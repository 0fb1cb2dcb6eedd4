"""`bridger up` lives in the :mod:`bridger.shell` package; this name stays for callers."""

from bridger.shell.up import run_up

__all__ = ["run_up"]
