"""Fixtures of the deployment checks: the parsed files, and a temporary edgediff cache for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgediff.constants import ENV_CACHE_DIR

from .deployfiles import PROMETHEUS_FILE, load_compose, load_dashboard


@pytest.fixture(scope="session", autouse=True)
def _edgediff_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("edgediff-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_CACHE_DIR, str(folder))
        yield folder


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


@pytest.fixture(scope="session")
def prometheus_config() -> dict[str, Any]:
    return yaml.safe_load(PROMETHEUS_FILE.read_text())
