"""Arguments and checks that several subcommands share (model, weights, variant, generation options)."""

from __future__ import annotations

import argparse
import sys

from edgediff import variants
from edgediff.errors import InvalidArgumentError
from edgediff.models import ModelSpec, list_presets
from edgediff.models.weights import SYNTHETIC_WARNING
from edgediff.pipeline import MAX_STEPS
from edgediff.schedulers import SCHEDULERS


def add_model_arguments(parser: argparse.ArgumentParser, default_model: str = "celebahq-256") -> None:
    """``--model`` and ``--weights``."""
    parser.add_argument("--model", default=default_model, metavar="PRESET",
                        help=f"model preset: {', '.join(list_presets())} (default: %(default)s)")
    parser.add_argument("--weights", default=None, metavar="DIR",
                        help="diffusers-format weights folder (unet/, vqvae/, scheduler/); default $EDGEDIFF_WEIGHTS, "
                             "the preset's bundled weights, or seeded synthetic weights (clearly marked)")
    parser.add_argument("--weights-seed", type=int, default=0, metavar="N",
                        help="seed of the synthetic weights when no folder is given (default: %(default)s)")


def add_sampling_arguments(parser: argparse.ArgumentParser, *, steps: int | None = 20) -> None:
    """``--steps``, ``--eta``, ``--seed``, ``--batch``."""
    parser.add_argument("--steps", type=int, default=steps,
                        help=f"DDIM steps, 1..{MAX_STEPS} (default: %(default)s, as in the study)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta in 0..1 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default: %(default)s)")
    add_scheduler_argument(parser)


def add_scheduler_argument(parser: argparse.ArgumentParser, default: str | None = "ddim") -> None:
    """``--scheduler ddim|dpmpp|unipc`` (``edgediff.schedulers``)."""
    parser.add_argument("--scheduler", default=default, choices=SCHEDULERS,
                        help="sampler: ddim (the study's), dpmpp (DPM-Solver++ multistep) or unipc; the multistep "
                             "solvers reach DDIM-20 quality in fewer --steps (eta must be 0) (default: "
                             + (f"{default})" if default else "this machine's tune profile, else ddim)"))


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--deepcache``."""
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: $EDGEDIFF_THREADS or the number of physical cores)")
    parser.add_argument("--deepcache", type=int, default=1, metavar="N",
                        help="DeepCache: recompute the UNet's deep features every N steps (1 = off, the default)")


def check_positive(name: str, value: int | None, *, minimum: int = 1) -> None:
    """Raise ``InvalidArgumentError`` naming ``--name`` when ``value < minimum``."""
    if value is not None and value < minimum:
        raise InvalidArgumentError(f"--{name} must be >= {minimum}, got {value}")


def load_model(args: argparse.Namespace, variant: str | None = None) -> ModelSpec:
    """Load the preset and weights the arguments name, as ``variant`` needs them; warn on stderr if synthetic."""
    components = variants.load_model(args.model, args.weights, seed=getattr(args, "weights_seed", 0), variant=variant)
    if components.weights.synthetic:
        print(SYNTHETIC_WARNING.format(preset=components.preset.name), file=sys.stderr)
    return components


def parse_memory_size(text: str) -> int:
    """``"600M"``, ``"1.5G"``, ``"123456"`` -> bytes (K, M, G are powers of 1024); an argparse type."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        number = float(value[:-1]) * units[value[-1]] if value and value[-1] in units else float(value)
    except ValueError:
        number = -1.0
    if not number > 0:
        raise argparse.ArgumentTypeError(f"--max-memory must be a positive size like 600M or 1.5G, got {text!r}")
    return int(number)
