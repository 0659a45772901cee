"""Admission control: at most N generations at once, a bounded FIFO queue behind them, refusals at once beyond it."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from edgediff.errors import EdgediffError, InvalidArgumentError
from edgediff.pipeline import GenerationCancelled

POLL_S = 0.05
"""How often a queued request re-checks its ``should_stop`` (client gone, deadline passed)."""


class QueueFullError(EdgediffError):
    """Every slot is busy and the queue is full (gRPC RESOURCE_EXHAUSTED)."""


class Admission:
    """Concurrency slots plus a bounded FIFO queue.

    Args:
        max_concurrency: Generations running at once (>= 1).
        max_queue: Requests allowed to wait for a slot (>= 0); one more is refused at once.
    """

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        if max_concurrency < 1:
            raise InvalidArgumentError(f"--max-concurrency must be >= 1, got {max_concurrency}")
        if max_queue < 0:
            raise InvalidArgumentError(f"--max-queue must be >= 0, got {max_queue}")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._running = 0
        self._waiting: deque[object] = deque()
        self._cond = threading.Condition()

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
        t0 = time.perf_counter()
        with self._cond:
            if self._running < self.max_concurrency and not self._waiting:
                self._running += 1
                return 0.0
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(
                    f"server busy: {self._running} generating, {len(self._waiting)} queued "
                    f"(max concurrency {self.max_concurrency}, max queue {self.max_queue}); retry later"
                )
            ticket = object()
            self._waiting.append(ticket)
            try:
                while not (self._waiting[0] is ticket and self._running < self.max_concurrency):
                    if should_stop is not None and should_stop():
                        raise GenerationCancelled("cancelled while waiting in the queue")
                    self._cond.wait(POLL_S)
                self._waiting.popleft()
                self._running += 1
                return time.perf_counter() - t0
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
