"""A model described without its torch modules: what the pipeline and the artifact cache need, and no more.

``LDMComponents`` holds the fp32 UNet and VQ model (about 1.3 GB for celebahq-256). A variant that runs from
exported artifacts alone (the low-memory one) needs only the preset, the weights' identity (for the cache key), the
scheduler config and the latent scaling factor: a ``ModelSpec``. ``BuiltVariant.pipeline`` accepts either.

The spec is derived from loaded components (``ModelSpec.from_components``), the single source of truth for values
such as diffusers' default ``scaling_factor``, and cached as JSON beside the artifacts, so a later process finds it
by the model's fingerprint without loading the modules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgediff.models.presets import ModelPreset, get_preset
from edgediff.models.weights import LDMComponents, WeightsOrigin, model_fingerprint

SPEC_FILE = "spec.json"


@dataclass(frozen=True)
class ModelSpec:
    """The metadata of a model, without modules.

    Attributes:
        preset: The architecture.
        weights: Where the weights came from (their hash keys the artifact cache).
        scheduler_config: ``DDIMScheduler`` keyword arguments.
        scaling_factor: Latents are divided by this before decoding.
    """

    preset: ModelPreset
    weights: WeightsOrigin
    scheduler_config: dict[str, Any]
    scaling_factor: float

    @classmethod
    def from_components(cls, components: LDMComponents) -> ModelSpec:
        """The spec of loaded components."""
        return cls(preset=components.preset, weights=components.weights,
                   scheduler_config=dict(components.scheduler_config), scaling_factor=components.scaling_factor)

    def fingerprint(self) -> str:
        """Same value as ``LDMComponents.fingerprint()`` of the same model."""
        return model_fingerprint(self.preset, self.weights)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the preset by name)."""
        return {"preset": self.preset.name, "weights": self.weights.to_dict(),
                "scheduler_config": self.scheduler_config, "scaling_factor": self.scaling_factor,
                "fingerprint": self.fingerprint()}

    def save(self, folder: Path) -> Path:
        """Write ``folder/spec.json`` atomically."""
        from edgediff.io import atomic_write_json

        path = Path(folder) / SPEC_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder: Path) -> ModelSpec:
        """Read ``folder/spec.json`` (as written by ``save``)."""
        data = json.loads((Path(folder) / SPEC_FILE).read_text(encoding="utf-8"))
        return cls(preset=get_preset(data["preset"]), weights=WeightsOrigin(**data["weights"]),
                   scheduler_config=data["scheduler_config"], scaling_factor=float(data["scaling_factor"]))
