"""Quality scores of a set of generated images, and the gate a variant must pass against the baseline.

``evaluate`` scores uint8 images with the digits classifier: the confident share (images whose top class has
probability >= 0.9) and the digits-FD (Frechet distance between classifier features of the images and of the 360
held-out real digits). ``quality_gate`` compares a variant's scores with ``torch-fp32``'s on the same seeds: the
digits-FD may be at most 10 % higher and the confident share at most 5 points lower. Both limits are one-sided: a
variant that scores better than the baseline passes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgediff.errors import InvalidArgumentError
from edgediff.quality.classifier import classify, load_classifier
from edgediff.quality.dataset import load_split
from edgediff.quality.metrics import CONFIDENCE_THRESHOLD, FeatureStats, confident_share, fid, frechet_distance

FD_TOLERANCE = 0.10
"""Largest allowed relative increase of the digits-FD over the baseline's."""
SHARE_POINTS = 5.0
"""Largest allowed drop of the confident share below the baseline's, in percentage points."""


@dataclass(frozen=True)
class QualityScores:
    """Quality of one set of images.

    Attributes:
        samples: Number of images scored.
        confident_share: Share (0..1) classified with probability >= ``threshold``.
        mean_confidence: Mean top-class probability.
        digits_fd: Frechet distance of classifier features to the held-out real digits (lower is better).
        class_counts: How many images fell in each class 0-9 (a collapsed model shows up here).
        threshold: The confidence threshold used.
        fid: FID against a user's reference folder, when asked for.
    """

    samples: int
    confident_share: float
    mean_confidence: float
    digits_fd: float
    class_counts: list[int] = field(default_factory=list)
    threshold: float = CONFIDENCE_THRESHOLD
    fid: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    def summary(self) -> str:
        """One line: ``confident 93.8% (64 samples), digits-FD 2.41``."""
        text = f"confident {100 * self.confident_share:.1f}% ({self.samples} samples), digits-FD {self.digits_fd:.3f}"
        return text + (f", FID {self.fid:.2f}" if self.fid is not None else "")


@dataclass(frozen=True)
class GateResult:
    """Whether a variant keeps the baseline's image quality.

    Attributes:
        passed: True when every criterion holds.
        reasons: One line per criterion (``digits-FD 2.51 <= 2.65 (baseline 2.41 + 10%)``); failing ones first.
    """

    passed: bool
    reasons: list[str]

    @property
    def status(self) -> str:
        """``PASSED`` or ``FAILED`` (as the reports print it)."""
        return "PASSED" if self.passed else "FAILED"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"passed": self.passed, "status": self.status, "reasons": list(self.reasons)}


def quality_gate(
    scores: QualityScores,
    baseline_scores: QualityScores,
    fd_tolerance: float = FD_TOLERANCE,
    share_points: float = SHARE_POINTS,
) -> GateResult:
    """Compare a variant's scores with the baseline's (same seeds, same sample count).

    Args:
        scores: The variant's.
        baseline_scores: ``torch-fp32``'s.
        fd_tolerance: Allowed relative digits-FD increase (0.10 = +10 %).
        share_points: Allowed confident-share drop in percentage points.
    """
    fd_limit = baseline_scores.digits_fd * (1.0 + fd_tolerance)
    share_limit = baseline_scores.confident_share - share_points / 100.0
    fd_ok = np.isfinite(scores.digits_fd) and scores.digits_fd <= fd_limit
    share_ok = scores.confident_share >= share_limit - 1e-12
    fd_line = (f"digits-FD {scores.digits_fd:.4f} {'<=' if fd_ok else '>'} {fd_limit:.4f} "
               f"(baseline {baseline_scores.digits_fd:.4f} + {100 * fd_tolerance:g}%)")
    share_line = (f"confident share {100 * scores.confident_share:.1f}% {'>=' if share_ok else '<'} "
                  f"{100 * share_limit:.1f}% (baseline {100 * baseline_scores.confident_share:.1f}% - "
                  f"{share_points:g} points)")
    checks = [(fd_ok, fd_line), (share_ok, share_line)]
    if scores.samples != baseline_scores.samples:
        checks.append((False, f"sample counts differ: {scores.samples} vs baseline {baseline_scores.samples}"))
    reasons = [line for ok, line in checks if not ok] + [line for ok, line in checks if ok]
    return GateResult(passed=all(ok for ok, _ in checks), reasons=reasons)


_REFERENCE_CACHE: dict[int, tuple[Any, FeatureStats]] = {}


def reference_stats(classifier: Any) -> FeatureStats:
    """Digits-FD reference: classifier features of the 360 held-out real digits (as uint8, like generated images).

    Cached per classifier object (the cache holds the object, so its id cannot be reused while cached).
    """
    hit = _REFERENCE_CACHE.get(id(classifier))
    if hit is not None and hit[0] is classifier:
        return hit[1]
    _, test = load_split()
    stats = FeatureStats.of(classify(classifier, test.uint8_nhwc()).features)
    if len(_REFERENCE_CACHE) >= 4:
        _REFERENCE_CACHE.clear()
    _REFERENCE_CACHE[id(classifier)] = (classifier, stats)
    return stats


def evaluate(
    images_uint8_nhwc: np.ndarray,
    *,
    classifier: Any = None,
    fid_reference: str | os.PathLike[str] | None = None,
    inception_weights: str | os.PathLike[str] | None = None,
) -> QualityScores:
    """Score uint8 ``[N, H, W, 3]`` images (N >= 2).

    Args:
        images_uint8_nhwc: The generated images.
        classifier: A ``DigitsClassifier``; default the committed one.
        fid_reference: A folder of reference images for FID (with ``inception_weights``).
        inception_weights: The TorchScript Inception file for FID.

    Raises:
        InvalidArgumentError: fewer than 2 images, or only one of the two FID arguments.
        WeightsError: a weights file is missing or broken.
    """
    if (fid_reference is None) != (inception_weights is None):
        raise InvalidArgumentError("--fid-reference and --inception-weights must be given together")
    images = np.asarray(images_uint8_nhwc)
    if images.ndim != 4 or images.shape[0] < 2:
        raise InvalidArgumentError(f"need at least 2 images [N, H, W, C] to score, got shape {list(images.shape)}")
    model = classifier if classifier is not None else load_classifier()
    out = classify(model, images)
    top = out.probs.max(axis=1)
    counts = np.bincount(out.probs.argmax(axis=1), minlength=out.probs.shape[1])
    fd = frechet_distance(FeatureStats.of(out.features), reference_stats(model))
    fid_value = fid(images, fid_reference, inception_weights) if fid_reference is not None else None
    return QualityScores(
        samples=int(images.shape[0]),
        confident_share=confident_share(out.probs),
        mean_confidence=float(top.mean()),
        digits_fd=fd,
        class_counts=[int(c) for c in counts],
        fid=fid_value,
    )
