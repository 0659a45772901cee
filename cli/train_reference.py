"""``edgediff train-reference``: train the small ``digits`` reference model (and its classifier) on the CPU.

The defaults reproduce the committed weights (``edgediff/models/weights/digits/`` and
``edgediff/quality/assets/digits_classifier.*``); the summary says whether the files produced are byte-identical to
the committed ones. ``--install`` copies the result into the package.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from cli.args import check_positive
from edgediff.errors import InvalidArgumentError
from edgediff.quality.train import TrainConfig, committed_record, install_reference, train_reference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff train-reference``."""
    d = TrainConfig()
    parser.add_argument("--out", default="digits-reference", metavar="DIR",
                        help="output folder: diffusers layout (usable as --weights) + classifier/ + training.json "
                             "(default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of everything (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=d.threads,
                        help="torch threads, fixed for reproducibility (default: %(default)s)")
    parser.add_argument("--vq-steps", type=int, default=d.vq_steps, metavar="N",
                        help="autoencoder optimizer steps (default: %(default)s)")
    parser.add_argument("--unet-steps", type=int, default=d.unet_steps, metavar="N",
                        help="UNet optimizer steps (default: %(default)s)")
    parser.add_argument("--classifier-steps", type=int, default=d.classifier_steps, metavar="N",
                        help="classifier optimizer steps; 0 skips the classifier (default: %(default)s)")
    parser.add_argument("--eval-samples", type=int, default=d.eval_samples, metavar="N",
                        help="images generated at the end to score the model; 0 skips (default: %(default)s)")
    parser.add_argument("--install", action="store_true",
                        help="copy the result into the package (the 'digits' preset and the quality classifier)")


def run_from_args(args: argparse.Namespace) -> int:
    """Train, write, print a summary."""
    check_positive("threads", args.threads)
    for name in ("vq_steps", "unet_steps", "classifier_steps", "eval_samples"):
        check_positive(name.replace("_", "-"), getattr(args, name), minimum=0)
    if args.eval_samples == 1:
        raise InvalidArgumentError("--eval-samples must be 0 (no evaluation) or >= 2, got 1")
    config = TrainConfig(seed=args.seed, threads=args.threads, vq_steps=args.vq_steps, unet_steps=args.unet_steps,
                         classifier_steps=args.classifier_steps, eval_samples=args.eval_samples)
    command = "edgediff train-reference " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["train-reference"] else None

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    summary = train_reference(config, args.out, overwrite=args.overwrite, log=log, command=command)
    record = summary.record
    wall = record["wall_s"]
    print(f"wrote {summary.out_dir} in {wall['total_s']:.0f} s (classifier {wall['classifier_s']:.0f} s, "
          f"vqvae {wall['vqvae_s']:.0f} s, unet {wall['unet_s']:.0f} s, evaluation {wall['evaluation_s']:.0f} s)")
    vq = record["vqvae"]
    print(f"vqvae: final reconstruction MSE {vq['final_reconstruction_mse']:.5f}, held-out "
          f"{vq['test_reconstruction_mse']:.5f}; codes used {vq['codes_used']}/{vq['codes_total']}; "
          f"scaling_factor {vq['scaling_factor']:.5f}")
    print(f"unet: {record['unet']['parameters']:,} parameters, final loss {record['unet']['final_loss']}")
    if "classifier" in record:
        print(f"classifier: held-out accuracy {record['classifier']['test_accuracy']:.4f}")
    if "evaluation" in record:
        s = record["evaluation"]["scores"]
        print(f"evaluation: {s['samples']} samples: confident share {100 * s['confident_share']:.1f}%, "
              f"digits-FD {s['digits_fd']:.4f}")
    committed = committed_record()
    if committed is not None:
        differing = sorted(k for k, v in record["files"].items() if committed.get("files", {}).get(k) != v)
        if differing:
            print(f"files different from the committed reference: {', '.join(differing)}")
        else:
            print("every file is byte-identical to the committed reference (training.json's hashes)")
    if args.install:
        where = install_reference(summary.out_dir)
        print(f"installed: model -> {where['model']}, classifier -> {where['classifier']}")
    return 0
