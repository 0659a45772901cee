"""``edgediff quality``: score images with the digits classifier (confident share, digits-FD) and optionally FID.

Either a folder of images (``--images DIR``) or images generated here by one variant of a model (default: the
``digits`` preset, ``torch-fp32``). ``--gate`` also generates the same seeds with ``torch-fp32`` and applies the
quality gate (digits-FD within +10 %, confident share within 5 points); the exit code is 1 when the gate fails.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from cli.args import (
    add_build_arguments,
    add_model_arguments,
    add_sampling_arguments,
    check_positive,
    load_model,
)
from edgediff.errors import InvalidArgumentError
from edgediff.io import atomic_write_bytes, atomic_write_json
from edgediff.models import ModelSpec
from edgediff.pipeline import encode_png
from edgediff.quality.classifier import load_classifier
from edgediff.quality.gate import evaluate, quality_gate
from edgediff.quality.metrics import load_image_folder
from edgediff.quality.samples import DEFAULT_BATCH, DEFAULT_SAMPLES, image_grid, sample_images
from edgediff.request import GenerationRequest
from edgediff.variants import BASELINE, BuildOptions, build_variant, require_available


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff quality``."""
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="score the images in DIR (png/jpg) instead of generating them")
    add_model_arguments(parser, default_model="digits")
    parser.add_argument("--variant", default=BASELINE, help="variant that generates the images (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, metavar="N",
                        help="images to generate (default: %(default)s)")
    add_sampling_arguments(parser, steps=None)
    parser.set_defaults(batch=DEFAULT_BATCH)
    add_build_arguments(parser)
    parser.add_argument("--gate", action="store_true",
                        help=f"also generate with {BASELINE} and apply the quality gate (exit 1 when it fails)")
    parser.add_argument("--classifier", default=None, metavar="FILE",
                        help="digits classifier .safetensors (default: the committed one)")
    parser.add_argument("--fid-reference", default=None, metavar="DIR", help="reference images for FID")
    parser.add_argument("--inception-weights", default=None, metavar="FILE",
                        help="TorchScript Inception for FID (inception-2015-12-05.pt of StyleGAN2-ADA / clean-fid)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the scores as JSON")
    parser.add_argument("--grid", default=None, metavar="PNG",
                        help="also write the scored images as one grid PNG (4 per row, 3x upscaled)")


def _generate(args: argparse.Namespace, variant: str, components: ModelSpec) -> np.ndarray:
    """The ``--samples`` images of ``variant`` (uint8 NHWC)."""
    built = build_variant(variant, components, BuildOptions(threads=args.threads, deepcache_interval=args.deepcache))
    pipeline = built.pipeline(components)
    return sample_images(pipeline, samples=args.samples, steps=args.steps, seed=args.seed, batch=args.batch,
                         eta=args.eta)


def run_from_args(args: argparse.Namespace) -> int:
    """Score, print, optionally gate and write JSON."""
    if (args.fid_reference is None) != (args.inception_weights is None):
        raise InvalidArgumentError("--fid-reference and --inception-weights must be given together")
    if args.images is not None and args.gate:
        raise InvalidArgumentError("--gate compares generated images with the baseline's; it cannot be used with "
                                   "--images")
    classifier = load_classifier(args.classifier)
    fid_args = {"fid_reference": args.fid_reference, "inception_weights": args.inception_weights}
    if args.images is not None:
        images = load_image_folder(args.images)
        scores = evaluate(images, classifier=classifier, **fid_args)
        print(f"{args.images}: {scores.summary()}")
        source: dict[str, Any] = {"images": args.images}
    else:
        check_positive("samples", args.samples, minimum=2)
        check_positive("deepcache", args.deepcache)
        check_positive("threads", args.threads)
        components = load_model(args)
        if args.steps is None:
            args.steps = components.preset.default_steps
        GenerationRequest.validated(seed=args.seed, steps=args.steps, eta=args.eta, batch=args.batch)
        require_available(args.variant)
        if components.preset.name != "digits":
            print(f"note: the digits classifier scores only mean something for --model digits, not "
                  f"{components.preset.name}", file=sys.stderr)
        images = _generate(args, args.variant, components)
        scores = evaluate(images, classifier=classifier, **fid_args)
        label = f"{args.variant} on {components.preset.name} (weights: {components.weights.label()})"
        print(f"{label}: {scores.summary()}")
        source = {"model": components.preset.name, "variant": args.variant, "samples": args.samples,
                  "steps": args.steps, "seed": args.seed, "eta": args.eta, "deepcache": args.deepcache,
                  "weights": components.weights.to_dict()}
    result: dict[str, Any] = {"source": source, "scores": scores.to_dict()}
    if args.grid:

        metadata = {k: str(v) for k, v in source.items() if k != "weights"}
        atomic_write_bytes(args.grid, encode_png(image_grid(images), metadata))
        print(f"wrote {args.grid}")
    exit_code = 0
    if args.gate:
        baseline_args = argparse.Namespace(**{**vars(args), "deepcache": 1})
        baseline = evaluate(_generate(baseline_args, BASELINE, components), classifier=classifier)
        gate = quality_gate(scores, baseline)
        print(f"{BASELINE}: {baseline.summary()}")
        print(f"quality gate: {gate.status}")
        for reason in gate.reasons:
            print(f"  {reason}")
        result["baseline"] = baseline.to_dict()
        result["gate"] = gate.to_dict()
        exit_code = 0 if gate.passed else 1
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return exit_code
