"""The local gateway picks the plain-PyTorch low-memory variant when memory is short, and says so."""

from __future__ import annotations

import argparse

import pytest

from cli.args import parse_memory_size
from edgediff.models.spec import ModelSpec
from edgediff.variants import BASELINE
from services.gateway.backends.base import GenerateArgs
from services.gateway.backends.local import LOWMEM_BELOW_BYTES, PHONE_VARIANT, LocalBackend, choose_default_variant


def test_short_budget_chooses_the_phone_variant_and_says_why():
    variant, why = choose_default_variant(512 * 1024**2)
    assert variant == PHONE_VARIANT and "--max-memory" in why and "0.50 GiB" in why
    assert choose_default_variant(LOWMEM_BELOW_BYTES) == (BASELINE, "")


def test_total_ram_decides_without_a_budget(monkeypatch):
    import psutil

    class Memory:
        total = 2 * 1024**3

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory())
    variant, why = choose_default_variant(None)
    assert variant == PHONE_VARIANT and "total RAM 2.00 GiB" in why


def test_an_explicit_variant_wins():
    backend = LocalBackend("tiny", default_variant=BASELINE, max_memory=1024**3, preload=False)
    assert backend.default_variant() == BASELINE and backend.variant_status(BASELINE).reason == ""


def test_local_backend_serves_the_phone_variant_from_a_spec(tmp_path):
    backend = LocalBackend("tiny", max_memory=1024**3, preload=False, threads=1)
    assert backend.default_variant() == PHONE_VARIANT
    backend.start()
    assert isinstance(backend.components, ModelSpec)  # the fp32 modules were never built
    status = {name: backend.variant_status(name) for name in backend.known_variants()}
    assert status[PHONE_VARIANT].available and "memory is short" in status[PHONE_VARIANT].reason
    assert not status[BASELINE].available and "--allow-variants" in status[BASELINE].reason  # only the default
    result = backend.generate(GenerateArgs(seed=1, steps=2, eta=0.0, variant=PHONE_VARIANT, batch=1),
                              should_stop=lambda: False)
    assert len(result.images) == 1 and result.images[0][:8] == b"\x89PNG\r\n\x1a\n"
    assert result.model == "tiny"


@pytest.mark.parametrize(("text", "expected"), [("600M", 600 * 1024**2), ("1.5G", int(1.5 * 1024**3)),
                                                ("123456", 123456), ("2GiB", 2 * 1024**3)])
def test_memory_sizes_parse(text, expected):
    assert parse_memory_size(text) == expected


@pytest.mark.parametrize("text", ["", "-1G", "lots", "0"])
def test_bad_memory_sizes_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="--max-memory"):
        parse_memory_size(text)
