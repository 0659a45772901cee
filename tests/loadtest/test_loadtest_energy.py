"""Energy per image from recorded exporter scrapes, and from a Prometheus HTTP API that answers recorded JSON."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from edgediff.telemetry.counters import Scrape, energy_from_increase, parse_exporter, sum_counter
from edgediff.telemetry.window import energy_row, is_estimated_source
from loadtest.energy import energy_from_prometheus, energy_from_scrapes, increase_query

FIXTURES = Path(__file__).parent / "fixtures"
START_FIXTURE_J = 135.47633665000376
END_FIXTURE_J = 240.4728655000099
START_ESTIMATED_J = 175.199431729531
END_ESTIMATED_J = 311.6953918495215
URL = "http://127.0.0.1:9400/metrics"


def _scrape(name: str, t_unix_s: float) -> Scrape:
    return Scrape(URL, t_unix_s, (FIXTURES / name).read_text(), None)


def test_parse_exporter_reads_energy_idle_and_sensor_up():
    state = parse_exporter((FIXTURES / "exporter_start.prom").read_text())
    assert state.energy_j == {("fixture", "fixture"): START_FIXTURE_J, ("cpu-package", "estimated"): START_ESTIMATED_J}
    assert state.idle_power_w == {("fixture", "fixture"): 50.0, ("cpu-package", "estimated"): 65.0}
    assert state.sensor_up["rapl"] == 0.0 and state.sensor_up["fixture"] == 1.0


def test_energy_from_two_scrapes_gross_net_and_labels():
    result = energy_from_scrapes(_scrape("exporter_start.prom", 1000.0), _scrape("exporter_end.prom", 1002.1),
                                 images=10, images_source="locust")
    assert result.available and result.reason is None and result.method == "exporter"
    assert result.window_s == pytest.approx(2.1)
    rows = {d["domain"]: d for d in result.to_dict()["domains"]}  # the core's energy_row, as in a bench report
    fixture, cpu = rows["fixture"], rows["cpu-package"]
    gross_j = END_FIXTURE_J - START_FIXTURE_J
    assert fixture["gross_j"] == pytest.approx(gross_j)
    assert fixture["energy_per_image_j"] == pytest.approx(gross_j / 10)
    assert fixture["power_w"] == pytest.approx(gross_j / 2.1)
    assert fixture["net_j"] == pytest.approx(gross_j - 50.0 * 2.1)
    assert fixture["net_energy_per_image_j"] == pytest.approx((gross_j - 50.0 * 2.1) / 10)
    assert fixture["net_power_w"] == pytest.approx((gross_j - 50.0 * 2.1) / 2.1)
    assert (fixture["label"], fixture["fixture"], fixture["estimated"]) == ("fixture", True, False)
    assert (cpu["label"], cpu["estimated"]) == ("estimated", True)
    assert cpu["gross_j"] == pytest.approx(END_ESTIMATED_J - START_ESTIMATED_J)
    assert cpu["method"] == "odometer" and cpu["valid"] and cpu["reason"] is None


def test_no_images_gives_gross_energy_without_per_image_numbers():
    result = energy_from_scrapes(_scrape("exporter_start.prom", 0.0), _scrape("exporter_end.prom", 2.0), 0, "locust")
    assert result.available
    rows = result.to_dict()["domains"]
    assert rows and all(d["gross_j"] > 0 and d["energy_per_image_j"] is None and d["net_energy_per_image_j"] is None
                        for d in rows)


def test_without_idle_baseline_net_is_unavailable():
    (energy,) = energy_from_increase({("gpu-board", "nvml:0"): 100.0}, 10.0, {})
    row = energy_row(energy, 10.0, images=4)
    assert row["energy_per_image_j"] == pytest.approx(25.0) and row["power_w"] == pytest.approx(10.0)
    assert row["net_j"] is None and row["net_energy_per_image_j"] is None and row["idle_power_w"] is None
    assert row["label"] == "measured"


def test_no_power_sensor_is_unavailable_with_the_readers_that_are_down():
    no_sensor = (FIXTURES / "exporter_no_sensor.prom").read_text()
    result = energy_from_scrapes(Scrape(URL, 0.0, no_sensor), Scrape(URL, 5.0, no_sensor), 12, "locust")
    assert not result.available and result.domains == []
    assert "no power sensor" in result.reason
    assert "rapl" in result.reason and "tegrastats" in result.reason


def test_unreachable_exporter_is_unavailable():
    failed = Scrape(URL, 5.0, None, "cannot scrape http://127.0.0.1:9400/metrics: Connection refused")
    result = energy_from_scrapes(_scrape("exporter_start.prom", 0.0), failed, 3, "locust")
    assert not result.available
    assert "exporter unreachable" in result.reason and "Connection refused" in result.reason


def test_counter_going_backwards_is_left_out():
    start, end = _scrape("exporter_end.prom", 0.0), _scrape("exporter_start.prom", 2.0)  # swapped: a restart
    result = energy_from_scrapes(start, end, 3, "locust")
    assert not result.available
    assert "fixture/fixture went backwards" in result.reason and "left out" in result.reason


def test_sum_counter_declared_without_series_is_zero_and_absent_is_none():
    declared = "# HELP edgediff_gateway_images_total Images\n# TYPE edgediff_gateway_images_total counter\n"
    two = declared + 'edgediff_gateway_images_total{variant="a"} 3.0\nedgediff_gateway_images_total{variant="b"} 4.0\n'
    assert sum_counter(declared, "edgediff_gateway_images_total") == 0.0
    assert sum_counter(two, "edgediff_gateway_images_total") == 7.0
    assert sum_counter("# TYPE other_total counter\nother_total 1\n", "edgediff_gateway_images_total") is None


def test_source_labels():
    labels = {source: energy_from_increase({("d", source): 1.0}, 1.0, {})[0].label
              for source in ("estimated", "estimated:cpu-util", "fixture", "tegrastats")}
    assert labels == {"estimated": "estimated", "estimated:cpu-util": "estimated", "fixture": "fixture",
                      "tegrastats": "measured"}
    assert is_estimated_source("estimated") and not is_estimated_source("nvml:0")


def test_increase_query_uses_the_exact_window_in_milliseconds():
    assert increase_query(1000.0, 1012.3456) == (
        "sum by (domain, source) (increase(edgediff_energy_joules_total[12346ms] @ 1012.346))"
    )


# --- a Prometheus HTTP API answering recorded JSON ------------------------------------------------------------------
class _FakePrometheus(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, list]] = {}
    queries: ClassVar[list[tuple[str, str]]] = []

    def do_GET(self) -> None:
        params = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        query, at = params["query"][0], params["time"][0]
        self.queries.append((query, at))
        key = next((k for k in self.answers if query.startswith(k)), None)
        result = self.answers[key] if key else []
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_prometheus() -> Iterator[tuple[str, type[_FakePrometheus]]]:
    handler = type("Handler", (_FakePrometheus,), {"answers": {}, "queries": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_energy_from_prometheus(fake_prometheus):
    url, handler = fake_prometheus
    end = 2000.0
    handler.answers = {
        "max(timestamp(": [{"metric": {}, "value": [end + 1, str(end + 0.5)]}],
        "timestamp(edgediff_energy_joules_total @ 1990.000)": [{"metric": {}, "value": [end, "1989.8"]}],
        "sum by (domain, source) (increase(": [
            {"metric": {"domain": "gpu-board", "source": "nvml:0"}, "value": [end, "600.0"]},
        ],
        "max by (domain, source) (edgediff_idle_power_watts": [
            {"metric": {"domain": "gpu-board", "source": "nvml:0"}, "value": [end, "20.0"]},
        ],
    }
    result = energy_from_prometheus(url, end - 10.0, end, images=30, images_source="gateway", wait_s=1.0)
    assert result.available and result.method == "prometheus"
    (row,) = result.to_dict()["domains"]
    assert row["energy_per_image_j"] == pytest.approx(20.0)
    assert row["net_j"] == pytest.approx(600.0 - 20.0 * 10.0)
    assert row["net_energy_per_image_j"] == pytest.approx(400.0 / 30)
    assert (row["idle_power_w"], row["label"], row["method"]) == (20.0, "measured", "odometer")
    assert any(q.startswith("sum by (domain, source) (increase(edgediff_energy_joules_total[10000ms] @ 2000.000))")
               and at == "2000.000" for q, at in handler.queries)


def test_prometheus_without_a_sample_before_the_window_is_unavailable(fake_prometheus):
    url, handler = fake_prometheus
    handler.answers = {
        "max(timestamp(": [{"metric": {}, "value": [101.0, "100.5"]}],
        "sum by (domain, source) (increase(": [
            {"metric": {"domain": "gpu-board", "source": "nvml:0"}, "value": [100.0, "40.0"]},
        ],
    }
    result = energy_from_prometheus(url, 90.0, 100.0, images=3, images_source="locust", wait_s=0.0)
    assert not result.available
    assert "no sample of edgediff_energy_joules_total taken before the window's start" in result.reason


def test_prometheus_without_energy_series_says_why(fake_prometheus):
    url, handler = fake_prometheus
    handler.answers = {
        "max(timestamp(": [],
        "min by (reader) (edgediff_sensor_up": [{"metric": {"reader": "nvml"}, "value": [1.0, "0"]}],
    }
    result = energy_from_prometheus(url, 0.0, 10.0, images=3, images_source="locust", wait_s=0.0)
    assert not result.available
    assert "nvml" in result.reason and "as seen by Prometheus" in result.reason


def test_unreachable_prometheus_is_unavailable():
    result = energy_from_prometheus("http://127.0.0.1:9", 0.0, 10.0, images=3, images_source="locust", wait_s=0.0)
    assert not result.available
    assert "cannot query Prometheus" in result.reason
