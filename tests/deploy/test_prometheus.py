"""docker/prometheus/prometheus.yml passes ``promtool check config``, as is and rewritten for local processes."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from .deployfiles import PROMETHEUS_FILE, require_tool


def _promtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    return subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_config() -> None:
    result = _promtool_check(PROMETHEUS_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_local_rewrite_is_valid(prometheus_config: dict[str, Any], tmp_path: Path) -> None:
    """The rewrite the file documents for `edgediff up --runtime local`: every target host becomes 127.0.0.1."""
    local = yaml.safe_load(yaml.safe_dump(prometheus_config))
    for job in local["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [f"127.0.0.1:{t.rpartition(':')[2]}" for t in static["targets"]]
    path = tmp_path / "prometheus-local.yml"
    path.write_text(yaml.safe_dump(local))
    result = _promtool_check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in local["scrape_configs"]}
    assert len(set(map(tuple, targets.values()))) == len(targets), "two jobs would scrape the same port"


def test_scrape_interval_resolves_energy_windows(prometheus_config: dict[str, Any]) -> None:
    interval = prometheus_config["global"]["scrape_interval"]
    assert interval.endswith("s") and int(interval[:-1]) <= 5
    assert all("scrape_interval" not in job for job in prometheus_config["scrape_configs"])
