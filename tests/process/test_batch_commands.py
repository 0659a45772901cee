"""``bench`` and ``loadtest`` stopped mid-run: no process or temporary file left, 128 + signal, an incomplete report.

Each command runs as a user runs it (``python -m cli``), with its own ``TMPDIR``, on the tiny preset.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.helpers import (
    Started,
    descendants,
    has_descendant,
    kill_everything,
    signal_and_check,
    start,
    still_running,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")]

WORKER = "edgediff.bench.worker"
SECOND = "onnx-fp32@ddim:1000"


def _bench(folder: Path) -> Started:
    """A bench of the baseline (2 steps) and onnx-fp32 whose timed runs (1000 steps each, seconds) the test interrupts.

    The second variant's runs must outlast the test's reaction: with 2 steps its whole worker lived about as long as
    the test waited, and a kill that landed as the worker exited left the bench's folder (nothing was measuring).
    """
    return start(["bench", "--model", "tiny", "--variants", SECOND, "--steps", "2", "--warmup", "0",
                  "--runs", "4", "--no-energy", "--no-plots", "--out", str(folder / "report")], folder)


def _measuring_second_variant(started: Started) -> bool:
    return f"{SECOND}: 4 timed run(s)" in started.output() and has_descendant(started, WORKER)


@pytest.fixture
def bench_run(tmp_path: Path) -> Iterator[Started]:
    started = _bench(tmp_path)
    yield started
    kill_everything(started)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_bench_stopped_mid_run_reports_what_it_finished(bench_run: Started, sig: int, tmp_path: Path) -> None:
    wait_until(bench_run, _measuring_second_variant, 180, "measuring the second variant")
    output = signal_and_check(bench_run, sig, expected_code=128 + sig)
    assert any(WORKER in " ".join(p.cmdline()) for p in bench_run.descendants if p.is_running()) is False
    report = json.loads((tmp_path / "report" / "report.json").read_text())  # complete JSON, written atomically
    name = signal.Signals(sig).name
    assert report["incomplete"]["signal"] == name, report["incomplete"]
    assert report["incomplete"]["reason"] == f"interrupted by {name} while measuring {SECOND}"
    assert report["incomplete"]["not_measured"] == [SECOND]
    assert [(v["name"], v["status"]) for v in report["variants"]] == [("torch-fp32", "ok")]
    assert report["variants"][0]["latency"]["total"]["p50_s"] > 0
    assert report["warnings"][0].startswith("INCOMPLETE")
    assert f"interrupted by {name}" in output
    assert not list((tmp_path / "report").glob(".*.tmp"))


def test_a_sigkilled_bench_leaves_no_worker_and_no_temporary_folder(bench_run: Started) -> None:
    wait_until(bench_run, _measuring_second_variant, 180, "measuring the second variant")
    workers = [p for p in descendants(bench_run.process.pid) if WORKER in " ".join(p.cmdline())]
    assert workers
    bench_run.process.kill()  # as the OOM killer does: no handler of the bench runs
    bench_run.process.wait(timeout=30)
    assert still_running(workers) == []  # PR_SET_PDEATHSIG
    deadline = time.monotonic() + 10
    while _bench_folders(bench_run) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _bench_folders(bench_run) == []  # the orphaned worker removed its folder before exiting


def _bench_folders(started: Started) -> list[str]:
    return [p.name for p in started.tmpdir.iterdir() if p.name.startswith("edgediff-bench-")]


# --- loadtest -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local-backend gateway on the tiny preset (not a child of the load test)."""
    from services.gateway.client import GeneratorClient
    from services.healthcheck import free_port

    folder = tmp_path_factory.mktemp("gateway")
    port = free_port()
    started = start(["serve", "--backend", "local", "--model", "tiny", "--port", str(port), "--metrics-port", "0"],
                    folder)
    try:
        with GeneratorClient(f"127.0.0.1:{port}") as client:
            client.wait_serving(timeout_s=120)
        yield f"127.0.0.1:{port}"
    finally:
        started.process.send_signal(signal.SIGTERM)
        try:
            started.process.wait(timeout=30)
        finally:
            kill_everything(started)


def _load_running(started: Started) -> bool:
    logs = list(Path(started.log.parent / "loadtest" / "logs").glob("locust-*.log"))
    records = started.log.parent / "loadtest" / "records"
    return bool(logs) and "All users spawned" in logs[0].read_text(errors="replace") and records.is_dir()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_loadtest_stopped_mid_run_reports_its_window(gateway: str, sig: int, tmp_path: Path) -> None:
    started = start(["loadtest", "--target", gateway, "--users", "1", "--duration", "120s", "--steps", "2",
                     "--out", str(tmp_path / "loadtest")], tmp_path)
    try:
        wait_until(started, _load_running, 120, "running the load")
        time.sleep(3.0)  # a few requests inside the window
        assert has_descendant(started, "locust")
        signal_and_check(started, sig, expected_code=128 + sig, timeout_s=60)
    finally:
        kill_everything(started)
    report = json.loads((tmp_path / "loadtest" / "loadtest.json").read_text())
    name = signal.Signals(sig).name
    assert report["incomplete"]["signal"] == name and report["incomplete"]["planned_s"] == 120
    assert report["notes"][0].startswith("INCOMPLETE")
    assert report["requests"]["requests"] >= 1 and report["requests"]["images"] >= 1, report["requests"]
    assert 0 < report["window"]["duration_s"] < 60, report["window"]
