"""``edgediff up/status/down --runtime local``: the compose deployment as supervised processes on loopback.

Services, in dependency order: ``triton`` (over the exported repository), ``gateway`` (Triton backend), ``exporter``
(telemetry), and ``prometheus`` when its binary is installed, scraping the jobs of ``docker/prometheus/prometheus.yml``
on 127.0.0.1. ``status`` and ``down`` see the stack from another process, through the state file. Every PID in it
comes with its identity (``edgediff.processes.process_identity``) and nothing is signalled unless the live process
still has it: after a reboot, or once the services died, the recorded PIDs may belong to other programs. A state none
of whose processes is ours any more is stale: it is reported and cleared, nothing is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgediff import constants
from edgediff.bench.tune import profile_defaults
from edgediff.constants import DEFAULT_HOST
from edgediff.errors import EdgediffError
from edgediff.io import atomic_write_text
from edgediff.processes import detach_until_ready, is_same_process
from exporters.manifest import export_mismatch
from exporters.repository import export_repository
from services.healthcheck import free_port
from services.stack.state import read_state, remove_state
from services.stack.supervisor import HealthCheck, ServiceSpec, Supervisor
from services.triton.launcher import (
    TritonServer,
    is_bundled,
    python_shm_flag,
    python_shm_prefix,
    remove_python_shm_regions,
    server_environment,
)

logger = logging.getLogger(__name__)
ENV_DETACHED = "EDGEDIFF_STACK_DETACHED"
"""Set by ``up --detach`` for the supervisor it starts: its services then outlive it."""
REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO_ROOT / "docker" / "prometheus" / "prometheus.yml"
DEFAULT_PORTS = {"gateway": constants.GATEWAY_GRPC_PORT, "gateway-metrics": constants.GATEWAY_METRICS_PORT,
                 "exporter": constants.EXPORTER_PORT, "triton-http": constants.TRITON_HTTP_PORT,
                 "triton-grpc": constants.TRITON_GRPC_PORT, "triton-metrics": constants.TRITON_METRICS_PORT,
                 "prometheus": constants.PROMETHEUS_PORT}
DEFAULT_VARIANTS = {"cpu": "onnx-fp32", "rtx": "trt-fp16", "jetson": "trt-fp16"}
# Prometheus job name -> the port key whose target it scrapes.
_JOB_PORTS = {"gateway": "gateway-metrics", "exporter": "exporter", "triton": "triton-metrics",
              "prometheus": "prometheus"}


@dataclass
class LocalStackConfig:
    """What ``edgediff up --runtime local`` runs.

    Attributes:
        profile: ``cpu``, ``rtx`` or ``jetson`` (the export target).
        variants: Variants exported and served; the first is the gateway's default.
        state_dir: State file, logs and Prometheus data.
        ports: Port per service (``DEFAULT_PORTS`` keys).
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


def ensure_repository(config: LocalStackConfig) -> None:
    """Export the repository when it is missing or stale, saying so on the console."""
    why = export_mismatch(config.repo, model=config.model, target=config.profile, variants=config.variants,
                          weights=config.weights)
    if why is None:
        print(f"model repository {config.repo} is current", flush=True)
        return
    print(f"exporting {config.model} ({', '.join(config.variants)}) for {config.profile} into {config.repo}: {why}",
          flush=True)
    export_repository(model=config.model, target=config.profile, variants=config.variants, repo=config.repo,
                      weights=config.weights, progress=lambda line: print(f"  {line}", flush=True))
    print(f"exported {config.repo}", flush=True)


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


