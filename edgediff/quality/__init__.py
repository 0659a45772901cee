"""Image quality: the trained ``digits`` reference model, its classifier, the metrics and the per-variant gate.

Modules: ``dataset`` (scikit-learn digits, fixed split), ``train`` (the recipe of ``edgediff train-reference``),
``classifier`` (the judge), ``metrics`` (confident share, Frechet distance, FID with a user's Inception), ``gate``
(``evaluate`` and ``quality_gate``), ``samples`` (the fixed image sets), ``bench_hook`` (the gate inside
``edgediff bench``); the commands are ``cli/quality.py`` and ``cli/train_reference.py``.
"""

from edgediff.quality.gate import FD_TOLERANCE, SHARE_POINTS, GateResult, QualityScores, evaluate, quality_gate

__all__ = ["FD_TOLERANCE", "SHARE_POINTS", "GateResult", "QualityScores", "evaluate", "quality_gate"]
