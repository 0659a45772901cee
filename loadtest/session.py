"""One load test from start to verdict: the Locust plan, the run, then what it measured and whether it passed.

``edgediff loadtest`` parses its flags into a ``LoadTestConfig`` and calls ``run_load_test``; a sweep
(``loadtest.sweep``) calls it once per level. The policy lives here, not in the CLI: which images count (the
gateway's counter when its metrics were scraped, else what Locust received), where the energy comes from (the
exporter's two scrapes, else a Prometheus query, else none), and the verdict (failed when any request failed, no
image was served, or an open loop could not send its arrivals on time).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgediff.constants import (
    ENV_LOADTEST_BATCH,
    ENV_LOADTEST_ETA,
    ENV_LOADTEST_EXPORTER_URL,
    ENV_LOADTEST_GATEWAY_METRICS_URL,
    ENV_LOADTEST_RATE,
    ENV_LOADTEST_SEEDS,
    ENV_LOADTEST_STEPS,
    ENV_LOADTEST_TIMEOUT,
    ENV_LOADTEST_TOKEN,
    ENV_LOADTEST_VARIANTS,
    METRIC_GATEWAY_IMAGES_TOTAL,
)
from edgediff.errors import EdgediffError, InvalidArgumentError
from edgediff.telemetry.counters import sum_counter
from loadtest.energy import METHOD_EXPORTER, EnergyResult, energy_from_prometheus, energy_from_scrapes
from loadtest.mix import RequestMix
from loadtest.records import RunRecords, Window, read_records
from loadtest.report import build_report, write_report
from loadtest.runner import LocustPlan, LocustRun, log_tail, run_locust
from loadtest.summary import Summary, max_in_flight, read_locust_totals, summarize, timeline

logger = logging.getLogger(__name__)

EXIT_FAILED = 1


@dataclass(frozen=True)
class LoadTestConfig:
    """One load test, as parsed from the command line.

    Attributes:
        target: The gateway, ``HOST:PORT``.
        users: Closed loop: concurrent users. Open loop: the pool, i.e. the most requests in flight.
        spawn_rate: Users started per second.
        run_time_s: Load duration, whole seconds.
        out_dir: Report folder.
        rate_per_s: Open loop: Poisson arrivals per second (all processes); ``None`` for a closed loop.
        variants, steps, batch, seeds: The mix's ``value[:weight],...`` texts (``loadtest.mix``).
        eta: DDIM eta.
        timeout_s: Deadline of one Generate call, seconds.
        token: Bearer token, or ``None``.
        exporter_url: Telemetry exporter scraped at the window's edges, or ``None``.
        prometheus_url: Prometheus asked for the energy when no exporter is scraped, or ``None``.
        prometheus_wait_s: How long to wait for Prometheus to scrape past the window's end.
        gateway_metrics_url: The gateway's metrics (images served), or ``None``.
        workers: 0 for one Locust process, K for a master and K workers.
        smoke: The ``--smoke`` profile was asked for (shown in the report).
    """

    target: str
    users: int
    spawn_rate: float
    run_time_s: int
    out_dir: Path
    rate_per_s: float | None = None
    variants: str = "default"
    steps: str = "default"
    batch: str = "1"
    eta: float = 0.0
    seeds: str = "random"
    timeout_s: float = 120.0
    token: str | None = None
    exporter_url: str | None = None
    prometheus_url: str | None = None
    prometheus_wait_s: float = 30.0
    gateway_metrics_url: str | None = None
    workers: int = 0
    smoke: bool = False
    mix: RequestMix = field(init=False)

    def __post_init__(self) -> None:
        checks = [
            (self.users >= 1, f"--users must be >= 1, got {self.users}"),
            (self.spawn_rate > 0, f"--spawn-rate must be > 0, got {self.spawn_rate}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.timeout_s > 0, f"--timeout must be > 0 seconds, got {self.timeout_s}"),
            (self.run_time_s >= 1, f"--duration must be at least 1 s, got {self.run_time_s}"),
            (self.rate_per_s is None or self.rate_per_s > 0, f"--rate must be > 0 per second, got {self.rate_per_s}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(message)
        names = {"variants": "--variant", "steps": "--steps", "batch": "--batch", "eta": "--eta", "seeds": "--seeds"}
        object.__setattr__(self, "mix", RequestMix.parse(self.variants, self.steps, self.batch, self.eta, self.seeds,
                                                         names=names))

    @property
    def open_loop(self) -> bool:
        """Requests arrive at ``rate_per_s`` whatever the latency."""
        return self.rate_per_s is not None

    def plan(self) -> LocustPlan:
        """The Locust processes to run, with the mix in their environment."""
        env = {
            ENV_LOADTEST_VARIANTS: self.variants,
            ENV_LOADTEST_STEPS: self.steps,
            ENV_LOADTEST_BATCH: self.batch,
            ENV_LOADTEST_ETA: repr(self.eta),
            ENV_LOADTEST_SEEDS: self.seeds,
            ENV_LOADTEST_TIMEOUT: repr(self.timeout_s),
            ENV_LOADTEST_EXPORTER_URL: self.exporter_url or "",
            ENV_LOADTEST_GATEWAY_METRICS_URL: self.gateway_metrics_url or "",
            # each process runs its own Poisson schedule; their sum is a Poisson stream of the whole rate
            ENV_LOADTEST_RATE: repr((self.rate_per_s or 0.0) / max(1, self.workers)),
        }
        if self.token is not None:
            env[ENV_LOADTEST_TOKEN] = self.token
        return LocustPlan(target=self.target, users=self.users, spawn_rate=self.spawn_rate,
                          run_time_s=self.run_time_s, out_dir=self.out_dir.resolve(), workers=self.workers, env=env)

    def to_dict(self) -> dict[str, Any]:
        """The report's ``config`` (never the token itself)."""
        return {
            "target": self.target, "users": self.users, "spawn_rate": self.spawn_rate, "run_time_s": self.run_time_s,
            "rate_per_s": self.rate_per_s, "workers": self.workers, "smoke": self.smoke, "timeout_s": self.timeout_s,
            "mix": self.mix.to_dict(), "token": self.token is not None, "exporter": self.exporter_url,
            "prometheus": self.prometheus_url, "gateway_metrics": self.gateway_metrics_url,
        }  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """How a load test ended.

    Attributes:
        exit_code: 0 (passed), ``EXIT_FAILED`` (the verdict's reasons), or the stop signal's code.
        report: The report (``None`` when a stop signal came before the load started).
        paths: The files written (``json``, ``csv``, ``markdown``, ``timeline``).
        message: One line for stderr when it did not pass (``None`` when it did).
    """

    exit_code: int
    report: dict[str, Any] | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    message: str | None = None


