"""Open-loop arrivals, the sweep's ladder and knee, and the load test's verdict, from known inputs."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from edgediff.errors import InvalidArgumentError
from loadtest.arrivals import PoissonArrivals
from loadtest.session import LoadTestConfig, Outcome, verdict
from loadtest.summary import summarize
from loadtest.sweep import Ladder, knee, level_config, level_row, render_markdown
from tests.loadtest.test_loadtest_maths import _record


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def test_arrival_gaps_are_exponential_at_the_rate():
    clock = FakeClock()
    arrivals = PoissonArrivals(4.0, random.Random(0), clock=clock)
    times = []
    for _ in range(4000):  # one user always free: it claims, sleeps until the arrival, sends
        due = arrivals.claim()
        clock.now_s = max(clock.now_s, due)
        arrivals.sent_at(due)
        times.append(due)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.mean(gaps) == pytest.approx(0.25, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(0.25, rel=0.08)  # exponential: sd = mean (Poisson arrivals)
    assert arrivals.missed == 0 and arrivals.sent == 4000 and arrivals.max_lag_s == 0.0


def test_arrivals_no_user_could_send_on_time_are_missed_not_sent_late():
    clock = FakeClock()
    arrivals = PoissonArrivals(10.0, random.Random(1), late_tolerance_s=0.25, clock=clock)
    due = arrivals.claim()
    clock.now_s = due
    arrivals.sent_at(due)
    clock.now_s += 5.0  # the only user was busy for 5 s: about 50 arrivals came and went
    next_due = arrivals.claim()
    assert next_due >= clock.now_s - 0.25  # never one from the past beyond the tolerance (no burst to catch up)
    assert arrivals.missed == pytest.approx(50, abs=20)
    missed_before_close = arrivals.missed
    clock.now_s += 2.0  # the run ends with every user busy: those arrivals are counted too
    arrivals.close()
    assert arrivals.missed - missed_before_close == pytest.approx(20, abs=12)
    assert arrivals.to_dict()["sent"] == 1


def test_rate_must_be_positive():
    with pytest.raises(ValueError, match="rate_per_s"):
        PoissonArrivals(0.0)


def test_ladder_parsing():
    assert Ladder.parse("users=1,2,4") == Ladder("users", (1.0, 2.0, 4.0))
    assert Ladder.parse("rate=0.5,1.5").levels == (0.5, 1.5)
    for bad, message in (("users=1,1.5", "whole numbers"), ("rate=1,0.5", "increase"), ("rate=", "numbers"),
                         ("rate=-1", "> 0"), ("qps=1", "expected users=")):
        with pytest.raises(InvalidArgumentError, match=message):
            Ladder.parse(bad)


def _config(tmp_path, **kw) -> LoadTestConfig:
    return LoadTestConfig(target="127.0.0.1:1", users=kw.pop("users", 8), spawn_rate=1.0, run_time_s=10,
                          out_dir=tmp_path, **kw)


def test_level_configs(tmp_path):
    base = _config(tmp_path)
    users = level_config(base, Ladder.parse("users=1,4"), 4.0)
    assert (users.users, users.spawn_rate, users.rate_per_s, users.out_dir.name) == (4, 4.0, None, "users-4")
    rate = level_config(base, Ladder.parse("rate=0.5"), 0.5)
    assert (rate.users, rate.rate_per_s, rate.open_loop, rate.out_dir.name) == (8, 0.5, True, "rate-0.5")
    env = rate.plan().env
    assert env["EDGEDIFF_LOADTEST_RATE"] == "0.5" and env["EDGEDIFF_LOADTEST_STEPS"] == "default"
    split = _config(tmp_path, rate_per_s=3.0, workers=2).plan().env["EDGEDIFF_LOADTEST_RATE"]
    assert float(split) == 1.5  # each worker process runs half the rate


def test_config_checks_name_the_flag(tmp_path):
    with pytest.raises(InvalidArgumentError, match="--rate must be > 0"):
        _config(tmp_path, rate_per_s=0.0)
    with pytest.raises(InvalidArgumentError, match="--users must be >= 1"):
        _config(tmp_path, users=0)


def _report(images_per_s, p50, p99, failed=0, max_in_flight=4, arrivals=None, requests_per_s=None):
    return {"requests": {"images_per_s": images_per_s, "requests_per_s": requests_per_s or images_per_s,
                         "requests": 10, "failed": failed, "failures_by_status": {},
                         "latency": {"p50_s": p50, "p90_s": p99, "p99_s": p99}},
            "load": {"max_in_flight": max_in_flight, "arrivals": arrivals}}


def test_knee_is_the_first_level_within_95_percent_of_saturation():
    ladder = Ladder.parse("users=1,2,4,8")
    rows = [level_row(ladder, level, Outcome(0, _report(ips, p50, p99, max_in_flight=int(level))))
            for level, ips, p50, p99 in ((1, 0.30, 3.0, 3.2), (2, 0.36, 5.5, 6.0), (4, 0.37, 11.0, 12.0),
                                         (8, 0.37, 22.0, 24.0))]
    result = knee(rows)
    assert result["saturation_images_per_s"] == pytest.approx(0.37)
    assert result["knee_level"] == 2.0 and result["knee_p99_s"] == 6.0  # 0.36 >= 0.95 x 0.37
    assert result["note"] is None
    md = render_markdown({"target": "t", "kind": "users", "levels": rows, "knee": result})
    assert "- saturation throughput: 0.370 images/s" in md and "- knee: users-2" in md


def test_a_level_that_cannot_be_reached_says_so():
    users = Ladder.parse("users=1,16")
    short = level_row(users, 16.0, Outcome(0, _report(0.4, 1.0, 2.0, max_in_flight=9)))
    assert not short["reached"] and short["why_not"] == "at most 9 calls were in flight at once, not 16"
    rates = Ladder.parse("rate=1,50")
    arrivals = {"rate_per_s": 50.0, "sent": 300, "missed": 200, "max_lag_s": 0.2}
    missed = level_row(rates, 50.0, Outcome(1, _report(6.0, 1.0, 2.0, arrivals=arrivals)))
    assert not missed["reached"] and "missed 200 of 500 arrivals" in missed["why_not"] and missed["saturated"]
    failed_start = level_row(rates, 1.0, Outcome(1, message="Locust did not run the test"))
    assert not failed_start["reached"] and failed_start["why_not"] == "Locust did not run the test"
    assert knee([failed_start, missed])["saturation_images_per_s"] is None


def test_verdict_fails_on_failed_requests_and_missed_arrivals():
    ok = summarize([_record(100.0, 0.5)], 100.0, 101.0)
    assert verdict(ok, {"arrivals": None}) == {"status": "ok", "reasons": []}
    missed = verdict(ok, {"arrivals": {"rate_per_s": 2.0, "sent": 8, "missed": 2, "max_lag_s": 0.3}, "users": 4})
    assert missed["status"] == "failed" and "2 of 10 arrivals could not be sent on time" in missed["reasons"][0]
    bad = summarize([_record(100.0, 0.5, "RESOURCE_EXHAUSTED")], 100.0, 101.0)
    reasons = verdict(bad, {})["reasons"]
    assert reasons == ["1 of 1 requests failed (RESOURCE_EXHAUSTED x1)", "no image was served"]
