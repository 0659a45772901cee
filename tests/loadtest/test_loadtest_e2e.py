"""``edgediff loadtest`` against real processes on loopback: a gateway (local backend, tiny preset), the exporter
with a fixture power reader, Locust in one process or as a master with workers, and a real Prometheus.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from tests.loadtest.conftest import FIXTURE_POWER_W, REPO_ROOT, _env, _start, _stop, run_loadtest, wait_http

pytestmark = pytest.mark.slow

DURATION = "10s"
REL_TOLERANCE = 0.05


def _check_served_and_energy(run, users: int) -> dict:
    assert run.returncode == 0, run.stderr + run.stdout
    report = run.report
    assert (run.out / "loadtest.md").is_file() and (run.out / "loadtest_timeline.png").stat().st_size > 1000
    csv_lines = (run.out / "loadtest.csv").read_text().splitlines()  # written by the same helper as report.csv
    assert csv_lines[0].startswith("name,requests,failures,images,n,p50_s") and csv_lines[-1].startswith("all,")
    for csv_name in ("locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv"):
        assert (run.out / csv_name).is_file(), csv_name
    req = report["requests"]
    assert req["requests"] > 0 and req["failed"] == 0 and req["failures_by_status"] == {}
    assert req["images"] == req["succeeded"] > 0  # batch 1
    assert report["verdict"] == {"status": "ok", "reasons": []}
    lat = req["latency"]
    assert 0 < lat["p50_s"] <= lat["p90_s"] <= lat["p95_s"] <= lat["p99_s"] <= lat["max_s"]

    window = report["window"]
    assert run.started_unix_s < window["start_unix_s"] < window["end_unix_s"] < run.ended_unix_s
    assert 9.0 <= window["duration_s"] <= 12.0  # --duration 10s: from test start to stop, plus the stop itself

    energy = report["energy"]
    assert energy["available"], energy
    (fixture,) = [d for d in energy["domains"] if d["domain"] == "fixture"]
    assert fixture["label"] == "fixture" and fixture["fixture"]  # the core's label, as in a bench report
    expected_j_per_image = FIXTURE_POWER_W * window["duration_s"] / energy["images"]
    assert fixture["energy_per_image_j"] == pytest.approx(expected_j_per_image, rel=REL_TOLERANCE)
    assert fixture["power_w"] == pytest.approx(FIXTURE_POWER_W, rel=REL_TOLERANCE)
    # the idle baseline is the same constant power: nothing is left net of idle
    assert fixture["idle_power_w"] == pytest.approx(FIXTURE_POWER_W)
    assert abs(fixture["net_j"]) <= REL_TOLERANCE * fixture["gross_j"]
    # images in the window: what Locust received or (with --gateway-metrics) what the gateway served; they agree
    # up to the calls in flight at the window's edges (one per user at each edge)
    assert abs(energy["images"] - req["images_in_window"]) <= 2 * users
    assert req["images_per_s"] == pytest.approx(req["images_in_window"] / window["duration_s"])
    return report


def test_single_process_energy_per_image(gateway, exporter, tmp_path):
    run = run_loadtest(tmp_path / "single", "--target", gateway.target, "--users", "2", "--spawn-rate", "2",
                       "--duration", DURATION, "--steps", "2", "--exporter", f"127.0.0.1:{exporter.port}")
    report = _check_served_and_energy(run, users=2)
    assert report["energy"]["images_source"] == "locust"
    assert report["locust"]["matches_records"], report["locust"]
    assert "energy per image [fixture/fixture" in run.stdout


def test_distributed_workers_counts_add_up(gateway, exporter, tmp_path):
    run = run_loadtest(tmp_path / "workers", "--target", gateway.target, "--users", "2", "--spawn-rate", "2",
                       "--duration", DURATION, "--steps", "2", "--workers", "2",
                       "--exporter", f"http://127.0.0.1:{exporter.port}/metrics",
                       "--gateway-metrics", f"127.0.0.1:{gateway.metrics_port}")
    report = _check_served_and_energy(run, users=2)
    assert report["energy"]["images_source"] == "gateway"
    assert report["config"]["workers"] == 2
    files = sorted((run.out / "records").glob("requests-worker-*.json"))
    assert len(files) == 2  # one per worker, none from the master
    per_worker = [len(json.loads(f.read_text())["requests"]) for f in files]
    assert all(n > 0 for n in per_worker)  # each worker ran one of the two users
    assert sum(per_worker) == report["requests"]["requests"]
    assert report["locust"]["requests"] == report["requests"]["requests"]
    assert report["locust"]["failures"] == 0
    for role in ("master", "worker-0", "worker-1"):
        assert (run.out / "logs" / f"locust-{role}.log").is_file()


def test_rejecting_gateway_reports_failures_by_status_and_exits_nonzero(token_gateway, tmp_path):
    run = run_loadtest(tmp_path / "rejected", "--target", token_gateway.target, "--users", "2", "--spawn-rate", "2",
                       "--duration", "3s", "--steps", "2")
    assert run.returncode == 1, run.stderr
    report = run.report
    req = report["requests"]
    assert req["requests"] > 0 and req["failed"] == req["requests"] and req["succeeded"] == 0
    assert req["failures_by_status"] == {"UNAUTHENTICATED": req["failed"]}
    assert report["verdict"]["status"] == "failed"
    assert report["energy"]["available"] is False
    assert "no --exporter or --prometheus given" in report["energy"]["reason"]
    md = (run.out / "loadtest.md").read_text()
    assert f"| UNAUTHENTICATED | {req['failed']} |" in md
    # Locust's own stats hold the same failures, with their status
    assert report["locust"]["failures"] == req["failed"]
    assert "UNAUTHENTICATED" in (run.out / "locust_failures.csv").read_text()
    last_line = run.stderr.strip().splitlines()[-1]
    assert last_line.startswith("edgediff loadtest: FAILED:") and "UNAUTHENTICATED" in last_line
    assert "s3cret" not in run.stderr + run.stdout + md


def _wait_scraped(base_url: str, timeout_s: float = 60.0) -> None:
    from loadtest.energy import prometheus_query

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if prometheus_query(base_url, "edgediff_energy_joules_total", time.time()):
            return
        time.sleep(0.25)
    pytest.fail(f"Prometheus at {base_url} did not scrape the exporter within {timeout_s:.0f} s")


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary (make system-deps installs it)")
def test_energy_from_a_real_prometheus(gateway, exporter, tmp_path):
    from services.healthcheck import free_port

    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n"
        "scrape_configs:\n  - job_name: exporter\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter.port}']\n"
    )
    log = tmp_path / "prometheus.log"
    process = _start(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                      f"--web.listen-address=127.0.0.1:{port}"], log)
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", process, log)
        _wait_scraped(f"http://127.0.0.1:{port}")  # the window must start after Prometheus' first scrape
        run = run_loadtest(tmp_path / "prom", "--target", gateway.target, "--users", "1", "--duration", "8s",
                           "--steps", "2", "--prometheus", f"127.0.0.1:{port}", "--prometheus-wait", "10")
    finally:
        _stop(process)
    assert run.returncode == 0, run.stderr + run.stdout
    report = run.report
    energy = report["energy"]
    assert energy["available"] and energy["method"] == "prometheus", energy
    (fixture,) = [d for d in energy["domains"] if d["domain"] == "fixture"]
    assert fixture["power_w"] == pytest.approx(FIXTURE_POWER_W, rel=REL_TOLERANCE)
    expected = FIXTURE_POWER_W * report["window"]["duration_s"] / energy["images"]
    assert fixture["energy_per_image_j"] == pytest.approx(expected, rel=REL_TOLERANCE)
    assert fixture["idle_power_w"] == pytest.approx(FIXTURE_POWER_W)



def test_open_loop_sends_poisson_arrivals_at_the_rate(gateway, exporter, tmp_path):
    # 4 arrivals/s of 2-step tiny requests: well below the gateway's capacity, so none is missed or fails; the
    # server picks the steps (none sent), and the energy comes from the same counter module as a closed loop's
    run = run_loadtest(tmp_path / "open", "--target", gateway.target, "--rate", "4", "--duration", DURATION,
                       "--exporter", f"127.0.0.1:{exporter.port}")
    assert run.returncode == 0, run.stderr + run.stdout
    report = run.report
    load, req = report["load"], report["requests"]
    arrivals = load["arrivals"]
    assert load["mode"] == "open" and arrivals["rate_per_s"] == 4.0 and arrivals["missed"] == 0
    assert 20 <= arrivals["sent"] <= 64  # Poisson: 40 expected in 10 s
    assert req["failed"] == 0 and req["requests"] + req["cancelled_at_stop"] == arrivals["sent"]
    assert report["config"]["mix"]["steps"] == {"default": 1.0}
    records = [r for f in (run.out / "records").glob("requests-*.json") for r in json.loads(f.read_text())["requests"]]
    assert records and all(r["steps"] > 0 for r in records)  # the steps the server applied, from its response
    assert report["energy"]["available"]
    assert "arrivals at 4/s:" in run.stdout and "0 missed" in run.stdout


def test_sweep_reports_each_level_and_the_knee(gateway, tmp_path):
    run = subprocess.run([sys.executable, "-m", "cli.main", "loadtest", "--out", str(tmp_path / "sweep"),
                          "--target", gateway.target, "--sweep", "users=1,2", "--duration", "4s", "--steps", "2"],
                         capture_output=True, text=True, timeout=150, cwd=REPO_ROOT, env=_env())
    assert run.returncode == 0, run.stderr + run.stdout
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [row["label"] for row in sweep["levels"]] == ["users-1", "users-2"]
    for row in sweep["levels"]:
        assert row["reached"] and row["failed"] == 0 and row["images_per_s"] > 0
        assert 0 < row["p50_s"] <= row["p90_s"] <= row["p99_s"]
        assert (tmp_path / "sweep" / row["label"] / "loadtest.json").is_file()
    knee = sweep["knee"]
    assert knee["saturation_images_per_s"] == max(row["steady_images_per_s"] or row["images_per_s"]
                                                  for row in sweep["levels"])
    assert knee["knee_label"] in ("users-1", "users-2")
    assert (tmp_path / "sweep" / "sweep_throughput_latency.png").stat().st_size > 1000
    assert "saturation throughput:" in (tmp_path / "sweep" / "sweep.md").read_text()
    assert "users-1:" in run.stdout and "saturation" in run.stdout
