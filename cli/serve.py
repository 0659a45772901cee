"""``edgediff serve``: the gRPC Generator gateway over Triton (``--backend triton``) or local PyTorch (``local``)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from cli.args import add_model_arguments, add_scheduler_argument, check_positive, parse_memory_size
from edgediff.bench.tune import profile_defaults
from edgediff.constants import (
    DEFAULT_HOST,
    GATEWAY_GRPC_PORT,
    GATEWAY_METRICS_PORT,
    SERVE_MAX_BATCH,
    TRITON_GRPC_PORT,
)
from edgediff.pipeline import MAX_BATCH, MAX_STEPS
from edgediff.processes import hangup_means_terminate
from edgediff.schedulers import DDIM, check_scheduler
from services.gateway.backends.local import DEFAULT_MAX_PIPELINES, low_memory_defaults
from services.gateway.server import DEFAULT_DEADLINE_S
from services.gateway.validation import DEFAULT_MAX_STEPS

if TYPE_CHECKING:
    from services.gateway.server import GatewayConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff serve``."""
    parser.add_argument("--backend", required=True, choices=("triton", "local", "fleet"),
                        help="triton: forward to Triton's ldm_<variant> models; local: run the pipeline in-process "
                             "with plain PyTorch (phones; needs no Triton, ONNX Runtime or OpenVINO); fleet: route "
                             "each request to one of several upstream gateways (--upstream, --policy)")
    add_model_arguments(parser)
    add_scheduler_argument(parser, default=None)
    parser.add_argument("--steps", type=int, default=None,
                        help="steps of requests that send 0 (default: the tune profile's, else 20)")
    parser.add_argument("--variant", default=None,
                        help="default variant for requests that name none (local: torch-fp32; triton: the first "
                             "ready ldm_* model in registry order)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default: %(default)s, loopback only)")
    parser.add_argument("--port", type=int, default=GATEWAY_GRPC_PORT,
                        help="gRPC port, 0 for any free one (default: %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=GATEWAY_METRICS_PORT,
                        help="Prometheus metrics port on the same host, 0 disables (default: %(default)s)")
    parser.add_argument("--triton-url", default=f"{DEFAULT_HOST}:{TRITON_GRPC_PORT}",
                        help="Triton's gRPC address for --backend triton (default: %(default)s)")
    parser.add_argument("--max-concurrency", type=int, default=None, metavar="N",
                        help="generations at once (default: the backend's capacity: triton, the ldm_<variant> "
                             "model's instances, so its batchers merge that many generations; local, 1)")
    parser.add_argument("--max-queue", type=int, default=8, metavar="N",
                        help="requests waiting for a slot; more are refused with RESOURCE_EXHAUSTED "
                             "(default: %(default)s)")
    parser.add_argument("--max-batch", type=int, default=SERVE_MAX_BATCH, metavar="N",
                        help=f"largest batch_size accepted, 1..{MAX_BATCH} (default: %(default)s)")
    parser.add_argument("--tls-cert", default=None, metavar="PEM", help="TLS certificate chain (with --tls-key)")
    parser.add_argument("--tls-key", default=None, metavar="PEM", help="TLS private key (with --tls-cert)")
    parser.add_argument("--token-file", default=None, metavar="FILE",
                        help="require metadata 'authorization: Bearer <token>' with the token in FILE")
    parser.add_argument("--threads", type=int, default=None,
                        help="local backend: intra-op threads (default: $EDGEDIFF_THREADS or physical cores)")
    parser.add_argument("--max-memory", type=parse_memory_size, default=None, metavar="SIZE",
                        help="local backend: memory budget (bytes, or with K/M/G: 1.5G); without --variant the default "
                             "is this machine's 'edgediff tune --max-memory' profile that fits it, else, under 3 GiB "
                             "(or total RAM under 3 GiB), torch-int8-lowmem with UniPC 5 steps")
    parser.add_argument("--no-preload", action="store_true",
                        help="local backend: build the default variant on the first request instead of at start")
    parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS, metavar="N",
                        help=f"largest steps a request may ask for, 1..{MAX_STEPS} (default: %(default)s)")
    parser.add_argument("--default-deadline", type=float, default=DEFAULT_DEADLINE_S, metavar="S",
                        help="a Generate whose client set no deadline is cancelled after S seconds "
                             "(DEADLINE_EXCEEDED) (default: %(default)s)")
    parser.add_argument("--allow-variants", default=None, metavar="V,...|all",
                        help="local backend: the variants requests may name, so get built and kept in memory "
                             "(default: the default variant only; 'all': every installed one)")
    parser.add_argument("--max-pipelines", type=int, default=DEFAULT_MAX_PIPELINES, metavar="N",
                        help="local backend: built pipelines kept in memory, least recently used dropped first "
                             "(default: %(default)s)")
    parser.add_argument("--shutdown-grace", type=float, default=30.0, metavar="S",
                        help="on SIGTERM, seconds in-flight requests get to finish (default: %(default)s)")
    parser.add_argument("--health-interval", type=float, default=1.0, metavar="S",
                        help="triton backend: seconds between Triton health probes (default: %(default)s)")
    parser.add_argument("--max-backend-wait", type=float, default=120.0, metavar="S",
                        help="seconds an accepted request that has not started waits for the backend to serve "
                             "again (Triton restarting) before UNAVAILABLE, within its own deadline; 0 fails at "
                             "once (default: %(default)s)")
    fleet = parser.add_argument_group("fleet backend (one endpoint in front of several gateways)")
    fleet.add_argument("--upstream", action="append", default=[], metavar="ADDR",
                       help="an upstream gateway, repeatable: HOST:PORT or dns:NAME:PORT (every address of NAME), "
                            "options after ';': metrics=URL (its gateway metrics, default http://HOST:9401/metrics), "
                            "exporter=URL (its telemetry exporter, default http://HOST:9400/metrics), name=LABEL; "
                            "'none' disables a URL")
    fleet.add_argument("--policy", default="edge-first", choices=("fastest", "lowest-energy", "edge-first"),
                       help="fastest: least predicted latency; lowest-energy: least measured energy per image; "
                            "edge-first: the cheapest upstream whose predicted latency meets the request's deadline "
                            "(default: %(default)s)")
    fleet.add_argument("--latency-target", type=float, default=30.0, metavar="S",
                       help="edge-first: the latency to meet when a request has no deadline (default: %(default)s)")
    fleet.add_argument("--fleet-refresh", type=float, default=2.0, metavar="S",
                       help="seconds between health checks and metric scrapes of the upstreams (default: %(default)s)")
    fleet.add_argument("--upstream-token-file", default=None, metavar="FILE",
                       help="bearer token the upstream gateways require, read from FILE")
    fleet.add_argument("--upstream-tls-ca", default=None, metavar="PEM",
                       help="CA certificate of the upstreams: with it the router speaks TLS to them")
    fleet.add_argument("--upstream-tls-cert", default=None, metavar="PEM",
                       help="client certificate chain for upstreams that require one (with --upstream-tls-key)")
    fleet.add_argument("--upstream-tls-key", default=None, metavar="PEM", help="client private key (TLS upstreams)")
    fleet.add_argument("--upstream-tls-server-name", default=None, metavar="NAME",
                       help="name checked against the upstreams' certificates instead of their addresses")


