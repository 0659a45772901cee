"""A local gateway short of memory takes its defaults from this machine's ``edgediff tune --max-memory`` profile.

The profiles here are written by the test (fake choices), not measured.
"""

from __future__ import annotations

import argparse

import pytest

from cli.serve import sampler_defaults
from edgediff.bench.tune import gate_settings, machine_fingerprint, profile_path, write_profile
from edgediff.schedulers import scheduler_settings
from edgediff.variants import BASELINE
from services.gateway.backends.local import PHONE_SAMPLER, PHONE_VARIANT, choose_default_variant, low_memory_defaults

GIB = 1024**3


@pytest.fixture
def profiles(tmp_path, monkeypatch):
    """An empty cache (so no profile of the machine's own is read); returns a function writing a budget profile."""
    monkeypatch.setenv("EDGEDIFF_CACHE_DIR", str(tmp_path))

    def write(mb: int, variant: str, scheduler: str, steps: int) -> None:
        choice = {"variant": variant, "scheduler": scheduler, "steps": steps, "threads": 2,
                  "scheduler_settings": scheduler_settings(scheduler), "variant_settings": gate_settings(variant)}
        write_profile({"schema": 1, "model": "tiny", "machine": machine_fingerprint(), "choice": choice},
                      profile_path("tiny", max_memory_mb=mb))

    return write


def test_without_a_budget_profile_the_phone_variant_gets_the_few_step_sampler(profiles):
    found = low_memory_defaults("tiny", GIB)
    assert (found["variant"], found["scheduler"], found["steps"]) == (PHONE_VARIANT, *PHONE_SAMPLER)
    assert PHONE_SAMPLER == ("unipc", 5)
    assert low_memory_defaults("tiny", 4 * GIB) is None  # a roomy budget without a profile: the usual defaults
    assert choose_default_variant(4 * GIB, "tiny") == (BASELINE, "")


def test_the_largest_fitting_budget_profile_is_the_default(profiles):
    profiles(600, "openvino-int8-lowmem", "ddim", 20)
    profiles(3500, "openvino-int8", "unipc", 5)
    variant, why = choose_default_variant(GIB, "tiny")
    assert variant == "openvino-int8-lowmem" and "tune profile for 600 MiB" in why
    assert choose_default_variant(8 * GIB, "tiny")[0] == "openvino-int8"
    assert choose_default_variant(500 * 1024**2, "tiny")[0] == PHONE_VARIANT  # no profile fits: the phone default


def test_serve_takes_scheduler_and_steps_from_the_budget_default(profiles):
    args = argparse.Namespace(backend="local", model="tiny", variant=None, scheduler=None, steps=None,
                              max_memory=GIB)
    assert sampler_defaults(args) == {"scheduler": "unipc", "steps": 5}
    assert args.variant is None  # the backend chooses the same variant itself, and says why
    profiles(900, "torch-int8-lowmem-dc3", "dpmpp", 8)
    assert sampler_defaults(args) == {"scheduler": "dpmpp", "steps": 8}
    args.steps = 12
    assert sampler_defaults(args) == {"scheduler": "dpmpp", "steps": 12}  # a flag still wins
