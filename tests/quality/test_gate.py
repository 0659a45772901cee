"""The quality gate: its rule on made-up scores, every CPU variant on the trained digits model, a broken variant."""

import copy

import pytest
import torch

from edgediff.quality.gate import QualityScores, evaluate, quality_gate
from edgediff.variants import BASELINE, available_variants, variant_names

from .helpers import GATE_SAMPLES, generate

SLOW_TO_BUILD = {
    "compile": "torch.compile takes ~40 s to compile even small models: left out of the fast suite",
    "openvino-int8-lowmem": "NNCF calibration of the low-memory split takes ~40 s: left out of the fast suite "
                            "(int8 is covered by openvino-int8)",
    "openvino-int8-lowmem-dc3": "NNCF calibration of the low-memory split takes ~40 s: left out of the fast suite "
                                "(int8 is covered by openvino-int8)",
}
KNOWN_FAILURES = {
    "openvino-int8-dc3": (
        "int8 and DeepCache errors add up on the 1.1 M-parameter digits UNet: digits-FD 215-219 > 199.6 (torch-fp32 "
        "181.5, measured 2026-11-25), so the gate marks it FAILED, as it should; openvino-int8 alone passes (195) "
        "and so does openvino-bf16-dc3; non-strict so a better calibration shows up as XPASS"
    ),
    "openvino-fp32-int8dec-dc3": (
        "the int8 decoder's error on top of DeepCache's: digits-FD 204.9 > 199.6 (measured 2026-12-02, "
        "docs/quality.md) while openvino-fp32-dc3 (198.1) and openvino-fp32-int8dec pass; the gate marks it FAILED "
        "and tune never chooses it; non-strict so a better decoder calibration shows up as XPASS"
    ),
}


def _scores(share=0.9, fd=2.0, samples=64):
    return QualityScores(samples=samples, confident_share=share, mean_confidence=share, digits_fd=fd)


def test_gate_rule_is_one_sided_with_the_documented_limits():
    base = _scores()
    assert quality_gate(_scores(), base).passed
    assert quality_gate(_scores(share=0.86, fd=2.19), base).passed  # -4 points, +9.5 %
    assert quality_gate(_scores(share=1.0, fd=0.5), base).passed  # better than the baseline is fine
    worse_fd = quality_gate(_scores(fd=2.21), base)
    assert not worse_fd.passed and worse_fd.status == "FAILED"
    assert worse_fd.reasons[0].startswith("digits-FD 2.2100 > 2.2000")
    worse_share = quality_gate(_scores(share=0.84), base)
    assert not worse_share.passed
    assert worse_share.reasons[0].startswith("confident share 84.0% < 85.0%")
    assert not quality_gate(_scores(samples=32), base).passed  # different seeds are not comparable
    assert not quality_gate(_scores(fd=float("nan")), base).passed
    assert quality_gate(_scores(fd=2.5), base, fd_tolerance=0.3).passed
    assert quality_gate(_scores(), base).to_dict()["status"] == "PASSED"


CPU_VARIANTS = [name for name in variant_names() if name != BASELINE]


@pytest.mark.slow
@pytest.mark.parametrize("name", CPU_VARIANTS)
def test_every_available_variant_passes_the_gate_on_digits(name, request, digits_components, baseline_scores):
    available = {v.name for v in available_variants()}
    if name not in available:
        pytest.skip(f"{name} is unavailable here")
    if name in SLOW_TO_BUILD:
        pytest.skip(SLOW_TO_BUILD[name])
    if name in KNOWN_FAILURES:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_FAILURES[name], strict=False))
    scores = evaluate(generate(digits_components, name))
    gate = quality_gate(scores, baseline_scores)
    assert gate.passed, f"{name}: {gate.reasons}"
    assert scores.samples == GATE_SAMPLES


@pytest.mark.slow
def test_baseline_scores_are_those_of_a_trained_model(baseline_scores):
    # the gate compares against these: they must describe recognisable digits, not noise
    assert baseline_scores.confident_share >= 0.75
    assert sum(1 for c in baseline_scores.class_counts if c > 0) >= 6


def _perturbed(components, part: str, relative_std: float):
    """A copy of the components whose ``part`` has Gaussian noise of ``relative_std`` x each tensor's std added."""
    broken = copy.copy(components)
    module = copy.deepcopy(getattr(components, part))
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=generator) * p.std() * relative_std)
    setattr(broken, part, module)
    return broken


@pytest.mark.slow
@pytest.mark.parametrize(("part", "relative_std"), [("unet", 0.3), ("vqvae", 0.3)])
def test_a_variant_with_perturbed_weights_fails_the_gate(part, relative_std, digits_components, baseline_scores):
    broken = _perturbed(digits_components, part, relative_std)
    scores = evaluate(generate(broken, BASELINE))
    gate = quality_gate(scores, baseline_scores)
    assert not gate.passed, f"perturbed {part} ({relative_std}) still passed: {gate.reasons}"
