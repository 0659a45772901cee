import math

import pytest

from edgediff.stats import check_stability, summarize


def test_summarize_known_values() -> None:
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert (s.n, s.min_s, s.max_s, s.mean_s) == (4, 1.0, 4.0, 2.5)
    assert s.p50_s == pytest.approx(2.5)
    assert s.p90_s == pytest.approx(3.7)  # linear interpolation: 3 + 0.7 * (4 - 3)
    assert (s.p95_s, s.p99_s) == (pytest.approx(3.85), pytest.approx(3.97))  # the load test's percentiles too
    assert s.std_s == pytest.approx(math.sqrt(5 / 3))  # sample standard deviation


def test_summarize_single_and_invalid() -> None:
    s = summarize([0.25])
    assert s.p50_s == s.p90_s == s.max_s == 0.25 and s.std_s == 0.0
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
    with pytest.raises(ValueError, match="finite"):
        summarize([1.0, float("nan")])
    with pytest.raises(ValueError, match=">= 0"):
        summarize([-1.0])


def test_stability_windows() -> None:
    stable = check_stability([1.0, 1.02, 0.99, 1.01, 1.0, 1.03])
    assert stable.stable is True and len(stable.window_means_s) == 3 and stable.spread < 0.1
    unstable = check_stability([1.0, 1.0, 1.0, 1.0, 1.5, 1.5])
    assert unstable.stable is False and unstable.spread == pytest.approx(0.5) and "50%" in unstable.reason
    few = check_stability([1.0, 2.0, 3.0])
    assert few.stable is None and "at least 6" in few.reason
