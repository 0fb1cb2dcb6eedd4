"""Status views of a running bridger: the status document, dashboard, control socket,
metrics, logs.

The data plane counts (bridger.dataplane.accounting); the daemon builds the status
document from a snapshot of its counts (:func:`status_document`, ``docs/status.md``)
and every view reads only such documents.
"""

from bridger.status.document import DeviceInfo, PeerInfo, status_document

__all__ = ["DeviceInfo", "PeerInfo", "status_document"]
