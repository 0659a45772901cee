"""Time one call of each OpenVINO IR given, interleaved round by round, and print the medians.

Each IR is compiled the way ``openvino-int8`` compiles on this CPU (``compile_ir``: static batch 1, the variant's
inference precision, ``--threads``), called once to warm up, then once per round in turn, so slow phases of a shared
machine hit every IR alike. Inputs are random (the timestep input 500). Run it on a quiet machine::

    flock /tmp/edgediff-heavy.lock .venv/bin/python benchmarks/ir_call_time.py A/model.xml B/model.xml --rounds 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("irs", nargs="+", type=Path, help="model.xml files")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np

    from edgediff.bench.tune import machine_fingerprint
    from edgediff.variants import get_variant
    from edgediff.variants.openvino_runtime import compile_ir

    precision = get_variant("openvino-int8").compile_precision()
    calls = {}
    for path in args.irs:
        compiled = compile_ir(path, precision=precision, threads=args.threads, batch=1)
        request = compiled.create_infer_request()
        generator = np.random.default_rng(0)
        inputs = [np.full(list(port.get_shape()), 500, dtype=port.get_element_type().to_dtype())
                  if "timestep" in port.get_any_name()
                  else generator.standard_normal(list(port.get_shape())).astype(np.float32)
                  for port in compiled.inputs]
        request.infer(inputs)
        calls[str(path)] = (request, inputs)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, (request, inputs) in calls.items():
            t0 = time.perf_counter()
            request.infer(inputs)
            times[name].append(time.perf_counter() - t0)
    print(json.dumps({"machine": machine_fingerprint(), "precision": precision, "threads": args.threads,
                      "rounds": args.rounds,
                      "median_s": {name: round(statistics.median(t), 4) for name, t in times.items()},
                      "all_s": {name: [round(x, 3) for x in t] for name, t in times.items()}}, indent=1))


if __name__ == "__main__":
    main()
