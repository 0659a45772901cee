"""``edgediff up --runtime local``: the compose deployment as supervised processes on loopback.

Services, in dependency order: ``triton`` (over the exported repository), ``gateway`` (Triton backend),
``exporter`` (telemetry), and ``prometheus`` when its binary is installed, scraping the same jobs as
``docker/prometheus/prometheus.yml`` with the targets rewritten to 127.0.0.1.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgediff.bench.tune import profile_defaults
from edgediff.constants import (
    DEFAULT_HOST,
    EXPORTER_PORT,
    GATEWAY_GRPC_PORT,
    GATEWAY_METRICS_PORT,
    PROMETHEUS_PORT,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
)
from edgediff.errors import InvalidArgumentError
from edgediff.io import atomic_write_text
from edgediff.models import get_preset
from edgediff.models.weights import weights_origin
from exporters.manifest import exporter_sha256, read_manifest, repository_problems, unfinished_export
from exporters.repository import export_repository
from services.stack.health import HealthCheck
from services.stack.supervisor import ServiceSpec, Supervisor
from services.triton.launcher import TritonServer, is_bundled, server_environment

logger = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO_ROOT / "docker" / "prometheus" / "prometheus.yml"
DEFAULT_PORTS = {
    "gateway": GATEWAY_GRPC_PORT,
    "gateway-metrics": GATEWAY_METRICS_PORT,
    "exporter": EXPORTER_PORT,
    "triton-http": TRITON_HTTP_PORT,
    "triton-grpc": TRITON_GRPC_PORT,
    "triton-metrics": TRITON_METRICS_PORT,
    "prometheus": PROMETHEUS_PORT,
}
DEFAULT_VARIANTS = {"cpu": "onnx-fp32", "rtx": "trt-fp16", "jetson": "trt-fp16"}
# Prometheus job name -> the port key whose target it scrapes.
_JOB_PORTS = {"gateway": "gateway-metrics", "exporter": "exporter", "triton": "triton-metrics",
              "prometheus": "prometheus"}


def parse_ports(spec: str | None) -> dict[str, int]:
    """``"gateway=50061,exporter=9410"`` -> the default ports with those replaced.

    Raises:
        InvalidArgumentError: an unknown name or a port outside 1..65535.
    """
    ports = dict(DEFAULT_PORTS)
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in ports:
            raise InvalidArgumentError(f"--ports: unknown service {name!r}; choose from {', '.join(ports)}")
        try:
            port = int(value)
        except ValueError:
            raise InvalidArgumentError(f"--ports: {name}={value!r} is not a port number") from None
        if not 1 <= port <= 65535:
            raise InvalidArgumentError(f"--ports: {name}={port} is outside 1..65535")
        ports[name] = port
    if len(set(ports.values())) != len(ports):
        raise InvalidArgumentError(f"--ports: two services share a port: {ports}")
    return ports


@dataclass
class LocalStackConfig:
    """What ``edgediff up --runtime local`` runs.

    Attributes:
        profile: ``cpu``, ``rtx`` or ``jetson`` (the export target).
        model: Model preset.
        variants: Variants exported and served; the first is the gateway's default.
        repo: The Triton model repository.
        state_dir: State file, logs and Prometheus data.
        ports: Port per service (``DEFAULT_PORTS`` keys).
        weights: Weights folder, or None.
        exporter_args: Extra ``edgediff exporter`` arguments (e.g. an estimated-power TDP).
        with_prometheus: Run Prometheus when its binary is installed.
    """

    profile: str
    model: str
    variants: list[str]
    repo: Path
    state_dir: Path
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    weights: str | None = None
    exporter_args: list[str] = field(default_factory=list)
    with_prometheus: bool = True


def repository_is_current(config: LocalStackConfig) -> tuple[bool, str]:
    """Whether ``config.repo`` holds a finished export of the model, weights, target and variants asked for.

    Returns:
        (current, why not) — the reason is shown when the repository is re-exported.
    """
    unfinished = unfinished_export(config.repo)
    if unfinished:
        return False, unfinished
    manifest = read_manifest(config.repo)
    if manifest is None:
        return False, f"{config.repo} has no manifest.json"
    if manifest.get("preset") != config.model:
        return False, f"it holds preset {manifest.get('preset')}, not {config.model}"
    if manifest.get("target", {}).get("name") != config.profile:
        return False, f"it was exported for target {manifest.get('target', {}).get('name')}, not {config.profile}"
    if manifest.get("exporter_sha256") != exporter_sha256():
        return False, "it was written by other exporter code (another edgediff checkout or release)"
    wanted = weights_origin(get_preset(config.model), config.weights).sha256
    if manifest.get("weights", {}).get("sha256") != wanted:
        return False, "its weights differ from the ones asked for"
    missing = [v for v in config.variants if v not in manifest.get("variants", {})]
    if missing:
        return False, f"variants {', '.join(missing)} are not exported"
    damaged = repository_problems(config.repo)  # a truncated or altered artifact is re-exported, never served
    if damaged:
        return False, f"its artifacts are damaged: {damaged[0]}"
    return True, ""


def ensure_repository(config: LocalStackConfig) -> str:
    """Export the repository when it is missing or stale; returns what was done, for the console."""
    current, why = repository_is_current(config)
    if current:
        return f"model repository {config.repo} is current"

    print(f"exporting {config.model} ({', '.join(config.variants)}) for {config.profile} into {config.repo}: {why}",
          flush=True)
    export_repository(model=config.model, target=config.profile, variants=config.variants, repo=config.repo,
                      weights=config.weights, progress=lambda line: print(f"  {line}", flush=True))
    return f"exported {config.repo}"


def prometheus_config(ports: dict[str, int], source: Path = PROMETHEUS_CONFIG) -> dict[str, Any]:
    """The compose deployment's Prometheus config with every job's target moved to 127.0.0.1 and our ports."""
    import yaml

    config = yaml.safe_load(source.read_text(encoding="utf-8"))
    for job in config.get("scrape_configs", []):
        key = _JOB_PORTS.get(job["job_name"])
        if key is None:
            continue
        for static in job.get("static_configs", []):
            static["targets"] = [f"{DEFAULT_HOST}:{ports[key]}" for _ in static.get("targets", [])]
    return config


def shm_prefix(state_dir: Path) -> str:
    """The prefix of the Python backend's shared-memory regions for this stack (so ``down`` can find leftovers)."""
    import hashlib

    return f"edgediff_{hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]}_"


