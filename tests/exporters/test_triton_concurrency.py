"""Concurrent generations in a real tritonserver: they progress at once and share UNet executions.

``ldm_<variant>`` has the target's ``pipeline_instances`` instances (one generation each); the part models' dynamic
batcher merges the UNet requests of generations that queue together. Triton's own metrics tell: for ``unet_<variant>``
``nv_inference_count`` counts items and ``nv_inference_exec_count`` executions, so with batch-1 generations fewer
executions than items means merged executions. The served images still equal in-process generation, and DeepCache's
stateful UNet keeps each image's feature apart (one sequence per image, whatever the generation).
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from typing import Any

import numpy as np
import pytest

from edgediff.constants import LDM_OUTPUT_IMAGE, LDM_OUTPUT_TIMINGS, METRIC_DEEPCACHE_OPEN_SEQUENCES
from edgediff.variants import get_variant
from exporters.repository import model_names
from exporters.targets import TARGETS
from tests.exporters.helpers import assert_same_images, in_process, ldm_inputs, serve_tiny

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PLAIN = "torch-fp32"  # weights only: nothing to build
DEEPCACHE = "openvino-fp32-dc3"
GENERATIONS = TARGETS["cpu"].pipeline_instances
STEPS = 8
MERGED_MAX_PIXEL_DIFF = 8
MERGED_MEAN_PIXEL_DIFF = 0.5
"""A generation whose UNet steps ran merged with others' computed them at another batch size, where CPU kernels round
differently: measured max 3 levels, mean 0.17 over the image (one of four generations; the others were identical). A
generation that used another's latents or feature would be off by tens of levels everywhere."""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    variants = [PLAIN] + ([DEEPCACHE] if get_variant(DEEPCACHE).availability().ok else [])
    yield from serve_tiny(tmp_path_factory.mktemp("triton-concurrency") / "model_repository", variants)


def metrics(server: Any) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        return response.read().decode()


def counter(text: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}\{{model="{model}",version="1"\}} (\S+)$', text, re.M)
    assert match, f"no {name} for {model}"
    return float(match.group(1))


def unet_counts(server: Any, model: str) -> tuple[float, float]:
    """``(items, executions)`` of ``model`` so far."""
    text = metrics(server)
    return counter(text, "nv_inference_count", model), counter(text, "nv_inference_exec_count", model)


def run_together(server: Any, model: str, requests: list[dict[str, int]]) -> tuple[list[dict[str, Any]], float]:
    """Send ``requests`` (``ldm_inputs`` keywords) at the same instant, one client per thread.

    Returns each request's result and client-side start/end times, and the wall time of them all, seconds.
    """
    import tritonclient.grpc as grpcclient

    barrier = threading.Barrier(len(requests))
    done: list[dict[str, Any]] = [{} for _ in requests]

    def one(index: int) -> None:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            barrier.wait()
            t0 = time.perf_counter()
            try:
                result = client.infer(model, ldm_inputs(**requests[index]), client_timeout=300)
                done[index].update(result=result)
            except Exception as exc:  # reported by the caller's assertion
                done[index].update(error=exc)
            done[index].update(start=t0, end=time.perf_counter())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - t0
    errors = [d["error"] for d in done if "error" in d]
    assert not errors, errors
    return done, wall_s


def test_concurrent_generations_overlap_and_share_unet_executions(server, tiny_components):
    names = model_names(PLAIN)
    run_together(server, names["ldm"], [{"seed": 100 + i, "steps": 2} for i in range(GENERATIONS)])  # warm stubs
    before = unet_counts(server, names["unet"])
    requests = [{"seed": i, "steps": STEPS} for i in range(GENERATIONS)]
    done, wall_s = run_together(server, names["ldm"], requests)
    items, executions = (a - b for a, b in zip(unet_counts(server, names["unet"]), before, strict=True))
    # every generation ran each of its steps on the UNet model, batch 1 each ...
    assert items == GENERATIONS * STEPS
    # ... and at least one execution merged the steps of several generations
    assert executions < items, f"{executions:g} executions for {items:g} UNet items: nothing was merged"
    # they overlapped in time: each was still running when the last one started, and Triton spent more generation
    # time (the sum of each one's own total) than the wall clock of all of them
    assert max(d["start"] for d in done) < min(d["end"] for d in done)
    served_s = sum(float(d["result"].as_numpy(LDM_OUTPUT_TIMINGS)[-1]) for d in done)
    assert served_s > wall_s, f"generations took {served_s:.2f} s in all within {wall_s:.2f} s: they ran one by one"
    for request, d in zip(requests, done, strict=True):  # a merged execution only moves the last float bits
        expected = in_process(tiny_components, PLAIN, seed=request["seed"], steps=STEPS)
        assert_close_images(d["result"].as_numpy(LDM_OUTPUT_IMAGE), expected.images)


def assert_close_images(got: np.ndarray, expected: np.ndarray) -> None:
    """``got`` is ``expected`` up to the float rounding of a different batch size (``MERGED_MAX_PIXEL_DIFF``)."""
    assert got.shape == expected.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= MERGED_MAX_PIXEL_DIFF and diff.mean() <= MERGED_MEAN_PIXEL_DIFF, (diff.max(), diff.mean())


def test_concurrent_deepcache_generations_keep_each_images_feature(server, tiny_components):
    if not get_variant(DEEPCACHE).availability().ok:
        pytest.skip(f"{DEEPCACHE} unavailable here: {get_variant(DEEPCACHE).availability().reason}")
    names = model_names(DEEPCACHE)
    requests = [{"seed": 20 + i, "steps": 7, "batch": 1 + i % 2} for i in range(GENERATIONS)]
    done, _ = run_together(server, names["ldm"], requests)
    for request, d in zip(requests, done, strict=True):  # each image used its own cached feature, not another's
        expected = in_process(tiny_components, DEEPCACHE, **request)
        assert_same_images(d["result"].as_numpy(LDM_OUTPUT_IMAGE), expected.images)
    open_now = re.search(rf'^{METRIC_DEEPCACHE_OPEN_SEQUENCES}\{{model="{names["unet"]}"\}} (\S+)$', metrics(server),
                         re.M)
    assert open_now and float(open_now.group(1)) == 0  # every generation closed its images' sequences


def test_the_gateways_triton_backend_reads_the_capacity_from_the_ldm_config(server):
    from services.gateway.backends.triton import TritonBackend

    backend = TritonBackend(server.grpc_url, default_variant=PLAIN, health_interval_s=60)
    backend.start()  # probes once: READY models, then the default variant's ldm config
    try:
        assert backend.healthy()
        assert backend.capacity() == GENERATIONS  # the gateway's default --max-concurrency
    finally:
        backend.close()
