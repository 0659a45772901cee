"""Every metric and label the dashboard queries is one the exporter, the gateway or Triton really serves.

Names are checked against ``edgediff.constants`` (``METRIC_*`` and the ``TRITON_METRICS`` allow-list), then the
exporter and the gateway are run in-process and their exposition is parsed: the dashboard's ``edgediff_*`` series and
labels must be among what they emit. Triton's names are confirmed against a real server in ``test_triton_metrics``,
the DeepCache model's custom metrics (``DEEPCACHE_METRIC_LABELS``) in ``tests/exporters/test_triton_fast_variants``.
"""

from __future__ import annotations

import re
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest

from edgediff import constants
from edgediff.constants import (
    DEEPCACHE_METRIC_LABELS,
    METRIC_PREFIX,
    PIPELINE_MODEL_PREFIX,
    TRITON_METRICS,
    UNET_MODEL_PREFIX,
    VQDEC_MODEL_PREFIX,
    triton_model_name,
)
from edgediff.variants import all_variants

from .deployfiles import (
    dashboard_exprs,
    dashboard_label_values,
    promql_label_names,
    promql_metric_names,
    promql_model_patterns,
)

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
TRITON_LABELS = frozenset({"model", "version"})


def edgediff_metric_names() -> set[str]:
    """The ``METRIC_*`` names of ``edgediff.constants``, with the series suffixes of the ``*_seconds`` histograms."""
    names = {value for key, value in vars(constants).items()
             if key.startswith("METRIC_") and key != "METRIC_PREFIX" and isinstance(value, str)}
    return names | {name + suffix for name in names if name.endswith("_seconds") for suffix in HISTOGRAM_SUFFIXES}


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="')


