"""Load-test fixtures: real gateway, exporter and Prometheus processes on 127.0.0.1 (free ports), always stopped.

Locust is never imported in the pytest process (it monkey-patches everything with gevent): ``edgediff loadtest``
runs as a subprocess, as a user would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.healthcheck import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_POWER_W = 40.0
START_TIMEOUT_S = 90.0


@dataclass
class Service:
    """A started process and where it listens."""

    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int | None = None
    log: Path | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=_env(),
                                stdin=subprocess.DEVNULL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll ``url`` until it answers 200; fail with the log's tail when the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{url}: process exited {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not ready after {timeout_s:.0f} s:\n{log.read_text()[-2000:]}")


def _gateway(tmp_path: Path, name: str, *extra: str) -> Iterator[Service]:
    from services.gateway.client import GeneratorClient

    port, metrics_port = free_port(), free_port()
    log = tmp_path / f"{name}.log"
    process = _start([sys.executable, "-m", "cli", "serve", "--backend", "local", "--model", "tiny",
                      "--port", str(port), "--metrics-port", str(metrics_port), "--max-queue", "16", *extra], log)
    try:
        with GeneratorClient(f"127.0.0.1:{port}") as client:
            try:
                client.wait_serving(timeout_s=START_TIMEOUT_S)
            except TimeoutError as exc:
                pytest.fail(f"{exc}\n{log.read_text()[-2000:]}")
        yield Service(process, port, metrics_port, log)
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A local-backend gateway on the tiny preset, metrics on."""
    yield from _gateway(tmp_path_factory.mktemp("gateway"), "gateway")


@pytest.fixture(scope="module")
def token_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A gateway that requires a bearer token (the test gives none)."""
    folder = tmp_path_factory.mktemp("token-gateway")
    token_file = folder / "token"
    token_file.write_text("s3cret-token\n")
    yield from _gateway(folder, "token-gateway", "--token-file", str(token_file))


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The telemetry exporter with a constant fixture power (and its idle baseline measured at start)."""
    folder = tmp_path_factory.mktemp("exporter")
    port, log = free_port(), folder / "exporter.log"
    process = _start([sys.executable, "-m", "cli", "exporter", "--port", str(port), "--interval", "0.05",
                      "--fixture-power-watts", str(FIXTURE_POWER_W), "--idle-seconds", "0.5", "--no-nvml",
                      "--tegrastats-command", ""], log)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", process, log)
        yield Service(process, port, log=log)
    finally:
        _stop(process)


@dataclass
class LoadtestRun:
    """One ``edgediff loadtest`` subprocess: exit code, output, the report, and the wall clock around it."""

    returncode: int
    stdout: str
    stderr: str
    out: Path
    started_unix_s: float
    ended_unix_s: float

    @property
    def report(self) -> dict:
        return json.loads((self.out / "loadtest.json").read_text())


def run_loadtest(out: Path, *args: str, timeout_s: float = 150.0) -> LoadtestRun:
    """Run ``edgediff loadtest --out OUT ARGS...`` as a subprocess."""
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "cli.main", "loadtest", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT, env=_env())
    return LoadtestRun(done.returncode, done.stdout, done.stderr, out, started, time.time())
