"""Host networking: tap + bridge set-up that is journaled and always given back.

See docs/host.md. The CLI and daemon use only these names.
"""

from bridger.config import default_state_dir
from bridger.host.privileges import drop_privileges
from bridger.host.setup import HostPlan, HostSession, bring_down, bring_up

__all__ = [
    "HostPlan",
    "HostSession",
    "bring_down",
    "bring_up",
    "default_state_dir",
    "drop_privileges",
]
