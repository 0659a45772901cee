"""Open-loop arrivals: requests sent at Poisson times of a given rate, whatever the server's latency.

Locust's users are closed loops (each sends its next request when its last one returns; ``constant_throughput``
only paces a user, and a slow server still slows it down), so an open loop is built the way k6's
``constant-arrival-rate`` executor builds it: a pool of users (``--users``: the most requests in flight) shares
one schedule of arrival times, exponential gaps of mean ``1 / rate``. A free user claims the next arrival, sleeps
until its time and sends it. An arrival whose time passed by more than ``late_tolerance_s`` before any user could
claim it (every user busy, or the load generator starved of CPU) is not sent late in a burst: it is counted as
**missed** and reported, so an offered rate the client could not keep is never hidden.

With Locust's workers each process runs its own schedule at ``rate / K``: the sum of independent Poisson streams is
a Poisson stream of the total rate. No Locust import here: the schedule is plain Python, tested with a fake clock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_LATE_TOLERANCE_S = 0.25
"""An arrival claimed later than this after its time is missed (a gevent switch or a scrape is well under it)."""
DEFAULT_POOL_USERS = 32
"""Users (requests in flight at most) of an open-loop run when ``--users`` is not given."""


@dataclass
class PoissonArrivals:
    """One process's arrival schedule.

    Args:
        rate_per_s: Mean arrivals per second (> 0).
        rng: Random stream of the gaps.
        late_tolerance_s: How late an arrival may still be sent, seconds.
        clock: Monotonic clock in seconds.
    """

    rate_per_s: float
    rng: random.Random = field(default_factory=random.Random)
    late_tolerance_s: float = DEFAULT_LATE_TOLERANCE_S
    clock: Callable[[], float] = time.monotonic
    sent: int = 0
    missed: int = 0
    max_lag_s: float = 0.0
    _next_s: float | None = None

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {self.rate_per_s!r}")

    def _gap_s(self) -> float:
        return self.rng.expovariate(self.rate_per_s)

    def _skip_missed(self, now_s: float) -> None:
        if self._next_s is None:
            self._next_s = now_s + self._gap_s()
        while self._next_s < now_s - self.late_tolerance_s:
            self.missed += 1
            self._next_s += self._gap_s()

    def claim(self) -> float:
        """Claim the next arrival: its time on ``clock`` (sleep until then, then call ``sent_at``).

        Arrivals that passed more than ``late_tolerance_s`` ago, unclaimed, are counted as missed first.
        """
        self._skip_missed(self.clock())
        assert self._next_s is not None
        due_s, self._next_s = self._next_s, self._next_s + self._gap_s()
        return due_s

    def sent_at(self, due_s: float) -> None:
        """Count one arrival as sent now (``due_s``: the time ``claim`` returned)."""
        self.sent += 1
        self.max_lag_s = max(self.max_lag_s, self.clock() - due_s)

    def close(self) -> None:
        """At the end of the run: count the arrivals that came due and nobody claimed as missed."""
        if self._next_s is not None:
            self._skip_missed(self.clock() + self.late_tolerance_s)

    def to_dict(self) -> dict[str, Any]:
        """What the records file keeps."""
        return {"rate_per_s": self.rate_per_s, "sent": self.sent, "missed": self.missed, "max_lag_s": self.max_lag_s}
