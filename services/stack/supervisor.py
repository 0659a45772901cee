"""Start services in dependency order, wait for each to be healthy, restart the ones that die, stop them all cleanly.

Each service is an ``edgediff.processes.ChildProcess`` (its own process group, so a stop reaches tritonserver's
Python stubs; a log file of its own), recorded in the state file that ``edgediff status`` and ``down`` read from
another process. A foreground stack's services die with the supervisor (``PR_SET_PDEATHSIG``); a detached stack's
(``services_outlive_me``) keep serving if it dies: ``edgediff status`` says so, ``edgediff down`` stops them.
"""

from __future__ import annotations

import graphlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgediff.errors import EdgediffError
from edgediff.processes import ChildProcess, process_identity
from services.healthcheck import Unhealthy, check_grpc, check_http, check_tcp
from services.stack.state import remove_state, write_state

logger = logging.getLogger(__name__)


class StackError(EdgediffError):
    """A service did not become healthy, or the stack could not be started."""


@dataclass(frozen=True)
class HealthCheck:
    """How to ask a service whether it is healthy; kept in the state file, so ``edgediff status`` can ask too.

    Attributes:
        kind: ``http`` (a GET that must answer 2xx), ``grpc`` (grpc.health.v1 ``Check`` must say SERVING) or ``tcp``
            (a connection opens): the probes of ``services.healthcheck``, which the containers' healthchecks run.
        target: The URL (http) or ``host:port`` (grpc, tcp).
    """

    kind: Literal["http", "grpc", "tcp"]
    target: str

    def check(self, timeout_s: float = 2.0) -> bool:
        """True when the service answers healthy within ``timeout_s``."""
        try:
            {"http": check_http, "grpc": check_grpc, "tcp": check_tcp}[self.kind](self.target, timeout_s=timeout_s)
        except Unhealthy:
            return False
        return True


@dataclass
class ServiceSpec:
    """One long-running process of the stack, named as in ``compose.yaml``.

    Attributes:
        port: Its main port (shown by ``status``).
        env: Environment variables added to this process's.
        depends_on: Services that must be healthy first.
        startup_timeout_s: How long to wait for health after a start.
        cleanup: Called after the process stopped (e.g. removes its shared-memory regions).
    """

    name: str
    argv: Sequence[str]
    health: HealthCheck
    port: int
    env: dict[str, str] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    startup_timeout_s: float = 120.0
    cleanup: Callable[[], None] | None = None


@dataclass
class _Running:
    spec: ServiceSpec
    process: ChildProcess | None = None
    restarts: int = 0
    recent_restarts: list[float] = field(default_factory=list)
    status: str = "starting"
    next_restart_at: float | None = None


def dependency_order(specs: Sequence[ServiceSpec]) -> list[ServiceSpec]:
    """Specs sorted so that every service comes after those it depends on.

    Raises:
        StackError: on an unknown dependency or a cycle.
    """
    by_name = {s.name: s for s in specs}
    for spec in specs:
        for dep in spec.depends_on:
            if dep not in by_name:
                raise StackError(f"{spec.name} depends on unknown service {dep}")
    sorter = graphlib.TopologicalSorter({s.name: s.depends_on for s in specs})
    try:
        return [by_name[name] for name in sorter.static_order()]
    except graphlib.CycleError as exc:
        raise StackError(f"dependency cycle through {exc.args[1][0]}") from None


