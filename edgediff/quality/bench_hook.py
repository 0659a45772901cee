"""The quality hook of ``edgediff bench`` on the ``digits`` preset: scores and gate per variant.

``make_quality_hook(config)`` returns a ``suite.QualityFn``. For each variant that ran it generates a fixed set of
images (``QUALITY_SAMPLES`` images from seeds 0, 1, ... in batches of 16, with the bench's steps, eta, threads and
DeepCache setting, the same seeds for every variant, apart from the timed runs so timing stays clean), scores them
(confident share, digits-FD) and applies the quality gate against ``torch-fp32``'s scores. What it returns lands in
the variant's ``quality`` field of ``report.json``; its ``summary`` line (``PASSED ...`` / ``FAILED ...``) in
``report.md``. Through a gateway, variants cannot be rebuilt here: the bench's own images are scored instead.

A variant whose gate failed must never be picked as a default: ``quality_failed(entry)`` and
``default_candidates(report)`` say which variants may be.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edgediff.models import get_preset, load_components
from edgediff.quality.gate import QualityScores, evaluate, quality_gate
from edgediff.quality.samples import sample_images
from edgediff.schedulers import DDIM, split_row
from edgediff.variants import BASELINE, BuildOptions, build_variant

logger = logging.getLogger(__name__)

QUALITY_PRESET = "digits"
"""The preset whose images the digits classifier can judge; other presets get no quality hook."""
QUALITY_SAMPLES = 64
QUALITY_SEED = 0


def make_quality_hook(config: Any, *, samples: int = QUALITY_SAMPLES) -> Any:
    """A ``QualityFn`` for a bench (``edgediff.bench.suite.BenchConfig``), or None when the preset is not ``digits``.

    Args:
        config: The bench's config (model, weights, steps, eta, threads, deepcache, through).
        samples: Images generated per variant (>= 2).
    """
    if config.model != QUALITY_PRESET:
        return None

    cache: dict[tuple[str, int], QualityScores] = {}
    state: dict[str, Any] = {}
    reference = (f"{BASELINE}@{DDIM}:{config.steps}" if getattr(config, "scheduler", DDIM) != DDIM else BASELINE)
    """The gate's reference: torch-fp32 with DDIM (the study's sampler) at the bench's steps, whatever sampler the
    rows use, so a faster sampler at fewer steps is judged against DDIM's quality."""

    def local_images(row: str, deepcache: int) -> np.ndarray:

        variant, scheduler, steps = split_row(row)
        scheduler = scheduler or getattr(config, "scheduler", DDIM)

        if "components" not in state:
            state["components"] = load_components(get_preset(config.model), config.weights,
                                                  seed=config.weights_seed, warn=False)
        components = state["components"]
        built = build_variant(variant, components, BuildOptions(threads=config.threads, deepcache_interval=deepcache))
        return sample_images(built.pipeline(components), samples=samples, steps=steps or config.steps,
                             seed=QUALITY_SEED, eta=config.eta, scheduler=scheduler)

    def scores_of(variant: str, deepcache: int, images: np.ndarray | None = None) -> QualityScores:
        key = (variant, deepcache)
        if key not in cache:
            cache[key] = evaluate(local_images(variant, deepcache) if images is None else images)
        return cache[key]

    def hook(variant: str, images: np.ndarray, context: dict[str, Any]) -> dict[str, Any] | None:
        local = getattr(config, "through", "local") == "local"
        try:
            if local:
                scores = scores_of(variant, config.deepcache)
                baseline = scores_of(reference, 1)  # the reference never uses DeepCache
                _, scheduler, steps = split_row(variant)
                source = (f"{samples} images generated for quality (seeds {QUALITY_SEED}.., "
                          f"{scheduler or getattr(config, 'scheduler', DDIM)} {steps or config.steps} steps; "
                          f"reference {BASELINE} {DDIM} {config.steps} steps)")
            else:
                base_images = context.get("baseline_images")
                scores = scores_of(variant, config.deepcache, images)
                baseline = scores_of(BASELINE, 0, base_images) if base_images is not None else None
                source = f"the bench's {images.shape[0]} images (through the gateway)"
        except Exception as exc:  # a variant that cannot generate for scoring fails its gate, loudly
            logger.warning("quality of %s could not be measured: %s", variant, exc)
            return {"summary": f"FAILED: quality could not be measured: {exc}",
                    "gate": {"passed": False, "status": "FAILED", "reasons": [f"quality not measured: {exc}"]},
                    "eligible_as_default": False}
        result: dict[str, Any] = {"scores": scores.to_dict(), "baseline": BASELINE, "source": source}
        if baseline is None:
            result.update(gate=None, summary=f"not gated (no {BASELINE} images): {scores.summary()}",
                          eligible_as_default=True)
            return result
        gate = quality_gate(scores, baseline)
        result["baseline_scores"] = baseline.to_dict()
        result["gate"] = gate.to_dict()
        result["eligible_as_default"] = gate.passed
        result["summary"] = f"{gate.status}: {scores.summary()}; " + "; ".join(gate.reasons)
        return result

    return hook


def quality_failed(entry: dict[str, Any]) -> bool:
    """True when a report entry's quality gate ran and failed."""
    quality = entry.get("quality") or {}
    gate = quality.get("gate") or {}
    return gate.get("passed") is False


def default_candidates(report: dict[str, Any]) -> list[str]:
    """Variants a report allows as a default, fastest first (total p50).

    Allowed: measured (status ``ok``) and not failing the quality gate; variants without a quality result are
    allowed (presets other than ``digits`` have no gate).
    """
    ok = [e for e in report.get("variants", []) if e.get("status") == "ok" and not quality_failed(e)]
    ok.sort(key=lambda e: ((e.get("latency") or {}).get("total", {}).get("p50_s") or float("inf")))
    return [e["name"] for e in ok]
