"""``edgediff up``: start the serving stack (Triton, gateway, exporter, Prometheus) and supervise it.

In the foreground, a stop signal (Ctrl-C, SIGTERM, SIGHUP) stops every service, in reverse order, and exits 0; the
services also die with the supervisor if it is killed. With ``--detach`` the supervisor runs in a session of its
own and its services outlive it (``edgediff status`` says when it is gone; ``edgediff down`` stops everything).
``--runtime docker`` runs compose.yaml through ``docker compose`` v2 instead (services/stack/docker_runtime.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cli.status import add_state_dir_argument, print_status
from edgediff.errors import InvalidArgumentError
from edgediff.variants import get_variant
from services.stack.docker_runtime import ComposeStack, choose_runtime, compose_environment
from services.stack.local_runtime import (
    DEFAULT_PORTS,
    ENV_DETACHED,
    REPO_ROOT,
    LocalStackConfig,
    default_variants,
    refuse_if_running,
    run_local,
    start_detached,
)
from services.stack.state import default_state_dir

PROFILES = ("cpu", "rtx", "jetson")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff up``."""
    parser.add_argument("--profile", choices=PROFILES, default="cpu", help="device profile (default: %(default)s)")
    parser.add_argument("--runtime", choices=("auto", "local", "docker"), default="auto",
                        help="local processes, or Docker containers through 'docker compose' v2; auto = docker when "
                             "an engine answers and the images are built, else local (default: %(default)s)")
    parser.add_argument("--model", default="celebahq-256", help="model preset (default: %(default)s)")
    parser.add_argument("--weights", default=None, metavar="DIR", help="diffusers-format weights folder")
    parser.add_argument("--variants", default=None,
                        help="variants to export and serve, comma-separated; the first is the gateway's default "
                             "(default: onnx-fp32 on cpu, trt-fp16 on rtx/jetson)")
    parser.add_argument("--ports", default=None, metavar="NAME=PORT,...",
                        help="override ports: gateway, gateway-metrics, exporter, triton-http, triton-grpc, "
                             "triton-metrics, prometheus (Docker publishes no Triton port)")
    parser.add_argument("--repo", default="model_repository", help="Triton model repository (default: %(default)s)")
    add_state_dir_argument(parser)
    parser.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    parser.add_argument("--exporter-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for 'edgediff exporter' (repeatable), e.g. "
                             "--exporter-arg=--estimated-cpu-tdp-watts=15")
    parser.add_argument("--detach", action="store_true", help="start in the background and return once healthy")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for the stack to be healthy with --detach or Docker "
                             "(default: %(default)s)")


def parse_ports(spec: str | None) -> dict[str, int]:
    """``"gateway=50061,exporter=9410"`` -> the default ports with those replaced.

    Raises:
        InvalidArgumentError: an unknown name, a port outside 1..65535, or two services on one port.
    """
    ports = dict(DEFAULT_PORTS)
    for item in filter(str.strip, (spec or "").split(",")):
        name, _, value = (part.strip() for part in item.partition("="))
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


def run_from_args(args: argparse.Namespace) -> int:
    """Start the stack."""
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    refuse_if_running(state_dir)
    runtime = args.runtime
    if runtime == "auto":
        runtime, why = choose_runtime(args.profile, REPO_ROOT / "compose.yaml")
        print(f"runtime auto: {'Docker containers' if runtime == 'docker' else 'local processes'} ({why})", flush=True)
    variants = ([v.strip() for v in args.variants.split(",") if v.strip()] if args.variants
                else default_variants(args.profile, args.model))
    if not variants:
        raise InvalidArgumentError("--variants: give at least one variant")
    for name in variants:
        get_variant(name)
    ports = parse_ports(args.ports)
    if runtime == "docker":
        return _up_docker(args, variants, ports, state_dir)
    if args.detach:
        pid, state = start_detached(_foreground_argv(args, state_dir), state_dir, args.timeout)
        print_status(state)
        print(f"stack is up in the background (supervisor pid {pid}, log {state_dir / 'up.log'}); "
              "'edgediff status' shows it, 'edgediff down' stops it", flush=True)
        return 0
    config = LocalStackConfig(
        profile=args.profile, model=args.model, variants=variants, repo=Path(args.repo).resolve(),
        state_dir=state_dir, ports=ports, weights=args.weights, exporter_args=list(args.exporter_arg),
        with_prometheus=not args.no_prometheus,
    )
    return run_local(config, detached=os.environ.get(ENV_DETACHED) == "1")


def _foreground_argv(args: argparse.Namespace, state_dir: Path) -> list[str]:
    """This ``up`` without ``--detach``, for the supervisor that ``--detach`` starts."""
    argv = [a for a in sys.argv[1:] if a != "--detach"] if sys.argv[1:2] == ["up"] else None
    if argv is not None and "--runtime" in argv:  # auto was resolved: the supervisor runs the local runtime
        del argv[argv.index("--runtime"):argv.index("--runtime") + 2]
    argv = [a for a in argv if not a.startswith("--runtime=")] if argv is not None else None
    if argv is None:  # called in-process (tests): rebuild the command line from args
        argv = ["up", "--profile", args.profile, "--model", args.model, "--repo", args.repo]
        for flag, value in (("--weights", args.weights), ("--variants", args.variants), ("--ports", args.ports)):
            if value:
                argv += [flag, value]
        argv += ["--no-prometheus"] if args.no_prometheus else []
        argv += [f"--exporter-arg={a}" for a in args.exporter_arg]
    argv += [] if "--state-dir" in argv else ["--state-dir", str(state_dir)]
    return [*argv, "--runtime", "local"]


def _up_docker(args: argparse.Namespace, variants: list[str], ports: dict[str, int], state_dir: Path) -> int:
    changed = {name: port for name, port in ports.items() if port != DEFAULT_PORTS[name]}
    env = compose_environment(model=args.model, variants=variants, ports=changed,
                              weights_dir=Path(args.weights) if args.weights else None)
    stack = ComposeStack(REPO_ROOT / "compose.yaml", [args.profile], env, state_dir=state_dir,
                         meta={"model": args.model, "variants": variants})
    stack.up(args.timeout)  # writes the state file
    print(f"stack is up in Docker (profile {args.profile}); 'edgediff status' shows it, 'edgediff down' stops it")
    return 0
