"""Suite-wide fixtures: an isolated artifact cache, and the tiny preset's components."""

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