def remove_shm_regions(prefix: str) -> list[str]:
    """Delete ``/dev/shm/<prefix>*`` regions left by a killed Triton; returns the removed names."""
    removed = []
    for path in glob.glob(f"/dev/shm/{prefix}*"):
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def build_specs(config: LocalStackConfig) -> list[ServiceSpec]:
    """The services of the local stack, with their commands, health checks and dependencies."""
    ports = config.ports
    prefix = shm_prefix(config.state_dir)
    triton = TritonServer(
        config.repo, http_port=ports["triton-http"], grpc_port=ports["triton-grpc"],
        metrics_port=ports["triton-metrics"],
        extra_args=[f"--backend-config=python,shm-region-prefix-name={prefix}"],
    )
    argv = triton.command()
    assert triton.binary is not None
    specs = [
        ServiceSpec(
            name="triton", argv=argv, env=server_environment(is_bundled(triton.binary)), port=ports["triton-grpc"],
            health=HealthCheck("http", f"{triton.http_url}/v2/health/ready"), startup_timeout_s=600.0,
            cleanup=lambda: remove_shm_regions(prefix) and None,
        ),
        ServiceSpec(
            name="gateway",
            argv=[sys.executable, "-m", "cli", "serve", "--backend", "triton", "--model", config.model,
                  "--variant", config.variants[0], "--triton-url", triton.grpc_url, "--host", DEFAULT_HOST,
                  "--port", str(ports["gateway"]), "--metrics-port", str(ports["gateway-metrics"])],
            health=HealthCheck("grpc", f"{DEFAULT_HOST}:{ports['gateway']}"), port=ports["gateway"],
            depends_on=("triton",), startup_timeout_s=120.0,
            env={"PYTHONPATH": str(REPO_ROOT)},
        ),
        ServiceSpec(
            name="exporter",
            argv=[sys.executable, "-m", "cli", "exporter", "--host", DEFAULT_HOST, "--port", str(ports["exporter"]),
                  *config.exporter_args],
            health=HealthCheck("http", f"http://{DEFAULT_HOST}:{ports['exporter']}/metrics"), port=ports["exporter"],
            startup_timeout_s=60.0, env={"PYTHONPATH": str(REPO_ROOT)},
        ),
    ]
    binary = shutil.which("prometheus")
    if config.with_prometheus and binary:
        import yaml


        if port_taken(ports["prometheus"]):  # e.g. the distribution's Prometheus service: never stop it, move ours
            taken, ports["prometheus"] = ports["prometheus"], free_port()
            logger.warning("port %d is taken (another Prometheus?); this stack's Prometheus uses %d instead",
                           taken, ports["prometheus"])

        config_path = config.state_dir / "prometheus.yml"
        atomic_write_text(config_path, yaml.safe_dump(prometheus_config(ports), sort_keys=False))
        data_dir = config.state_dir / "prometheus-data"
        specs.append(ServiceSpec(
            name="prometheus",
            argv=[binary, f"--config.file={config_path}", f"--storage.tsdb.path={data_dir}",
                  f"--web.listen-address={DEFAULT_HOST}:{ports['prometheus']}", "--storage.tsdb.retention.time=2d"],
            health=HealthCheck("http", f"http://{DEFAULT_HOST}:{ports['prometheus']}/-/ready"),
            port=ports["prometheus"], depends_on=("gateway", "exporter"), startup_timeout_s=60.0,
        ))
    return specs


