"""Start services in dependency order, wait for each to be healthy, restart the ones that die, stop them all cleanly.

Each service is an ``edgediff.processes.ChildProcess``: its own process group (so a stop reaches its children:
tritonserver's Python stubs), a log file of its own, SIGTERM then SIGKILL after a grace period. It is recorded in the
state file that ``edgediff status`` and ``edgediff down`` read from another process. The services of a foreground
stack die with the supervisor (``PR_SET_PDEATHSIG`` on Linux); those of a detached stack (``services_outlive_me``)
are the one exception to that rule: they keep serving if the supervisor dies, ``edgediff status`` says so, and
``edgediff down`` stops them.
"""

from __future__ import annotations

import graphlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgediff.errors import EdgediffError
from edgediff.processes import ChildProcess, process_identity
from services.stack.health import HealthCheck
from services.stack.state import remove_state, write_state

logger = logging.getLogger(__name__)


class StackError(EdgediffError):
    """A service did not become healthy, or the stack could not be started."""


@dataclass
class ServiceSpec:
    """One long-running process of the stack.

    Attributes:
        name: Service name (the same as in ``compose.yaml``).
        argv: The command.
        health: How to tell it is up.
        port: Its main port (shown by ``status``).
        env: Extra environment variables.
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
    last_exit: int | None = None


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
    try:
        order = graphlib.TopologicalSorter({s.name: s.depends_on for s in specs}).static_order()
        return [by_name[name] for name in order]
    except graphlib.CycleError as exc:
        raise StackError(f"dependency cycle through {exc.args[1][0]}") from None


class Supervisor:
    """Runs a set of services as child processes.

    Args:
        specs: The services.
        state_dir: Where the state file and the logs go.
        max_restarts: Restarts of one service within ``restart_window_s`` before giving up on it (it is then
            reported ``failed``); restarts older than the window no longer count.
        restart_window_s: Seconds over which ``max_restarts`` is counted.
        backoff_s: Seconds before the n-th restart within the window (the last value repeats).
        meta: Extra fields for the state file (profile, model, variants...).
        services_outlive_me: The services keep running when this process dies (a detached stack); False: they get
            SIGTERM from the kernel when it dies (a foreground stack, like any worker child).
    """

    def __init__(
        self,
        specs: Sequence[ServiceSpec],
        state_dir: Path,
        *,
        max_restarts: int = 5,
        restart_window_s: float = 600.0,
        backoff_s: Sequence[float] = (1.0, 2.0, 4.0, 8.0, 16.0),
        meta: dict[str, Any] | None = None,
        services_outlive_me: bool = False,
    ) -> None:
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

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start_all(self) -> None:
        """Start every service in order, each once its dependencies are healthy.

        Raises:
            StackError: a service failed to become healthy; everything started so far is stopped again.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
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
            self._terminate(running, timeout_s)
            running.status = "stopped"
        remove_state(self.state_dir)

    # --- one service ----------------------------------------------------------------------------------------------
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
        spec = running.spec
        if running.status == "failed" or running.process is None:
            return
        code = running.process.poll()
        now = time.monotonic()
        if code is None:
            if running.status == "restarting" and spec.health.check(timeout_s=1.0):
                running.status = "healthy"
                logger.warning("%s is healthy again after restart %d", spec.name, running.restarts)
            return
        if running.next_restart_at is None:
            running.last_exit = code
            running.process.kill()  # whatever it left in its process group (orphaned stubs); reaped
            if spec.cleanup is not None:
                spec.cleanup()
            running.recent_restarts = [t for t in running.recent_restarts if now - t < self.restart_window_s]
            if len(running.recent_restarts) >= self.max_restarts:
                running.status = "failed"
                logger.error("%s died (exit %s) after %d restarts within %.0f s; giving up", spec.name, code,
                             self.max_restarts, self.restart_window_s)
                return
            delay = self.backoff_s[min(len(running.recent_restarts), len(self.backoff_s) - 1)]
            running.next_restart_at = now + delay
            running.status = "died"
            logger.warning("%s died (exit %s); restarting in %.0f s", spec.name, code, delay)
        elif now >= running.next_restart_at:
            running.restarts += 1
            running.recent_restarts.append(now)
            self._start(running)
            running.status = "restarting"

    def _terminate(self, running: _Running, timeout_s: float) -> None:
        process = running.process
        if process is None:
            return
        process.stop(grace_s=timeout_s)  # SIGTERM, grace, then SIGKILL to the group (stragglers: orphaned stubs)
        if running.spec.cleanup is not None:
            running.spec.cleanup()

    def _log_tail(self, spec: ServiceSpec, lines: int = 5) -> str:
        try:
            text = self._log_path(spec).read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    # --- state ----------------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The state file's content."""
        services = {}
        for running in self.services:
            spec = running.spec
            pid = running.process.pid if running.process else None
            services[spec.name] = {
                "pid": pid,
                "identity": process_identity(pid, spec.argv),
                "port": spec.port,
                "status": running.status,
                "restarts": running.restarts,
                "last_exit": running.last_exit,
                "health": spec.health.to_dict(),
                "log": str(self._log_path(spec)),
            }
        return {"supervisor_pid": os.getpid(), "supervisor_identity": self._identity, "runtime": "local", **self.meta,
                "services": services}

    def _write_state(self) -> None:
        with self._lock:
            write_state(self.state_dir, self.snapshot())
