"""The Trio I/O shell around the protocol core, one module per concern:

- ``udp``: the device's UDP socket and sending without waiting;
- ``port``: a peer's tap in the bridge, and the per-frame steps at the tap;
- ``forward``: the tasks that move frames (taps <-> socket) and the timers;
- ``resolver``: a peer's DNS name, off the data path;
- ``eventlog``: one log line per protocol event;
- ``assembly``: the parts a running bridge is built from (keys, core,
  forwarder, ports, fast path), for ``bridger.daemon`` (`bridger up`, which
  assembles the shell, the service and the status views) and for
  ``bridger.service.live``.
"""
