"""Host networking: tap + bridge set-up that is journaled and always given back.

See docs/host.md. The CLI and daemon use only these names.
"""

from bridger.config import default_state_dir
from bridger.host.privileges import drop_privileges
from bridger.host.setup import HostPlan, HostSession, TapPlan, bring_down, bring_up
from bridger.host.signals import Interrupted, StopSignals

__all__ = [
    "HostPlan",
    "HostSession",
    "Interrupted",
    "StopSignals",
    "TapPlan",
    "bring_down",
    "bring_up",
    "default_state_dir",
    "drop_privileges",
]
