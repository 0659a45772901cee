"""Model presets, weight loading and the one model type (``ModelSpec``)."""

from edgediff.models.presets import ModelPreset, get_preset, list_presets
from edgediff.models.spec import ModelSpec, load_components, save_components
from edgediff.models.weights import LDMModules, WeightsOrigin

__all__ = [
    "LDMModules",
    "ModelPreset",
    "ModelSpec",
    "WeightsOrigin",
    "get_preset",
    "list_presets",
    "load_components",
    "save_components",
]
