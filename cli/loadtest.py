"""``edgediff loadtest``: drive the gateway with Locust; report latency percentiles, throughput, energy per image.

Parses the flags and dispatches: one load test (``loadtest.session``: closed loop of ``--users``, or an open loop of
Poisson arrivals at ``--rate``) or a sweep over a ladder of either (``loadtest.sweep``). One load test writes into
``--out``: ``loadtest.json``, ``loadtest.csv``, ``loadtest.md``, ``loadtest_timeline.png``, Locust's own CSVs, the
per-request records and the Locust logs; a sweep writes one such folder per level plus ``sweep.json``, ``sweep.md``
and ``sweep_throughput_latency.png``. Exits 1 when any request failed, no image was served or an open loop missed
arrivals (one line says why), 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from edgediff.constants import ENV_LOADTEST_TOKEN, EXPORTER_PORT, GATEWAY_GRPC_PORT, METRIC_GATEWAY_IMAGES_TOTAL
from edgediff.errors import InvalidArgumentError
from loadtest.arrivals import DEFAULT_POOL_USERS
from loadtest.report import console_summary
from loadtest.session import LoadTestConfig, run_load_test
from loadtest.sweep import Ladder, run_sweep, sweep_line

DEFAULT_OUT = "reports/loadtest"
DEFAULTS = {"users": 4, "spawn_rate": 1.0, "duration": "60s", "steps": "default", "batch": "1"}
SMOKE = {"users": 1, "spawn_rate": 1.0, "duration": "20s", "steps": "2", "batch": "1"}
"""The ``--smoke`` profile (``make demo``): one user for 20 s at 2 steps; explicit flags still win."""

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")


def parse_duration_s(text: str) -> int:
    """``60``, ``60s``, ``2m``, ``1h30m``, ``1m30s`` -> whole seconds (>= 1).

    Raises:
        InvalidArgumentError: Anything else, naming ``--duration``.
    """
    spec = str(text).strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", spec):
        seconds = float(spec)
    else:
        parts = _DURATION_RE.findall(spec)
        if not parts or "".join(f"{n}{u}" for n, u in parts) != spec:
            raise InvalidArgumentError(f"--duration: expected e.g. 60s, 2m or 1h30m, got {text!r}")
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if round(seconds) < 1:
        raise InvalidArgumentError(f"--duration must be at least 1 s, got {text!r}")
    return round(seconds)


def metrics_url(text: str, flag: str, default_path: str = "/metrics") -> str:
    """``HOST:PORT`` or ``http://HOST:PORT[/path]`` -> a full URL (``default_path`` when none is given)."""
    url = text.strip()
    if not url:
        raise InvalidArgumentError(f"{flag}: empty URL")
    if "://" not in url:
        url = "http://" + url
    if not re.match(r"^https?://[^/:]+(:\d+)?(/.*)?$", url):
        raise InvalidArgumentError(f"{flag}: expected http://HOST:PORT[/path], got {text!r}")
    if re.match(r"^https?://[^/]+$", url):
        url += default_path
    return url


