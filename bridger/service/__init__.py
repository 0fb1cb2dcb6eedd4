"""Running bridger as a system service, one module per concern:

- ``notify``: the sd_notify client (READY, STATUS, WATCHDOG, STOPPING, RELOADING);
- ``watchdog``: the Trio task that pings only while the data plane forwards or
  is idle, and STATUS= lines with the peers' states;
- ``reload``: what a configuration reload changes (a pure diff of two configs);
- ``endpoints``: each peer's last authenticated endpoint, kept across restarts;
- ``live``: the running daemon's side of these (peer tasks that come and go,
  SIGHUP reload applied to the forwarder and host session, notifications),
  called from ``bridger.daemon``.
"""
