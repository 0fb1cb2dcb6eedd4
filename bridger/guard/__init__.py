"""Guards against what joining LANs at layer 2 also joins: loops, storms, a
second DHCP server or router, unwanted VLANs (docs/guard.md).

Pure, sans-I/O code: the daemon calls :class:`Guard` per frame (or per
superframe / batch), :class:`LoopDetector` from its timer task, and sends the
probes it returns.
"""

from bridger.guard.classify import FrameInfo, FrameKind, classify_untrusted, ordinary_untrusted
from bridger.guard.events import GuardEvent, LoopDetected, LoopGone, MacFlapping
from bridger.guard.flaps import MacFlaps
from bridger.guard.loop import LoopDetector, PeerLoop
from bridger.guard.policy import GUARD_DROP_REASONS, Guard, GuardConfig, Reason, without

__all__ = [
    "GUARD_DROP_REASONS",
    "FrameInfo",
    "FrameKind",
    "Guard",
    "GuardConfig",
    "GuardEvent",
    "LoopDetected",
    "LoopDetector",
    "LoopGone",
    "MacFlapping",
    "MacFlaps",
    "PeerLoop",
    "Reason",
    "classify_untrusted",
    "ordinary_untrusted",
    "without",
]