def images_served(window: Window, summary: Summary, notes: list[str]) -> tuple[int, str]:
    """Images in the window and where the count comes from: the gateway's counter when scraped, else Locust's."""
    if window.gateway is None:
        return summary.images_in_window, "locust"
    first, last = (sum_counter(s.text, METRIC_GATEWAY_IMAGES_TOTAL) if s.text else None for s in window.gateway)
    if first is not None and last is not None and last >= first:
        images = round(last - first)
        if images != summary.images_in_window:
            notes.append(f"the gateway served {images} images in the window, Locust received "
                         f"{summary.images_in_window} (calls in flight at the window's edges, or other clients)")
        return images, "gateway"
    errors = [s.error for s in window.gateway if s.error]
    notes.append(f"gateway images unavailable ({'; '.join(errors) or f'no {METRIC_GATEWAY_IMAGES_TOTAL}'}); "
                 "using the images Locust received")
    return summary.images_in_window, "locust"


def measure_energy(config: LoadTestConfig, window: Window, images: int, images_source: str) -> EnergyResult:
    """Energy over the window: the exporter's two scrapes, else a Prometheus query, else unavailable."""
    if window.exporter is not None:
        return energy_from_scrapes(*window.exporter, images, images_source)
    if config.prometheus_url:
        return energy_from_prometheus(config.prometheus_url, window.start_unix_s, window.end_unix_s, images,
                                      images_source, wait_s=config.prometheus_wait_s)
    return EnergyResult(False, "no --exporter or --prometheus given", "none", None, window.start_unix_s,
                        window.end_unix_s, window.duration_s, images, images_source)


