"""The queue simulation that gives a load test's latency floor agrees with queueing theory."""

from __future__ import annotations

import pytest

from loadtest.queueing import fifo_sojourn


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_one_slot_constant_service_matches_pollaczek_khinchine(rho: float) -> None:
    # M/D/1: mean wait = rho / (2 mu (1 - rho)), service 1 s (mu = 1)
    floor = fifo_sojourn(rho, [1.0], requests=300_000, seed=1)
    expected = rho / (2 * (1 - rho))
    assert floor["mean_wait_s"] == pytest.approx(expected, rel=0.05)
    assert floor["utilisation"] == pytest.approx(rho)


def test_at_80_percent_one_slot_cannot_keep_p99_within_1_5_p50() -> None:
    floor = fifo_sojourn(0.8 / 3.0, [3.0], seed=2)
    assert floor["p99_s"] / floor["p50_s"] > 4  # the 1.5 needs a service time that shrinks under load


def test_more_slots_at_the_same_load_per_slot_wait_less() -> None:
    one = fifo_sojourn(0.8, [1.0], servers=1, seed=3)
    four = fifo_sojourn(3.2, [1.0], servers=4, seed=3)
    assert four["utilisation"] == pytest.approx(one["utilisation"])
    assert four["mean_wait_s"] < 0.5 * one["mean_wait_s"]  # M/D/4 pools its slots


@pytest.mark.parametrize(("rate", "service", "servers"), [(0, [1.0], 1), (1.0, [], 1), (1.0, [0.0], 1),
                                                          (1.0, [1.0], 1), (2.5, [1.0], 2)])
def test_bad_or_unstable_queues_are_refused(rate: float, service: list[float], servers: int) -> None:
    with pytest.raises(ValueError):
        fifo_sojourn(rate, service, servers=servers)
