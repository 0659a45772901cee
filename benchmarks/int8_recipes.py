"""Which int8 recipe of the UNet passes the quality gate at the fewest sampler steps (issue 16)?

Quantizes the UNet's fp32 OpenVINO IR of a model (``digits``, the gate's model, by default) once per recipe, on the
product's own calibration set, and scores each recipe's images like the bench's quality hook does (64 images, seeds
0.., the int8 decoder of ``openvino-int8``, compiled at the precision ``openvino-int8`` uses on this CPU) against
torch-fp32 with DDIM at 20 steps. Prints one JSON line per recipe and a markdown table at the end. Quality is
deterministic on one machine, so this needs no quiet machine; run it under the heavy-job lock all the same::

    flock /tmp/edgediff-heavy.lock .venv/bin/python benchmarks/int8_recipes.py --rows unipc:5,dpmpp:5,unipc:6

A recipe is the node patterns kept in floating point on top of ``openvino_int8.IGNORED_PATTERNS``, and optionally
``nncf.quantize`` settings that replace the product's (``--recipes`` picks some of ``RECIPES``). For speed, quantize
the study's model without scoring it (synthetic weights cannot be judged) and keep the IRs, then time them with
``benchmarks/ir_call_time.py``::

    .venv/bin/python benchmarks/int8_recipes.py --model celebahq-256 --rows "" --recipes all-int8,last-up-block \
        --save /tmp/recipes
    flock /tmp/edgediff-heavy.lock .venv/bin/python benchmarks/ir_call_time.py /tmp/recipes/*/model.xml
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

RECIPES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "all-int8": lambda unet: {"keep_float": []},  # what openvino-int8 ships
    "last-up-block-skip-readers": lambda unet: {
        "keep_float": [rf".*/up_blocks\.{_last(unet)}/resnets\.\d+/(conv1|conv_shortcut)/.*"]},
    "last-up-block": lambda unet: {"keep_float": [rf".*/up_blocks\.{_last(unet)}/.*"]},
    "last-up-block-first-resnet": lambda unet: {"keep_float": [rf".*/up_blocks\.{_last(unet)}/resnets\.0/.*"]},
    "last-up-block-last-resnet": lambda unet: {
        "keep_float": [rf".*/up_blocks\.{_last(unet)}/resnets\.{unet['layers_per_block']}/.*"]},
    "up-block-shortcuts": lambda unet: {"keep_float": [r".*/up_blocks\.\d+/resnets\.\d+/conv_shortcut/.*"]},
    "attentions": lambda unet: {"keep_float": [r".*/attentions\.\d+/.*"]},
    "mid-block": lambda unet: {"keep_float": [r".*/mid_block/.*"]},
    "full-bias-correction": lambda unet: {"keep_float": [], "overrides": {"fast_bias_correction": False}},
    "7-bit-weights": lambda unet: {"keep_float": [], "overflow_fix": "enable"},
}
"""Recipe name -> the UNet's config -> settings."""


def _last(unet: dict[str, Any]) -> int:
    """Index of the UNet's last up block (full resolution, output side)."""
    return len(unet["up_block_types"]) - 1