def check_target(text: str) -> str:
    """Validate ``--target HOST:PORT``."""
    match = re.fullmatch(r"(?:grpc://)?(\[[0-9a-fA-F:]+\]|[^:/\s]+):(\d+)", text.strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        raise InvalidArgumentError(f"--target: expected HOST:PORT (e.g. 127.0.0.1:{GATEWAY_GRPC_PORT}), got {text!r}")
    return f"{match.group(1)}:{match.group(2)}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff loadtest``."""
    parser.add_argument("--target", required=True, metavar="HOST:PORT",
                        help=f"the gateway's gRPC address (e.g. 127.0.0.1:{GATEWAY_GRPC_PORT})")
    parser.add_argument("--users", type=int, default=None, metavar="N",
                        help=f"concurrent users, each sending its next request when the last returns "
                             f"(default: {DEFAULTS['users']}; smoke: {SMOKE['users']}); with --rate, the most "
                             f"requests in flight (default: {DEFAULT_POOL_USERS})")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, default=None, metavar="R",
                      help="open loop: Poisson arrivals at R requests/s whatever the latency; arrivals that no "
                           "user could send on time are counted as missed")
    load.add_argument("--sweep", default=None, metavar="users=N,...|rate=R,...",
                      help="one load test of --duration per level (e.g. users=1,2,4,8 or rate=0.5,1,2): images/s, "
                           "p50/p90/p99 and failures per level, the saturation throughput (the knee) and a "
                           "throughput-latency plot")
    parser.add_argument("--spawn-rate", type=float, default=None, metavar="R",
                        help=f"users started per second (default: {DEFAULTS['spawn_rate']:g})")
    parser.add_argument("--duration", default=None, metavar="DURATION",
                        help=f"load duration: 60s, 2m, 1h30m (default: {DEFAULTS['duration']}; "
                             f"smoke: {SMOKE['duration']})")
    parser.add_argument("--variant", default="default", metavar="V[:W],...",
                        help="variants to request, optionally weighted: onnx-fp32:3,torch-fp32:1 "
                             "(default: the server's default variant)")
    parser.add_argument("--steps", default=None, metavar="S[:W],...",
                        help="steps, optionally weighted; 'default' sends none and the server applies its own "
                             f"steps and sampler (its tune profile's) (default: {DEFAULTS['steps']}; smoke: "
                             f"{SMOKE['steps']})")
    parser.add_argument("--batch", default=None, metavar="B[:W],...",
                        help=f"images per request, optionally weighted (default: {DEFAULTS['batch']})")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta in 0..1 (default: %(default)s)")
    parser.add_argument("--seeds", default="random", metavar="SPEC",
                        help="seed of each request: random, N, or a range A-B (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S",
                        help="deadline of one Generate call, seconds (default: %(default)s)")
    parser.add_argument("--token-file", default=None, metavar="FILE",
                        help=f"bearer token for a gateway started with --token-file (default: ${ENV_LOADTEST_TOKEN})")
    energy = parser.add_mutually_exclusive_group()
    energy.add_argument("--exporter", default=None, metavar="URL",
                        help=f"telemetry exporter, scraped when the load starts and ends "
                             f"(e.g. http://127.0.0.1:{EXPORTER_PORT}/metrics)")
    energy.add_argument("--prometheus", default=None, metavar="URL",
                        help="Prometheus that scrapes the exporter: increase() over the run's exact window "
                             "(e.g. http://127.0.0.1:9090)")
    parser.add_argument("--prometheus-wait", type=float, default=30.0, metavar="S",
                        help="how long to wait for Prometheus to scrape past the window's end (default: %(default)s)")
    parser.add_argument("--gateway-metrics", default=None, metavar="URL",
                        help="the gateway's metrics URL: images served = increase of "
                             f"{METRIC_GATEWAY_IMAGES_TOTAL} over the window (default: images counted by Locust)")
    parser.add_argument("--workers", type=int, default=0, metavar="K",
                        help="distributed Locust: a master and K worker processes on this machine (default: 0 = "
                             "one process)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help="report folder (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"short profile for demos: {SMOKE['users']} user, {SMOKE['duration']}, "
                             f"{SMOKE['steps']} steps (explicit flags win)")


def _resolved(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name)
    if value is not None:
        return value
    return (SMOKE if args.smoke else DEFAULTS)[name]


def _token(args: argparse.Namespace) -> str | None:
    if not args.token_file:
        return None
    from services.gateway.auth import read_token_file

    return read_token_file(args.token_file)


def _config(args: argparse.Namespace, open_loop: bool) -> LoadTestConfig:
    users = args.users if args.users is not None else DEFAULT_POOL_USERS if open_loop else _resolved(args, "users")
    spawn_rate = args.spawn_rate if args.spawn_rate is not None else float(users) if open_loop else \
        _resolved(args, "spawn_rate")
    return LoadTestConfig(
        target=check_target(args.target), users=int(users), spawn_rate=float(spawn_rate),
        run_time_s=parse_duration_s(_resolved(args, "duration")), out_dir=Path(args.out).resolve(),
        rate_per_s=args.rate, variants=args.variant, steps=str(_resolved(args, "steps")),
        batch=str(_resolved(args, "batch")), eta=args.eta, seeds=args.seeds, timeout_s=args.timeout,
        token=_token(args), exporter_url=metrics_url(args.exporter, "--exporter") if args.exporter else None,
        prometheus_url=metrics_url(args.prometheus, "--prometheus", default_path="") if args.prometheus else None,
        prometheus_wait_s=args.prometheus_wait,
        gateway_metrics_url=metrics_url(args.gateway_metrics, "--gateway-metrics") if args.gateway_metrics else None,
        workers=args.workers, smoke=bool(args.smoke),
    )  # fmt: skip


def run_from_args(args: argparse.Namespace) -> int:
    """Run the load test (or the sweep) and write the report; 0 when it passed."""
    ladder = Ladder.parse(args.sweep) if args.sweep else None
    if ladder is not None and ladder.kind == "users" and args.users is not None:
        raise InvalidArgumentError("--users conflicts with --sweep users=...: the sweep sets the users of each level")
    config = _config(args, open_loop=args.rate is not None or (ladder is not None and ladder.kind == "rate"))
    if ladder is not None:
        print(f"edgediff loadtest: sweep {ladder.kind} over {', '.join(f'{v:g}' for v in ladder.levels)} on "
              f"{config.target}, {config.run_time_s} s per level; report in {config.out_dir}", file=sys.stderr)
        result = run_sweep(config, ladder, on_level=lambda row: print(sweep_line(row), flush=True))
        print(f"sweep: {result.paths['markdown']} (plot {result.paths['plot'].name})")
        knee = result.sweep["knee"]
        if knee["saturation_images_per_s"] is not None:
            print(f"saturation {knee['saturation_images_per_s']:.3f} images/s, knee at {knee['knee_label']}"
                  + (f" ({knee['note']})" if knee.get("note") else ""))
        return result.exit_code
    load = f"Poisson arrivals at {config.rate_per_s:g}/s (at most {config.users} in flight)" if config.open_loop \
        else f"{config.users} user{'s' if config.users != 1 else ''}"
    print(f"edgediff loadtest: {load} on {config.target} for {config.run_time_s} s"
          f"{f' (Locust master + {config.workers} workers)' if config.workers else ''}; report in {config.out_dir}",
          file=sys.stderr)
    outcome = run_load_test(config)
    if outcome.report is not None:
        print("\n".join(console_summary(outcome.report, outcome.paths)))
    if outcome.message:
        print(f"edgediff loadtest: {outcome.message}", file=sys.stderr)
    return outcome.exit_code
