"""The one model type: a model's metadata, and its torch modules loaded on first use.

A ``ModelSpec`` is what the pipeline, the variants and the artifact cache are given. It always knows the preset, the
weights' identity (their hash keys the artifact cache), the scheduler config and the latent scaling factor; the fp32
UNet and VQ model (about 1.3 GB for celebahq-256) are loaded only when something asks for them (``modules()``,
``unet``, ``vqvae``), once. A variant that runs from exported artifacts alone (the low-memory ones) therefore never
builds them: it gets a spec read from the artifact cache (``ModelSpec.load``), found by the model's fingerprint.

``load_components`` loads a model eagerly (modules included), the usual way in; ``describe_model`` describes it
from its configs without building any module; ``save_components`` writes one as a weights folder.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import edgediff.models.weights as model_weights
from edgediff.errors import WeightsError
from edgediff.io import atomic_write_json
from edgediff.models.presets import ModelPreset, get_preset
from edgediff.models.weights import LDMModules, WeightsOrigin, model_fingerprint

SPEC_FILE = "spec.json"

_LOAD_LOCK = threading.Lock()
"""Serialises first loads of modules (rare and heavy), so two threads never load one model twice."""


class ModelSpec:
    """A model: what every user of it needs, plus its torch modules on demand.

    Args:
        preset: The architecture.
        weights: Where the weights came from (their hash keys the artifact cache).
        scheduler_config: ``DDIMScheduler`` keyword arguments.
        scaling_factor: Latents are divided by this before decoding.
        modules: The loaded modules, when the caller has them; None loads them from ``weights`` on first use.
    """

    def __init__(self, preset: ModelPreset, weights: WeightsOrigin, scheduler_config: dict[str, Any],
                 scaling_factor: float, *, modules: LDMModules | None = None) -> None:
        self.preset = preset
        self.weights = weights
        self.scheduler_config = dict(scheduler_config)
        self.scaling_factor = float(scaling_factor)
        self._modules = modules

    def __repr__(self) -> str:
        state = "loaded" if self.has_modules else "not loaded"
        return f"ModelSpec({self.preset.name}, weights {self.weights.label()}, modules {state})"

    # --- the torch modules ------------------------------------------------------------------------------------------

    @property
    def has_modules(self) -> bool:
        """True once the torch modules are in memory (a low-memory variant's model never has them)."""
        return self._modules is not None

    def modules(self) -> LDMModules:
        """The UNet and VQ model, loaded from ``weights`` on the first call (fp32, eval mode, CPU).

        Raises:
            WeightsError: the weights cannot be loaded, or they are no longer the ones this spec describes (the
                folder changed since, or ``$EDGEDIFF_WEIGHTS`` now points elsewhere).
        """
        if self._modules is None:
            with _LOAD_LOCK:
                if self._modules is None:
                    modules, _, origin = model_weights.load_modules(self.preset, self.weights.path,
                                                                    seed=self.weights.seed or 0, warn=False)
                    if origin.sha256 != self.weights.sha256:
                        raise WeightsError(f"weights of {self.preset.name} changed: expected {self.weights.label()}, "
                                           f"found {origin.label()}")
                    self._modules = modules
        return self._modules

    @property
    def unet(self) -> Any:
        """``diffusers.UNet2DModel`` (loads the modules on first use)."""
        return self.modules().unet

    @unet.setter
    def unet(self, module: Any) -> None:  # a copy of the model with other weights: copy.copy, then set
        self._modules = LDMModules(unet=module, vqvae=self.vqvae)

    @property
    def vqvae(self) -> Any:
        """``diffusers.VQModel``; its ``decode`` is the image decoder (loads the modules on first use)."""
        return self.modules().vqvae

    @vqvae.setter
    def vqvae(self, module: Any) -> None:
        self._modules = LDMModules(unet=self.unet, vqvae=module)

    # --- identity and persistence -----------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """Content hash of architecture + weights: the cache key base for exported artifacts."""
        return model_fingerprint(self.preset, self.weights)

    @classmethod
    def from_components(cls, model: ModelSpec) -> ModelSpec:
        """The same model without a reference to its modules (to keep or save its metadata alone)."""
        return cls(model.preset, model.weights, model.scheduler_config, model.scaling_factor)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the preset by name)."""
        return {"preset": self.preset.name, "weights": self.weights.to_dict(),
                "scheduler_config": self.scheduler_config, "scaling_factor": self.scaling_factor,
                "fingerprint": self.fingerprint()}

    def save(self, folder: Path) -> Path:
        """Write ``folder/spec.json`` atomically."""
        path = Path(folder) / SPEC_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder: Path) -> ModelSpec:
        """Read ``folder/spec.json`` (as written by ``save``); the modules load from the weights on first use."""
        data = json.loads((Path(folder) / SPEC_FILE).read_text(encoding="utf-8"))
        return cls(preset=get_preset(data["preset"]), weights=WeightsOrigin(**data["weights"]),
                   scheduler_config=data["scheduler_config"], scaling_factor=float(data["scaling_factor"]))


def describe_model(
    preset: ModelPreset, weights: str | os.PathLike[str] | None = None, *, seed: int = 0
) -> ModelSpec:
    """The model ``preset`` without its modules: what a variant that runs from exported artifacts needs.

    Hashes the weight files and reads the JSON configs; builds no module. The modules load on first use, as from
    any ``ModelSpec``. Same arguments as ``load_components``, whose spec this equals in everything but the modules.

    Raises:
        WeightsError: the folder lacks a weight file or a config.
    """
    origin = model_weights.weights_origin(preset, weights, seed=seed)
    scheduler_config, scaling_factor = model_weights.read_configs(preset, Path(origin.path) if origin.path else None)
    return ModelSpec(preset, origin, scheduler_config, scaling_factor)


def load_components(
    preset: ModelPreset,
    weights: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    warn: bool = True,
) -> ModelSpec:
    """The model ``preset`` with its modules loaded now (see ``edgediff.models.weights.load_modules``).

    Args:
        preset: The architecture.
        weights: A diffusers-format folder; None means ``$EDGEDIFF_WEIGHTS``, the preset's bundled weights, or
            synthetic weights, in that order.
        seed: Seed of the synthetic weights.
        warn: Log the loud synthetic-weights warning.

    Raises:
        WeightsError: a file is missing, a config does not match the preset, or a tensor does not fit.
    """
    modules, scheduler_config, origin = model_weights.load_modules(preset, weights, seed=seed, warn=warn)
    return ModelSpec(preset, origin, scheduler_config, float(modules.vqvae.config.scaling_factor), modules=modules)


def save_components(components: ModelSpec, folder: str | os.PathLike[str]) -> Path:
    """Write the model's modules and scheduler config as a weights folder (diffusers layout, safetensors).

    ``load_components(preset, folder)`` reads it back (tests make weights folders this way).

    Args:
        components: What to save (its modules load first if they are not in memory).
        folder: Destination; created if missing.
    """
    out = Path(folder)
    components.unet.save_pretrained(out / "unet", safe_serialization=True)
    components.vqvae.save_pretrained(out / "vqvae", safe_serialization=True)
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "DDIMScheduler", **components.scheduler_config}
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out
