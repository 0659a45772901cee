"""Does channels_last help eager PyTorch on this CPU? UNet step and VQ decode, fp32 and bf16 autocast.

    flock /tmp/edgediff-heavy.lock .venv/bin/python benchmarks/channels_last.py --model celebahq-256

Prints one JSON line per configuration: median seconds of ``--runs`` calls after ``--warmup`` calls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from edgediff.artifacts.build import part_inputs, part_module
from edgediff.models import get_preset, load_components
from edgediff.variants.base import resolve_threads


def median_s(fn, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="celebahq-256")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(resolve_threads())
    components = load_components(get_preset(args.model), warn=False)
    for part in ("unet", "vqdec"):
        module = part_module(components, part)
        inputs = part_inputs(components, part)
        for layout in ("contiguous", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            module = module.to(memory_format=fmt)
            feed = tuple(t.to(memory_format=fmt) if t.dim() == 4 else t for t in inputs)
            for precision in ("fp32", "bf16"):
                ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else (
                    contextlib.nullcontext)

                def call(module=module, feed=feed, ctx=ctx) -> None:
                    with torch.inference_mode(), ctx():
                        module(*feed)

                seconds = median_s(call, args.warmup, args.runs)
                print(json.dumps({"part": part, "layout": layout, "precision": precision,
                                  "median_s": round(seconds, 4), "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
