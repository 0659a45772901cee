from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli import exporter as exporter_cli
from edgediff.constants import DEFAULT_HOST, EXPORTER_PORT
from services.telemetry_exporter import server


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_cli_flags_and_defaults():
    parser = argparse.ArgumentParser()
    exporter_cli.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.interval, args.root, args.idle_seconds) == (
        DEFAULT_HOST,
        EXPORTER_PORT,
        0.1,
        "/",
        0.0,
    )
    assert args.fixture_power_watts is None and args.estimated_cpu_tdp_watts is None
    args = parse(
        ["--host", "0.0.0.0", "--port", "0", "--interval", "0.05", "--idle-seconds", "3", "--fixture-power-watts", "9"]
    )
    assert (args.host, args.port, args.interval, args.idle_seconds, args.fixture_power_watts) == (
        "0.0.0.0",
        0,
        0.05,
        3.0,
        9.0,
    )


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    exporter_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_bad_argument_exits_2(caplog):
    assert exporter_cli.run_from_args(parse(["--interval", "0", "--no-nvml", "--tegrastats-command", ""])) == 2
    assert "--interval must be > 0 seconds, got 0.0" in caplog.text


def run_in_thread(**kwargs):
    ready: list[int] = []
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(server.run_exporter(stop_event=stop, on_ready=ready.append, **kwargs)),
        daemon=True,
    )
    thread.start()
    return thread, stop, ready, result


def scrape_while_running(settle_s: float = 0.0, **kwargs) -> tuple[dict[tuple[str, tuple], float], list[int]]:
    """Run the exporter in a thread, scrape it once ready (after ``settle_s``), stop it: (samples, [exit code])."""
    thread, stop, ready, result = run_in_thread(**kwargs)
    deadline = time.monotonic() + 10
    while not ready and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        time.sleep(settle_s)
        samples = scrape(ready[0])
    finally:
        stop.set()
        thread.join(10)
    return samples, result


def test_sensorless_device_serves_memory_and_says_why(proc_root, caplog):
    caplog.set_level("INFO")
    samples, result = scrape_while_running(
        host="127.0.0.1", port=0, interval_s=0.05, root=proc_root, nvml_enabled=False, tegrastats_command=None
    )
    assert result == [0]
    assert "no power sensor available: android-battery: no " in caplog.text
    assert samples[("edgediff_memory_used_bytes", (("kind", "process-rss"),))] == 654321 * 1024
    assert samples[("edgediff_sensor_up", (("reader", "rapl"),))] == 0.0
    assert not any(name == "edgediff_power_watts" for name, _ in samples)


def test_port_in_use_exits_1(proc_root, caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        thread, _stop, _ready, result = run_in_thread(
            host="127.0.0.1", port=port, root=proc_root, nvml_enabled=False, tegrastats_command=None
        )
        thread.join(10)
    assert result == [1]
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text


def test_subprocess_with_fixture_power_counts_joules_and_stops_on_sigterm(start_exporter):
    proc, port, log = start_exporter("--fixture-power-watts", "20", "--interval", "0.05", "--idle-seconds", "0.2")
    try:
        key = ("edgediff_energy_joules_total", (("domain", "fixture"), ("source", "fixture")))
        t0, first = time.monotonic(), scrape(port)
        time.sleep(0.5)
        t1, second = time.monotonic(), scrape(port)
        assert first[("edgediff_power_watts", (("domain", "fixture"), ("source", "fixture")))] == 20.0
        assert first[("edgediff_idle_power_watts", (("domain", "fixture"), ("source", "fixture")))] == pytest.approx(
            20.0
        )
        increase = second[key] - first[key]
        assert increase == pytest.approx(20.0 * (t1 - t0), abs=20.0 * 0.12)  # two sampler periods of lag at most
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
    assert code == 0
    assert "shutting down the exporter" in log.read_text()


def test_jetson_rails_through_a_running_tegrastats(proc_root):
    fixtures = Path(__file__).parent / "fixtures" / "tegrastats"
    command = [sys.executable, str(fixtures / "fake_tegrastats.py"), str(fixtures / "nano_jp4.txt")]
    args = parse(
        ["--tegrastats-command", shlex.join(command), "--tegrastats-interval", "0.05"]
    )
    assert shlex.split(args.tegrastats_command) == command
    samples, result = scrape_while_running(
        0.3,
        host="127.0.0.1",
        port=0,
        interval_s=0.05,
        root=proc_root,
        nvml_enabled=False,
        tegrastats_command=command,
        tegrastats_interval_s=0.05,
    )
    assert result == [0]
    assert samples[("edgediff_sensor_up", (("reader", "tegrastats"),))] == 1.0
    total = samples[("edgediff_power_watts", (("domain", "soc-total"), ("source", "tegrastats")))]
    assert total in (2.170, 6.584)
    assert samples[("edgediff_energy_joules_total", (("domain", "gpu"), ("source", "tegrastats")))] >= 0.0
    assert ("edgediff_memory_used_bytes", (("kind", "tegrastats-ram-used"),)) in samples


def test_battery_unit_and_sign_flags_reach_the_reader(proc_root):
    """A phone whose driver reports a discharge as a positive mA value: told so, the exporter needs no learning."""
    fixture = Path(__file__).parent / "fixtures" / "android" / "discharging_positive_mA"
    shutil.copytree(fixture / "sys", proc_root / "sys", dirs_exist_ok=True)
    args = parse(["--battery-current-unit", "mA", "--battery-current-sign", "positive"])
    assert (args.battery_current_unit, args.battery_current_sign) == ("mA", "positive")
    with pytest.raises(SystemExit):
        parse(["--battery-current-sign", "sideways"])
    samples, result = scrape_while_running(
        0.3, host="127.0.0.1", port=0, interval_s=0.05, root=proc_root, nvml_enabled=False, tegrastats_command=None,
        battery_current_unit=args.battery_current_unit, battery_current_sign=args.battery_current_sign,
    )
    assert result == [0]
    power = {labels: value for (name, labels), value in samples.items() if name == "edgediff_power_watts"}
    assert list(power.values()) == [pytest.approx(4.012 * 0.850)], power  # voltage_now uV x current_now mA
