"""The error hierarchy users see.

Every error a user can cause (bad config, bad key, missing NIC, no privileges)
is a :class:`BridgerError`; the CLI prints its message as one line and exits
with :attr:`BridgerError.exit_code`. Anything else is a bug and may traceback.
"""

from __future__ import annotations


class BridgerError(Exception):
    """A failure explained to the user in one line; exit code 2."""

    exit_code = 2


class ConfigError(BridgerError):
    """A config file, option or key is invalid. The message names the file and key."""


class KeyFileError(ConfigError):
    """A key file is missing, malformed or readable by others."""


class HostError(BridgerError):
    """The host network cannot be changed (or restored) as asked."""


class AlreadyRunning(BridgerError):
    """Another daemon holds the same state directory."""
