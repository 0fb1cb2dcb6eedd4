"""A transport keypair (WireGuard's "keypair"): one session's keys, counters and
replay window.

Each peer holds up to three: ``current`` sends and receives, ``previous`` only
receives (packets in flight across a rekey), ``next`` is a responder session
waiting for the initiator's first transport message. Every keypair is entered
in the device's receiver-index table under ``local_index`` while it is held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .replay import ReplayWindow

if TYPE_CHECKING:
    from .peer import Peer


@dataclass(slots=True, eq=False)
class Keypair:
    local_index: int
    remote_index: int
    send_key: bytes
    receive_key: bytes
    created: float
    initiator: bool
    #: The peer this session belongs to (the index table maps to keypairs).
    peer: Peer
    send_counter: int = 0
    replay: ReplayWindow = field(default_factory=ReplayWindow)
