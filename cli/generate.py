"""``edgediff generate``: images from one variant, in-process, written as PNG with their metadata."""

from __future__ import annotations

import argparse
import sys

from cli.args import (
    add_build_arguments,
    add_model_arguments,
    add_sampling_arguments,
    check_positive,
    load_model,
)
from edgediff.request import GenerationRequest
from edgediff.schedulers import check_scheduler
from edgediff.variants import BASELINE, BuildOptions, build_variant, require_available


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff generate``."""
    add_model_arguments(parser)
    parser.add_argument("--variant", default=BASELINE, help="variant to run (see 'edgediff variants')")
    add_sampling_arguments(parser)
    add_build_arguments(parser)
    parser.add_argument("--out", default="edgediff.png",
                        help="PNG path; with --batch N, images 2..N get -1, -2... suffixes (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_from_args(args: argparse.Namespace) -> int:
    """Generate and save."""
    GenerationRequest.validated(seed=args.seed, steps=args.steps, eta=args.eta, batch=args.batch)  # enters here
    check_scheduler(args.scheduler, eta=args.eta)
    check_positive("deepcache", args.deepcache)
    check_positive("threads", args.threads)
    require_available(args.variant)
    components = load_model(args, args.variant)
    built = build_variant(args.variant, components, BuildOptions(threads=args.threads,
                                                                 deepcache_interval=args.deepcache))
    pipeline = built.pipeline(components)
    show = not args.no_progress and sys.stderr.isatty()
    if show:
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task(f"{args.variant}: denoising", total=args.steps)
            result = pipeline(seed=args.seed, steps=args.steps, eta=args.eta, batch=args.batch,
                              scheduler=args.scheduler, on_step=lambda i, n: progress.update(task, completed=i))
    else:
        result = pipeline(seed=args.seed, steps=args.steps, eta=args.eta, batch=args.batch, scheduler=args.scheduler)
    paths = result.save(args.out)
    t = result.timings
    print(f"{args.variant} on {components.preset.name}, {args.scheduler} {args.steps} steps "
          f"(weights: {components.weights.label()}): "
          f"denoise {t.denoise_s:.2f} s, decode {t.decode_s:.2f} s, total {t.total_s:.2f} s")
    for path in paths:
        print(f"wrote {path}")
    return 0
