"""``edgediff exporter``: serve power, energy and memory metrics for Prometheus until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import shlex

from edgediff.constants import DEFAULT_HOST, EXPORTER_PORT
from edgediff.errors import InvalidArgumentError
from edgediff.processes import hangup_means_terminate
from edgediff.telemetry.android_battery import CURRENT_SIGNS, CURRENT_UNITS
from edgediff.telemetry.window import DEFAULT_INTERVAL_S
from services.telemetry_exporter.server import run_exporter

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the exporter's options to ``parser`` (the ``edgediff exporter`` sub-command or a standalone parser)."""
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=EXPORTER_PORT, help="port to listen on; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL_S,
        metavar="SECONDS",
        help="sampling interval of the power sensors, seconds (default: %(default)s = 10 Hz)",
    )
    parser.add_argument(
        "--root", default="/", help="filesystem root holding sys/ and proc/ (a fixture tree in tests; default: /)"
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="measure an idle baseline for this long at start and export edgediff_idle_power_watts (default: 0 = no)",
    )
    parser.add_argument(
        "--tegrastats-command",
        default="tegrastats",
        metavar="COMMAND",
        help="tegrastats executable and leading arguments, shell-quoted (default: %(default)s)",
    )
    parser.add_argument(
        "--tegrastats-interval",
        type=float,
        default=0.1,
        metavar="SECONDS",
        help="tegrastats sampling interval, seconds (default: %(default)s)",
    )
    parser.add_argument("--no-nvml", action="store_true", help="do not probe NVIDIA GPUs through NVML")
    parser.add_argument(
        "--battery-current-unit",
        choices=CURRENT_UNITS,
        default="auto",
        help="unit of Android's current_now (default: auto, guessed from the magnitude; some vendors report mA)",
    )
    parser.add_argument(
        "--battery-current-sign",
        choices=CURRENT_SIGNS,
        default="auto",
        help="how the battery driver signs a discharge in current_now (default: auto, learned while status says "
        "Discharging)",
    )
    parser.add_argument(
        "--pid", type=int, default=None, help="report the memory of this process instead of the exporter's own"
    )
    parser.add_argument(
        "--estimated-cpu-tdp-watts",
        type=float,
        default=None,
        metavar="WATTS",
        help="turn on ESTIMATED CPU power = utilization x this TDP (labelled source=estimated; off by default)",
    )
    parser.add_argument(
        "--fixture-power-watts",
        type=float,
        default=None,
        metavar="WATTS",
        help="add a constant made-up power in domain 'fixture' (source=fixture): for tests only",
    )




def run_from_args(args: argparse.Namespace) -> int:
    """Run the exporter from parsed arguments (see ``add_arguments``) and return the exit code (2: bad argument)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # a long-running service announces its address and its shutdown at INFO even when the CLI's level is WARNING
    service_logger = logging.getLogger(run_exporter.__module__)
    service_logger.setLevel(min(logging.INFO, logging.getLogger().getEffectiveLevel()))
    command = shlex.split(args.tegrastats_command) if args.tegrastats_command else None
    try:
        with hangup_means_terminate():  # the exporter stops cleanly on SIGTERM and SIGINT; SIGHUP does the same
            return run_exporter(
                args.host,
                args.port,
                args.interval,
                args.root,
                idle_seconds=args.idle_seconds,
                tegrastats_command=command,
                tegrastats_interval_s=args.tegrastats_interval,
                nvml_enabled=not args.no_nvml,
                battery_current_unit=args.battery_current_unit,
                battery_current_sign=args.battery_current_sign,
                memory_pid=args.pid,
                estimated_cpu_tdp_w=args.estimated_cpu_tdp_watts,
                fixture_power_w=args.fixture_power_watts,
            )
    except InvalidArgumentError as exc:
        logger.error("%s", exc)
        return 2
