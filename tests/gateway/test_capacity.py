"""The gateway sizes its concurrency from its backend; beyond it requests queue, then are refused at once.

A fake backend with a capacity stands in for Triton (whose capacity, the ``ldm_<variant>`` instances, is read from
its model config: ``tests/gateway/test_triton_gateway.py``). The last test scrapes the gateway with a real Prometheus
that evaluates the saturation rule of ``deploy/kubernetes/base/monitoring/prometheusrule.yaml`` (the signal the
HorizontalPodAutoscalers follow) and shows it moving under load.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from edgediff.constants import METRIC_GATEWAY_CAPACITY, METRIC_GATEWAY_IN_FLIGHT, METRIC_GATEWAY_QUEUE_DEPTH
from services.gateway.client import GeneratorClient
from services.gateway.server import GatewayConfig, GatewayServer
from tests.gateway.conftest import free_port, scrape
from tests.gateway.fakes import VARIANT, FlakyBackend

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "kubernetes" / "base" / "monitoring" / "prometheusrule.yaml"
SATURATION = "edgediff:gateway_saturation_ratio"
PROMETHEUS = Path("/usr/bin/prometheus")


class SizedBackend(FlakyBackend):
    """A fake backend that runs ``slots`` generations at once with gain (what Triton reads from its ldm model)."""

    def __init__(self, slots: int | None, work_s: float) -> None:
        super().__init__(work_s=work_s)
        self.slots = slots

    def capacity(self) -> int | None:
        return self.slots


def _gateway(backend: SizedBackend, max_queue: int) -> GatewayServer:
    config = GatewayConfig(backend="local", model="tiny", port=0, metrics_port=free_port(), max_queue=max_queue,
                           shutdown_grace_s=1.0)  # max_concurrency left to the backend
    return GatewayServer(config, backend=backend).start()


def _generate_in_threads(target: str, seeds: list[int]) -> tuple[list[threading.Thread], dict[int, Any]]:
    answers: dict[int, Any] = {}

    def call(seed: int) -> None:
        with GeneratorClient(target, timeout_s=60) as client:
            try:
                answers[seed] = client.generate(seed=seed, steps=2, variant=VARIANT)
            except grpc.RpcError as exc:
                answers[seed] = exc

    threads = [threading.Thread(target=call, args=(seed,)) for seed in seeds]
    for thread in threads:
        thread.start()
    return threads, answers


def _wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _gauge(port: int, name: str) -> float:
    return scrape(port)[(name, ())]


@pytest.fixture
def sized() -> Iterator[tuple[SizedBackend, GatewayServer]]:
    backend = SizedBackend(slots=2, work_s=1.5)
    server = _gateway(backend, max_queue=1)
    try:
        yield backend, server
    finally:
        server.stop(grace_s=1.0)


def test_default_concurrency_is_the_backends_capacity_then_a_bounded_queue(sized) -> None:
    backend, server = sized
    assert _gauge(server.metrics_port, METRIC_GATEWAY_CAPACITY) == 2
    threads, answers = _generate_in_threads(server.target, [1, 2, 3])
    # two generate at once (the backend's capacity), the third waits in the queue (bound 1)
    _wait_for(lambda: len(backend.started) == 2 and server.admission.waiting == 1, 10, "2 running + 1 queued")
    assert (_gauge(server.metrics_port, METRIC_GATEWAY_IN_FLIGHT),
            _gauge(server.metrics_port, METRIC_GATEWAY_QUEUE_DEPTH)) == (2, 1)
    t0 = time.perf_counter()
    with GeneratorClient(server.target, timeout_s=60) as client, pytest.raises(grpc.RpcError) as info:
        client.generate(seed=4, steps=2, variant=VARIANT)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max concurrency 2, max queue 1" in info.value.details()
    assert time.perf_counter() - t0 < 1.0  # refused at once, not after a wait
    for thread in threads:
        thread.join(30)
    assert all(not isinstance(answers[seed], grpc.RpcError) for seed in (1, 2, 3)), answers
    assert sorted(backend.finished) == [1, 2, 3]


def test_capacity_learned_later_resizes_the_gateway() -> None:
    backend = SizedBackend(slots=None, work_s=1.0)  # Triton not asked yet: one at a time
    server = _gateway(backend, max_queue=4)
    try:
        assert _gauge(server.metrics_port, METRIC_GATEWAY_CAPACITY) == 1
        threads, _ = _generate_in_threads(server.target, [1, 2, 3])
        _wait_for(lambda: len(backend.started) == 1 and server.admission.waiting == 2, 10, "1 running + 2 queued")
        backend.slots = 3  # the backend learned its capacity: the queued requests start without a release
        _wait_for(lambda: len(backend.started) == 3, 2 * 0.5, "the queued requests to start")
        assert backend.finished == []  # started before the first one finished
        assert _gauge(server.metrics_port, METRIC_GATEWAY_CAPACITY) == 3
        for thread in threads:
            thread.join(30)
    finally:
        server.stop(grace_s=1.0)


def _query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    body = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def _value(port: int, promql: str) -> float | None:
    try:
        result = _query(port, promql)
    except OSError:  # Prometheus not listening yet
        return None
    return float(result[0]["value"][1]) if result else None


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not PROMETHEUS.exists(), reason=f"{PROMETHEUS} is not installed (Debian package prometheus)")
def test_prometheus_saturation_rule_moves_under_load(tmp_path: Path) -> None:
    assert RULES.is_file(), f"{RULES} is missing: the autoscaling signal has no rule"
    groups = yaml.safe_load(RULES.read_text())["spec"]["groups"]  # the PrometheusRule's groups, as deployed
    assert any(rule.get("record") == SATURATION for group in groups for rule in group["rules"])
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    backend = SizedBackend(slots=2, work_s=8.0)
    server = _gateway(backend, max_queue=4)
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{
            "job_name": "edgediff-gateway", "scrape_timeout": "900ms",
            # the labels the ServiceMonitor gives a gateway pod's series, which the rule sums by
            "static_configs": [{"targets": [f"127.0.0.1:{server.metrics_port}"],
                                "labels": {"namespace": "edgediff", "pod": "gateway-0"}}],
        }],
    }))
    log_path = tmp_path / "prometheus.log"
    with log_path.open("w") as log:
        prometheus = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    threads: list[threading.Thread] = []
    try:
        # idle: the rule evaluates to 0 (capacity known, nothing in flight)
        _wait_for(lambda: _value(prom_port, SATURATION) == 0.0, 60, f"{SATURATION} = 0 while idle")
        threads, answers = _generate_in_threads(server.target, [1, 2, 3, 4])  # 2 generating + 2 queued
        ratio = _wait_for(lambda: (_value(prom_port, SATURATION) or 0) > 1 and _value(prom_port, SATURATION), 30,
                          f"{SATURATION} above 1 under load")
        assert ratio == pytest.approx((2 + 2) / 2)  # (in flight + queued) / capacity
        assert _value(prom_port, f"max_over_time({METRIC_GATEWAY_QUEUE_DEPTH}[1m])") == 2
        (series,) = _query(prom_port, SATURATION)
        assert {series["metric"].get(k) for k in ("namespace", "pod")} == {"edgediff", "gateway-0"}
        for thread in threads:
            thread.join(60)
        assert all(not isinstance(answers[seed], grpc.RpcError) for seed in answers), answers
        _wait_for(lambda: _value(prom_port, SATURATION) == 0.0, 30, f"{SATURATION} back to 0 after the load")
    finally:
        prometheus.send_signal(signal.SIGTERM)
        code = prometheus.wait(20)
        server.stop(grace_s=1.0)
        for thread in threads:
            thread.join(30)
    assert code == 0, log_path.read_text()
    shutil.rmtree(tmp_path / "data", ignore_errors=True)
