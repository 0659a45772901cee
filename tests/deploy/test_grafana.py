"""The Grafana provisioning and dashboard: well-formed, wired to the provisioned Prometheus, and every query valid."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgediff.constants import GRAFANA_PORT, PROMETHEUS_PORT

from .deployfiles import (
    DASHBOARD_FILE,
    GRAFANA_DATASOURCE_FILE,
    GRAFANA_PROVIDER_FILE,
    ROOT,
    as_promql,
    dashboard_exprs,
    dashboard_targets,
    promql_label_names,
    promql_metric_names,
    promql_model_patterns,
    require_tool,
    volume_mounts,
)


def _datasource() -> dict[str, Any]:
    sources = yaml.safe_load(GRAFANA_DATASOURCE_FILE.read_text())["datasources"]
    assert len(sources) == 1
    return sources[0]


def test_datasource_is_the_compose_prometheus(prometheus_config: dict[str, Any]) -> None:
    source = _datasource()
    assert source["jsonData"]["timeInterval"] == prometheus_config["global"]["scrape_interval"]
    assert source["type"] == "prometheus"
    assert source["url"] == f"http://prometheus:{PROMETHEUS_PORT}"
    assert source["uid"]
    assert source["isDefault"] is True


def test_dashboard_provider_reads_the_folder_compose_mounts(compose: dict[str, Any]) -> None:
    provider = yaml.safe_load(GRAFANA_PROVIDER_FILE.read_text())["providers"][0]
    mounts = {target: source for source, target, _ in volume_mounts(compose["services"]["grafana"])}
    dashboards_path = provider["options"]["path"]
    assert dashboards_path in mounts, f"nothing is mounted at {dashboards_path}"
    assert (ROOT / mounts[dashboards_path]).resolve() == DASHBOARD_FILE.parent
    assert (ROOT / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA_DATASOURCE_FILE.parents[1]
    env = compose["services"]["grafana"]["environment"]
    assert int(env["GF_SERVER_HTTP_PORT"]) == GRAFANA_PORT
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{dashboards_path}/{DASHBOARD_FILE.name}"


def test_every_panel_queries_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    """No datasource uid in the dashboard: ${DS_PROMETHEUS} picks the default Prometheus (the provisioned one here)."""
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert _datasource()["isDefault"] is True
    assert _datasource()["uid"] not in DASHBOARD_FILE.read_text(), "the dashboard hard-codes the datasource uid"
    expected = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    assert dashboard["uid"] and dashboard["title"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
            assert target["expr"].strip(), panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == expected, variable["name"]


def test_dashboard_shows_what_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    exprs = dashboard_exprs(dashboard)
    joined = "\n".join(exprs)
    # images/s
    assert any("rate(edgediff_gateway_images_total" in e for e in exprs)
    # latency percentiles
    for q in ("0.5", "0.9", "0.99"):
        assert re.search(rf"histogram_quantile\({re.escape(q)},\s*sum by \(le\) \(rate\("
                         r"edgediff_gateway_request_duration_seconds_bucket", joined), q
    # power by domain, energy per image (energy counter increase over images increase), memory
    assert any("edgediff_power_watts" in e for e in exprs)
    assert any("increase(edgediff_energy_joules_total[$__range])" in e and
               "increase(edgediff_gateway_images_total[$__range])" in e for e in exprs)
    assert any("by (domain, source)" in e and "edgediff_energy_joules_total" in e for e in exprs)
    assert any("edgediff_memory_used_bytes" in e for e in exprs)
    # Triton queue and compute times
    assert any("nv_inference_queue_duration_us" in e for e in exprs)
    assert any("nv_inference_compute_infer_duration_us" in e for e in exprs)


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.9, sum by (le) (rate(my_seconds_bucket{method="Generate", x=~"a|b"}'
            '[$__rate_interval]))) / on (model) group_left scalar(sum(increase(other_total[5m] offset 1h)))'
            ' * 1e6 - $__range_s')
    assert promql_metric_names(expr) == {"my_seconds_bucket", "other_total"}
    assert promql_label_names(expr) == {"le", "method", "x", "model"}
    assert promql_metric_names("edgediff_power_watts") == {"edgediff_power_watts"}
    assert promql_model_patterns('rate(nv_inference_count{model=~"ldm_.*"}[1m]) + x{model=~"$model"}') == ["ldm_.*"]


def test_every_query_is_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    exprs = dashboard_exprs(dashboard)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"edgediff_dashboard:query_{i}", "expr": as_promql(expr)} for i, expr in enumerate(exprs)]}]}
    assert "$" not in yaml.safe_dump(rules), "a Grafana variable is not substituted; extend as_promql()"
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


@pytest.mark.parametrize("legend_label", ["variant", "code", "stage", "domain", "source", "reader", "kind", "model"])
def test_legends_name_labels_the_queries_keep(dashboard: dict[str, Any], legend_label: str) -> None:
    """A legend ``{{label}}`` is empty unless its query keeps that label (a bare selector or a ``by`` clause)."""
    for panel, target in dashboard_targets(dashboard):
        if "{{" + legend_label + "}}" not in target.get("legendFormat", ""):
            continue
        expr = target["expr"]
        aggregated = re.search(r"\b(sum|avg|max|min|count|histogram_quantile)\s*(by\s*\(|\()", expr)
        if aggregated:
            assert legend_label in promql_label_names(expr), f"{panel['title']}: {expr}"
