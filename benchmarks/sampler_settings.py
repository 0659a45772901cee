"""Which settings of the multistep solvers pass the quality gate at the fewest steps (issue 16)?

Scores torch-fp32 and ``openvino-int8`` on the trained ``digits`` model (64 images, seeds 0.., like the bench's quality
hook) with each named alternative to ``edgediff.schedulers``' settings, at each step count, against torch-fp32 DDIM-20.
The alternatives replace the settings in this process only. Quality is deterministic on one machine; run it under the
heavy-job lock all the same::

    flock /tmp/edgediff-heavy.lock .venv/bin/python benchmarks/sampler_settings.py --steps 4,5,6,8

Prints one JSON line per (settings, steps) and a markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

_ORDER2 = {"solver_order": 2, "lower_order_final": True}
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "unipc-even": ("unipc", {"solver_type": "bh2", **_ORDER2}),
    "unipc-karras": ("unipc", {"solver_type": "bh2", **_ORDER2, "use_karras_sigmas": True}),
    "unipc-leading": ("unipc", {"solver_type": "bh2", **_ORDER2, "timestep_spacing": "leading", "steps_offset": 1}),
    "unipc-trailing": ("unipc", {"solver_type": "bh2", **_ORDER2, "timestep_spacing": "trailing"}),
    "unipc-bh1": ("unipc", {"solver_type": "bh1", **_ORDER2}),
    "unipc-order3": ("unipc", {"solver_type": "bh2", "solver_order": 3, "lower_order_final": True}),
    "dpmpp-even": ("dpmpp", {"algorithm_type": "dpmsolver++", **_ORDER2}),
    "dpmpp-karras": ("dpmpp", {"algorithm_type": "dpmsolver++", **_ORDER2, "use_karras_sigmas": True}),
    "dpmpp-order3": ("dpmpp", {"algorithm_type": "dpmsolver++", "solver_order": 3, "lower_order_final": True}),
}
"""Name -> (scheduler, the keyword arguments it adds to the preset's config)."""
VARIANTS = ("torch-fp32", "openvino-int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--steps", default="5,6")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from edgediff import schedulers
    from edgediff.bench.tune import machine_fingerprint
    from edgediff.models import get_preset, load_components
    from edgediff.quality.bench_hook import QUALITY_SAMPLES, QUALITY_SEED
    from edgediff.quality.gate import evaluate, quality_gate
    from edgediff.quality.samples import sample_images
    from edgediff.variants import BASELINE, BuildOptions, build_variant

    names = args.settings.split(",")
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        sys.exit(f"error: unknown settings {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    steps_list = [int(n) for n in args.steps.split(",")]
    components = load_components(get_preset("digits"), None, warn=False)
    pipelines = {name: build_variant(name, components, BuildOptions(threads=args.threads)).pipeline(components)
                 for name in args.variants.split(",")}
    print(json.dumps({"machine": machine_fingerprint()}), flush=True)

    def scores(variant: str, scheduler: str, steps: int) -> Any:
        return evaluate(sample_images(pipelines[variant], samples=QUALITY_SAMPLES, steps=steps, seed=QUALITY_SEED,
                                      scheduler=scheduler))

    baseline = evaluate(sample_images(build_variant(BASELINE, components).pipeline(components),
                                      samples=QUALITY_SAMPLES, steps=20, seed=QUALITY_SEED, scheduler="ddim"))
    rows = []
    for name in names:
        scheduler, settings = SETTINGS[name]
        schedulers._SETTINGS[scheduler] = settings  # this process only
        for steps in steps_list:
            row: dict[str, Any] = {"settings": name, "steps": steps}
            for variant in pipelines:
                got = scores(variant, scheduler, steps)
                row[variant] = {"digits_fd": round(got.digits_fd, 2), "confident": round(100 * got.confident_share, 1),
                                "gate": quality_gate(got, baseline).status}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\nbaseline torch-fp32 DDIM 20: digits-FD {baseline.digits_fd:.2f}\n")
    print("| settings | steps | " + " | ".join(pipelines) + " |")
    print("|---|---|" + "---|" * len(pipelines))
    for row in rows:
        cells = [f"{row[v]['digits_fd']:.2f} ({row[v]['confident']:.1f} %) {row[v]['gate']}" for v in pipelines]
        print(f"| {row['settings']} | {row['steps']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
