"""What the guards report for the log: one event, one line.

The daemon drains them (``LoopDetector.take_events()``) and logs
``event.line()``; the text holds only peer names (checked by the config),
MAC addresses and numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoopDetected:
    """A probe of ours came back: forwarding for ``peer`` stopped."""

    peer: str
    #: Where it came back: "lan" (read from a tap) or the name of the peer it
    #: arrived from over the tunnel.
    via: str
    #: VLAN the probe was sent in (0: untagged).
    vlan: int
    #: Seconds without a returning probe before forwarding resumes.
    hold: float

    def line(self) -> str:
        where = "from the LAN" if self.via == "lan" else f"from peer {self.via}"
        vlan = f" in VLAN {self.vlan}" if self.vlan else ""
        return (
            f"loop detected via peer {self.peer}: a probe sent to it{vlan} came back {where};"
            f" forwarding to and from {self.peer} stopped (resumes {self.hold:.0f} s after"
            " the loop is gone)"
        )


@dataclass(frozen=True)
class LoopGone:
    """No probe came back for the hold time: forwarding for ``peer`` resumed."""

    peer: str
    blocked_for: float

    def line(self) -> str:
        return (
            f"loop via peer {self.peer} gone: forwarding resumed"
            f" (blocked for {self.blocked_for:.1f} s)"
        )


@dataclass(frozen=True)
class MacFlapping:
    """A MAC keeps changing sides (LAN <-> a peer, or between peers)."""

    mac: bytes
    sides: tuple[str, str]
    flaps: int
    seconds: float

    def line(self) -> str:
        return (
            f"MAC {self.mac.hex(':')} flapping between {self.sides[0]} and {self.sides[1]}:"
            f" {self.flaps} moves in {self.seconds:.1f} s (a loop or a duplicate MAC)"
        )


GuardEvent = LoopDetected | LoopGone | MacFlapping
