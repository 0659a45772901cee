"""The ``edgediff`` command: parses arguments and dispatches, nothing more.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run_from_args(args) -> int``; only
the chosen subcommand's module is imported, so ``edgediff serve --backend local`` on a phone never imports Triton,
ONNX Runtime or OpenVINO. Errors meant for the user (``EdgediffError``) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from edgediff import __version__
from edgediff.errors import EdgediffError
from edgediff.processes import stop_on_signals

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("cli.generate", "generate images with one variant, in-process"),
    "variants": ("cli.variants", "list the variants and whether they can run here"),
    "export": ("cli.export", "build a Triton model repository for a target (cpu, rtx, jetson)"),
    "triton": ("cli.triton", "start a Triton server over a model repository"),
    "serve": ("cli.serve", "serve the gRPC Generator API (Triton or local PyTorch backend)"),
    "exporter": ("cli.exporter", "serve power, energy and memory metrics for Prometheus"),
    "bench": ("cli.bench", "benchmark variants: latency, memory, energy, fidelity; write a report"),
    "tune": ("cli.tune", "find this machine's fastest variant + sampler that passes the quality gate; save it"),
    "compare": ("cli.compare", "compare bench reports across devices (the study's Table 4)"),
    "loadtest": ("cli.loadtest", "drive the gateway with Locust; latency percentiles and energy per image"),
    "train-reference": ("cli.train_reference", "train the small digits reference model"),
    "quality": ("cli.quality", "score generated images: digits classifier, digits-FD, FID"),
    "up": ("cli.up", "start the whole serving stack (triton, gateway, exporter, prometheus)"),
    "down": ("cli.down", "stop the stack started by 'edgediff up'"),
    "status": ("cli.status", "show the services of the stack and their health"),
}


class _ExitParser(argparse.ArgumentParser):
    """argparse with exit code 2 and one line on errors (argparse's default code too, but never a traceback)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s module is imported to add its arguments."""
    parser = _ExitParser(prog="edgediff", description=__doc__.splitlines()[0].rstrip("."))
    parser.add_argument("--version", action="version", version=f"edgediff {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ExitParser)
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgediff`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(args_list)
    if command is not None and command not in COMMANDS:
        build_parser().error(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)}")
    try:
        parser = build_parser(command)
    except ImportError as exc:
        print(f"edgediff {command}: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(args_list)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        with stop_on_signals():  # SIGTERM/SIGINT/SIGHUP: children stopped, temporary folders removed (processes.py)
            return int(module.run_from_args(args) or 0)
    except EdgediffError as exc:
        print(f"edgediff {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Interrupted: 128 + the signal (130 after Ctrl-C, 143 after SIGTERM)
        print(f"edgediff {args.command}: {getattr(exc, 'reason', 'interrupted')}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))


if __name__ == "__main__":
    sys.exit(main())