def build_specs(config: LocalStackConfig) -> list[ServiceSpec]:
    """The services of the local stack, with their commands, health checks and dependencies."""
    ports, prefix, host = config.ports, python_shm_prefix(config.state_dir), DEFAULT_HOST
    triton = TritonServer(config.repo, http_port=ports["triton-http"], grpc_port=ports["triton-grpc"],
                          metrics_port=ports["triton-metrics"],
                          extra_args=[python_shm_flag(prefix)])
    argv = triton.command()
    assert triton.binary is not None
    edgediff, env = [sys.executable, "-m", "cli"], {"PYTHONPATH": str(REPO_ROOT)}
    specs = [
        ServiceSpec("triton", argv, HealthCheck("http", f"{triton.http_url}/v2/health/ready"), ports["triton-grpc"],
                    env=server_environment(is_bundled(triton.binary)), startup_timeout_s=600.0,
                    cleanup=lambda: remove_python_shm_regions(prefix)),
        ServiceSpec("gateway", [*edgediff, "serve", "--backend", "triton", "--model", config.model, "--variant",
                                config.variants[0], "--triton-url", triton.grpc_url, "--host", host, "--port",
                                str(ports["gateway"]), "--metrics-port", str(ports["gateway-metrics"])],
                    HealthCheck("grpc", f"{host}:{ports['gateway']}"), ports["gateway"], env=env,
                    depends_on=("triton",)),
        ServiceSpec("exporter", [*edgediff, "exporter", "--host", host, "--port", str(ports["exporter"]),
                                 *config.exporter_args],
                    HealthCheck("http", f"http://{host}:{ports['exporter']}/metrics"), ports["exporter"], env=env,
                    startup_timeout_s=60.0),
    ]
    binary = shutil.which("prometheus")
    if config.with_prometheus and binary:
        import yaml

        if port_taken(ports["prometheus"]):  # e.g. the distribution's Prometheus service: never stop it, move ours
            taken, ports["prometheus"] = ports["prometheus"], free_port(host)
            logger.warning("port %d is taken (another Prometheus?); this stack's Prometheus uses %d instead",
                           taken, ports["prometheus"])
        config_path, data_dir = config.state_dir / "prometheus.yml", config.state_dir / "prometheus-data"
        atomic_write_text(config_path, yaml.safe_dump(prometheus_config(ports), sort_keys=False))
        specs.append(ServiceSpec(
            "prometheus", [binary, f"--config.file={config_path}", f"--storage.tsdb.path={data_dir}",
                           f"--web.listen-address={host}:{ports['prometheus']}", "--storage.tsdb.retention.time=2d"],
            HealthCheck("http", f"http://{host}:{ports['prometheus']}/-/ready"), ports["prometheus"],
            depends_on=("gateway", "exporter"), startup_timeout_s=60.0))
    return specs


def port_taken(port: int, host: str = DEFAULT_HOST) -> bool:
    """Whether something already listens on ``host:port`` (a process edgediff did not start, possibly)."""
    return HealthCheck("tcp", f"{host}:{port}").check(timeout_s=0.5)


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

    ``detached``: the services outlive this process (``up --detach`` started it); else they die with it.
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    ensure_repository(config)
    meta = {"profile": config.profile, "model": config.model, "variants": config.variants, "repo": str(config.repo),
            "shm_prefix": python_shm_prefix(config.state_dir), "ports": config.ports}
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
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, SIGTERM, SIGHUP: the stack's normal end
            supervisor.run()
    finally:
        print("stopping the stack ...", flush=True)
        supervisor.stop_all()
        print("stack stopped", flush=True)
    return 0


# --- the stack seen from another process (edgediff up, status, down) ---------------------------------------------
def supervisor_alive(state: dict[str, Any]) -> bool:
    """True when the recorded supervisor still runs (same PID, start time and command line)."""
    return is_same_process(state.get("supervisor_pid"), state.get("supervisor_identity"))


def service_alive(service: dict[str, Any]) -> bool:
    """True when the recorded service process still runs (same PID, start time and command line)."""
    return is_same_process(service.get("pid"), service.get("identity"))


def clear_if_stale(state: dict[str, Any], state_dir: Path) -> bool:
    """Report and remove the state of a local stack none of whose processes is ours any more; True when it was so."""
    services = state.get("services", {}).values()
    if state.get("runtime", "local") != "local" or supervisor_alive(state) or any(map(service_alive, services)):
        return False
    pids = [state.get("supervisor_pid"), *(s.get("pid") for s in services)]
    print(f"stale stack state in {state_dir}: none of its processes ({', '.join(str(p) for p in pids if p)}) runs "
          "any more (after a reboot their PIDs may belong to other programs, which are left alone); state cleared")
    remove_state(state_dir)
    return True


