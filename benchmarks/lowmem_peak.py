"""Peak memory of one whole image in a fresh process, phase by phase (issue 9's low-memory goal).

Run it under the heavy-job lock, one variant per process::

    flock /tmp/edgediff-heavy.lock .venv/bin/python benchmarks/lowmem_peak.py --variant openvino-int8-lowmem \\
        --model celebahq-256 --steps 20 --deepcache 3

The process loads what the variant needs (``Variant.load_model``: a ``ModelSpec`` for the low-memory variant, the
torch modules for the others), builds it, generates one image, and prints one JSON line: VmHWM (peak resident set,
anonymous + file-backed pages, the kernel's own high-water mark) after each phase, and the stage timings.
"""

from __future__ import annotations

import argparse
import json
import re
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
    args = parser.parse_args()
    phases = {"start": status_mb()}
    from edgediff.models import get_preset
    from edgediff.variants import BuildOptions, build_variant, get_variant

    phases["imports"] = status_mb()
    t0 = time.perf_counter()
    model = get_variant(args.variant).load_model(get_preset(args.model), args.weights)
    phases["model"] = status_mb()
    built = build_variant(args.variant, model, BuildOptions(threads=args.threads, deepcache_interval=args.deepcache))
    build_s = time.perf_counter() - t0
    phases["build"] = status_mb()
    result = built.pipeline(model)(seed=args.seed, steps=args.steps)
    phases["image"] = status_mb()
    t = result.timings
    print(json.dumps({"variant": args.variant, "model": args.model, "steps": args.steps, "deepcache": args.deepcache,
                      "weights": model.weights.kind, "build_s": round(build_s, 2),
                      "denoise_s": round(t.denoise_s, 3), "decode_s": round(t.decode_s, 3),
                      "total_s": round(t.total_s, 3), "peak_rss_mb": round(phases["image"]["VmHWM"], 1),
                      "phases_mb": {k: {n: round(v, 1) for n, v in p.items()} for k, p in phases.items()}}))


if __name__ == "__main__":
    main()
