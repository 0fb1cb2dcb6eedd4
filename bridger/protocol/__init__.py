"""Sans-I/O secure tunnel protocol core (Noise IKpsk2, WireGuard-style).

Bytes in, bytes and events out; time is passed in.  See docs/protocol.md.
"""

from .constants import DEFAULT_MAX_FRAME, DEFAULT_PERSISTENT_KEEPALIVE
from .device import Device, DeviceConfig
from .events import (
    Address,
    CookieReceived,
    DropReason,
    EndpointChanged,
    Event,
    HandshakeCompleted,
    HandshakeGaveUp,
    HandshakeInitiated,
    InternalError,
    Output,
    PathChanged,
    PathMtuChanged,
    PeerUnreachable,
    SessionExpired,
)
from .noise import public_key
from .peer import Peer
from .peerstate import PeerConfig, PeerStats
from .tunnel import (
    Tunnel,
    TunnelConfig,
    TunnelStats,
    frame_overhead,
    ip_overhead_for,
    max_unfragmented_frame,
)

__all__ = [
    "DEFAULT_MAX_FRAME",
    "DEFAULT_PERSISTENT_KEEPALIVE",
    "Address",
    "CookieReceived",
    "Device",
    "DeviceConfig",
    "DropReason",
    "EndpointChanged",
    "Event",
    "HandshakeCompleted",
    "HandshakeGaveUp",
    "HandshakeInitiated",
    "InternalError",
    "Output",
    "PathChanged",
    "PathMtuChanged",
    "Peer",
    "PeerConfig",
    "PeerStats",
    "PeerUnreachable",
    "SessionExpired",
    "Tunnel",
    "TunnelConfig",
    "TunnelStats",
    "frame_overhead",
    "ip_overhead_for",
    "max_unfragmented_frame",
    "public_key",
]