def port_taken(port: int, host: str = DEFAULT_HOST) -> bool:
    """Whether something already listens on ``host:port`` (a process edgediff did not start, possibly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port free on ``host`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def default_variants(profile: str, model: str, echo: Callable[[str], None] = print) -> list[str]:
    """The variant ``up`` serves when none is asked for: on cpu this machine's tune profile (``edgediff tune``) when
    there is a valid one, else ``DEFAULT_VARIANTS``.
    """  # noqa: D205
    if profile == "cpu":
        tuned = profile_defaults(model, warn=lambda line: print(line, file=sys.stderr))
        if tuned is not None:
            echo(f"variant from this machine's tune profile: {tuned['variant']} (the gateway serves it with "
                 f"{tuned['scheduler']} {tuned['steps']} steps by default)")
            return [str(tuned["variant"])]
    return [DEFAULT_VARIANTS[profile]]


def run_local(config: LocalStackConfig, *, detached: bool) -> int:
    """Export the repository if needed, start the stack, supervise it until a stop signal, stop it; exit status 0.

    Args:
        config: What to run.
        detached: The services outlive this process (``up --detach`` started it); else they die with it.
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    print(ensure_repository(config), flush=True)
    meta = {"profile": config.profile, "model": config.model, "variants": config.variants, "repo": str(config.repo),
            "shm_prefix": shm_prefix(config.state_dir), "ports": config.ports}
    supervisor = Supervisor(build_specs(config), config.state_dir, meta=meta, services_outlive_me=detached)
    print(f"starting the {config.profile} stack (local processes; state in {config.state_dir})", flush=True)
    try:  # a stop signal raises Interrupted (cli.main's stop_on_signals), here or in run(): everything is stopped
        supervisor.start_all()
    except KeyboardInterrupt:
        print("stack start interrupted; every service stopped", flush=True)
        return 0
    ports = config.ports
    prometheus = any(s.spec.name == "prometheus" for s in supervisor.services)
    print(f"stack is up: gateway 127.0.0.1:{ports['gateway']} (gRPC edgediff.v1.Generator), metrics "
          f":{ports['gateway-metrics']} and :{ports['exporter']}, Triton :{ports['triton-grpc']}"
          + (f", Prometheus http://127.0.0.1:{ports['prometheus']}" if prometheus else "")
          + "; Ctrl-C or 'edgediff down' stops it", flush=True)
    try:
        supervisor.run()
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: the stack's normal end
        pass
    finally:
        print("stopping the stack ...", flush=True)
        supervisor.stop_all()
        print("stack stopped", flush=True)
    return 0
