"""Protocol constants.

Specification constants are part of the wire protocol (docs/protocol.md): both
peers must agree on them.  Implementation constants are local choices (memory
caps, rate limits) that a second implementation may pick differently.
"""

from __future__ import annotations

# --- Specification constants -------------------------------------------------

#: Noise protocol name; the initial chaining key / hash (Noise section 5.2).
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b"
#: Noise prologue: binds handshakes to this protocol and version.
IDENTIFIER = b"bridger v1 tunnel"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

HASH_LEN = 64  # BLAKE2b-512
BLOCK_LEN = 128  # BLAKE2b block, for HMAC (RFC 2104)
KEY_LEN = 32
MAC_LEN = 16
AEAD_TAG_LEN = 16
TIMESTAMP_LEN = 12  # TAI64N

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER_MAX = 1.0 / 3.0
KEEPALIVE_TIMEOUT = 10.0
#: Dead-peer detection: data sent but nothing authenticated received for this long.
NEW_HANDSHAKE_TIMEOUT = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
#: Initiator re-handshakes on receive when its session is this old.
REKEY_ON_RECEIVE_TIME = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
COOKIE_REFRESH_TIME = 120.0
DEFAULT_PERSISTENT_KEEPALIVE = 25.0

#: Transport: type/reserved word, receiver index, counter (little endian).
TRANSPORT_HEADER_LEN = 16
TRANSPORT_OVERHEAD = TRANSPORT_HEADER_LEN + AEAD_TAG_LEN
#: Outer IP+UDP header sizes.
IPV4_UDP_OVERHEAD = 20 + 8
IPV6_UDP_OVERHEAD = 40 + 8

# --- Implementation constants -------------------------------------------------

#: Replay window bitmap (RFC 6479): blocks of 64 bits; usable window is
#: (REPLAY_BLOCKS - 1) * 64 = 8128 packets.
REPLAY_BLOCKS = 128
#: Frames held while no session is up; oldest dropped beyond this.
MAX_QUEUED_FRAMES = 256
#: Reassembly bounds.
REASSEMBLY_MAX_FRAMES = 64
REASSEMBLY_MAX_BYTES = 256 * 1024
REASSEMBLY_TIMEOUT = 3.0
#: Default / hard cap on an Ethernet frame (1514 + 802.1Q + QinQ tags).
DEFAULT_MAX_FRAME = 1522
HARD_MAX_FRAME = 9216
MIN_WAN_MTU = 576
#: The path MTU assumed where probing is off and no wan_mtu is configured.
DEFAULT_WAN_MTU = 1500
#: Keys are wiped after this long without a new handshake.
ZERO_KEYS_AFTER = REJECT_AFTER_TIME * 3
#: The smallest MTU an IPv6 link may have (RFC 8200): the floor on IPv6 paths.
IPV6_MIN_MTU = 1280
#: Path MTU (whole outer IP packet) in use before any probe is answered.
PMTU_BASE = 1280
#: Sizes probed at once when a search starts, besides the ceiling: what real
#: paths have (PPPoE 1492, DS-Lite 1452, LTE and IPsec about 1400, the IPv6
#: minimum) and a few below it for IPv4 paths.
PMTU_LADDER = (1492, 1452, 1400, 1280, 1200, 1024, 576)
#: Probes per following round, spread evenly between the largest size acked
#: and the smallest lost; the search ends when those are this close (1: exact).
PMTU_ROUND_PROBES = 3
PMTU_PRECISION = 1
#: A round waits 4 smoothed probe round trips for its acks, within these bounds.
PMTU_ROUND_MIN = 0.25
PMTU_ROUND_MAX = 1.0
#: A round without a single ack is sent again this many times, then given up.
PMTU_ROUND_RETRIES = 2
#: While data flows the value in use is confirmed this often, so a shrunken
#: path (a black hole for large datagrams) is found within a few seconds.
PMTU_CONFIRM_INTERVAL = 1.0
#: Below the ceiling, look for a path that grew back this often (a handful of
#: probes per peer whose path is narrower than its ceiling).
PMTU_RAISE_INTERVAL = 30.0
#: After an ICMP report proved false, further reports are ignored this long.
PMTU_KERNEL_DISTRUST = 10.0
#: Seconds after which our pending initiation, crossed by the peer's, counts as
#: lost and is re-sent at once (one per peer initiation, which is rate-limited).
HANDSHAKE_RACE_RESEND = 1.0
#: Seconds (plus 0 to REKEY_TIMEOUT_JITTER_MAX of jitter) before a handshake
#: message refused with a cookie reply is sent again with the cookie: the
#: responder is busy, so not at once, but well before the 5 s retransmission
#: (a hub whose spokes all restart at once, issue 26).
COOKIE_RETRY_DELAY = 0.05
#: Handshake rate limits (token buckets, messages per second and burst).
HANDSHAKE_GLOBAL_RATE = 20.0
HANDSHAKE_GLOBAL_BURST = 40.0
HANDSHAKE_SOURCE_RATE = 2.0
HANDSHAKE_SOURCE_BURST = 5.0
RATE_LIMIT_MAX_SOURCES = 4096
#: At most one InternalError event (a traceback for the log) per this many seconds.
INTERNAL_ERROR_REPORT_INTERVAL = 10.0

# --- NAT traversal (issue 23; docs/nat.md): implementation constants -----------

#: An introducer checks this often whether a pair of its peers needs an
#: introduction (a peer's session came up or its endpoint moved)...
INTRODUCE_CHECK_INTERVAL = 0.5
#: ...and tells every pair again this often: a new attempt at a direct path for
#: pairs still relayed, started by both ends at once (the introducer tells both
#: in one go).  Longer than the 30 s a Linux NAT keeps an unanswered UDP flow,
#: so that what one failed attempt left in a NAT's table is gone by the next.
INTRODUCE_REFRESH = 60.0
#: After an introduction, how long the direct path may take to appear before
#: the pair goes through a relay.
PUNCH_WINDOW = 3.0
#: Path pings on candidate addresses: a round of this many, this far apart.
PATH_PING_INTERVAL = 1.0
PATH_PINGS_PER_ROUND = 3
#: A direct path silent this long no longer holds the peer back from its relay
#: (packets the peer sends through the relay then move us there too)...
DIRECT_SUSPECT = 2.0
#: ...and one that left our data unanswered this long (nothing from it either)
#: gives way to a relay: a NAT that lost its mapping, a path gone.
DIRECT_DEAD = 5.0
#: Candidate addresses and relays remembered per peer (newest kept).
MAX_CANDIDATES = 4
#: Keepalive interval used for a peer whose endpoint was learnt (no host
#: configured), introduced or relayed when its persistent_keepalive is 0: the
#: NAT mappings of such paths must stay open (UDP conntrack forgets in 30 s).
AUTO_KEEPALIVE = 20.0
