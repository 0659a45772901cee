"""``edgediff loadtest``: drive the gateway with Locust; report latency percentiles, throughput, energy per image.

Runs Locust headless over ``loadtest/locustfile.py`` (one process, or Locust's master and ``--workers K`` worker
processes on this machine), then writes into ``--out``: ``loadtest.json``, ``loadtest.csv``, ``loadtest.md``,
``loadtest_timeline.png``, Locust's own CSVs (``locust_stats.csv``, ``locust_stats_history.csv``,
``locust_failures.csv``...), the per-request records and the Locust logs. Exits 1 when any request failed or no
image was served (one line says why), 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgediff.constants import (
    ENV_LOADTEST_BATCH,
    ENV_LOADTEST_ETA,
    ENV_LOADTEST_EXPORTER_URL,
    ENV_LOADTEST_GATEWAY_METRICS_URL,
    ENV_LOADTEST_SEEDS,
    ENV_LOADTEST_STEPS,
    ENV_LOADTEST_TIMEOUT,
    ENV_LOADTEST_TOKEN,
    ENV_LOADTEST_VARIANTS,
    EXPORTER_PORT,
    GATEWAY_GRPC_PORT,
    METRIC_GATEWAY_IMAGES_TOTAL,
)
from edgediff.errors import EdgediffError, InvalidArgumentError
from loadtest.mix import RequestMix
from loadtest.runner import LocustPlan, log_tail, run_locust

if TYPE_CHECKING:
    from loadtest.runner import LocustPlan, LocustRun

logger = logging.getLogger(__name__)

DEFAULT_OUT = "reports/loadtest"
DEFAULTS = {"users": 4, "spawn_rate": 1.0, "duration": "60s", "steps": "20", "batch": "1"}
SMOKE = {"users": 1, "spawn_rate": 1.0, "duration": "20s", "steps": "2", "batch": "1"}
"""The ``--smoke`` profile (``make demo``): one user for 20 s at 2 steps; explicit flags still win."""
EXIT_FAILED = 1

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
                             f"(default: {DEFAULTS['users']}; smoke: {SMOKE['users']})")
    parser.add_argument("--spawn-rate", type=float, default=None, metavar="R",
                        help=f"users started per second (default: {DEFAULTS['spawn_rate']:g})")
    parser.add_argument("--duration", default=None, metavar="DURATION",
                        help=f"load duration: 60s, 2m, 1h30m (default: {DEFAULTS['duration']}; "
                             f"smoke: {SMOKE['duration']})")
    parser.add_argument("--variant", default="default", metavar="V[:W],...",
                        help="variants to request, optionally weighted: onnx-fp32:3,torch-fp32:1 "
                             "(default: the server's default variant)")
    parser.add_argument("--steps", default=None, metavar="S[:W],...",
                        help=f"DDIM steps, optionally weighted (default: {DEFAULTS['steps']}; smoke: {SMOKE['steps']})")
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


def run_from_args(args: argparse.Namespace) -> int:
    """Run the load test and write the report; 0 when every request succeeded and images were served."""
    target = check_target(args.target)
    users, spawn_rate = int(_resolved(args, "users")), float(_resolved(args, "spawn_rate"))
    if users < 1:
        raise InvalidArgumentError(f"--users must be >= 1, got {users}")
    if not spawn_rate > 0:
        raise InvalidArgumentError(f"--spawn-rate must be > 0, got {spawn_rate}")
    if args.workers < 0:
        raise InvalidArgumentError(f"--workers must be >= 0, got {args.workers}")
    if not args.timeout > 0:
        raise InvalidArgumentError(f"--timeout must be > 0 seconds, got {args.timeout}")
    run_time_s = parse_duration_s(_resolved(args, "duration"))
    steps, batch = str(_resolved(args, "steps")), str(_resolved(args, "batch"))
    names = {"variants": "--variant", "steps": "--steps", "batch": "--batch", "eta": "--eta", "seeds": "--seeds"}
    mix = RequestMix.parse(args.variant, steps, batch, args.eta, args.seeds, names=names)
    exporter_url = metrics_url(args.exporter, "--exporter") if args.exporter else None
    prometheus_url = metrics_url(args.prometheus, "--prometheus", default_path="") if args.prometheus else None
    gateway_url = metrics_url(args.gateway_metrics, "--gateway-metrics") if args.gateway_metrics else None
    token = _token(args)
    out_dir = Path(args.out).resolve()

    env = {
        ENV_LOADTEST_VARIANTS: args.variant,
        ENV_LOADTEST_STEPS: steps,
        ENV_LOADTEST_BATCH: batch,
        ENV_LOADTEST_ETA: repr(args.eta),
        ENV_LOADTEST_SEEDS: args.seeds,
        ENV_LOADTEST_TIMEOUT: repr(args.timeout),
        ENV_LOADTEST_EXPORTER_URL: exporter_url or "",
        ENV_LOADTEST_GATEWAY_METRICS_URL: gateway_url or "",
    }
    if token is not None:
        env[ENV_LOADTEST_TOKEN] = token
    plan = LocustPlan(target=target, users=users, spawn_rate=spawn_rate, run_time_s=run_time_s, out_dir=out_dir,
                      workers=args.workers, env=env)
    if args.workers > users:
        logger.warning("--workers %d > --users %d: some workers will run no user", args.workers, users)
    print(f"edgediff loadtest: {users} user{'s' if users != 1 else ''} on {target} for {run_time_s} s"
          f"{f' (Locust master + {args.workers} workers)' if args.workers else ''}; report in {out_dir}",
          file=sys.stderr)
    run = run_locust(plan)

    config = {
        "target": target, "users": users, "spawn_rate": spawn_rate, "run_time_s": run_time_s,
        "workers": args.workers, "smoke": bool(args.smoke), "timeout_s": args.timeout, "mix": mix.to_dict(),
        "token": token is not None, "exporter": exporter_url, "prometheus": prometheus_url,
        "gateway_metrics": gateway_url,
    }  # fmt: skip
    return finish(plan, run, config, prometheus_url=prometheus_url, prometheus_wait_s=args.prometheus_wait)


def finish(plan: LocustPlan, run: LocustRun, config: dict[str, Any], *, prometheus_url: str | None = None,
           prometheus_wait_s: float = 30.0) -> int:
    """Read what the Locust processes wrote, write the report, print a summary; return the exit code.

    Args:
        plan: What ran.
        run: How the Locust processes ended.
        config: The run's configuration for the report.
        prometheus_url: Prometheus to query for the energy when no exporter was scraped.
        prometheus_wait_s: How long to wait for Prometheus to scrape past the window's end.
    """
    from loadtest.energy import (
        METHOD_EXPORTER,
        EnergyResult,
        energy_from_prometheus,
        energy_from_scrapes,
        sum_counter,
    )
    from loadtest.records import read_records
    from loadtest.report import build_report, write_report
    from loadtest.summary import read_locust_totals, summarize, timeline

    records = read_records(plan.record_dir)
    driver_log = run.logs[0]
    if records.window is None and run.interrupted is not None:  # stopped before the load started: nothing measured
        print(f"edgediff loadtest: {run.interrupted.reason} before the load started: no report written",
              file=sys.stderr)
        return int(run.interrupted.exit_code)
    if records.window is None:
        tail = log_tail(driver_log)
        raise EdgediffError(f"Locust did not run the test (no window marks; exit code {run.returncode}); "
                            f"see {driver_log}" + (f"\n{tail}" if tail else ""))
    window = records.window
    notes: list[str] = []
    expected_files = plan.workers or 1
    if len(records.files) != expected_files:
        notes.append(f"{len(records.files)} of {expected_files} Locust processes wrote their records (see the logs)")
    if run.timed_out:
        notes.append("a Locust process had to be stopped by a signal (see the logs)")
    if any(code not in (0, 1) for code in [run.returncode, *run.worker_returncodes]):
        notes.append(f"Locust exit codes: {[run.returncode, *run.worker_returncodes]} (2: an error in an event "
                     "handler or the locustfile; see the logs)")
    summary = summarize(records.requests, window.start_unix_s, window.end_unix_s, records.cancelled)

    images, images_source = summary.images_in_window, "locust"
    if window.gateway is not None:
        first, last = (sum_counter(s.text, METRIC_GATEWAY_IMAGES_TOTAL) if s.text else None for s in window.gateway)
        if first is not None and last is not None and last >= first:
            images, images_source = round(last - first), "gateway"
            if images != summary.images_in_window:
                notes.append(f"the gateway served {images} images in the window, Locust received "
                             f"{summary.images_in_window} (calls in flight at the window's edges, or other clients)")
        else:
            errors = [s.error for s in window.gateway if s.error]
            notes.append(f"gateway images unavailable ({'; '.join(errors) or f'no {METRIC_GATEWAY_IMAGES_TOTAL}'}); "
                         "using the images Locust received")
    if window.exporter is not None:
        energy = energy_from_scrapes(*window.exporter, images, images_source)
    elif prometheus_url:
        energy = energy_from_prometheus(prometheus_url, window.start_unix_s, window.end_unix_s, images,
                                        images_source, wait_s=prometheus_wait_s)
    else:
        energy = EnergyResult(False, "no --exporter or --prometheus given", "none", None, window.start_unix_s,
                              window.end_unix_s, window.duration_s, images, images_source)
    if energy.available and energy.method == METHOD_EXPORTER and summary.cancelled_at_stop:
        notes.append(f"{summary.cancelled_at_stop} calls in flight at stop were cancelled: their partial work is in "
                     "the window's energy without an image (an edge effect of about users x latency / duration)")

    reasons = []
    if summary.failed:
        by_status = ", ".join(f"{status} x{count}" for status, count in summary.failures_by_status.items())
        reasons.append(f"{summary.failed} of {summary.requests} requests failed ({by_status})")
    if summary.images == 0:
        reasons.append("no image was served")
    verdict = {"status": "failed" if reasons else "ok", "reasons": reasons}

    files = {p.name: str(p.relative_to(plan.out_dir)) for p in sorted(plan.out_dir.glob("locust_*.*"))}
    files.update({p.stem: str(p.relative_to(plan.out_dir)) for p in run.logs})
    files["records"] = str(plan.record_dir.relative_to(plan.out_dir))
    report = build_report(config=config, summary=summary, energy=energy, window=window, verdict=verdict,
                          locust=read_locust_totals(plan.final_stats), files=files, notes=notes)
    if run.interrupted is not None:  # a stop signal cut the run short: the report covers the window that ran
        report["incomplete"] = {"reason": run.interrupted.reason, "signal": run.interrupted.signal_name,
                                "exit_code": run.interrupted.exit_code, "planned_s": config.get("run_time_s")}
        report.setdefault("notes", []).insert(0, f"INCOMPLETE: {run.interrupted.reason} after "
                                                 f"{window.duration_s:.1f} s of a planned {config.get('run_time_s')} s")
    paths = write_report(report, timeline(records.requests, window.start_unix_s, window.end_unix_s), plan.out_dir)
    _print_summary(report, paths)
    if run.interrupted is not None:
        print(f"edgediff loadtest: INCOMPLETE: {run.interrupted.reason}; the report covers the window that ran",
              file=sys.stderr)
        return int(run.interrupted.exit_code)
    if reasons:
        print(f"edgediff loadtest: FAILED: {'; '.join(reasons)}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _print_summary(report: dict[str, Any], paths: dict[str, Path]) -> None:
    req, energy = report["requests"], report["energy"]
    lat = req["latency"] or {}

    def ms(key: str) -> str:
        return f"{lat[key] * 1000:.1f}" if key in lat else "-"

    print(f"requests {req['requests']} (failed {req['failed']}, cancelled at stop {req['cancelled_at_stop']}), "
          f"images {req['images']}, {req['images_per_s']:.2f} images/s over {req['window_s']:.1f} s")
    print(f"latency ms: p50 {ms('p50_s')}  p90 {ms('p90_s')}  p95 {ms('p95_s')}  p99 {ms('p99_s')}  max {ms('max_s')}")
    if not energy["available"]:
        print(f"energy per image: unavailable: {energy['reason']}")
    for d in energy["domains"]:
        net = f"{d['net_energy_per_image_j']:.4f} J net" if d["net_energy_per_image_j"] is not None \
            else "net unavailable"
        gross = f"{d['energy_per_image_j']:.4f} J" if d["energy_per_image_j"] is not None else "-"
        print(f"energy per image [{d['domain']}/{d['source']}, {d['label']}]: {gross} gross, {net}")
    print(f"report: {paths['markdown']}")
