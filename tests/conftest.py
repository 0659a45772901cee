"""Suite-wide fixtures: an isolated artifact cache, and the tiny preset's components; ``gpu`` tests skip here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exports go to a per-session cache so tests never depend on ~/.cache/edgediff."""
    if "EDGEDIFF_TEST_CACHE_DIR" in os.environ:  # reuse across runs when asked to (local development)
        path = Path(os.environ["EDGEDIFF_TEST_CACHE_DIR"])
    else:
        path = tmp_path_factory.mktemp("edgediff-cache")
    os.environ["EDGEDIFF_CACHE_DIR"] = str(path)
    os.environ.pop("EDGEDIFF_WEIGHTS", None)
    return path


@pytest.fixture(scope="session")
def tiny_components():
    """The tiny preset with seeded synthetic weights (shared; tests must not modify it)."""
    from edgediff.models import get_preset, load_components

    return load_components(get_preset("tiny"), warn=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every ``@pytest.mark.gpu`` test, with the reason, where torch sees no CUDA device.

    ``pytest -m gpu`` selects them on a CUDA machine (``benchmarks/gpu_check.sh`` does); each may still skip for a
    package it needs (tensorrt, onnxruntime-gpu, tritonserver), naming it.
    """
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    from edgediff.availability import is_cuda_available

    if is_cuda_available():
        return
    skip = pytest.mark.skip(reason="gpu: needs a CUDA device (torch.cuda.is_available() is False here)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
