"""The systemd watchdog, and STATUS= lines with the peers' states.

What a ping must prove: that the data plane still forwards. Two kinds of hang:

1. The Trio loop itself is stuck: a blocking call in a forwarding task
   (``time.sleep``, a blocking read or lock), or a loop with no checkpoint.
   The forwarding tasks and this task share one Trio loop (one thread), so
   this task cannot run either and the pings stop by themselves. That is why
   the ping is sent from a Trio task in the same run, and never from a thread
   or a signal handler: those would go on pinging while the loop is frozen.

2. The loop runs but forwarding does not: a forwarding task waits on
   something that never comes while its input piles up. This task still runs,
   so it must look for progress. ``heartbeat()`` (``Forwarder.heartbeat``) is
   bumped by every pass of the forwarding tasks. At each tick:

   - the heartbeat moved since the last tick: forwarding runs; ping;
   - it did not move and ``pending()`` is false (nothing waits on the UDP
     socket or a tap, no timer overdue): the daemon is idle, and idle-but-alive
     is proven by this task running in the same loop; ping. An idle daemon is
     never killed;
   - it did not move and work is pending: that work may have arrived just now,
     so the forwarding tasks get ``grace`` seconds. If the heartbeat moves or
     the work is gone, ping; if not, the data plane is stuck with input
     waiting: no ping, and systemd restarts the daemon once ``WatchdogSec``
     passes without one.

``pending()`` must be cheap and must not consume anything: :func:`readable`
polls fds with a zero timeout (level-triggered; the forwarding task's own
wait is untouched).

Limits: the heartbeat is shared by all forwarding tasks, so one task stuck
while another carries traffic is not seen (in a Trio task that needs an await
that never returns; the tasks await only readability and the timer event).
"""

from __future__ import annotations

import logging
import math
import select
from collections.abc import Callable, Iterable, Sequence

import trio

from bridger.service.notify import Notifier

log = logging.getLogger("bridger")

#: Longest time the forwarding tasks get to take pending work before a ping is withheld.
GRACE_MAX = 0.5
#: Seconds between checks of the peers' states for a STATUS= line.
STATUS_INTERVAL = 2.0
#: Peers named in a STATUS= line; the rest are counted.
STATUS_NAMES_MAX = 20


def readable(fds: Iterable[int]) -> bool:
    """Whether any of ``fds`` has input waiting (poll with a zero timeout).

    A closed fd (POLLNVAL) counts as not readable: its task is gone with it.
    """
    poller = select.poll()
    count = 0
    for fd in fds:
        poller.register(fd, select.POLLIN)
        count += 1
    if not count:
        return False
    return any(mask & (select.POLLIN | select.POLLERR) and not mask & select.POLLNVAL
               for _fd, mask in poller.poll(0))


def overdue(deadline: float | None, now: float, slack: float) -> bool:
    """Whether a timer deadline passed more than ``slack`` seconds ago."""
    return deadline is not None and now - deadline > slack


class Liveness:
    """The decision behind each ping (see the module docstring)."""

    def __init__(self, heartbeat: Callable[[], int], pending: Callable[[], bool]) -> None:
        self.heartbeat = heartbeat
        self.pending = pending
        self.last = heartbeat()
        #: Ticks at which the ping was withheld.
        self.withheld = 0

    def moved(self) -> bool:
        beat = self.heartbeat()
        if beat != self.last:
            self.last = beat
            return True
        return False

    async def check(self, grace: float) -> bool:
        """True if the data plane forwards or is idle; False if it is stuck with work."""
        if self.moved() or not self.pending():
            return True
        await trio.sleep(grace)
        if self.moved() or not self.pending():
            return True
        self.withheld += 1
        return False


async def watchdog_task(
    notifier: Notifier,
    heartbeat: Callable[[], int],
    interval: float,
    pending: Callable[[], bool],
    *,
    grace: float | None = None,
) -> None:
    """Send WATCHDOG=1 every ``interval`` seconds while the data plane is alive.

    ``interval`` is :meth:`Notifier.watchdog_interval` (half ``WATCHDOG_USEC``);
    ``grace`` defaults to a quarter of it, at most :data:`GRACE_MAX`, so a
    withheld-then-granted ping still lands well inside ``WATCHDOG_USEC``.
    """
    if not math.isfinite(interval) or interval <= 0:
        raise ValueError("watchdog interval must be a positive number of seconds")
    grace = min(interval / 4, GRACE_MAX) if grace is None else grace
    alive = Liveness(heartbeat, pending)
    stuck = False
    notifier.watchdog()
    next_at = trio.current_time() + interval
    while True:
        await trio.sleep_until(next_at)
        if await alive.check(grace):
            if stuck:
                log.warning("watchdog: the data plane forwards again; pings resumed")
                stuck = False
            notifier.watchdog()
        elif not stuck:
            log.error("watchdog: the data plane takes no input for %.1fs; "
                      "pings withheld (systemd restarts a hung daemon)", interval + grace)
            stuck = True
        # After a long stall, resume the period from now rather than catching up in a burst.
        next_at = max(next_at + interval, trio.current_time())


def peers_status(states: Sequence[tuple[str, str]]) -> str:
    """``3 peers: berlin up, paris up, rome handshaking`` from (name, state) pairs."""
    count = len(states)
    noun = "peer" if count == 1 else "peers"
    shown = [f"{name} {state}" for name, state in states[:STATUS_NAMES_MAX]]
    if count > STATUS_NAMES_MAX:
        up = sum(1 for _name, state in states if state == "up")
        shown.append(f"and {count - STATUS_NAMES_MAX} more ({up} of {count} up)")
    if not shown:
        return f"0 {noun}"
    return f"{count} {noun}: " + ", ".join(shown)


async def status_task(
    notifier: Notifier,
    states: Callable[[], Sequence[tuple[str, str]]],
    interval: float = STATUS_INTERVAL,
    prefix: Callable[[], str] | None = None,
) -> None:
    """Send a STATUS= line whenever the peers' states change (checked every ``interval``);
    ``prefix``: words before the peers (a gateway's HA role)."""
    last: str | None = None
    while True:
        text = peers_status(states())
        if prefix is not None:
            text = f"{prefix()}; {text}"
        if text != last:
            notifier.status(text)
            last = text
        await trio.sleep(interval)
