"""Admission control: at most N generations at once, a bounded FIFO queue behind them, refusals at once beyond it.

N is fixed (``--max-concurrency``) or, by default, the backend's capacity (``Backend.capacity``: Triton's
``ldm_<variant>`` instances, so its part models' batchers see that many generations at once; one for the local
backend), read again at every admission so a Triton that comes up later (or with another repository) resizes it.

The queue can also be gated on the backend's health: while the backend is down (Triton restarting), accepted requests
stay queued instead of failing, each up to its own deadline and at most ``max_ready_wait_s`` of backend downtime,
and take a slot once the backend is healthy again.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from edgediff.errors import EdgediffError, InvalidArgumentError
from edgediff.pipeline import GenerationCancelled
from services.gateway.backends.base import BackendUnavailableError

POLL_S = 0.05
"""How often a queued request re-checks its ``should_stop`` (client gone, deadline passed)."""
AUTO_MAX_CONCURRENCY = 64
"""The most generations at once a capacity-sized admission allows (the gateway sizes its worker pool for it)."""


class QueueFullError(EdgediffError):
    """Every slot is busy and the queue is full (gRPC RESOURCE_EXHAUSTED)."""


class BackendWaitExpiredError(BackendUnavailableError):
    """A queued request waited ``max_ready_wait_s`` for the backend to be healthy again (gRPC UNAVAILABLE).

    Attributes:
        waited_s: Seconds it waited for the backend.
    """

    def __init__(self, message: str, waited_s: float) -> None:
        super().__init__(message, started=False)
        self.waited_s = waited_s


@dataclass(frozen=True)
class Admitted:
    """How long a request waited before it got its slot.

    Attributes:
        queue_s: From ``admit`` to the slot, seconds (includes ``backend_wait_s``).
        backend_wait_s: The part of it during which the backend was not healthy, seconds.
    """

    queue_s: float
    backend_wait_s: float


class Admission:
    """Concurrency slots plus a bounded FIFO queue.

    Args:
        max_concurrency: Generations running at once (>= 1), or None: as many as ``capacity`` says.
        max_queue: Requests allowed to wait for a slot (>= 0); one more is refused at once.
        capacity: With ``max_concurrency`` None, the backend's capacity (generations it runs at once with gain;
            None while it cannot tell), called at each admission, so it must be cheap; clamped to
            1..``AUTO_MAX_CONCURRENCY``, and 1 while unknown.
    """

    def __init__(self, max_concurrency: int | None, max_queue: int, *,
                 capacity: Callable[[], int | None] | None = None) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise InvalidArgumentError(f"--max-concurrency must be >= 1, got {max_concurrency}")
        if max_queue < 0:
            raise InvalidArgumentError(f"--max-queue must be >= 0, got {max_queue}")
        self._fixed = max_concurrency
        self._capacity = capacity
        self.max_queue = max_queue
        self._running = 0
        self._waiting: deque[object] = deque()
        self._cond = threading.Condition()

    @property
    def max_concurrency(self) -> int:
        """Generations allowed at once now (the fixed setting, or the backend's capacity)."""
        if self._fixed is not None:
            return self._fixed
        capacity = self._capacity() if self._capacity is not None else None
        return min(max(1, capacity or 1), AUTO_MAX_CONCURRENCY)

    @property
    def max_concurrency_bound(self) -> int:
        """The most ``max_concurrency`` can ever be (to size the server's worker pool)."""
        return self._fixed if self._fixed is not None else AUTO_MAX_CONCURRENCY

    @property
    def running(self) -> int:
        """Requests holding a slot."""
        return self._running

    @property
    def waiting(self) -> int:
        """Requests in the queue."""
        return len(self._waiting)

    def acquire(self, should_stop: Callable[[], bool] | None = None) -> float:
        """Take a slot, waiting in the queue if needed; returns the seconds spent waiting.

        Args:
            should_stop: Polled every ``POLL_S`` while queued; True leaves the queue.

        Raises:
            QueueFullError: no free slot and the queue is full (immediately, without waiting).
            GenerationCancelled: ``should_stop`` became true while queued.
        """
        return self.admit(should_stop).queue_s

    def admit(self, should_stop: Callable[[], bool] | None = None, *, ready: Callable[[], bool] | None = None,
              max_ready_wait_s: float = 0.0, front: bool = False) -> Admitted:
        """Take a slot once one is free and (when ``ready`` is given) the backend is healthy.

        Args:
            should_stop: Polled every ``POLL_S`` while queued; True leaves the queue.
            ready: Whether the backend can serve now (None: always). While it is False the request stays queued.
            max_ready_wait_s: Most seconds of backend downtime this request waits through (cumulated).
            front: Join the queue at its head (a request that already waited its turn and is retried).

        Raises:
            QueueFullError: the request would have to wait and the queue is full (immediately, without waiting).
            GenerationCancelled: ``should_stop`` became true while queued (client gone, deadline passed).
            BackendWaitExpiredError: the backend was not healthy for ``max_ready_wait_s`` while it waited.
        """
        t0 = time.perf_counter()
        with self._cond:
            limit = self.max_concurrency
            if self._running < limit and not self._waiting and (ready is None or ready()):
                self._running += 1
                return Admitted(0.0, 0.0)
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(
                    f"server busy: {self._running} generating, {len(self._waiting)} queued "
                    f"(max concurrency {limit}, max queue {self.max_queue}); retry later"
                )
            ticket = object()
            if front:
                self._waiting.appendleft(ticket)
            else:
                self._waiting.append(ticket)
            backend_wait_s = 0.0
            last = t0
            try:
                while True:
                    is_ready = ready is None or ready()
                    now = time.perf_counter()
                    if not is_ready:
                        backend_wait_s += now - last
                    last = now
                    if is_ready and self._waiting[0] is ticket and self._running < self.max_concurrency:
                        break
                    if should_stop is not None and should_stop():
                        raise GenerationCancelled("cancelled while waiting in the queue")
                    if not is_ready and backend_wait_s >= max_ready_wait_s:
                        raise BackendWaitExpiredError(
                            f"the backend was not serving for {backend_wait_s:.1f} s while this request was queued "
                            f"(the server waits at most {max_ready_wait_s:g} s: --max-backend-wait)", backend_wait_s)
                    self._cond.wait(POLL_S)
                self._waiting.popleft()
                self._running += 1
                return Admitted(time.perf_counter() - t0, backend_wait_s)
            finally:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                self._cond.notify_all()

    def release(self) -> None:
        """Give a slot back (once per successful ``acquire``)."""
        with self._cond:
            if self._running <= 0:
                raise RuntimeError("Admission.release() without a matching acquire()")
            self._running -= 1
            self._cond.notify_all()

    @contextmanager
    def slot(self, should_stop: Callable[[], bool] | None = None) -> Iterator[float]:
        """``with admission.slot(should_stop) as queue_s:`` acquire, then release on exit."""
        queue_s = self.acquire(should_stop)
        try:
            yield queue_s
        finally:
            self.release()
