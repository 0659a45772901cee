"""deploy/kubernetes: every object valid against the pinned Kubernetes schemas, consistent with compose and the code.

No cluster runs here (no kubectl, helm or kustomize either): the objects are checked by ``kubernetes-validate``'s
bundled OpenAPI schemas of ``KUBERNETES_VERSION``, the rules and scrape configuration by ``promtool``, and the
commands by edgediff's own argument parser.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import build_parser
from edgediff import constants
from services.gateway.backends.fleet import parse_upstream

from .deployfiles import ROOT, active_services, interpolate, promql_metric_names, require_tool

KUBERNETES_VERSION = "1.30.0"
"""The API version the manifests are validated against (k3s on Jetson fleets and current clusters serve it)."""
K8S_DIR = ROOT / "deploy" / "kubernetes"
MONITORING = K8S_DIR / "monitoring"
CLASSES = ("cpu", "rtx", "jetson")
CRD_KINDS = {"ServiceMonitor"}


def _objects() -> list[tuple[Path, dict[str, Any]]]:
    files = sorted(K8S_DIR.glob("*.yaml")) + sorted(MONITORING.glob("*.yaml"))
    return [(path, doc) for path in files for doc in yaml.safe_load_all(path.read_text()) if doc]


OBJECTS = _objects()


def _find(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for _path, doc in OBJECTS if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def _container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name)


def test_gateway_manifests_are_rendered_from_the_template() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_gateways", K8S_DIR / "render_gateways.py")
    assert spec is not None and spec.loader is not None
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    for cls in CLASSES:
        assert (K8S_DIR / f"gateway-{cls}.yaml").read_text() == render.render(cls), (
            f"gateway-{cls}.yaml differs from its template: run python deploy/kubernetes/render_gateways.py")


def test_the_manifests_are_there() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _path, doc in OBJECTS}
    for cls in CLASSES:
        assert {("Service", f"edgediff-{cls}"), ("PodDisruptionBudget", f"edgediff-{cls}")} <= kinds
    assert {("Deployment", "edgediff-cpu"), ("Deployment", "edgediff-rtx"), ("DaemonSet", "edgediff-jetson"),
            ("Deployment", "edgediff-router"), ("DaemonSet", "edgediff-exporter"),
            ("HorizontalPodAutoscaler", "edgediff-cpu"), ("HorizontalPodAutoscaler", "edgediff-rtx"),
            ("ConfigMap", "edgediff-settings"), ("ServiceMonitor", "edgediff-gateways")} <= kinds


@pytest.mark.parametrize("path, doc", [(p, d) for p, d in OBJECTS if d["kind"] not in CRD_KINDS],
                         ids=lambda v: v.name if isinstance(v, Path) else f"{v['kind']}/{v['metadata']['name']}")
def test_every_object_matches_the_kubernetes_schema(path: Path, doc: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev)")
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert doc["metadata"].get("namespace", "edgediff") == "edgediff" or doc["kind"] == "Namespace"


def test_service_monitors_select_named_service_ports() -> None:
    ports = {p["name"] for _path, d in OBJECTS if d["kind"] == "Service" for p in d["spec"]["ports"]}
    for _path, doc in OBJECTS:
        if doc["kind"] == "ServiceMonitor":
            assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["spec"]["selector"]
            assert {e["port"] for e in doc["spec"]["endpoints"]} <= ports


def test_selectors_find_their_pods() -> None:
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for _p, d in OBJECTS
                  if d["kind"] in ("Deployment", "DaemonSet")]
    for _path, doc in OBJECTS:
        selector = None
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
        elif doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
        elif doc["kind"] in ("Deployment", "DaemonSet"):
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()
        if selector is not None:
            assert any(selector.items() <= labels.items() for labels in pod_labels), doc["metadata"]["name"]
        if doc["kind"] == "HorizontalPodAutoscaler":
            target = doc["spec"]["scaleTargetRef"]
            _find(target["kind"], target["name"])


def test_ports_and_commands_match_the_code_and_compose(compose: dict[str, Any]) -> None:
    parser = build_parser("serve")
    for cls in CLASSES:
        workload = next(d for _p, d in OBJECTS if d["kind"] in ("Deployment", "DaemonSet")
                        and d["metadata"]["name"] == f"edgediff-{cls}")
        services = active_services(compose, cls)
        gateway, triton, export = (_container(workload, n) for n in ("gateway", "triton", "export"))
        # the same images and Triton command as the compose profile
        assert gateway["image"] == interpolate(services[f"{cls}-gateway"]["image"])
        assert triton["command"] == interpolate(services[f"{cls}-triton"]["command"])
        assert export["command"][:4] == interpolate(services[f"{cls}-export"]["command"])[:4]
        # the gateway's flags parse, and its ports are the code's
        args = parser.parse_args(gateway["command"][1:])
        assert (args.port, args.metrics_port) == (constants.GATEWAY_GRPC_PORT, constants.GATEWAY_METRICS_PORT)
        assert args.triton_url == f"127.0.0.1:{constants.TRITON_GRPC_PORT}"
        declared = {p["name"]: p["containerPort"] for c in (gateway, triton) for p in c["ports"]}
        assert declared == {"grpc": constants.GATEWAY_GRPC_PORT, "gateway-metrics": constants.GATEWAY_METRICS_PORT,
                            "triton-http": constants.TRITON_HTTP_PORT, "triton-grpc": constants.TRITON_GRPC_PORT,
                            "triton-metrics": constants.TRITON_METRICS_PORT}
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(constants.GATEWAY_METRICS_PORT)
        assert gateway["readinessProbe"]["grpc"]["port"] == constants.GATEWAY_GRPC_PORT  # the gRPC health service
    exporter = _container(_find("DaemonSet", "edgediff-exporter"), "exporter")
    assert exporter["ports"][0]["containerPort"] == constants.EXPORTER_PORT
    assert build_parser("exporter").parse_args(exporter["command"][1:]).port == constants.EXPORTER_PORT


def test_the_router_reaches_every_class() -> None:
    router = _container(_find("Deployment", "edgediff-router"), "router")
    args = build_parser("serve").parse_args(router["command"][1:])
    assert args.backend == "fleet" and args.policy in ("fastest", "lowest-energy", "edge-first")
    specs = [parse_upstream(text) for text in args.upstream]
    assert [s.name for s in specs] == ["jetson", "cpu", "rtx"]  # edge-first: cheapest class first
    for spec in specs:
        host, port = spec.address.rsplit(":", 1)
        service, namespace = host.split(".")[:2]
        assert spec.dns and int(port) == constants.GATEWAY_GRPC_PORT and namespace == "edgediff"
        assert _find("Service", service)["spec"]["clusterIP"] == "None"  # headless: one upstream per pod


def test_resource_requests_and_gpu_placement() -> None:
    for cls in CLASSES:
        workload = next(d for _p, d in OBJECTS if d["kind"] in ("Deployment", "DaemonSet")
                        and d["metadata"]["name"] == f"edgediff-{cls}")
        pod = workload["spec"]["template"]["spec"]
        triton = _container(workload, "triton")
        assert triton["resources"]["requests"]["memory"].endswith("Gi")
        assert pod["securityContext"]["runAsNonRoot"] is True
        if cls == "rtx":
            assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        if cls == "jetson":
            assert pod["nodeSelector"]["kubernetes.io/arch"] == "arm64" and pod["runtimeClassName"] == "nvidia"


def test_rules_and_scrape_config_pass_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    proc = subprocess.run([promtool, "check", "rules", str(MONITORING / "rules.yml")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load((MONITORING / "prometheus-kubernetes.yml").read_text())
    for job in config["scrape_configs"]:
        assert job["kubernetes_sd_configs"][0]["role"] == "pod"
        # Debian's Prometheus is built without Kubernetes service discovery: promtool checks everything else (the
        # relabeling, the rule files) with the discovery block swapped for a static target
        job["static_configs"] = [{"targets": ["127.0.0.1:9401"]}]
        del job["kubernetes_sd_configs"]
    (tmp_path / "rules.yml").write_text((MONITORING / "rules.yml").read_text())
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    proc = subprocess.run([promtool, "check", "config", str(checked)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_rules_use_metrics_the_code_exports() -> None:
    known = {v for k, v in vars(constants).items() if k.startswith("METRIC_") and isinstance(v, str)}
    known |= set(constants.TRITON_METRICS)
    rules = yaml.safe_load((MONITORING / "rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    for group in rules["groups"]:
        for rule in group["rules"]:
            names = promql_metric_names(rule["expr"])
            assert names and names <= known | recorded, (rule.get("record") or rule.get("alert"), names - known)
    adapter = yaml.safe_load(_find("ConfigMap", "edgediff-prometheus-adapter")["data"]["config.yaml"])
    assert adapter["rules"][0]["name"]["as"] == "edgediff_queue_compute_ratio"
    assert "edgediff:queue_compute_ratio" in recorded
    hpa_metrics = {m["pods"]["metric"]["name"] for _p, d in OBJECTS if d["kind"] == "HorizontalPodAutoscaler"
                   for m in d["spec"]["metrics"]}
    assert hpa_metrics == {"edgediff_queue_compute_ratio"}
