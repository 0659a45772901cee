"""The telemetry exporter process: discover sensors, sample them, serve Prometheus metrics until SIGTERM/SIGINT.

``run_exporter(...)`` is the whole process; ``edgediff exporter`` (``cli/exporter.py``) parses its arguments.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server

from edgediff.constants import DEFAULT_HOST, EXPORTER_PORT
from edgediff.errors import InvalidArgumentError
from edgediff.telemetry.window import DEFAULT_INTERVAL_S, EnergyMonitor
from services.telemetry_exporter.collector import TelemetryCollector

logger = logging.getLogger(__name__)


def run_exporter(
    host: str = DEFAULT_HOST,
    port: int = EXPORTER_PORT,
    interval_s: float = DEFAULT_INTERVAL_S,
    root: str | Path = "/",
    *,
    idle_seconds: float = 0.0,
    tegrastats_command: Sequence[str] | None = ("tegrastats",),
    tegrastats_interval_s: float = 0.1,
    nvml_enabled: bool = True,
    battery_current_unit: str = "auto",
    battery_current_sign: str = "auto",
    memory_pid: int | None = None,
    estimated_cpu_tdp_w: float | None = None,
    fixture_power_w: float | None = None,
    stop_event: threading.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> int:
    """Serve metrics until SIGTERM/SIGINT (or ``stop_event``), then shut down cleanly.

    Args:
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one (logged, and passed to ``on_ready``).
        interval_s: Sampler period, seconds (> 0).
        root: Filesystem root for sysfs/procfs.
        idle_seconds: Measure an idle baseline this long before serving (0: none).
        tegrastats_command: tegrastats executable and leading arguments; ``None`` skips it.
        tegrastats_interval_s: tegrastats sampling interval, seconds.
        nvml_enabled: Probe NVIDIA GPUs.
        battery_current_unit: ``auto``, ``uA`` or ``mA`` for Android's ``current_now``.
        battery_current_sign: ``auto``, ``negative`` or ``positive``: how the battery driver signs a discharge.
        memory_pid: Report this process's memory instead of the exporter's.
        estimated_cpu_tdp_w: Turn on the estimated CPU power with this TDP, watts.
        fixture_power_w: Add a constant fixture power, watts (tests).
        stop_event: Set it to stop the server (for callers that run it in a thread).
        on_ready: Called with the bound port once metrics are served.

    Returns:
        The process exit code: 0 after a clean shutdown, 1 when the port cannot be bound.
    """
    if not interval_s > 0:
        raise InvalidArgumentError(f"--interval must be > 0 seconds, got {interval_s!r}")
    if not idle_seconds >= 0:
        raise InvalidArgumentError(f"--idle-seconds must be >= 0, got {idle_seconds!r}")
    if not 0 <= port <= 65535:
        raise InvalidArgumentError(f"--port must be in 0..65535, got {port!r}")
    monitor = EnergyMonitor.from_discovery(
        root,
        interval_s=interval_s,
        nvml_enabled=nvml_enabled,
        battery_current_unit=battery_current_unit,
        battery_current_sign=battery_current_sign,
        tegrastats_command=tegrastats_command,
        tegrastats_interval_s=tegrastats_interval_s,
        memory_pid=memory_pid,
        estimated_cpu_tdp_w=estimated_cpu_tdp_w,
        fixture_power_w=fixture_power_w,
    )
    stop = stop_event or threading.Event()
    previous_handlers = _install_signal_handlers(stop)
    try:
        monitor.start()
        if not monitor.has_power_sensor:
            reasons = "; ".join(str(u) for u in monitor.unavailable) or "no reader found"
            logger.warning("no power sensor available: %s (serving memory metrics only)", reasons)
        else:
            measured = ", ".join(r.name for r in monitor.readers if r.provides_power)
            logger.info("power readers: %s", measured)
        if idle_seconds > 0 and monitor.has_power_sensor:
            logger.info("measuring the idle baseline for %.1f s; keep the device idle", idle_seconds)
            monitor.measure_idle(idle_seconds)
        elif idle_seconds > 0:
            logger.warning("no idle baseline measured: no power sensor")
        registry = CollectorRegistry()
        registry.register(TelemetryCollector(monitor))
        try:
            httpd, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            logger.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
            return 1
        bound_port = httpd.server_port
        logger.info("serving metrics on http://%s:%d/metrics", host, bound_port)
        if on_ready is not None:
            on_ready(bound_port)
        try:
            while not stop.wait(0.5):
                pass
        finally:
            logger.info("shutting down the exporter")
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5.0)
        return 0
    finally:
        monitor.close()
        _restore_signal_handlers(previous_handlers)


def _install_signal_handlers(stop: threading.Event) -> dict[int, object]:
    if threading.current_thread() is not threading.main_thread():
        return {}  # signals are delivered to the main thread only; the caller stops us through stop_event

    def handle(signum: int, _frame: object) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        stop.set()

    return {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}


def _restore_signal_handlers(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]