def _overrides(recipe: dict[str, Any]) -> dict[str, Any]:
    from edgediff.artifacts.openvino_int8 import advanced_parameters
    from edgediff.availability import require

    nncf = require("nncf")

    overrides = dict(recipe.get("overrides", {}))
    if "overflow_fix" in recipe:  # NNCF's fix for int8 saturation on CPUs without VNNI: 7-bit weights
        overrides["advanced_parameters"] = advanced_parameters(overflow_fix=nncf.OverflowFix(recipe["overflow_fix"]))
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--rows", default="unipc:5,dpmpp:5,unipc:6", help="sampler:steps, comma-separated")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", type=Path, default=None, help="keep each recipe's IR in SAVE/<recipe>/")
    args = parser.parse_args()

    from edgediff.artifacts import calibration, openvino_int8
    from edgediff.artifacts.build import build_artifact
    from edgediff.artifacts.openvino_ir import FILENAME
    from edgediff.bench.tune import machine_fingerprint
    from edgediff.models import get_preset, load_components
    from edgediff.pipeline import LDMPipeline
    from edgediff.quality.bench_hook import QUALITY_SAMPLES, QUALITY_SEED
    from edgediff.quality.gate import evaluate, quality_gate
    from edgediff.quality.samples import sample_images
    from edgediff.variants import BASELINE, BuildOptions, build_variant, get_variant
    from edgediff.variants.deepcache import unet_runner
    from edgediff.variants.openvino_runtime import ir_fn

    unknown = [name for name in args.recipes.split(",") if name not in RECIPES]
    if unknown:
        sys.exit(f"error: unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    rows = [(scheduler, int(steps)) for scheduler, steps in (row.split(":") for row in args.rows.split(",") if row)]
    components = load_components(get_preset(args.model), args.weights, warn=False)
    precision = get_variant("openvino-int8").compile_precision()
    machine = machine_fingerprint()
    print(json.dumps({"model": args.model, "machine": machine, "compile_precision": precision}), flush=True)

    def scores(pipeline: LDMPipeline, scheduler: str, steps: int) -> Any:
        return evaluate(sample_images(pipeline, samples=QUALITY_SAMPLES, steps=steps, seed=QUALITY_SEED,
                                      scheduler=scheduler))

    baseline = None
    if rows:  # synthetic weights (--rows "") are quantized and kept, never scored
        baseline = scores(build_variant(BASELINE, components, BuildOptions(threads=args.threads)).pipeline(components),
                          "ddim", 20)
        decoder_dir, _ = build_artifact(components, "vqdec", "openvino-int8")
        decoder = ir_fn(decoder_dir / FILENAME, precision=precision, threads=args.threads)

    def gated_rows(unet_xml: Path) -> dict[str, Any]:
        """Each row's scores and gate with the UNet at ``unet_xml`` and the int8 decoder."""
        unet = ir_fn(unet_xml, precision=precision, threads=args.threads)
        pipeline = LDMPipeline(unet_runner(lambda part: unet, 1), decoder, components.scheduler_config,
                               components.preset.latent_shape, components.scaling_factor)
        out = {}
        for scheduler, steps in rows:
            got = scores(pipeline, scheduler, steps)
            out[f"{scheduler}:{steps}"] = {"digits_fd": round(got.digits_fd, 2),
                                           "confident": round(100 * got.confident_share, 1),
                                           "gate": quality_gate(got, baseline).status}
        return out

    ir, _ = build_artifact(components, "unet", "openvino")
    samples = [{"sample": s.numpy(), "timestep": t.numpy()}
               for s, t in calibration.part_samples(calibration.calibration_set(components), "unet")]
    table = []
    for name in args.recipes.split(","):
        recipe = RECIPES[name](components.preset.unet_config)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) if args.save is None else args.save / name
            folder.mkdir(parents=True, exist_ok=True)
            report = openvino_int8.quantize_ir(ir / FILENAME, samples, folder, keep_float=recipe["keep_float"],
                                               overrides=_overrides(recipe))
            result: dict[str, Any] = {"recipe": name, "keep_float": recipe["keep_float"],
                                      "fake_quantize_nodes": report["fake_quantize_nodes"]}
            if rows:
                result.update(gated_rows(folder / FILENAME))
        print(json.dumps(result), flush=True)
        table.append(result)
    if baseline is None:
        return
    print(f"\nbaseline torch-fp32 DDIM 20: digits-FD {baseline.digits_fd:.2f}, confident "
          f"{100 * baseline.confident_share:.1f} %; CPU flags {', '.join(machine['cpu_flags']) or 'none listed'}\n")
    header = [f"{scheduler} {steps}" for scheduler, steps in rows]
    print("| recipe | FakeQuantize | " + " | ".join(header) + " |")
    print("|---|---|" + "---|" * len(header))
    for result in table:
        cells = [f"{r['digits_fd']:.2f} ({r['confident']:.1f} %) {r['gate']}"
                 for r in (result[f"{s}:{n}"] for s, n in rows)]
        print(f"| {result['recipe']} | {result['fake_quantize_nodes']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
