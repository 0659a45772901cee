"""What concurrent generations cost and share in Triton: memory per ``ldm_<variant>`` instance, merged UNet executions.

Exports one variant of a preset for the cpu target into a temporary repository, serves it, and prints:

- each Python-backend stub's RSS and PSS (MiB) after load and after every ``ldm`` instance ran a generation;
- for 1 and for ``pipeline_instances`` concurrent generations of ``--steps`` steps (batch 1 each): the UNet items and
  executions Triton counted (``nv_inference_count`` / ``nv_inference_exec_count``): fewer executions than items means
  merged ones.

Usage::

    .venv/bin/python benchmarks/triton_pipeline_instances.py --model tiny --variant torch-fp32 --steps 20
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import tempfile
import threading
import urllib.request
from pathlib import Path

import numpy as np

from edgediff.constants import LDM_INPUT_SEED, LDM_INPUT_STEPS
from exporters.repository import export_repository, model_names
from exporters.targets import get_target
from services.triton.launcher import TritonServer

STUB = "triton_python_backend_stub"


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def stub_memory() -> list[tuple[str, int, int]]:
    """``(model, RSS MiB, PSS MiB)`` of every Python-backend stub process, sorted."""
    rows = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if not argv or STUB not in argv[0].decode(errors="replace"):
                continue
            model = argv[1].decode().rsplit("/", 3)[-3]  # <repo>/<model>/<version>/model.py
            rss = int(re.search(r"^VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))
            pss = int(re.search(r"^Pss:\s+(\d+)", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M).group(1))
        except (OSError, AttributeError, IndexError):  # the process ended meanwhile
            continue
        rows.append((model, rss // 1024, pss // 1024))
    return sorted(rows)


def unet_counts(metrics_url: str, model: str) -> tuple[float, float]:
    """``(items, executions)`` Triton counted for ``model``."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()

    def value(name: str) -> float:
        return float(re.search(rf'^{name}\{{model="{model}",version="1"\}} (\S+)$', text, re.M).group(1))

    return value("nv_inference_count"), value("nv_inference_exec_count")


def generate_together(grpc_url: str, model: str, count: int, steps: int) -> None:
    """``count`` batch-1 generations sent at the same instant, one client each."""
    import tritonclient.grpc as grpcclient

    barrier = threading.Barrier(count)

    def one(seed: int) -> None:
        inputs = [grpcclient.InferInput(LDM_INPUT_SEED, [1], "INT64"), grpcclient.InferInput(LDM_INPUT_STEPS, [1],
                                                                                             "INT32")]
        inputs[0].set_data_from_numpy(np.array([seed], np.int64))
        inputs[1].set_data_from_numpy(np.array([steps], np.int32))
        with grpcclient.InferenceServerClient(grpc_url) as client:
            barrier.wait()
            client.infer(model, inputs)

    threads = [threading.Thread(target=one, args=(seed,)) for seed in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main() -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--variant", default="torch-fp32")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    instances = get_target("cpu").pipeline_instances
    names = model_names(args.variant)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "model_repository"
        export_repository(model=args.model, target="cpu", variants=[args.variant], repo=repo)
        http, grpc, metrics = free_ports(3)
        server = TritonServer(repo, http_port=http, grpc_port=grpc, metrics_port=metrics, model_control="explicit",
                              load_models=list(names.values()), startup_timeout_s=600)
        server.start()
        try:
            print(f"after load (model, RSS MiB, PSS MiB): {stub_memory()}")
            generate_together(server.grpc_url, names["ldm"], instances, 2)
            print(f"after a generation on each ldm instance: {stub_memory()}")
            for count in (1, instances):
                before = unet_counts(server.metrics_url, names["unet"])
                generate_together(server.grpc_url, names["ldm"], count, args.steps)
                after = unet_counts(server.metrics_url, names["unet"])
                items, executions = (a - b for a, b in zip(after, before, strict=True))
                print(f"{count} concurrent generation(s) x {args.steps} steps: {names['unet']} ran {items:g} items "
                      f"in {executions:g} executions")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
