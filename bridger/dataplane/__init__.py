"""What the data plane owns below the shell: its per-frame accounting.

``accounting``: the traffic counters, MAC tables and daemon drops that the
forwarding loop (bridger.shell) and the native lane's hand-over bump on every
frame; status views read only their snapshots.
"""
