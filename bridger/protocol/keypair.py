"""A transport keypair (WireGuard's "keypair"): one session's keys, counters and
replay window.

Each peer holds up to three: ``current`` sends and receives, ``previous`` only
receives (packets in flight across a rekey), ``next`` is a responder session
waiting for the initiator's first transport message. Every keypair is entered
in the device's receiver-index table under ``local_index`` while it is held.

With the native data path (bridger.native) the send counter and the replay
window live in a native ``Session`` (``session``), which the native lane uses
too: the core reads and moves the same counter and window through the
``send_counter`` property and ``replay``.  Without it they are plain Python
state.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

from .replay import ReplayWindow, Verdict


class Session(Protocol):
    """What the core uses of a native session (``bridger.native._lane.Session``)."""

    send_counter: int

    def check(self, counter: int) -> int: ...


#: A native session's check() result -> the Python window's verdict.
_VERDICTS = (Verdict.OK, Verdict.REPLAY, Verdict.TOO_OLD)


class _SessionReplay:
    """A native session's replay window, with ReplayWindow's interface."""

    __slots__ = ("_check",)

    def __init__(self, session: Session) -> None:
        self._check = session.check

    def check(self, counter: int) -> Verdict:
        return _VERDICTS[self._check(counter)]


class Named(Protocol):
    """What a keypair reads of its peer itself: the name (in ``repr``)."""

    @property
    def name(self) -> str: ...


#: The peer a keypair belongs to (peerstate.PeerState; Named keeps this module
#: below it).
PeerT = TypeVar("PeerT", bound=Named, covariant=True)


class Keypair(Generic[PeerT]):
    __slots__ = ("_counter", "created", "initiator", "local_index", "peer", "receive_key",
                 "remote_index", "replay", "send_key", "session")

    def __init__(
        self,
        local_index: int,
        remote_index: int,
        send_key: bytes,
        receive_key: bytes,
        created: float,
        initiator: bool,
        peer: PeerT,
        session: Any = None,
    ) -> None:
        self.local_index = local_index
        self.remote_index = remote_index
        self.send_key = send_key
        self.receive_key = receive_key
        self.created = created
        self.initiator = initiator
        #: The peer this session belongs to (the index table maps to keypairs).
        self.peer = peer
        #: The native session holding the counter and window, or None.
        self.session = session
        self._counter = 0
        self.replay: ReplayWindow | _SessionReplay = (
            ReplayWindow() if session is None else _SessionReplay(session)
        )

    @property
    def send_counter(self) -> int:
        session = self.session
        return self._counter if session is None else int(session.send_counter)

    @send_counter.setter
    def send_counter(self, value: int) -> None:
        session = self.session
        if session is None:
            self._counter = value
        else:
            session.send_counter = value

    def __repr__(self) -> str:
        return (f"Keypair(local_index={self.local_index}, remote_index={self.remote_index}, "
                f"created={self.created}, initiator={self.initiator}, "
                f"send_counter={self.send_counter}, peer={self.peer.name!r})")
