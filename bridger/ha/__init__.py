"""Two or more gateways per site: one forwards, the others stand by (docs/operations.md).

* :mod:`bridger.ha.wire`: the group's frame format (EtherType 0x88B6), its MAC.
* :mod:`bridger.ha.election`: the sans-I/O election (frames and ``now`` in,
  frames and role changes out) and the follower of an outside state (keepalived).
* :mod:`bridger.ha.runner`: the thin Trio shell: a raw socket on the bridge, the
  taps' bridge-port states as the forwarding gate, the MAC announcements.
"""
