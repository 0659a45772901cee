"""Peak memory and speed of one variant in a fresh process, the way a user runs it (issue 30's fast-default goal).

Run it under the heavy-job lock, one process per measurement::

    flock /tmp/edgediff-heavy.lock .venv/bin/python benchmarks/fast_default_peak.py \\
        --variant openvino-int8 --model celebahq-256 --scheduler unipc --steps 5 --images 3

The process loads what the variant needs (``Variant.load_model``), builds it (exporting whatever the artifact cache
lacks), generates one warm-up image, then ``--images`` timed ones. It prints one JSON line:

* ``lifetime_peak_mb``: VmHWM (the kernel's high-water mark of the resident set, anonymous + file-backed pages) over
  the whole process: imports, load, build, warm-up and the timed images; what a 4 GB board must hold;
* ``images_peak_mb``: the high-water mark over the timed images only (reset through ``/proc/self/clear_refs`` after
  the warm-up, as ``edgediff bench`` does);
* ``phases_mb``: VmHWM, VmRSS, RssAnon and RssFile after each phase; ``torch_modules``: whether the process holds
  the fp32 torch model after building;
* ``image_s``: seconds per timed image (``median_image_s`` is what the speed goal compares).

``--serving unet`` (or ``vqdec``) measures a Triton part-model process instead: the Python-backend model's
``PartRunner`` (``exporters.part_runtime``) over the cached artifact, as ``initialize`` loads it from its model folder,
then one image's calls (``--steps`` UNet calls, or one decode); Triton runs each part model in a process of its own.
``--serving local`` measures the backend of ``edgediff serve --backend local`` (``LocalBackend``: start, warm-up, then
the images), without the gRPC server around it.

``--without-bf16`` compiles as on a CPU without native bf16 (an AVX2-only one): the bf16 probe
(``edgediff.availability.cpu_supports_bf16``) answers False, so the int8 models' floating-point layers are packed and
run at fp32, as OpenVINO does there (on a bf16 CPU they are bf16, half the bytes). The kernels stay this CPU's, so
its memory is the AVX2 path's estimate and its seconds are not an AVX2 CPU's.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from typing import Any


def status_mb() -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon and RssFile of this process in MiB (from /proc/self/status)."""
    with open("/proc/self/status", encoding="utf-8") as fh:
        text = fh.read()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) / 1024
            for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}


def _rounded(phases: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {k: {n: round(v, 1) for n, v in p.items()} for k, p in phases.items()}


def pretend_no_bf16() -> None:
    """Make every loaded ``edgediff`` module's bf16 probe answer False (``--without-bf16``)."""
    import sys

    import edgediff.availability
    import edgediff.variants  # every variant module, each with its own reference to the probe

    probe = edgediff.availability.cpu_supports_bf16
    for module in list(sys.modules.values()):
        if getattr(module, "cpu_supports_bf16", None) is probe:
            module.cpu_supports_bf16 = lambda: False


def prepare_without_bf16(args: argparse.Namespace) -> None:
    """Build what the cache lacks as a CPU without bf16 would, in a child process, before measuring.

    The variant's own export child (``edgediff.artifacts.prepare_worker``) asks this CPU's real probe and would build
    a bf16 CPU's artifacts; this child runs the same worker with the probe answering False. Nothing to build: seconds.
    """
    import sys
    from pathlib import Path

    from edgediff.processes import run_child

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import fast_default_peak as peak; peak.pretend_no_bf16(); "
            "from edgediff.artifacts.prepare_worker import main; sys.exit(main(sys.argv[2:]))")
    worker = ["--model", args.model, "--variant", args.variant] + (["--weights", args.weights] if args.weights else [])
    proc = run_child([sys.executable, "-c", code, str(Path(__file__).resolve().parent), *worker], timeout_s=7200,
                     capture=True, name=f"prepare {args.variant} without bf16")
    if proc.returncode != 0:
        raise SystemExit(f"preparing {args.variant} without bf16 failed: {proc.stderr.strip()[-500:]}")


def measure_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """The in-process pipeline (``edgediff generate``/``bench``): load, build, warm-up, timed images."""
    phases = {"start": status_mb()}
    from edgediff.bench.runner import reset_peak_rss
    from edgediff.models import get_preset
    from edgediff.variants import BuildOptions, build_variant, get_variant

    phases["imports"] = status_mb()
    t0 = time.perf_counter()
    model = get_variant(args.variant).load_model(get_preset(args.model), args.weights)
    phases["model"] = status_mb()
    built = build_variant(args.variant, model, BuildOptions(threads=args.threads))
    build_s = time.perf_counter() - t0
    phases["build"] = status_mb()
    pipeline = built.pipeline(model)
    pipeline(seed=args.seed, steps=args.steps, scheduler=args.scheduler)
    phases["warm-up"] = status_mb()
    lifetime = max(p["VmHWM"] for p in phases.values())
    reset = reset_peak_rss()
    image_s = []
    for i in range(args.images):
        result = pipeline(seed=args.seed + 1 + i, steps=args.steps, scheduler=args.scheduler)
        image_s.append(result.timings.total_s)
    phases["images"] = status_mb()
    lifetime = max(lifetime, phases["images"]["VmHWM"])
    return {"build_s": round(build_s, 2), "torch_modules": model.has_modules,
            "lifetime_peak_mb": round(lifetime, 1),
            "images_peak_mb": round(phases["images"]["VmHWM"], 1) if reset else None,
            "image_s": [round(s, 3) for s in image_s],
            "median_image_s": round(statistics.median(image_s), 3) if image_s else None,
            "phases_mb": _rounded(phases)}


