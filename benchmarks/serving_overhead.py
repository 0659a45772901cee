"""Serving overhead: one variant in this process vs the same variant through the gateway + Triton BLS, interleaved.

    edgediff up --profile cpu --model celebahq-256 --variants openvino-bf16-dc3 --detach
    flock /tmp/edgediff-heavy.lock .venv/bin/python benchmarks/serving_overhead.py --model celebahq-256 \
        --variant openvino-bf16-dc3 --steps 20 --rounds 8 --out reports/serving-overhead.json
    edgediff down

Each round generates one image in this process (the variant's pipeline, end to end: noise to uint8 pixels) and one
through the gateway (the client's wall time around ``Generate``: gRPC, admission, Triton's BLS pipeline model, PNG
encoding), alternating which goes first so slow drifts of the machine hit both alike. Both run the same seed and
never at the same time. The overhead is the ratio of the medians; the per-round ratios and the gateway's own
timings (server total, its denoise and decode) show where any difference comes from.

Weights do not change latency; the in-process model is built from the same preset (synthetic unless ``--weights``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from edgediff.io import atomic_write_text
from edgediff.models import get_preset
from edgediff.variants import BuildOptions, build_variant, get_variant
from edgediff.variants.base import resolve_threads
from services.gateway.bench_target import connect, gateway_variants

MS_PER_S = 1000.0


def _local(pipeline: Any, seed: int, steps: int) -> dict[str, float]:
    t0 = time.perf_counter()
    result = pipeline(seed=seed, steps=steps)
    wall = time.perf_counter() - t0
    return {"total_s": wall, "denoise_s": result.timings.denoise_s, "decode_s": result.timings.decode_s}


def _served(client: Any, variant: str, seed: int, steps: int) -> dict[str, float]:
    t0 = time.perf_counter()
    response = client.generate(seed=seed, steps=steps, variant=variant, timeout_s=600.0)
    wall = time.perf_counter() - t0
    t = response.timings
    return {"total_s": wall, "server_total_s": t.total_ms / MS_PER_S, "queue_s": t.queue_ms / MS_PER_S,
            "denoise_s": t.denoise_ms / MS_PER_S, "decode_s": t.decode_ms / MS_PER_S}


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="celebahq-256")
    parser.add_argument("--variant", required=True)
    parser.add_argument("--weights", default=None, metavar="DIR")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gateway", default="127.0.0.1:50051", metavar="HOST:PORT")
    parser.add_argument("--out", type=Path, default=None, help="write the measurements as JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")

    client = connect(args.gateway)
    served = gateway_variants(client, args.model)
    available, reason = served.get(args.variant, (False, "not served by this gateway"))
    if not available:
        print(f"serving_overhead: the gateway at {args.gateway} cannot run {args.variant}: {reason}", file=sys.stderr)
        return 2

    variant = get_variant(args.variant)
    components = variant.load_model(get_preset(args.model), args.weights)
    built = build_variant(args.variant, components, BuildOptions(threads=resolve_threads()))
    pipeline = built.pipeline(components)
    print(f"{args.variant} on {args.model} ({components.weights.kind} weights), {args.steps} steps, "
          f"{args.rounds} rounds after {args.warmup} warm-up(s) each side", flush=True)

    for _ in range(args.warmup):
        _local(pipeline, args.seed, args.steps)
        _served(client, args.variant, args.seed, args.steps)
    local: list[dict[str, float]] = []
    gateway: list[dict[str, float]] = []
    for index in range(args.rounds):
        seed = args.seed + index
        order = ("local", "gateway") if index % 2 == 0 else ("gateway", "local")
        for side in order:
            if side == "local":
                local.append(_local(pipeline, seed, args.steps))
            else:
                gateway.append(_served(client, args.variant, seed, args.steps))
        print(f"  round {index + 1}: in-process {local[-1]['total_s']:.3f} s, gateway {gateway[-1]['total_s']:.3f} s "
              f"(server {gateway[-1]['server_total_s']:.3f} s)", flush=True)
    client.close()

    ratios = [g["total_s"] / loc["total_s"] for g, loc in zip(gateway, local, strict=True)]
    summary = {
        "in_process_total_p50_s": _median(local, "total_s"),
        "gateway_total_p50_s": _median(gateway, "total_s"),
        "overhead_of_medians": _median(gateway, "total_s") / _median(local, "total_s") - 1.0,
        "overhead_median_of_round_ratios": statistics.median(ratios) - 1.0,
        "in_process_denoise_p50_s": _median(local, "denoise_s"),
        "served_denoise_p50_s": _median(gateway, "denoise_s"),
        "in_process_decode_p50_s": _median(local, "decode_s"),
        "served_decode_p50_s": _median(gateway, "decode_s"),
        "grpc_and_png_p50_s": statistics.median(g["total_s"] - g["server_total_s"] for g in gateway),
    }
    print(json.dumps(summary, indent=2))
    if args.out is not None:
        record = {"model": args.model, "variant": args.variant, "steps": args.steps, "rounds": args.rounds,
                  "warmup": args.warmup, "weights": components.weights.kind, "gateway": args.gateway,
                  "threads": resolve_threads(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "summary": summary, "in_process": local, "through_gateway": gateway}
        atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
