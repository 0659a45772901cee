"""Fixtures of the quality tests: the committed digits model and the torch-fp32 baseline's scores."""

from __future__ import annotations

import pytest

from .helpers import generate


@pytest.fixture(scope="session")
def digits_components():
    """The committed ``digits`` weights (shared: tests must not modify them; deep-copy to perturb)."""
    from edgediff.models import get_preset, load_components

    return load_components(get_preset("digits"), warn=False)


@pytest.fixture(scope="session")
def baseline_scores(digits_components):
    """torch-fp32's scores on the gate seeds."""
    from edgediff.quality.gate import evaluate

    return evaluate(generate(digits_components, "torch-fp32"))
