"""``edgediff up``: start the serving stack (Triton, gateway, exporter, Prometheus) and supervise it.

In the foreground, a stop signal (Ctrl-C, SIGTERM, SIGHUP) stops every service, in reverse order, and exits 0; the
services also die with the supervisor if it is killed. With ``--detach`` the supervisor runs in a session of its
own and its services outlive it (``edgediff status`` says when it is gone; ``edgediff down`` stops everything).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from cli.status import print_status
from edgediff.bench.tune import profile_defaults
from edgediff.errors import EdgediffError, InvalidArgumentError
from edgediff.processes import ChildProcess, pid_alive
from edgediff.variants import get_variant
from services.stack.local_runtime import (
    DEFAULT_PORTS,
    REPO_ROOT,
    LocalStackConfig,
    build_specs,
    ensure_repository,
    parse_ports,
    shm_prefix,
)
from services.stack.state import add_state_dir_argument, default_state_dir, read_state
from services.stack.supervisor import Supervisor

PROFILES = ("cpu", "rtx", "jetson")
DEFAULT_VARIANTS = {"cpu": "onnx-fp32", "rtx": "trt-fp16", "jetson": "trt-fp16"}
ENV_DETACHED = "EDGEDIFF_STACK_DETACHED"
"""Set by ``up --detach`` for the supervisor it starts: its services then outlive it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff up``."""
    parser.add_argument("--profile", choices=PROFILES, default="cpu", help="device profile (default: %(default)s)")
    parser.add_argument("--runtime", choices=("auto", "local", "docker"), default="auto",
                        help="local processes, or Docker through the Engine API; auto = docker when an engine "
                             "answers, else local (default: %(default)s)")
    parser.add_argument("--model", default="celebahq-256", help="model preset (default: %(default)s)")
    parser.add_argument("--weights", default=None, metavar="DIR", help="diffusers-format weights folder")
    parser.add_argument("--variants", default=None,
                        help="variants to export and serve, comma-separated; the first is the gateway's default "
                             "(default: onnx-fp32 on cpu, trt-fp16 on rtx/jetson)")
    parser.add_argument("--ports", default=None, metavar="NAME=PORT,...",
                        help="override ports: gateway, gateway-metrics, exporter, triton-http, triton-grpc, "
                             "triton-metrics, prometheus")
    parser.add_argument("--repo", default="model_repository", help="Triton model repository (default: %(default)s)")
    add_state_dir_argument(parser)
    parser.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    parser.add_argument("--exporter-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for 'edgediff exporter' (repeatable), e.g. "
                             "--exporter-arg=--estimated-cpu-tdp-watts=15")
    parser.add_argument("--detach", action="store_true", help="start in the background and return once healthy")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for the stack to be healthy with --detach (default: %(default)s)")


def _auto_runtime(profile: str) -> str:
    """``docker`` when the Docker runtime can start ``profile`` here, else ``local``; says which and why."""
    from services.stack.docker_runtime import choose_runtime

    runtime, why = choose_runtime(profile, REPO_ROOT / "compose.yaml")
    print(f"runtime auto: {'Docker containers' if runtime == 'docker' else 'local processes'} ({why})", flush=True)
    return runtime


def _default_variants(args: argparse.Namespace) -> str:
    """The cpu profile's default: this machine's tune profile (``edgediff tune``) when there is a valid one."""
    if args.profile == "cpu":

        profile = profile_defaults(args.model, warn=lambda line: print(line, file=sys.stderr))
        if profile is not None:
            print(f"variant from this machine's tune profile: {profile['variant']} (the gateway serves it with "
                  f"{profile['scheduler']} {profile['steps']} steps by default)", flush=True)
            return str(profile["variant"])
    return DEFAULT_VARIANTS[args.profile]


def run_from_args(args: argparse.Namespace) -> int:
    """Start the stack."""
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    refuse_if_running(state_dir)
    runtime = args.runtime
    if runtime == "auto":
        runtime = _auto_runtime(args.profile)
    variants = [v.strip() for v in (args.variants or _default_variants(args)).split(",") if v.strip()]
    if not variants:
        raise InvalidArgumentError("--variants: give at least one variant")
    if runtime == "docker":
        return _up_docker(args, variants, state_dir)
    if args.detach:
        return _detach(args, state_dir)
    return _up_local(args, variants, state_dir)


def refuse_if_running(state_dir: Path) -> None:
    """Refuse to start a second stack over the same state: one whose supervisor runs, or its orphaned services.

    Services left running without their supervisor (it was killed: the OOM killer, ``kill -9``) hold the ports and
    are never restarted; they are not adopted (their logs and restart counts belong to the dead supervisor), the
    message says how to stop them.

    Raises:
        EdgediffError: a stack is recorded in ``state_dir`` and something of it still runs.
    """
    state = read_state(state_dir)
    if not state:
        return
    supervisor = state.get("supervisor_pid")
    if pid_alive(supervisor):
        raise EdgediffError(f"a stack already runs (supervisor pid {supervisor}, state {state_dir}); "
                            "run 'edgediff down' first")
    if state.get("runtime", "local") != "local":
        return
    orphans = [f"{name} (pid {service['pid']})" for name, service in state.get("services", {}).items()
               if pid_alive(service.get("pid"))]
    if orphans:
        raise EdgediffError(f"the services of a stack still run without their supervisor (pid {supervisor} is gone; "
                            f"crashes would not be restarted): {', '.join(orphans)}; stop them with 'edgediff down "
                            f"--state-dir {state_dir}', then run 'edgediff up' again")


def _up_local(args: argparse.Namespace, variants: list[str], state_dir: Path) -> int:

    for name in variants:
        get_variant(name)
    config = LocalStackConfig(
        profile=args.profile, model=args.model, variants=variants, repo=Path(args.repo).resolve(),
        state_dir=state_dir, ports=parse_ports(args.ports), weights=args.weights,
        exporter_args=list(args.exporter_arg), with_prometheus=not args.no_prometheus,
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    print(ensure_repository(config), flush=True)
    meta = {"profile": args.profile, "model": args.model, "variants": variants, "repo": str(config.repo),
            "shm_prefix": shm_prefix(state_dir), "ports": config.ports}
    detached = os.environ.get(ENV_DETACHED) == "1"
    supervisor = Supervisor(build_specs(config), state_dir, meta=meta, services_outlive_me=detached)
    print(f"starting the {args.profile} stack (local processes; state in {state_dir})", flush=True)
    try:  # a stop signal raises Interrupted (cli.main's stop_on_signals), here or in run(): everything is stopped
        supervisor.start_all()
    except KeyboardInterrupt:
        print("stack start interrupted; every service stopped", flush=True)
        return 0
    ports = config.ports
    print(f"stack is up: gateway 127.0.0.1:{ports['gateway']} (gRPC edgediff.v1.Generator), "
          f"metrics :{ports['gateway-metrics']} and :{ports['exporter']}, Triton :{ports['triton-grpc']}"
          + (f", Prometheus http://127.0.0.1:{ports['prometheus']}" if "prometheus" in
             [s.spec.name for s in supervisor.services] else "")
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


def _detach(args: argparse.Namespace, state_dir: Path) -> int:
    """Run ``edgediff up`` (without --detach) in a new session, logging to the state dir; wait until healthy."""
    argv = [a for a in sys.argv[1:] if a != "--detach"] if sys.argv[1:2] == ["up"] else None
    if argv is None:  # called in-process (tests): rebuild the command line from args
        argv = ["up", "--profile", args.profile, "--runtime", "local", "--model", args.model, "--repo", args.repo,
                "--state-dir", str(state_dir)]
        for flag, value in (("--weights", args.weights), ("--variants", args.variants), ("--ports", args.ports)):
            if value:
                argv += [flag, value]
        if args.no_prometheus:
            argv.append("--no-prometheus")
        argv += [f"--exporter-arg={a}" for a in args.exporter_arg]
    if "--state-dir" not in argv:
        argv += ["--state-dir", str(state_dir)]
    if "--runtime" not in argv:
        argv += ["--runtime", "local"]
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "up.log"
    with log_path.open("ab") as log:  # owned until healthy: a stop signal or a timeout stops the half-started stack
        child = ChildProcess([sys.executable, "-m", "cli.main", *argv], name="stack supervisor", stdout=log,
                             stderr=subprocess.STDOUT, env={**os.environ, ENV_DETACHED: "1"},
                             dies_with_parent=False, grace_s=60.0)
    with child:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            code = child.poll()
            if code is not None:
                tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-8:]
                print("\n".join(tail), file=sys.stderr)
                raise EdgediffError(f"the stack exited with code {code} while starting (log: {log_path})")
            state = read_state(state_dir)
            if state and state.get("services") and all(s["status"] == "healthy"
                                                       for s in state["services"].values()):

                child.release()  # from now on it runs on its own
                print_status(state)
                print(f"stack is up in the background (supervisor pid {child.pid}, log {log_path}); "
                      "'edgediff status' shows it, 'edgediff down' stops it", flush=True)
                return 0
            time.sleep(1.0)
    raise EdgediffError(f"the stack was not healthy after {args.timeout:.0f} s (log: {log_path}); it was stopped")


def _up_docker(args: argparse.Namespace, variants: list[str], state_dir: Path) -> int:
    from services.stack.docker_runtime import DockerRuntime, compose_environment

    ports = parse_ports(args.ports)
    runtime = DockerRuntime(
        profile=args.profile,
        compose_file=REPO_ROOT / "compose.yaml",
        env=compose_environment(model=args.model, variants=variants,
                                weights_dir=Path(args.weights) if args.weights else None),
        state_dir=state_dir,
        host_port_remap={DEFAULT_PORTS[k]: v for k, v in ports.items() if v != DEFAULT_PORTS[k]},
        meta={"model": args.model, "variants": variants},
    )
    runtime.up(wait_timeout_s=args.timeout)  # writes the state file
    print(f"stack is up in Docker (profile {args.profile}); 'edgediff status' shows it, 'edgediff down' stops it")
    return 0
