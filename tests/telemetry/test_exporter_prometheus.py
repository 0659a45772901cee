"""The exporter scraped by a real Prometheus server; PromQL over the energy counter gives the expected increase."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

PROMETHEUS = Path("/usr/bin/prometheus")
WATTS = 50.0
SERIES = 'edgediff_energy_joules_total{domain="fixture",source="fixture"}'

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(prom_port: int, promql: str, at: float | None = None) -> list:
    params = {"query": promql, **({"time": repr(at)} if at is not None else {})}
    url = f"http://127.0.0.1:{prom_port}/api/v1/query?{urllib.parse.urlencode(params)}"
    body = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.mark.skipif(not PROMETHEUS.exists(), reason=f"{PROMETHEUS} is not installed")
def test_promql_increase_of_the_energy_counter(tmp_path, start_exporter):
    exporter, exporter_port, exporter_log = start_exporter("--fixture-power-watts", str(WATTS), "--interval", "0.05")
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: edgediff-exporter\n"
        "    scrape_interval: 1s\n"
        "    scrape_timeout: 900ms\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter_port}']\n"
    )
    prom_log = tmp_path / "prometheus.log"
    with prom_log.open("w") as log:
        prometheus = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:

        def samples():
            try:
                result = query(prom_port, f"{SERIES}[30s]")
            except OSError:
                return None
            return result[0]["values"] if result and len(result[0]["values"]) >= 6 else None

        values = wait_for(samples, 40, "6 scrapes of the exporter")
        times = [float(t) for t, _ in values]
        joules = [float(v) for _, v in values]
        assert joules == sorted(joules), "the energy counter decreased"
        # Raw samples: the counter grows at WATTS joules per second of scrape time.
        measured = (joules[-1] - joules[0]) / (times[-1] - times[0])
        assert measured == pytest.approx(WATTS, rel=0.05)
        # PromQL increase() over a window fully covered by scrapes, ending at the last scrape.
        (increase,) = query(prom_port, f"increase({SERIES}[4s])", at=times[-1])
        assert float(increase["value"][1]) == pytest.approx(WATTS * 4.0, rel=0.1)
        (rate,) = query(prom_port, f"rate({SERIES}[5s])", at=times[-1])
        assert float(rate["value"][1]) == pytest.approx(WATTS, rel=0.08)
        (up,) = query(prom_port, 'edgediff_sensor_up{reader="fixture"}')
        assert up["value"][1] == "1"
    finally:
        prometheus.send_signal(signal.SIGTERM)
        exporter.send_signal(signal.SIGTERM)
        prometheus_code = prometheus.wait(20)
        exporter_code = exporter.wait(20)
    assert prometheus_code == 0, prom_log.read_text()
    assert exporter_code == 0, exporter_log.read_text()
    shutil.rmtree(tmp_path / "data", ignore_errors=True)