def _samples(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, read from a text exposition as Prometheus ingests it (names kept verbatim)."""
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            found.setdefault(match.group(1), set()).update(_LABEL.findall(match.group(2) or ""))
    return found


@pytest.fixture(scope="module")
def exporter_samples() -> Iterator[dict[str, set[str]]]:
    """A real exporter (fixture power reader, short idle baseline) on a free port, scraped over HTTP."""
    from services.telemetry_exporter.server import run_exporter

    stop = threading.Event()
    ready: list[int] = []
    result: list[int] = []

    def serve() -> None:
        result.append(run_exporter("127.0.0.1", 0, 0.05, "/", idle_seconds=0.3, tegrastats_command=None,
                                   nvml_enabled=False, fixture_power_w=3.0, stop_event=stop, on_ready=ready.append))

    thread = threading.Thread(target=serve, name="exporter-under-test", daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if ready or not thread.is_alive():
                break
            threading.Event().wait(0.05)
        assert ready, f"exporter did not start (exit code {result})"
        threading.Event().wait(0.2)  # a few samples after the idle baseline
        with urllib.request.urlopen(f"http://127.0.0.1:{ready[0]}/metrics", timeout=5) as response:
            yield _samples(response.read().decode())
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive(), "exporter did not stop"
    assert result == [0]


@pytest.fixture(scope="module")
def gateway_samples() -> dict[str, set[str]]:
    """The gateway's metrics object after one generation and one answered request, as it exposes them."""
    from services.gateway.metrics import STAGES, GatewayMetrics

    metrics = GatewayMetrics()
    metrics.track_admission(lambda: 1.0, lambda: 0.0)
    metrics.observe_generation("onnx-fp32", 1, dict.fromkeys(STAGES, 0.5))
    metrics.requests.labels(method="Generate", code="OK").inc()
    metrics.request_seconds.labels(method="Generate").observe(0.5)
    return _samples(generate_latest(metrics.registry).decode())


@pytest.fixture(scope="module")
def fleet_samples() -> dict[str, set[str]]:
    """The fleet router's metrics after one routed request and one learned cost, as it exposes them."""
    from prometheus_client import CollectorRegistry

    from services.gateway.backends.fleet import FleetMetrics

    registry = CollectorRegistry()
    metrics = FleetMetrics(registry)
    metrics.requests.labels(upstream="jetson", outcome="ok").inc()
    metrics.up.labels(upstream="jetson").set(1)
    metrics.latency.labels(upstream="jetson", variant="onnx-fp32").set(2.0)
    metrics.energy.labels(upstream="jetson").set(12.0)
    samples = _samples(generate_latest(registry).decode())
    assert {name for name in samples if not name.endswith("_created")} == set(constants.FLEET_METRIC_LABELS)
    for name, labels in constants.FLEET_METRIC_LABELS.items():
        assert samples[name] == set(labels), name
    return samples


def test_dashboard_metrics_are_named_in_the_code(dashboard: dict[str, Any]) -> None:
    known = edgediff_metric_names() | set(TRITON_METRICS)
    used = set().union(*(promql_metric_names(e) for e in dashboard_exprs(dashboard)))
    used |= {metric for metric, _ in dashboard_label_values(dashboard)}
    assert used, "no metric found in the dashboard"
    unknown = sorted(used - known)
    assert not unknown, f"not in edgediff.constants (METRIC_* or TRITON_METRICS): {unknown}"
    assert all(name.startswith(METRIC_PREFIX) or name in TRITON_METRICS for name in used)


def test_dashboard_metrics_and_labels_are_served(
    dashboard: dict[str, Any], exporter_samples: dict[str, set[str]], gateway_samples: dict[str, set[str]],
    fleet_samples: dict[str, set[str]],
) -> None:
    served = {**exporter_samples, **gateway_samples, **fleet_samples}
    for expr in dashboard_exprs(dashboard):
        metrics = promql_metric_names(expr)
        labels: set[str] = set()
        for name in metrics:
            if name in TRITON_METRICS:
                labels |= TRITON_LABELS
                continue
            if name in DEEPCACHE_METRIC_LABELS:  # Triton serves them for a DeepCache model: test_triton_fast_variants
                labels |= set(DEEPCACHE_METRIC_LABELS[name])
                continue
            assert name in served, f"{name} (in {expr!r}) is emitted by neither the exporter nor the gateway"
            labels |= served[name]
        missing = promql_label_names(expr) - labels
        assert not missing, f"labels {sorted(missing)} of {expr!r} are not on {sorted(metrics)}"
    for metric, label in dashboard_label_values(dashboard):
        assert metric in TRITON_METRICS and label in TRITON_LABELS


def test_exporter_and_gateway_serve_the_constants(
    exporter_samples: dict[str, set[str]], gateway_samples: dict[str, set[str]]
) -> None:
    """The fixtures really exercise the metric families the dashboard relies on (not an empty scrape)."""
    for name in (constants.METRIC_POWER_WATTS, constants.METRIC_ENERGY_JOULES_TOTAL, constants.METRIC_IDLE_POWER_WATTS,
                 constants.METRIC_MEMORY_USED_BYTES, constants.METRIC_SENSOR_UP):
        assert name in exporter_samples, name
    assert {"domain", "source"} <= exporter_samples[constants.METRIC_POWER_WATTS]
    for name in (constants.METRIC_GATEWAY_IMAGES_TOTAL, constants.METRIC_GATEWAY_REQUESTS_TOTAL,
                 constants.METRIC_GATEWAY_REQUEST_SECONDS + "_bucket",
                 constants.METRIC_GATEWAY_STAGE_SECONDS + "_bucket",
                 constants.METRIC_GATEWAY_IN_FLIGHT, constants.METRIC_GATEWAY_QUEUE_DEPTH):
        assert name in gateway_samples, name


def test_method_names_in_queries_are_gateway_methods(dashboard: dict[str, Any]) -> None:
    from services.gateway.metrics import KNOWN_METHODS

    methods = {m for e in dashboard_exprs(dashboard) for m in re.findall(r'method\s*=\s*"([^"]+)"', e)}
    assert methods and methods <= set(KNOWN_METHODS)


def test_model_names_in_queries_are_triton_models_of_registered_variants(dashboard: dict[str, Any]) -> None:
    names = [triton_model_name(prefix, v.name) for prefix in (PIPELINE_MODEL_PREFIX, UNET_MODEL_PREFIX,
                                                                VQDEC_MODEL_PREFIX) for v in all_variants()]
    patterns = [p for e in dashboard_exprs(dashboard) for p in promql_model_patterns(e)]
    assert patterns, "the dashboard should single out the pipeline models"
    for pattern in patterns:
        matched = [n for n in names if re.fullmatch(pattern, n)]
        assert matched, f"model pattern {pattern!r} matches no Triton model of a registered variant"
        assert pattern.startswith((PIPELINE_MODEL_PREFIX, UNET_MODEL_PREFIX, VQDEC_MODEL_PREFIX)), pattern
