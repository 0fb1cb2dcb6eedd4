"""A token bucket on the caller's clock (sans-I/O: ``now`` is passed in).

The one token bucket: the device's handshake rate limits (cookie.py, device.py)
and the guards' broadcast budgets (guard/policy.py) both use it.
"""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full.

    :meth:`take` of ``n`` tokens succeeds when at least ``min(n, burst)`` are
    there and may leave the bucket in debt, so that a batch bigger than the
    burst (a superframe's segments) can pass at all and still pays in full.
    A clock that steps back is treated as no time passing.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        """Full at ``now``, or at the first :meth:`refill` when no time is given."""
        if rate < 0 or burst < 0:
            raise ValueError("token bucket rate and burst must not be negative")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = self.burst
        self.stamp: float | None = now

    def refill(self, now: float) -> float:
        """Bring the bucket up to ``now``; the tokens there."""
        stamp = self.stamp
        if stamp is None or now > stamp:
            if stamp is not None:
                self.tokens = min(self.burst, self.tokens + (now - stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def take(self, now: float, n: int = 1) -> bool:
        """Spend ``n`` tokens if the bucket allows it now."""
        tokens = self.refill(now)
        if tokens >= (n if n < self.burst else self.burst) and tokens > 0:
            self.tokens = tokens - n
            return True
        return False
