"""Fixtures of the performance tests: the tiny preset's baseline generation, shared by every test here."""

from __future__ import annotations

import pytest

from edgediff.variants import BASELINE, build_variant

STEPS = 8
SEED = 3


def rel_err(a, b) -> float:
    """Relative L2 error of ``a`` against ``b``."""
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="session")
def baseline_result(tiny_components):
    """torch-fp32 on the tiny preset: the reference every fast variant is compared with."""
    return build_variant(BASELINE, tiny_components).pipeline(tiny_components)(seed=SEED, steps=STEPS)


def skip_unless_available(name: str) -> None:
    """Skip the test, with the registry's reason, when variant ``name`` cannot run here."""
    from edgediff.variants import get_variant

    avail = get_variant(name).availability()
    if not avail.ok:
        pytest.skip(f"{name}: {avail.reason}")