class Supervisor:
    """Runs a set of services as child processes.

    Args:
        specs: The services, in any order.
        state_dir: Where the state file and the logs go.
        max_restarts: Restarts of one service within ``restart_window_s`` seconds before it is given up (``failed``).
        restart_window_s: Restarts older than this many seconds no longer count.
        backoff_s: Seconds before the n-th restart within the window (the last value repeats).
        meta: Extra fields for the state file (profile, model, variants...).
        services_outlive_me: The services keep running when this process dies (a detached stack); False: they get
            SIGTERM from the kernel when it dies (a foreground stack, like any worker child).
    """

    def __init__(self, specs: Sequence[ServiceSpec], state_dir: Path, *, max_restarts: int = 5,
                 restart_window_s: float = 600.0, backoff_s: Sequence[float] = (1.0, 2.0, 4.0, 8.0, 16.0),
                 meta: dict[str, Any] | None = None, services_outlive_me: bool = False) -> None:
        self.services = [_Running(spec) for spec in dependency_order(specs)]
        self.state_dir = Path(state_dir)
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.backoff_s = tuple(backoff_s)
        self.meta = dict(meta or {})
        self.services_outlive_me = services_outlive_me
        self._identity = process_identity(os.getpid())
        self._stop_requested = False
        self._lock = threading.Lock()

    def start_all(self) -> None:
        """Start every service in order, each once its dependencies are healthy.

        Raises:
            StackError: a service failed to become healthy; everything started so far is stopped again.
        """
        try:
            for running in self.services:
                self._start(running)
                self._wait_healthy(running)
        except BaseException:
            self.stop_all()
            raise

    def run(self, poll_s: float = 0.5) -> None:
        """Watch the services until ``request_stop()``; restart the ones that die, with bounded back-off."""
        while not self._stop_requested:
            for running in self.services:
                self._watch(running)
            self._write_state()
            time.sleep(poll_s)

    def request_stop(self) -> None:
        """Ask ``run()`` to return within one poll: sets a flag, takes no lock (safe in a signal handler)."""
        self._stop_requested = True

    def stop_all(self, timeout_s: float = 30.0) -> None:
        """Stop every service in reverse order (SIGTERM to its process group, then SIGKILL) and remove the state."""
        for running in reversed(self.services):
            if running.process is not None:
                running.process.stop(grace_s=timeout_s)  # SIGKILL to the group too: stragglers, orphaned stubs
                self._cleanup(running)
            running.status = "stopped"
        remove_state(self.state_dir)

    def _log_path(self, spec: ServiceSpec) -> Path:
        return self.state_dir / "logs" / f"{spec.name}.log"

    def _start(self, running: _Running) -> None:
        spec = running.spec
        log_path = self._log_path(spec)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            log.write(f"\n--- edgediff up: starting {spec.name}: {' '.join(spec.argv)}\n".encode())
            log.flush()
            running.process = ChildProcess(
                list(spec.argv), name=spec.name, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **spec.env},
                dies_with_parent=not self.services_outlive_me,
            )
        running.status = "starting"
        running.next_restart_at = None
        logger.info("started %s (pid %d)", spec.name, running.process.pid)
        self._write_state()

    def _wait_healthy(self, running: _Running) -> None:
        spec = running.spec
        deadline = time.monotonic() + spec.startup_timeout_s
        while time.monotonic() < deadline:
            assert running.process is not None
            code = running.process.poll()
            if code is not None:
                raise StackError(f"{spec.name} exited with code {code} while starting; log: {self._log_tail(spec)}")
            if spec.health.check():
                running.status = "healthy"
                self._write_state()
                print(f"  {spec.name:<10} healthy  pid {running.process.pid:<7} port {spec.port}", flush=True)
                return
            time.sleep(0.5)
        raise StackError(f"{spec.name} was not healthy after {spec.startup_timeout_s:.0f} s; "
                         f"log: {self._log_tail(spec)}")

    def _watch(self, running: _Running) -> None:
        spec, now = running.spec, time.monotonic()
        if running.status == "failed" or running.process is None:
            return
        code = running.process.poll()
        if code is None:
            if running.status == "restarting" and spec.health.check(timeout_s=1.0):
                running.status = "healthy"
                logger.warning("%s is healthy again after restart %d", spec.name, running.restarts)
        elif running.next_restart_at is None:  # it has just died
            running.process.kill()  # whatever it left in its process group (orphaned stubs); reaped
            self._cleanup(running)
            running.recent_restarts = [t for t in running.recent_restarts if now - t < self.restart_window_s]
            if len(running.recent_restarts) >= self.max_restarts:
                running.status = "failed"
                logger.error("%s died (exit %s) after %d restarts within %.0f s; giving up", spec.name, code,
                             self.max_restarts, self.restart_window_s)
            else:
                delay = self.backoff_s[min(len(running.recent_restarts), len(self.backoff_s) - 1)]
                running.next_restart_at, running.status = now + delay, "died"
                logger.warning("%s died (exit %s); restarting in %.0f s", spec.name, code, delay)
        elif now >= running.next_restart_at:
            running.restarts += 1
            running.recent_restarts.append(now)
            self._start(running)
            running.status = "restarting"

    @staticmethod
    def _cleanup(running: _Running) -> None:
        if running.spec.cleanup is not None:
            running.spec.cleanup()

    def _log_tail(self, spec: ServiceSpec, lines: int = 5) -> str:
        try:
            text = self._log_path(spec).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    def _write_state(self) -> None:
        services = {}
        for running in self.services:
            spec, pid = running.spec, running.process.pid if running.process else None
            services[spec.name] = {"pid": pid, "identity": process_identity(pid, spec.argv), "port": spec.port,
                                   "status": running.status, "restarts": running.restarts,
                                   "health": asdict(spec.health), "log": str(self._log_path(spec))}
        with self._lock:
            write_state(self.state_dir, {"supervisor_pid": os.getpid(), "supervisor_identity": self._identity,
                                         "runtime": "local", **self.meta, "services": services})