def measure_serving(args: argparse.Namespace) -> dict[str, Any]:
    """A serving process: one Triton part model (``--serving unet``/``vqdec``) or the local gateway backend."""
    phases = {"start": status_mb()}
    if args.serving == "local":
        from services.gateway.backends.base import GenerateArgs
        from services.gateway.backends.local import LocalBackend

        phases["imports"] = status_mb()
        t0 = time.perf_counter()
        backend = LocalBackend(args.model, weights=args.weights, default_variant=args.variant, threads=args.threads)
        backend.start()  # describes or loads the model, builds the default variant, one 1-step warm-up
        request = GenerateArgs(seed=args.seed, steps=args.steps, eta=0.0, variant=args.variant, batch=1,
                               scheduler=args.scheduler)

        def image() -> None:
            backend.generate(request, should_stop=lambda: False)
    else:
        import numpy as np

        from edgediff.artifacts.build import IO_NAMES, find_artifact
        from edgediff.artifacts.openvino_ir import FILENAME
        from edgediff.models import ModelSpec, get_preset
        from edgediff.models.weights import weights_origin
        from edgediff.variants import get_variant
        from exporters.part_runtime import PartRunner, PartSpec

        phases["imports"] = status_mb()
        t0 = time.perf_counter()
        preset = get_preset(args.model)
        fmt = get_variant(args.variant).part_format(args.serving)  # the IR this CPU runs (int8_ir_format)
        spec = ModelSpec(preset, weights_origin(preset, args.weights), preset.scheduler_config, 1.0)  # the cache key
        found = find_artifact(spec, args.serving, fmt)
        if found is None:
            raise SystemExit(f"the cache has no {fmt} {args.serving} of {args.model}: run the pipeline mode first")
        spec = PartSpec(variant=args.variant, part=args.serving, preset=preset.name, artifact=FILENAME,
                        threads=args.threads or 0)
        runner = PartRunner(spec, found[0])  # what the Python-backend model's initialize does, from its folder
        c, h, w = preset.latent_shape
        rng = np.random.default_rng(args.seed)
        if args.serving == "unet":
            inputs = {IO_NAMES["unet"][0][0]: rng.standard_normal((1, c, h, w), dtype=np.float32),
                      IO_NAMES["unet"][0][1]: np.full((1, 1), 500, dtype=np.int64)}
        else:
            inputs = {IO_NAMES["vqdec"][0][0]: rng.standard_normal((1, c, h, w), dtype=np.float32)}

        def image() -> None:  # the calls of one image: ``--steps`` UNet steps, or one decode
            for _ in range(args.steps if args.serving == "unet" else 1):
                runner(inputs)
    phases["build"] = status_mb()
    build_s = time.perf_counter() - t0
    image()
    phases["warm-up"] = status_mb()
    image_s = []
    for _ in range(args.images):
        t1 = time.perf_counter()
        image()
        image_s.append(time.perf_counter() - t1)
    phases["images"] = status_mb()
    return {"serving": args.serving, "build_s": round(build_s, 2),
            "lifetime_peak_mb": round(max(p["VmHWM"] for p in phases.values()), 1),
            "image_s": [round(s, 3) for s in image_s],
            "median_image_s": round(statistics.median(image_s), 3) if image_s else None,
            "phases_mb": _rounded(phases)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="openvino-int8")
    parser.add_argument("--model", default="celebahq-256")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--scheduler", default="unipc")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--images", type=int, default=3, help="timed images after one warm-up image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--serving", choices=("unet", "vqdec", "local"), default=None,
                        help="measure a serving process instead: a Triton part model, or the local gateway backend")
    parser.add_argument("--label", default="", help="free text copied into the output (e.g. old/new)")
    parser.add_argument("--without-bf16", action="store_true",
                        help="compile as on a CPU without native bf16 (AVX2-only): floating-point layers at fp32")
    args = parser.parse_args()
    if args.without_bf16:
        prepare_without_bf16(args)
        pretend_no_bf16()
    out = measure_serving(args) if args.serving else measure_pipeline(args)
    print(json.dumps({"label": args.label, "without_bf16": args.without_bf16, "variant": args.variant,
                      "model": args.model, "scheduler": args.scheduler,
                      "steps": args.steps, **out}))


if __name__ == "__main__":
    main()
