"""The request mix, the CLI's parsing, percentiles, throughput, the timeline and the report, from known inputs."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter

import pytest

from cli.loadtest import check_target, metrics_url, parse_duration_s
from edgediff.errors import InvalidArgumentError
from edgediff.request import MAX_BATCH, MAX_STEPS, SEED_MAX, GenerationRequest
from edgediff.stats import summarize as summarize_latency
from edgediff.telemetry.counters import energy_from_increase
from loadtest.energy import EnergyResult
from loadtest.mix import RequestMix, parse_seeds, parse_weighted
from loadtest.records import RecordBook, RequestRecord, WindowMarks, read_records
from loadtest.report import CSV_COLUMNS, build_report, csv_rows, render_markdown
from loadtest.summary import latency_stats, read_locust_totals, summarize, timeline

# --- the request mix ------------------------------------------------------------------------------------------------


def test_weighted_mix_follows_its_weights():
    mix = RequestMix.parse("onnx-fp32:3,torch-fp32:1", "2:1,4:1", "1", 0.5, "7")
    rng = random.Random(0)
    drawn = [mix.next_request(rng) for _ in range(4000)]
    variants = Counter(r.variant for r in drawn)
    assert variants["onnx-fp32"] / 4000 == pytest.approx(0.75, abs=0.03)
    assert {r.steps for r in drawn} == {2, 4}
    assert all(r.batch == 1 and r.eta == 0.5 and r.seed == 7 for r in drawn)
    assert mix.to_dict()["variants"] == {"onnx-fp32": 0.75, "torch-fp32": 0.25}


def test_default_variant_is_sent_as_empty():
    spec = RequestMix.parse("default").next_request(random.Random(0))
    assert spec.variant == "" and spec.variant_label == "default"


@pytest.mark.parametrize(
    ("text", "message"),
    [("a:0", "must be > 0"), ("a:x", "not a number"), ("a,,b", "empty entry"), ("a,a", "listed twice"),
     (":3", "missing value")],
)
def test_bad_weighted_specs_name_the_option(text, message):
    with pytest.raises(InvalidArgumentError, match=message) as info:
        parse_weighted(text, "--variant")
    assert "--variant" in str(info.value)


def test_default_steps_are_the_servers():
    # no steps sent (0): the server applies its own default steps and sampler (its tune profile's)
    mix = RequestMix.parse()
    assert mix.next_request(random.Random(0)).steps == 0
    assert mix.to_dict()["steps"] == {"default": 1.0}
    assert {r.steps for r in (RequestMix.parse(steps="default:1,4:1").next_request(random.Random(i))
                              for i in range(40))} == {0, 4}


def test_integer_specs_must_be_positive():
    with pytest.raises(InvalidArgumentError, match="--steps: values must be >= 1"):
        RequestMix.parse(steps="0", names={"steps": "--steps"})
    with pytest.raises(InvalidArgumentError, match="--batch: 'two' is not an integer"):
        RequestMix.parse(batch="two", names={"batch": "--batch"})
    with pytest.raises(InvalidArgumentError, match=r"--eta must be a number in 0\.\.1, got 1\.5"):
        RequestMix.parse(eta=1.5, names={"eta": "--eta"})


def test_mix_bounds_are_the_cores():
    # The mix takes its ranges from GenerationRequest: what it can draw, the gateway accepts (for its range).
    too_many = MAX_STEPS + 1
    with pytest.raises(InvalidArgumentError, match=rf"--steps must be an integer in 1\.\.{MAX_STEPS}, got {too_many}"):
        RequestMix.parse(steps=f"20,{MAX_STEPS + 1}", names={"steps": "--steps"})
    with pytest.raises(InvalidArgumentError, match=rf"--batch must be an integer in 1\.\.{MAX_BATCH}"):
        RequestMix.parse(batch=str(MAX_BATCH + 1), names={"batch": "--batch"})
    with pytest.raises(InvalidArgumentError, match="--seeds"):
        RequestMix.parse(seeds=f"0-{SEED_MAX + 1}", names={"seeds": "--seeds"})
    mix = RequestMix.parse(steps=str(MAX_STEPS), batch=str(MAX_BATCH), seeds=str(SEED_MAX))
    drawn = mix.next_request(random.Random(0))
    checked = GenerationRequest.validated(seed=drawn.seed, steps=drawn.steps, eta=drawn.eta, batch=drawn.batch)
    assert (checked.seed, checked.steps, checked.batch) == (SEED_MAX, MAX_STEPS, MAX_BATCH)


def test_seed_specs():
    rng = random.Random(1)
    assert parse_seeds("random").pick(rng) in range(SEED_MAX + 1)
    assert parse_seeds("random").high == SEED_MAX == 2**63 - 1  # the pipeline's seed range, not 2**32-1
    assert parse_seeds("42").pick(rng) == 42
    assert {parse_seeds("5-6").pick(rng) for _ in range(50)} == {5, 6}
    with pytest.raises(InvalidArgumentError, match="seeds"):
        parse_seeds("9-3")
    with pytest.raises(InvalidArgumentError, match="seeds"):
        parse_seeds("abc")


# --- CLI parsing ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("60", 60), ("60s", 60), ("2m", 120), ("1h30m", 5400),
                                               ("1m30s", 90), ("1.5s", 2)])
def test_parse_duration(text, seconds):
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "0s", "5s10"])
def test_bad_durations(text):
    with pytest.raises(InvalidArgumentError, match="--duration"):
        parse_duration_s(text)


def test_urls_and_targets():
    assert metrics_url("127.0.0.1:9400", "--exporter") == "http://127.0.0.1:9400/metrics"
    assert metrics_url("http://h:1/custom", "--exporter") == "http://h:1/custom"
    assert metrics_url("h:9090", "--prometheus", default_path="") == "http://h:9090"
    assert check_target("grpc://127.0.0.1:50051") == "127.0.0.1:50051"
    with pytest.raises(InvalidArgumentError, match="--target"):
        check_target("127.0.0.1")
    with pytest.raises(InvalidArgumentError, match="--exporter"):
        metrics_url("ftp://x", "--exporter")


def test_loadtest_help_lists_the_flags():
    done = subprocess.run([sys.executable, "-m", "cli.main", "loadtest", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    for flag in ("--target", "--users", "--spawn-rate", "--duration", "--variant", "--steps", "--exporter",
                 "--prometheus", "--workers", "--out", "--smoke", "--gateway-metrics", "--token-file", "--rate",
                 "--sweep"):
        assert flag in done.stdout


def test_smoke_profile_and_explicit_flags():
    import argparse

    from cli.loadtest import _resolved, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    smoke = parser.parse_args(["--target", "h:1", "--smoke"])
    assert [_resolved(smoke, k) for k in ("users", "duration", "steps")] == [1, "20s", "2"]
    explicit = parser.parse_args(["--target", "h:1", "--smoke", "--users", "3"])
    assert _resolved(explicit, "users") == 3
    default = parser.parse_args(["--target", "h:1"])
    assert [_resolved(default, k) for k in ("users", "duration", "steps")] == [4, "60s", "default"]


def test_cli_bad_arguments_exit_2_with_one_line(capsys):
    from cli.main import main

    assert main(["loadtest", "--target", "nohost"]) == 2
    assert main(["loadtest", "--target", "127.0.0.1:1", "--steps", "0"]) == 2
    assert main(["loadtest", "--target", "127.0.0.1:1", "--users", "0"]) == 2
    assert main(["loadtest", "--target", "127.0.0.1:1", "--rate", "0"]) == 2
    assert main(["loadtest", "--target", "127.0.0.1:1", "--sweep", "users=4,2"]) == 2
    assert main(["loadtest", "--target", "127.0.0.1:1", "--sweep", "threads=1,2"]) == 2
    assert main(["loadtest", "--target", "127.0.0.1:1", "--sweep", "users=1,2", "--users", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "edgediff loadtest: error: --target: expected HOST:PORT (e.g. 127.0.0.1:50051), got 'nohost'",
        "edgediff loadtest: error: --steps: values must be >= 1, got 0",
        "edgediff loadtest: error: --users must be >= 1, got 0",
        "edgediff loadtest: error: --rate must be > 0 per second, got 0.0",
        "edgediff loadtest: error: --sweep: levels must increase, got '4,2'",
        "edgediff loadtest: error: --sweep: expected users=N,N,... or rate=R,R,... (e.g. users=1,2,4,8), got "
        "'threads=1,2'",
        "edgediff loadtest: error: --users conflicts with --sweep users=...: the sweep sets the users of each level",
    ]


def test_rate_and_sweep_are_exclusive_with_one_line_and_exit_2():
    done = subprocess.run([sys.executable, "-m", "cli.main", "loadtest", "--target", "h:1", "--rate", "1",
                           "--sweep", "users=1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("argument --sweep: not allowed with argument --rate")


# --- summary --------------------------------------------------------------------------------------------------------


def _record(start: float, latency: float, status: str = "OK", images: int = 1,
            name: str = "Generate a") -> RequestRecord:
    return RequestRecord(start_unix_s=start, latency_s=latency, name=name, status=status,
                         images=images if status == "OK" else 0, error=None if status == "OK" else f"{status}: no")


def test_latency_percentiles_are_exact():
    values = [0.1 * i for i in range(1, 11)]  # 0.1 .. 1.0
    stats = latency_stats(values)
    assert stats == summarize_latency(values)  # the core's statistics, the same as a bench's
    assert stats.n == 10
    assert stats.p50_s == pytest.approx(0.55)
    assert stats.p90_s == pytest.approx(0.91)
    assert stats.p95_s == pytest.approx(0.955)
    assert stats.p99_s == pytest.approx(0.991)
    assert (stats.min_s, stats.max_s) == (pytest.approx(0.1), pytest.approx(1.0))
    assert latency_stats([]) is None


def test_summarize_counts_failures_by_status_and_the_window():
    records = [
        _record(100.0, 0.5),                      # ends 100.5: in the window
        _record(100.5, 1.0, images=2),            # ends 101.5
        _record(101.0, 0.2, "UNAUTHENTICATED"),   # ends 101.2
        _record(101.2, 0.1, "UNAUTHENTICATED"),
        _record(101.3, 0.1, "RESOURCE_EXHAUSTED", name="Generate b"),
        _record(104.0, 2.0),                      # ends 106.0: after the window
        _record(99.0, 0.5),                       # ends 99.5: before it
    ]  # fmt: skip
    s = summarize(records, 100.0, 105.0, cancelled={"Generate a": 2})
    assert (s.requests, s.succeeded, s.failed, s.cancelled_at_stop) == (7, 4, 3, 2)
    assert s.failures_by_status == {"RESOURCE_EXHAUSTED": 1, "UNAUTHENTICATED": 2}
    assert s.failure_messages == {"UNAUTHENTICATED: no": 2, "RESOURCE_EXHAUSTED: no": 1}
    assert s.images == 5
    assert (s.requests_in_window, s.images_in_window) == (5, 3)
    assert s.requests_per_s == pytest.approx(1.0) and s.images_per_s == pytest.approx(0.6)
    assert s.latency.n == 4 and s.latency.max_s == pytest.approx(2.0)
    by_name = {n.name: n for n in s.by_name}
    assert (by_name["Generate a"].requests, by_name["Generate a"].failures) == (6, 2)
    assert by_name["Generate b"].latency is None


def test_steady_rate_counts_neither_start_up_nor_the_call_cut_short_at_the_end():
    # one user, 2.9 s calls back to back in a 60 s window: 20 complete, the 21st is cancelled at the stop
    records = [_record(100.0 + 2.9 * k, 2.9) for k in range(20)]
    s = summarize(records, 100.0, 160.0)
    assert s.images_per_s == pytest.approx(20 / 60)  # the window's rate pays for the cut call
    assert s.steady_images_per_s == pytest.approx(1 / 2.9)  # the server's rate
    assert summarize(records[:1], 100.0, 160.0).steady_images_per_s is None


def test_timeline_is_a_rolling_rate_by_completion_time():
    records = [_record(0.0, 0.5), _record(0.2, 0.6), _record(1.1, 0.2, "UNAVAILABLE"), _record(2.5, 0.1, images=4),
               _record(3.0, 0.4), _record(3.6, 0.5)]  # ends 0.5, 0.8, 1.3, 2.6, 3.4 and 4.1 (after the window)
    bins = timeline(records, 0.0, 3.5, width_s=2.0)
    assert [b.t_s for b in bins] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]  # every width / 4
    assert [b.width_s for b in bins] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0]  # clipped at the window's start
    by_t = {b.t_s: b for b in bins}
    assert by_t[1.0].requests_per_s == pytest.approx(2 / 1.0) and by_t[1.0].p50_s == pytest.approx(0.55)
    assert by_t[2.0].requests_per_s == pytest.approx(3 / 2.0) and by_t[2.0].failures_per_s == pytest.approx(0.5)
    assert by_t[3.5].images_per_s == pytest.approx(5 / 2.0) and by_t[3.5].p50_s is not None  # (1.5, 3.5]


def test_rolling_width_spans_about_ten_completions():
    from loadtest.summary import MIN_ROLLING_S, rolling_width_s

    assert rolling_width_s(completions=1000, window_s=60.0) == MIN_ROLLING_S  # fast server: 5 s
    assert rolling_width_s(completions=20, window_s=60.0) == pytest.approx(30.0)  # one image every 3 s: 30 s
    assert rolling_width_s(completions=2, window_s=60.0) == 60.0  # never wider than the window
    slow = [_record(3.0 * i, 2.7) for i in range(20)]  # one image every 3 s: no 0/1 square wave
    rates = [b.images_per_s for b in timeline(slow, 0.0, 60.0) if b.t_s >= 30.0]
    assert min(rates) > 0.25 and max(rates) < 0.45


def test_max_in_flight():
    from loadtest.summary import max_in_flight

    assert max_in_flight([_record(0.0, 1.0), _record(0.5, 1.0), _record(1.0, 1.0), _record(3.0, 0.1)]) == 2
    assert max_in_flight([]) == 0


# --- records round trip ---------------------------------------------------------------------------------------------


def test_record_book_and_window_round_trip(tmp_path):
    workers = [RecordBook("worker", tmp_path), RecordBook("worker", tmp_path)]
    workers[0].on_request(request_type="grpc", name="Generate a", response_time=250.0, response_length=10,
                          exception=None, context={"status": "OK", "images": 2, "variant": "a", "steps": 2,
                                                   "batch": 2}, start_time=10.0)
    workers[0].note_cancelled("Generate a")
    workers[0].write()
    # a second worker in the same process would overwrite the first (the file name has the pid): fake another pid
    workers[1].on_request(request_type="grpc", name="Generate a", response_time=100.0, exception=RuntimeError("x"),
                          context={"status": "UNAVAILABLE", "variant": "a", "steps": 2, "batch": 1}, start_time=11.0)
    (tmp_path / "requests-worker-1.json").write_text(json.dumps(
        {"role": "worker", "pid": 1, "cancelled": {}, "requests": [r.__dict__ for r in workers[1].requests]}))
    marks = WindowMarks(tmp_path)  # no URL: only the times
    marks.mark("start")
    marks.mark("end")
    run = read_records(tmp_path)
    assert len(run.files) == 2 and run.cancelled == {"Generate a": 1}
    assert [(r.status, r.images, r.latency_s) for r in run.requests] == [("OK", 2, 0.25), ("UNAVAILABLE", 0, 0.1)]
    assert run.window is not None and run.window.exporter is None and run.window.duration_s >= 0


def test_read_locust_final_totals(tmp_path):
    path = tmp_path / "locust_final.json"
    path.write_text(json.dumps([{"name": "Generate a", "num_requests": 5, "num_failures": 1},
                                {"name": "Generate b", "num_requests": 3, "num_failures": 0}]))
    totals = read_locust_totals(path)
    assert (totals.requests, totals.failures) == (8, 1)
    assert read_locust_totals(tmp_path / "missing.json") is None


# --- report ---------------------------------------------------------------------------------------------------------


def _report(energy: EnergyResult) -> dict:
    from loadtest.records import Window

    records = [_record(100.0, 0.5), _record(100.5, 0.2, "UNAUTHENTICATED")]
    summary = summarize(records, 100.0, 101.0)
    config = {"target": "127.0.0.1:1", "users": 1, "spawn_rate": 1.0, "run_time_s": 1, "workers": 0,
              "mix": RequestMix.parse().to_dict()}
    return build_report(config=config, summary=summary, energy=energy, window=Window(100.0, 101.0),
                        verdict={"status": "failed", "reasons": ["1 of 2 requests failed (UNAUTHENTICATED x1)"]},
                        locust=None, files={}, notes=[])


def test_markdown_shows_failures_and_unavailable_energy():
    energy = EnergyResult(False, "no power sensor: edgediff_sensor_up is 0 for rapl", "exporter", "u", 100.0, 101.0,
                          1.0, 1, "locust")
    md = render_markdown(_report(energy))
    assert "**failed**" in md and "| UNAUTHENTICATED | 1 |" in md
    assert "unavailable: no power sensor: edgediff_sensor_up is 0 for rapl" in md
    assert "- window: 1970-01-01T00:01:40.000Z to 1970-01-01T00:01:41.000Z (1.000 s)" in md


def test_csv_has_one_row_per_name_and_one_for_all():
    rows = csv_rows(_report(EnergyResult(False, "none", "none", None, 100.0, 101.0, 1.0, 1, "locust")))
    assert [r["name"] for r in rows] == ["Generate a", "all"]
    assert rows[-1]["requests"] == 2 and rows[-1]["failures"] == 1 and rows[-1]["n"] == 1
    assert rows[-1]["p50_s"] == pytest.approx(0.5) and rows[-1]["p99_s"] == pytest.approx(0.5)
    assert list(rows[0]) == list(CSV_COLUMNS)


def test_markdown_labels_estimated_energy_and_missing_net():
    domains = energy_from_increase({("cpu-package", "estimated"): 30.0}, 1.0, {})
    energy = EnergyResult(True, None, "exporter", "u", 100.0, 101.0, 1.0, 1, "locust", domains)
    md = render_markdown(_report(energy))
    row = "| cpu-package | estimated | estimated | 30.000 | 30.000 | 30.0000 | - | unavailable: no idle baseline |"
    assert row in md
    report = _report(energy)
    assert report["energy"]["domains"][0]["label"] == "estimated"
    assert report["window"]["start_iso"].endswith("Z")
