"""``edgediff tune``: bench the candidates available here, gate them on ``digits``, save the machine's profile.

The profile (``<cache>/profiles/<model>.json``) is the default of ``serve``, ``up``, ``export`` and ``make demo``;
see ``edgediff.bench.tune``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from cli.args import add_model_arguments, check_positive, parse_memory_size
from edgediff.bench.tune import MB, SAMPLER_LADDER, TuneConfig, load_profile, tune
from edgediff.errors import InvalidArgumentError
from edgediff.schedulers import check_scheduler
from edgediff.variants import parse_variant_list


def _samplers(text: str) -> tuple[tuple[str, int], ...]:

    out = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        name, _, steps = item.partition(":")
        if not steps.isdigit() or int(steps) < 1:
            raise InvalidArgumentError(f"--samplers: expected SCHEDULER:STEPS items (dpmpp:10), got {item!r}")
        out.append((check_scheduler(name, field="--samplers"), int(steps)))
    return tuple(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff tune``."""
    add_model_arguments(parser)
    parser.add_argument("--variants", default=None, metavar="V,...",
                        help="candidates (default: every variant available here but the baseline and low-memory "
                             "ones)")
    ladder = ",".join(f"{s}:{n}" for s, n in SAMPLER_LADDER)
    parser.add_argument("--samplers", default=ladder, metavar="S:N,...",
                        help=f"samplers tried against DDIM-20 (default: {ladder}; '' for DDIM-20 only)")
    parser.add_argument("--runs", type=int, default=2, help="timed runs per row of the speed stage (default: 2)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up runs per row (default: 1)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    parser.add_argument("--out", default="reports/tune", metavar="DIR", help="stage reports (default: %(default)s)")
    parser.add_argument("--revalidate", action="store_true",
                        help="re-check the saved profile's choice on this machine (quality gate + speed) and "
                             "re-save it for this machine, instead of trying every candidate")
    parser.add_argument("--max-memory", type=parse_memory_size, default=None, metavar="SIZE",
                        help="tune for a memory budget (600M, 3.5G; plain numbers are bytes): low-memory variants "
                             "become candidates, the choice is the fastest gate-passing row whose peak RSS fits, saved "
                             "as the budget's own profile (the local gateway's default under --max-memory)")
    parser.add_argument("--show", action="store_true", help="print this machine's profile and exit")


def run_from_args(args: argparse.Namespace) -> int:
    """Tune (or show the profile) and print where the profile is."""
    import json


    budget_mb = None if args.max_memory is None else max(1, args.max_memory // MB)
    if args.show:
        print(json.dumps(load_profile(args.model, max_memory_mb=budget_mb), indent=2))
        return 0
    check_positive("threads", args.threads)
    config = TuneConfig(model=args.model, weights=args.weights, weights_seed=args.weights_seed,
                        variants=parse_variant_list(args.variants) if args.variants else None,
                        samplers=_samplers(args.samplers), runs=args.runs, warmup=args.warmup, threads=args.threads,
                        out=Path(args.out), revalidate=args.revalidate, max_memory_mb=budget_mb,
                        command=shlex.join(["edgediff", *sys.argv[1:]]) if sys.argv[1:2] == ["tune"]
                        else "edgediff tune")
    tune(config, say=lambda line: print(line, flush=True))
    return 0