def service_health(service: dict[str, Any]) -> str:
    """``healthy``, ``completed`` (a finished one-shot), ``unhealthy`` or ``down``, checked now."""
    if service.get("pid") is not None and not service_alive(service):
        return "down"
    health = service.get("health")
    if not health:
        return str(service.get("status", "unknown"))
    return "healthy" if HealthCheck(**health).check() else "unhealthy"


def supervisor_line(state: dict[str, Any]) -> tuple[bool, str]:
    """Whether the local stack's supervisor is alive, and one line saying so (and what to do when it is not)."""
    pid = state.get("supervisor_pid")
    if supervisor_alive(state):
        return True, f"supervisor: pid {pid}, alive (restarts a service that dies)"
    return False, (f"supervisor: pid {pid}, GONE: the services run unsupervised, a crash will not be restarted; "
                   "'edgediff down' stops them, then 'edgediff up' starts a supervised stack")


def refuse_if_running(state_dir: Path) -> None:
    """Refuse to start a second stack over the same state: one whose supervisor runs, or its orphaned services.

    Services left running without their supervisor (killed: the OOM killer, ``kill -9``) hold the ports and are never
    restarted; they are not adopted, the message says how to stop them. A stale state is cleared.

    Raises:
        EdgediffError: a stack is recorded in ``state_dir`` and something of it still runs.
    """
    state = read_state(state_dir)
    if not state or clear_if_stale(state, state_dir):
        return
    supervisor = state.get("supervisor_pid")
    if supervisor_alive(state):
        raise EdgediffError(f"a stack already runs (supervisor pid {supervisor}, state {state_dir}); "
                            "run 'edgediff down' first")
    orphans = [f"{name} (pid {service['pid']})" for name, service in state.get("services", {}).items()
               if service_alive(service)]
    if orphans:
        raise EdgediffError(f"the services of a stack still run without their supervisor (pid {supervisor} is gone; "
                            f"crashes would not be restarted): {', '.join(orphans)}; stop them with 'edgediff down "
                            f"--state-dir {state_dir}', then run 'edgediff up' again")


def _wait(alive: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)


def stop_local(state: dict[str, Any], state_dir: Path, timeout_s: float) -> None:
    """Ask the supervisor to stop everything; if it is gone or stuck, stop the services' process groups directly.

    Only processes whose identity matches the state are signalled; the others are named in a warning.
    """
    if supervisor_alive(state):
        os.kill(state["supervisor_pid"], signal.SIGTERM)
        _wait(lambda: supervisor_alive(state), timeout_s)
    for name, service in state.get("services", {}).items():
        if not service_alive(service):
            if service.get("pid") and os.path.exists(f"/proc/{service['pid']}"):
                logger.warning("%s: pid %s now belongs to another program; left alone", name, service["pid"])
            continue
        for sig, grace_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 0.0)):
            if service_alive(service):
                with contextlib.suppress(ProcessLookupError, PermissionError):  # gone meanwhile
                    os.killpg(service["pid"], sig)
                _wait(lambda s=service: service_alive(s), grace_s)
    if state.get("shm_prefix"):
        remove_python_shm_regions(state["shm_prefix"])
    remove_state(state_dir)


def start_detached(argv: Sequence[str], state_dir: Path, timeout_s: float) -> tuple[int, dict[str, Any]]:
    """Run ``edgediff <argv>`` (a foreground ``up``) in a session of its own, logging to ``state_dir/up.log``.

    Returns its PID and the state once every service is healthy.

    Raises:
        EdgediffError: it exited or was not healthy within ``timeout_s`` (then it was stopped).
    """
    def healthy() -> bool:
        state = read_state(state_dir)
        return bool(state and state.get("services")
                    and all(s["status"] == "healthy" for s in state["services"].values()))

    pid = detach_until_ready([sys.executable, "-m", "cli.main", *argv], state_dir / "up.log", healthy, timeout_s,
                             name="stack supervisor", env={**os.environ, ENV_DETACHED: "1"})
    return pid, read_state(state_dir) or {}
