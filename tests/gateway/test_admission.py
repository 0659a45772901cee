"""Admission control without a server: slots, the bounded FIFO queue, refusals at once, leaving the queue."""

from __future__ import annotations

import threading
import time

import pytest

from edgediff.errors import InvalidArgumentError
from edgediff.pipeline import GenerationCancelled
from services.gateway.admission import AUTO_MAX_CONCURRENCY, Admission, QueueFullError


def test_refuses_at_once_beyond_the_queue() -> None:
    admission = Admission(max_concurrency=1, max_queue=1)
    assert admission.acquire() == 0.0
    waiter_done = threading.Event()
    queue_s: list[float] = []

    def waiter() -> None:
        queue_s.append(admission.acquire())
        waiter_done.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 5
    while admission.waiting != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (admission.running, admission.waiting) == (1, 1)
    t0 = time.perf_counter()
    with pytest.raises(QueueFullError, match="max concurrency 1, max queue 1"):
        admission.acquire()
    assert time.perf_counter() - t0 < 0.1
    time.sleep(0.1)
    admission.release()
    assert waiter_done.wait(5)
    thread.join(5)
    assert queue_s[0] >= 0.1
    assert (admission.running, admission.waiting) == (1, 0)
    admission.release()
    assert admission.running == 0


def test_queue_is_fifo() -> None:
    admission = Admission(max_concurrency=1, max_queue=3)
    admission.acquire()
    order: list[int] = []

    def waiter(i: int) -> None:
        with admission.slot():
            order.append(i)

    threads = []
    for i in range(3):
        threads.append(threading.Thread(target=waiter, args=(i,)))
        threads[-1].start()
        deadline = time.monotonic() + 5
        while admission.waiting != i + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    admission.release()
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2]
    assert (admission.running, admission.waiting) == (0, 0)


def test_should_stop_leaves_the_queue() -> None:
    admission = Admission(max_concurrency=1, max_queue=1)
    admission.acquire()
    stop = threading.Event()
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            admission.acquire(stop.is_set)
        except GenerationCancelled as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 5
    while admission.waiting != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(5)
    assert len(errors) == 1 and admission.waiting == 0
    admission.release()
    assert admission.acquire() == 0.0  # the slot and the queue are usable again


def test_zero_queue_and_bad_settings() -> None:
    admission = Admission(max_concurrency=2, max_queue=0)
    admission.acquire()
    admission.acquire()
    with pytest.raises(QueueFullError):
        admission.acquire()
    with pytest.raises(InvalidArgumentError, match="--max-concurrency"):
        Admission(0, 1)
    with pytest.raises(InvalidArgumentError, match="--max-queue"):
        Admission(1, -1)
    with pytest.raises(RuntimeError):
        Admission(1, 0).release()


def test_capacity_sized_admission_follows_the_backend() -> None:
    capacity: dict[str, int | None] = {"now": None}
    admission = Admission(None, max_queue=1, capacity=lambda: capacity["now"])
    assert admission.max_concurrency == 1  # the backend cannot tell yet: one at a time
    assert admission.max_concurrency_bound == AUTO_MAX_CONCURRENCY  # what the server sizes its workers for
    capacity["now"] = 2
    assert admission.acquire() == 0.0 and admission.acquire() == 0.0
    got: list[float] = []
    thread = threading.Thread(target=lambda: got.append(admission.acquire()))
    thread.start()
    deadline = time.monotonic() + 5
    while admission.waiting != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.perf_counter()
    with pytest.raises(QueueFullError, match="max concurrency 2, max queue 1"):
        admission.acquire()  # capacity and queue full: refused at once
    assert time.perf_counter() - t0 < 0.1
    capacity["now"] = 3  # the backend grew: the queued request gets a slot with no release
    thread.join(5)
    assert got and admission.running == 3
    capacity["now"] = 10_000
    assert admission.max_concurrency == AUTO_MAX_CONCURRENCY
    assert Admission(2, 0, capacity=lambda: 10).max_concurrency == 2  # --max-concurrency wins over the backend