def sampler_defaults(args: argparse.Namespace) -> dict:
    """``scheduler`` and ``steps`` for requests that name none, and the default variant.

    The flags win; else this machine's tune profile (``edgediff tune``), used only when it also chose the default
    variant (a profile from another machine is refused with a warning); else DDIM-20. A local backend short of
    memory takes its defaults from ``low_memory_defaults`` (the tune profile for its ``--max-memory`` budget, else
    the phone variant with UniPC 5); the backend chooses the same variant itself, with the reason.
    """
    if args.backend == "local" and args.variant is None:
        short = low_memory_defaults(args.model, args.max_memory)
        if short is not None:
            print(f"defaults: {short['variant']}, {short['scheduler']} {short['steps']} steps ({short['why']})",
                  file=sys.stderr)
            return {"scheduler": check_scheduler(args.scheduler or short["scheduler"], field="--scheduler"),
                    "steps": args.steps or int(short["steps"])}
    profile = None
    if args.backend != "fleet" and (args.variant is None or args.scheduler is None):
        profile = profile_defaults(args.model, warn=lambda line: print(line, file=sys.stderr))
    use = profile is not None and args.variant in (None, profile["variant"])
    if use:
        args.variant = profile["variant"]
        print(f"defaults from this machine's tune profile: {profile['variant']}, {profile['scheduler']} "
              f"{profile['steps']} steps", file=sys.stderr)
    scheduler = args.scheduler or (profile["scheduler"] if use else DDIM)
    steps = args.steps or (int(profile["steps"]) if use else 20)
    return {"scheduler": check_scheduler(scheduler, field="--scheduler"), "steps": steps}


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """The ``GatewayConfig`` the arguments describe (the token file is read here; its content is never printed)."""
    from services.gateway.auth import read_token_file
    from services.gateway.server import GatewayConfig

    check_positive("threads", args.threads)
    token = read_token_file(args.token_file) if args.token_file else None
    samplers = sampler_defaults(args)  # may set args.variant from this machine's tune profile
    config = GatewayConfig(
        **samplers,
        backend=args.backend, model=args.model, weights=args.weights, weights_seed=args.weights_seed,
        variant=args.variant, host=args.host, port=args.port, metrics_port=args.metrics_port,
        triton_url=args.triton_url, max_concurrency=args.max_concurrency, max_queue=args.max_queue,
        max_batch=args.max_batch, tls_cert=args.tls_cert, tls_key=args.tls_key, token=token, threads=args.threads,
        preload=not args.no_preload, max_memory=args.max_memory, shutdown_grace_s=args.shutdown_grace,
        health_interval_s=args.health_interval,
        max_backend_wait_s=args.max_backend_wait,
        upstreams=args.upstream, policy=args.policy, latency_target_s=args.latency_target,
        fleet_refresh_s=args.fleet_refresh,
        upstream_token=read_token_file(args.upstream_token_file) if args.upstream_token_file else None,
        upstream_tls_ca=args.upstream_tls_ca, upstream_tls_cert=args.upstream_tls_cert,
        upstream_tls_key=args.upstream_tls_key, upstream_tls_server_name=args.upstream_tls_server_name,
        max_steps=args.max_steps, default_deadline_s=args.default_deadline,
        allowed_variants=_variant_list(args.allow_variants), max_pipelines=args.max_pipelines,
    )
    config.check()
    return config


def _variant_list(text: str | None) -> list[str] | None:
    """``--allow-variants`` as a list (None when not given)."""
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until SIGTERM, SIGINT or SIGHUP; exit 0 after a graceful shutdown (``edgediff.processes``)."""
    from services.gateway.server import serve

    config = config_from_args(args)
    with hangup_means_terminate():  # the gateway finishes in-flight requests on SIGTERM and SIGINT
        return serve(config)
