"""Run Locust headless over ``locustfile.py``: one process, or Locust's own master and K worker processes.

Every process is started with the same environment (the request mix and the record folder as ``EDGEDIFF_LOADTEST_*``
variables), logs to its own file, and is stopped within bounded timeouts: SIGTERM (Locust then writes its CSVs and
our records) and SIGKILL after a grace period. No process outlives ``run_locust``, nor, on Linux, this process
(``edgediff.processes``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgediff.constants import DEFAULT_HOST, ENV_LOADTEST_RECORD_DIR
from edgediff.processes import ChildProcess, Interrupted
from services.healthcheck import free_port

logger = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
REPO_ROOT = Path(__file__).resolve().parent.parent
CSV_PREFIX = "locust"
FINAL_STATS = "locust_final"
"""Locust's ``--json-file``: its final stats, written at exit (its CSVs are snapshots taken every second)."""
RECORD_DIR = "records"
LOG_DIR = "logs"
TERM_GRACE_S = 15.0


@dataclass(frozen=True)
class LocustPlan:
    """What to run.

    Attributes:
        target: The gateway, ``HOST:PORT``.
        users: Concurrent users (each sends its next request when the previous one returns).
        spawn_rate: Users started per second.
        run_time_s: Load duration, whole seconds (Locust's ``-t``).
        out_dir: Where Locust's CSVs, the records and the logs go.
        workers: 0 for one local process, K for a master and K worker processes.
        env: Extra environment variables for every Locust process (the request mix).
        start_timeout_s: How long the master waits for its workers to connect.
        stop_timeout_s: How long after ``run_time_s`` (and start-up) a process may take to exit before SIGTERM.
    """

    target: str
    users: int
    spawn_rate: float
    run_time_s: int
    out_dir: Path
    workers: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 60.0

    @property
    def csv_prefix(self) -> Path:
        """Locust's ``--csv`` prefix (``<prefix>_stats.csv``, ``_stats_history.csv``, ``_failures.csv``...)."""
        return self.out_dir / CSV_PREFIX

    @property
    def final_stats(self) -> Path:
        """Locust's final stats as JSON (``--json-file``)."""
        return self.out_dir / f"{FINAL_STATS}.json"

    @property
    def record_dir(self) -> Path:
        """Where the locustfile writes its records and window marks."""
        return self.out_dir / RECORD_DIR

    @property
    def log_dir(self) -> Path:
        """One log file per Locust process."""
        return self.out_dir / LOG_DIR


@dataclass(frozen=True)
class LocustRun:
    """How the Locust processes ended.

    Attributes:
        returncode: Exit code of the local or master process (Locust exits 1 when any request failed).
        worker_returncodes: Exit codes of the workers (empty for a local run).
        timed_out: True when a process had to be stopped by a signal.
        wall_s: From the first start to the last exit, seconds.
        logs: The log files.
        interrupted: The stop signal that cut the run short (``edgediff.processes.Interrupted``), or None.
    """

    returncode: int
    worker_returncodes: list[int]
    timed_out: bool
    wall_s: float
    logs: list[Path]
    interrupted: Any = None


def locust_command(plan: LocustPlan, role: str, master_port: int | None = None) -> list[str]:
    """The command line of one Locust process; ``role`` is ``local``, ``master`` or ``worker``."""
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "INFO"]
    if role == "worker":
        return [*command, "--worker", "--master-host", DEFAULT_HOST, "--master-port", str(master_port)]
    command += [
        "--headless", "--host", plan.target, "--users", str(plan.users), "--spawn-rate", f"{plan.spawn_rate:g}",
        "--run-time", f"{plan.run_time_s}s", "--csv", str(plan.csv_prefix), "--csv-full-history", "--only-summary",
        "--exit-code-on-error", "1", "--json-file", str(plan.final_stats.with_suffix("")),
    ]  # fmt: skip
    if role == "master":
        command += [
            "--master", "--master-bind-host", DEFAULT_HOST, "--master-bind-port", str(master_port),
            "--expect-workers", str(plan.workers), "--expect-workers-max-wait", f"{plan.start_timeout_s:g}",
        ]  # fmt: skip
    return command


def locust_environment(plan: LocustPlan) -> dict[str, str]:
    """The environment of every Locust process: ours, the plan's variables, and the repository on the path."""
    env = dict(os.environ)
    env.update(plan.env)
    env[ENV_LOADTEST_RECORD_DIR] = str(plan.record_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_locust(plan: LocustPlan) -> LocustRun:
    """Run Locust to completion (or to its time limit) and return how each process ended.

    Each Locust process is an ``edgediff.processes.ChildProcess``: it dies with this process on Linux, and a stop
    signal to this process is passed on as SIGTERM (Locust then ends the test, writes its CSVs and our records).
    The run then returns normally with ``interrupted`` set, so the caller reports the window that ran.
    """
    if not plan.out_dir.is_absolute():  # the processes run inside out_dir
        plan = dataclasses.replace(plan, out_dir=plan.out_dir.resolve())
    for folder in (plan.out_dir, plan.record_dir, plan.log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for stale in plan.record_dir.glob("*.json"):
        stale.unlink()
    env = locust_environment(plan)
    roles = ["master"] + [f"worker-{i}" for i in range(plan.workers)] if plan.workers else ["local"]
    master_port = free_port() if plan.workers else None
    processes: dict[str, ChildProcess] = {}
    logs: list[Path] = []
    timed_out = False
    interrupted: Interrupted | None = None
    started_s = time.monotonic()
    try:
        try:
            for role in roles:
                log_path = plan.log_dir / f"locust-{role}.log"
                logs.append(log_path)
                command = locust_command(plan, role.split("-")[0], master_port)
                with log_path.open("wb") as log:
                    processes[role] = ChildProcess(command, name=f"locust {role}", stdout=log,
                                                   stderr=subprocess.STDOUT, env=env, cwd=plan.out_dir,
                                                   grace_s=TERM_GRACE_S)
                logger.info("started locust %s (pid %d)", role, processes[role].pid)
            driver = processes[roles[0]]
            limit_s = plan.run_time_s + plan.stop_timeout_s + (plan.start_timeout_s if plan.workers else 0.0)
            if driver.wait(limit_s) is None:
                logger.error("locust %s still running %.0f s after start; stopping it", roles[0], limit_s)
                timed_out = driver.stop() or timed_out
            for role in roles[1:]:  # workers quit when the master tells them; give them the grace period
                if processes[role].wait(TERM_GRACE_S) is None:
                    timed_out = processes[role].stop() or timed_out
        except Interrupted as exc:  # the processes already got SIGTERM: let them write what they measured
            interrupted = exc
            logger.warning("%s: stopping Locust; the report covers the window that ran", exc.reason)
    finally:
        for process in processes.values():
            if interrupted is not None and process.wait(TERM_GRACE_S) is None:  # no second SIGTERM to Locust
                timed_out = True
                process.kill()
            timed_out = process.stop() or timed_out
    return LocustRun(
        returncode=int(processes[roles[0]].returncode) if roles[0] in processes else -1,
        worker_returncodes=[int(processes[r].returncode) for r in roles[1:] if r in processes],
        timed_out=timed_out,
        wall_s=time.monotonic() - started_s,
        logs=logs,
        interrupted=interrupted,
    )


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
