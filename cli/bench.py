"""``edgediff bench``: latency per stage, peak memory, energy per image and fidelity per variant, as a report.

Writes ``report.json`` (versioned schema), ``report.csv``, ``report.md`` (the study's Table 1 plus fidelity), PNG
plots and one sample image per variant into ``--out``, and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from cli.args import add_build_arguments, add_model_arguments, add_sampling_arguments
from edgediff.bench.report_writers import results_table, write_outputs
from edgediff.bench.runner import TelemetryOptions
from edgediff.bench.suite import BenchConfig, run_bench
from edgediff.constants import ENV_GATEWAY_TOKEN
from edgediff.errors import InvalidArgumentError
from edgediff.quality.bench_hook import make_quality_hook, quality_failed
from edgediff.secrets import redact_argv
from edgediff.variants import parse_variant_list


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff bench``."""
    add_model_arguments(parser)
    parser.add_argument("--variants", default="all", metavar="all|V,...",
                        help="variants to measure (default: all; unavailable ones are listed with the reason). "
                             "torch-fp32 always runs too: it is the reference for speedup and fidelity. "
                             "V@SCHEDULER:STEPS runs V with its own sampler and steps (openvino-fp32-dc3@dpmpp:10), "
                             "for speed at equal quality against the baseline's --scheduler and --steps")
    add_sampling_arguments(parser)
    add_build_arguments(parser)
    parser.add_argument("--warmup", type=int, default=2, help="warm-up runs per variant, not counted (default: 2)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per variant (default: %(default)s)")
    parser.add_argument("--through", nargs="+", default=["local"], metavar="WHERE",
                        help="'local' (the default: in this process) or 'gateway HOST:PORT' (through the gRPC "
                             "gateway: total latency on the client, stages from the response's timings)")
    parser.add_argument("--token-file", default=None, metavar="FILE",
                        help=f"bearer token for --through gateway, read from FILE (default: ${ENV_GATEWAY_TOKEN})")
    parser.add_argument("--token", default=None, help=argparse.SUPPRESS)  # refused: see _gateway_token
    parser.add_argument("--tls-ca", default=None, metavar="PEM", help="CA certificate of a TLS gateway")
    parser.add_argument("--tls-server-name", default=None, metavar="NAME",
                        help="name checked against the gateway's certificate instead of HOST")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                        help="measure each variant in a fresh subprocess so its peak memory (VmHWM) is its own "
                             "(default: on; --no-isolate runs all variants in this process: faster, but peak "
                             "memory then includes what earlier variants left behind)")
    parser.add_argument("--energy", action=argparse.BooleanOptionalAction, default=True,
                        help="measure energy with the sensors this machine has (default: on)")
    parser.add_argument("--idle-s", type=float, default=5.0, metavar="S",
                        help="idle baseline before loading the model, for net energy (0: none; default: %(default)s)")
    parser.add_argument("--estimated-cpu-tdp", type=float, default=None, metavar="W",
                        help="where no CPU power sensor exists, ESTIMATE CPU power as utilization x W "
                             "(labelled 'estimated' everywhere)")
    parser.add_argument("--fixture-power-watts", type=float, default=None, metavar="W", help=argparse.SUPPRESS)
    parser.add_argument("--label", default=None,
                        help="this device's name in 'edgediff compare' tables (default: the GPU, Jetson or CPU model)")
    parser.add_argument("--out", default="reports", metavar="DIR", help="output folder (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def _through(values: list[str]) -> tuple[str, str | None]:
    if values == ["local"]:
        return "local", None
    if len(values) == 2 and values[0] == "gateway":
        return "gateway", values[1]
    raise InvalidArgumentError(f"--through must be 'local' or 'gateway HOST:PORT', got {' '.join(values)!r}")


def _gateway_token(args: argparse.Namespace) -> str | None:
    """The bearer token from ``--token-file`` or the environment; a token on the command line is refused."""
    if args.token is not None:  # never echoed: the message names the flag, not its value
        raise InvalidArgumentError(f"--token would show the token in the process list and the report's command "
                                   f"line: put it in a file (--token-file FILE) or in ${ENV_GATEWAY_TOKEN}")
    from services.gateway.auth import resolve_token

    return resolve_token(args.token_file, ENV_GATEWAY_TOKEN)


def run_from_args(args: argparse.Namespace) -> int:
    """Run the bench, write the report, print the table and where the report lives."""
    through, gateway = _through(args.through)
    token = _gateway_token(args) if through == "gateway" else None
    if args.fixture_power_watts is not None:
        print(f"WARNING: --fixture-power-watts {args.fixture_power_watts}: energy is a made-up fixture number "
              "(tests only), labelled 'fixture'", file=sys.stderr)
    out = Path(args.out)
    config = BenchConfig(
        model=args.model,
        variants=parse_variant_list(args.variants),
        weights=args.weights,
        weights_seed=args.weights_seed,
        steps=args.steps,
        eta=args.eta,
        batch=args.batch,
        seed=args.seed,
        warmup=args.warmup,
        runs=args.runs,
        threads=args.threads,
        deepcache=args.deepcache,
        scheduler=args.scheduler,
        isolate=args.isolate,
        through=through,
        gateway=gateway,
        tls_ca=args.tls_ca,
        telemetry=TelemetryOptions(enabled=args.energy, idle_s=args.idle_s,
                                   estimated_cpu_tdp_w=args.estimated_cpu_tdp,
                                   fixture_power_w=args.fixture_power_watts),
        label=args.label,
        out=out,
        command=(shlex.join(redact_argv(["edgediff", *sys.argv[1:]])) if sys.argv[1:2] == ["bench"]
                 else "edgediff bench"),
    )

    remote = None
    if through == "gateway":
        from services.gateway.bench_target import GatewayTarget

        remote = GatewayTarget(gateway, token=token, tls_ca=args.tls_ca, tls_server_name=args.tls_server_name)
    try:
        report, _runs = run_bench(config, quality_fn=make_quality_hook(config), remote=remote)
    finally:
        if remote is not None:
            remote.close()  # digits: quality gate per variant
    incomplete = report.get("incomplete")  # a stop signal cut the bench short (edgediff.processes)
    if incomplete and not report["variants"]:
        print(f"edgediff bench: {incomplete['reason']} before any variant finished: no report written",
              file=sys.stderr)
        return int(incomplete["exit_code"])
    write_outputs(report, out, plots=not args.no_plots and not incomplete)
    weights = report["weights"] or {}
    print()
    if weights.get("synthetic"):
        print(f"WARNING: weights: {weights['label']}: latency, memory and energy are real; the images are noise.")
    print(results_table(report))
    for entry in report["variants"]:
        if entry["status"] != "ok":
            print(f"- {entry['name']}: {entry['status']}: {entry['reason']}")
        elif quality_failed(entry):
            print(f"- {entry['name']}: quality {entry['quality']['summary']}")
    for warning in report["warnings"]:
        if not warning.startswith("weights: synthetic"):
            print(f"WARNING: {warning}")
    print(f"\nreport: {out / 'report.md'} (also report.json, report.csv, plots, samples/)")
    return int(incomplete["exit_code"]) if incomplete else 0