def load_section(config: LoadTestConfig, records: RunRecords) -> dict[str, Any]:
    """How the load was offered: the mode, the most calls in flight, and the open loop's arrivals."""
    arrivals = records.arrivals
    return {
        "mode": "open" if config.open_loop else "closed",
        "max_in_flight": max_in_flight(records.requests),
        "arrivals": None if arrivals is None else {
            "rate_per_s": arrivals.rate_per_s, "sent": arrivals.sent, "missed": arrivals.missed,
            "max_lag_s": arrivals.max_lag_s,
        },
    }  # fmt: skip


def verdict(summary: Summary, load: dict[str, Any]) -> dict[str, Any]:
    """``{"status": "ok"|"failed", "reasons": [...]}``: failed requests, no image, or arrivals the client missed."""
    reasons = []
    if summary.failed:
        by_status = ", ".join(f"{status} x{count}" for status, count in summary.failures_by_status.items())
        reasons.append(f"{summary.failed} of {summary.requests} requests failed ({by_status})")
    if summary.images == 0:
        reasons.append("no image was served")
    arrivals = load.get("arrivals")
    if arrivals and arrivals["missed"]:
        reasons.append(f"{arrivals['missed']} of {arrivals['sent'] + arrivals['missed']} arrivals could not be sent "
                       f"on time (all {load.get('users', 'the')} users busy, or the client short of CPU): the rate "
                       f"{arrivals['rate_per_s']:g}/s was not offered")
    return {"status": "failed" if reasons else "ok", "reasons": reasons}


def finish(config: LoadTestConfig, plan: LocustPlan, run: LocustRun) -> Outcome:
    """Read what the Locust processes wrote, decide images, energy and verdict, and write the report.

    Raises:
        EdgediffError: Locust did not run the test (no window marks), with its log's tail.
    """
    records = read_records(plan.record_dir)
    driver_log = run.logs[0]
    if records.window is None and run.interrupted is not None:  # stopped before the load started: nothing measured
        return Outcome(int(run.interrupted.exit_code),
                       message=f"{run.interrupted.reason} before the load started: no report written")
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
    images, images_source = images_served(window, summary, notes)
    energy = measure_energy(config, window, images, images_source)
    if energy.available and energy.method == METHOD_EXPORTER and summary.cancelled_at_stop:
        notes.append(f"{summary.cancelled_at_stop} calls in flight at stop were cancelled: their partial work is in "
                     "the window's energy without an image (an edge effect of about users x latency / duration)")
    load = load_section(config, records)
    judged = verdict(summary, {**load, "users": config.users})

    files = {p.name: str(p.relative_to(plan.out_dir)) for p in sorted(plan.out_dir.glob("locust_*.*"))}
    files.update({p.stem: str(p.relative_to(plan.out_dir)) for p in run.logs})
    files["records"] = str(plan.record_dir.relative_to(plan.out_dir))
    report = build_report(config=config.to_dict(), summary=summary, energy=energy, window=window, verdict=judged,
                          locust=read_locust_totals(plan.final_stats), files=files, notes=notes, load=load)
    if run.interrupted is not None:  # a stop signal cut the run short: the report covers the window that ran
        report["incomplete"] = {"reason": run.interrupted.reason, "signal": run.interrupted.signal_name,
                                "exit_code": run.interrupted.exit_code, "planned_s": config.run_time_s}
        report.setdefault("notes", []).insert(0, f"INCOMPLETE: {run.interrupted.reason} after "
                                                 f"{window.duration_s:.1f} s of a planned {config.run_time_s} s")
    paths = write_report(report, timeline(records.requests, window.start_unix_s, window.end_unix_s), plan.out_dir)
    if run.interrupted is not None:
        return Outcome(int(run.interrupted.exit_code), report, paths,
                       f"INCOMPLETE: {run.interrupted.reason}; the report covers the window that ran")
    if judged["reasons"]:
        return Outcome(EXIT_FAILED, report, paths, f"FAILED: {'; '.join(judged['reasons'])}")
    return Outcome(0, report, paths)


def run_load_test(config: LoadTestConfig) -> Outcome:
    """Run Locust for ``config`` and return the outcome (the report is written into ``config.out_dir``)."""
    plan = config.plan()
    if config.workers > config.users:
        logger.warning("--workers %d > --users %d: some workers will run no user", config.workers, config.users)
    return finish(config, plan, run_locust(plan))
