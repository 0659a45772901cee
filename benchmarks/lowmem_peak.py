"""Peak memory of one whole image in a fresh process, phase by phase (issue 9's low-memory goal).

Run it under the heavy-job lock, one variant per process::

    flock /tmp/edgediff-heavy.lock .venv/bin/python benchmarks/lowmem_peak.py --variant openvino-int8-lowmem \\
        --model celebahq-256 --steps 20 --deepcache 3

``--empty-cache`` measures a first run: the artifact cache is a new temporary folder (removed afterwards), so the
variant writes its artifacts in this process (``torch-int8-lowmem``: its compact weights, streamed tensor by tensor)
and the ``model`` phase's peak is the first run's build.

The process loads what the variant needs (``Variant.load_model``: a ``ModelSpec`` for the low-memory variant, the
torch modules for the others), builds it, generates one image, and prints one JSON line: VmHWM (peak resident set,
anonymous + file-backed pages, the kernel's own high-water mark) after each phase, and the stage timings. The
high-water mark is reset when decoding starts, so ``denoise`` and ``decode`` are each phase's own peak and
``peak_phase`` says which one sets the image's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time


def status_mb() -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon and RssFile of this process in MiB (from /proc/self/status)."""
    with open("/proc/self/status", encoding="utf-8") as fh:
        text = fh.read()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) / 1024
            for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True)
    parser.add_argument("--model", default="celebahq-256")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deepcache", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--empty-cache", action="store_true",
                        help="a first run: a new, empty artifact cache (EDGEDIFF_CACHE_DIR) for this process")
    args = parser.parse_args()
    empty = tempfile.mkdtemp(prefix="edgediff-cache-") if args.empty_cache else None
    if empty:
        os.environ["EDGEDIFF_CACHE_DIR"] = empty
    try:
        measure(args)
    finally:
        if empty:
            shutil.rmtree(empty, ignore_errors=True)


def measure(args: argparse.Namespace) -> None:
    """Load, build and generate one image, printing the JSON line."""
    phases = {"start": status_mb()}
    from edgediff.bench.runner import reset_peak_rss
    from edgediff.models import get_preset
    from edgediff.variants import BuildOptions, build_variant, get_variant

    phases["imports"] = status_mb()
    t0 = time.perf_counter()
    model = get_variant(args.variant).load_model(get_preset(args.model), args.weights)
    phases["model"] = status_mb()
    built = build_variant(args.variant, model, BuildOptions(threads=args.threads, deepcache_interval=args.deepcache))
    build_s = time.perf_counter() - t0
    phases["build"] = status_mb()
    pipeline = built.pipeline(model)
    decoder = pipeline.decoder

    def decode(latents):  # the denoising loop's peak, then the decoder's own (the high-water mark reset between)
        phases["denoise"] = status_mb()
        if not reset_peak_rss():
            raise RuntimeError("/proc/self/clear_refs is not writable here: the decoder's own peak cannot be measured")
        return decoder(latents)

    pipeline.decoder = decode
    result = pipeline(seed=args.seed, steps=args.steps)
    phases["decode"] = phases["image"] = status_mb()
    peak = max(p["VmHWM"] for p in phases.values())
    t = result.timings
    print(json.dumps({"variant": args.variant, "model": args.model, "steps": args.steps, "deepcache": args.deepcache,
                      "empty_cache": args.empty_cache,
                      "weights": model.weights.kind, "build_s": round(build_s, 2),
                      "denoise_s": round(t.denoise_s, 3), "decode_s": round(t.decode_s, 3),
                      "total_s": round(t.total_s, 3), "peak_rss_mb": round(peak, 1),
                      "peak_phase": max(phases, key=lambda k: phases[k]["VmHWM"]),
                      "phases_mb": {k: {n: round(v, 1) for n, v in p.items()} for k, p in phases.items()
                                    if k != "image"}}))


if __name__ == "__main__":
    main()
