"""The latency floor of a queue: what Poisson arrivals cost before any server overhead.

At a given arrival rate, requests that arrive while ``servers`` generations already run wait their turn, even on a
perfect server. ``fifo_sojourn`` simulates that queue (first come, first served, ``servers`` slots, each request
taking a service time drawn from the measured ones) so a load test's p99/p50 can be read against the best any
server with that service time could do: for one slot and a constant service time (M/D/1) at 80 % load the floor is
p99/p50 ~ 5. A server only gets below it when a larger batch costs less per image (a GPU's UNet), i.e. when the
service time itself shrinks under load.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence


def fifo_sojourn(rate_per_s: float, service_s: Sequence[float], *, servers: int = 1, requests: int = 200_000,
                 seed: int = 0) -> dict[str, float]:
    """Quantiles of the time in system (wait + service) of a FIFO queue with Poisson arrivals.

    Args:
        rate_per_s: Arrivals per second.
        service_s: Service times to draw from (e.g. the latencies a one-user load test measured), seconds.
        servers: Requests served at once (the gateway's ``--max-concurrency``).
        requests: Simulated requests (the first 10 % are a warm-up and not counted).
        seed: Seed of the arrivals and draws.

    Returns:
        ``p50_s``, ``p90_s``, ``p99_s``, ``mean_wait_s`` and ``utilisation`` (offered load per server).

    Raises:
        ValueError: A non-positive rate or service time, no service times, or a load of 1 or more per server
            (the queue grows without bound: there is no floor to give).
    """
    if rate_per_s <= 0 or servers < 1 or requests < 100:
        raise ValueError("rate_per_s must be > 0, servers >= 1 and requests >= 100")
    if not service_s or min(service_s) <= 0:
        raise ValueError("service_s needs at least one positive service time")
    utilisation = rate_per_s * (sum(service_s) / len(service_s)) / servers
    if utilisation >= 1:
        raise ValueError(f"offered load {utilisation:.2f} per server is >= 1: the queue has no steady state")
    rng = random.Random(seed)
    free_at = [0.0] * servers  # when each slot frees up (a heap)
    now = 0.0
    warmup = requests // 10
    sojourn: list[float] = []
    waits = 0.0
    for i in range(requests):
        now += rng.expovariate(rate_per_s)
        start = max(now, heapq.heappop(free_at))
        done = start + rng.choice(service_s)
        heapq.heappush(free_at, done)
        if i >= warmup:
            sojourn.append(done - now)
            waits += start - now
    sojourn.sort()

    def quantile(q: float) -> float:
        return sojourn[min(len(sojourn) - 1, math.ceil(q * len(sojourn)) - 1)]

    return {"p50_s": quantile(0.50), "p90_s": quantile(0.90), "p99_s": quantile(0.99),
            "mean_wait_s": waits / len(sojourn), "utilisation": utilisation}
